"""Translate the common subset of JSONata into one Python function per expression."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CompiledExpression", "try_compile"]


class CompiledExpression:
    def evaluate(self, data: Any, bindings: Mapping[str, Any] | None) -> Any:
        raise NotImplementedError

    def needs_engine_for(self, bindings: Mapping[str, Any]) -> bool:
        return True


def try_compile(
    ast: Any,
    source: str,
    functions: Mapping[str, Callable[..., Any]],
    *,
    timeout_ms: int,
    max_depth: int,
    max_sequence: int,
) -> CompiledExpression | None:
    return None
