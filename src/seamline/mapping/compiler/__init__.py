"""Translate the common subset of JSONata into one Python function per expression.

:func:`try_compile` returns a :class:`CompiledExpression`, or ``None`` when
the expression uses something outside the subset (the caller then uses the
full engine). See ``docs/adr/0002-mapping-compiler.md`` for the design.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from seamline.mapping.compiler.codegen import HostFunction, NotCompilable, generate
from seamline.mapping.compiler.parser import Node
from seamline.mapping.compiler.runtime import State
from seamline.mapping.compiler.values import JError
from seamline.mapping.errors import LIMIT_CODE, MappingError
from seamline.mapping.functions import is_trusted, max_positional

__all__ = ["CompiledExpression", "NotCompilable", "try_compile"]


class CompiledExpression:
    """An expression translated to Python; evaluate it with the same limits as the engine."""

    __slots__ = (
        "_called",
        "_fn",
        "_seconds",
        "_state",
        "max_sequence",
        "python_source",
        "run",
        "source",
        "timeout_ms",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        python_source: str,
        source: str,
        called: set[str],
        *,
        timeout_ms: int,
        max_sequence: int,
    ) -> None:
        self._fn = fn
        self._called = frozenset(called)
        #: the generated Python, for debugging
        self.python_source = python_source
        self.source = source
        self.timeout_ms = timeout_ms
        self.max_sequence = max_sequence
        self._seconds = timeout_ms / 1000.0
        self._state = State.limited(timeout_ms, max_sequence)
        #: ``evaluate(data, None)`` as one function, for hot loops
        self.run: Callable[[Any], Any] = self._runner()

    def needs_engine_for(self, bindings: Mapping[str, Any]) -> bool:
        """Bindings that are functions, or shadow a function the expression calls, need the engine."""
        return any(callable(value) or key.lstrip("$") in self._called for key, value in bindings.items())

    def evaluate(self, data: Any, bindings: Mapping[str, Any] | None) -> Any:
        """Evaluate; returns :data:`~seamline.mapping.UNDEFINED` for an undefined result."""
        if not bindings:
            return self.run(data)
        if any(key.startswith("$") for key in bindings):
            bindings = {key.lstrip("$"): value for key, value in bindings.items()}
        state = _new(self._state)
        state.deadline = _monotonic() + self._seconds
        state.started = 0.0
        state.allocated = 0
        try:
            return self._fn(data, bindings, state)
        except JError as exc:
            raise self._error(exc) from None
        except RecursionError:
            raise self._overflow() from None

    def _runner(self) -> Callable[[Any], Any]:
        fn, state_class, seconds, error, overflow = self._fn, self._state, self._seconds, self._error, self._overflow

        def run(data: Any) -> Any:
            state = _new(state_class)
            state.deadline = _monotonic() + seconds
            state.started = 0.0
            state.allocated = 0
            try:
                return fn(data, _EMPTY, state)
            except JError as exc:
                raise error(exc) from None
            except RecursionError:
                raise overflow() from None

        return run

    def _error(self, exc: JError) -> MappingError:
        details = dict(exc.details)
        if exc.code == "D2015":
            details.setdefault("limit", "sequence")
        return MappingError(exc.message, jsonata_code=exc.code, expression=self.source, details=details)

    def _overflow(self) -> MappingError:
        return MappingError(
            "Stack overflow: the data or expression is nested too deeply",
            jsonata_code=LIMIT_CODE,
            expression=self.source,
            details={"limit": "depth"},
        )


_new = object.__new__
_monotonic = time.monotonic
_EMPTY: dict[str, Any] = {}


def try_compile(
    ast: Node,
    source: str,
    functions: Mapping[str, Callable[..., Any]],
    *,
    timeout_ms: int,
    max_depth: int,
    max_sequence: int,
) -> CompiledExpression | None:
    """Compile ``ast`` to Python, or return ``None`` if it is outside the supported subset."""
    hosts = {name: HostFunction(name, fn, max_positional(fn), is_trusted(fn)) for name, fn in functions.items()}
    try:
        fn, python_source, called = generate(ast, hosts)
    except (NotCompilable, RecursionError):
        return None
    return CompiledExpression(fn, python_source, source, called, timeout_ms=timeout_ms, max_sequence=max_sequence)
