"""The complete JSONata engine (jsonatapy, Rust) behind the compiled fast path.

Every expression is also compiled here: it is the judge of what is valid
JSONata, and it evaluates whatever the Python compiler does not handle.
Python functions (integration and user functions) are registered as host
functions; an exception they raise is carried across the engine boundary and
re-raised unchanged.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import jsonatapy
import orjson

from seamline.core.errors import SeamlineError
from seamline.mapping.errors import MappingError, error_from_engine_message
from seamline.mapping.functions import max_positional
from seamline.mapping.values import UNDEFINED

__all__ = ["EngineExpression", "call_host_function"]

_state = threading.local()


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON data")


def dumps(value: Any) -> str:
    """Serialise input data for the engine (``Decimal`` → number, tuples → arrays)."""
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


def call_host_function(name: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Call a Python function from a mapping, turning stray exceptions into MappingError."""
    try:
        result = fn(*args)
    except SeamlineError:
        raise
    except RecursionError:
        raise
    except Exception as exc:
        raise MappingError(
            f"function ${name} failed: {type(exc).__name__}: {exc}",
            jsonata_code="function_error",
            details={"function": name},
        ) from exc
    if result is UNDEFINED:
        return None
    if isinstance(result, tuple):
        return list(result)
    return result


def _host(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    limit = max_positional(fn)

    @functools.wraps(fn)
    def host(*args: Any) -> Any:
        if limit is not None and len(args) > limit:
            args = args[:limit]
        try:
            return call_host_function(name, fn, args)
        except BaseException as exc:
            _state.error = exc
            raise

    return host


class EngineExpression:
    """One expression compiled by the full engine, with seamline's functions registered."""

    def __init__(
        self,
        source: str,
        functions: Mapping[str, Callable[..., Any]],
        *,
        timeout_ms: int,
        max_depth: int,
        max_sequence: int,
    ) -> None:
        self.source = source
        self._limits = (timeout_ms, max_depth, max_sequence)
        self._functions = dict(functions)
        self._expr = self._build(self._functions)

    def _build(self, functions: Mapping[str, Callable[..., Any]]) -> jsonatapy.JsonataExpression:
        timeout_ms, max_depth, max_sequence = self._limits
        try:
            expr = jsonatapy.compile(
                self.source,
                timeout=timeout_ms,
                max_stack_depth=max_depth,
                max_sequence_length=max_sequence,
            )
        except ValueError as exc:
            raise error_from_engine_message(str(exc), expression=self.source) from None
        for name, fn in functions.items():
            try:
                expr.register(name, _host(name, fn))
            except ValueError as exc:
                raise MappingError(
                    f"function ${name} cannot be registered: {exc}", jsonata_code="function_error"
                ) from None
        return expr

    def evaluate(self, data: Any, bindings: Mapping[str, Any] | None = None) -> Any:
        """Evaluate; returns :data:`UNDEFINED` for an undefined result."""
        expr = self._expr
        plain: dict[str, Any] | None = None
        if bindings:
            plain = {}
            extra: dict[str, Callable[..., Any]] = {}
            for key, value in bindings.items():
                name = key[1:] if key.startswith("$") else key
                if callable(value):
                    extra[name] = value
                else:
                    plain[name] = value
            if extra:
                expr = self._build({**self._functions, **extra})
        try:
            text = None if data is UNDEFINED else dumps(data)
        except TypeError as exc:
            raise MappingError(f"input is not JSON data: {exc}", jsonata_code="input") from None
        _state.error = None
        try:
            out = expr.evaluate_json_or_none(text, plain or None)
        except ValueError as exc:
            raised = getattr(_state, "error", None)
            _state.error = None
            if isinstance(raised, BaseException):
                raise raised from None
            raise error_from_engine_message(str(exc), expression=self.source) from None
        finally:
            _state.error = None
        return UNDEFINED if out is None else orjson.loads(out)
