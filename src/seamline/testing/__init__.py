"""Test helpers for flows and connectors.

``run_flow_tests(flows)`` runs the ``tests:`` of flows offline (what ``seamline test`` does), for a
pytest suite of flows built in Python. The fault server (:mod:`seamline.testing.faultserver`) is
an HTTP server that misbehaves on purpose. Both are imported on first use, so
``import seamline.testing`` stays cheap.
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
    from seamline.testing.flowtests import FlowTestResult, run_flow_tests, run_test

__all__ = [
    "Action",
    "Behaviour",
    "Every",
    "FaultServer",
    "FaultServerClient",
    "FlowTestResult",
    "HalfWritten",
    "Hang",
    "Latency",
    "ReceivedRequest",
    "Reset",
    "Respond",
    "Sequence",
    "Times",
    "behaviour_from_dict",
    "run_flow_tests",
    "run_test",
]

_FLOW_TESTS = ("FlowTestResult", "run_flow_tests", "run_test")
_LAZY = {name: "seamline.testing.flowtests" if name in _FLOW_TESTS else "seamline.testing.faultserver"
         for name in __all__}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'seamline.testing' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
