"""Test helpers for flows and connectors.

The fault server (:mod:`seamline.testing.faultserver`) is imported on first
use, so ``import seamline.testing`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seamline.testing.faultserver import (
        Action,
        Behaviour,
        Every,
        FaultServer,
        FaultServerClient,
        HalfWritten,
        Hang,
        Latency,
        ReceivedRequest,
        Reset,
        Respond,
        Sequence,
        Times,
        behaviour_from_dict,
    )

__all__ = [
    "Action",
    "Behaviour",
    "Every",
    "FaultServer",
    "FaultServerClient",
    "HalfWritten",
    "Hang",
    "Latency",
    "ReceivedRequest",
    "Reset",
    "Respond",
    "Sequence",
    "Times",
    "behaviour_from_dict",
]

_LAZY = {name: "seamline.testing.faultserver" for name in __all__}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'seamline.testing' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
