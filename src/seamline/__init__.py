"""seamline: integration flows in YAML or Python, durable delivery, every message explained.

The curated public API::

    from seamline import Flow, Message, source, step, sink, load_flows, Engine, open_store
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BatchError",
    "ConfigError",
    "Delivery",
    "Engine",
    "FatalError",
    "Flow",
    "Message",
    "RetryPolicy",
    "RetryableError",
    "SeamlineError",
    "Secret",
    "Sink",
    "Source",
    "Step",
    "__version__",
    "load_flows",
    "open_store",
    "register",
    "sink",
    "source",
    "step",
]

# lazy attribute loading keeps `import seamline` (and `seamline --help`) fast
_LAZY = {
    "BatchError": "seamline.core.component",
    "Delivery": "seamline.core.component",
    "Sink": "seamline.core.component",
    "Source": "seamline.core.component",
    "Step": "seamline.core.component",
    "ConfigError": "seamline.core.errors",
    "FatalError": "seamline.core.errors",
    "RetryableError": "seamline.core.errors",
    "SeamlineError": "seamline.core.errors",
    "Engine": "seamline.core.engine",
    "Flow": "seamline.core.flow",
    "source": "seamline.core.flow",
    "step": "seamline.core.flow",
    "sink": "seamline.core.flow",
    "Message": "seamline.core.message",
    "register": "seamline.core.registry",
    "RetryPolicy": "seamline.resilience.retry",
    "Secret": "seamline.security.secrets",
    "load_flows": "seamline.config.loader",
    "open_store": "seamline.store",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'seamline' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from seamline.config.loader import load_flows
    from seamline.core.component import BatchError, Delivery, Sink, Source, Step
    from seamline.core.engine import Engine
    from seamline.core.errors import ConfigError, FatalError, RetryableError, SeamlineError
    from seamline.core.flow import Flow, sink, source, step
    from seamline.core.message import Message
    from seamline.core.registry import register
    from seamline.resilience.retry import RetryPolicy
    from seamline.security.secrets import Secret
    from seamline.store import open_store
