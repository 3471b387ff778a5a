"""Helpers shared by the mapping tests: run an expression on both evaluation paths."""

from __future__ import annotations

from typing import Any

from seamline.mapping import UNDEFINED, Expression

#: the two ways an expression runs: translated to Python, or on the full engine
PATHS = ("compiled", "engine")


def run(expression: Expression, data: Any, path: str, bindings: dict[str, Any] | None = None) -> Any:
    """Evaluate on one path; undefined comes back as UNDEFINED."""
    if path == "compiled":
        assert expression.is_compiled, f"expected {expression.source!r} to be compiled"
        return expression.evaluate(data, bindings, undefined=UNDEFINED)
    return expression.evaluate_engine(data, bindings)
