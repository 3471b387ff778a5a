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
import time
from collections import deque
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import jsonatapy
import orjson

from seamline.core.errors import SeamlineError
from seamline.mapping.compiler.parser import Node
from seamline.mapping.errors import MappingError, error_from_engine_message
from seamline.mapping.functions import STANDINS, max_positional
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


# -- the clock: $now([picture[, timezone]]) and $millis() -----------------------------------------
# The engine's own $now takes no arguments; JSONata's formats the time as $fromMillis does when a
# picture or a time zone is given. Both read one clock per evaluation, as JSONata requires.

_FROM_MILLIS = {  # which arguments are given -> the engine expression that formats the time
    (True, False): "$fromMillis($ms, $picture)",
    (False, True): "$fromMillis($ms, $nothing, $timezone)",
    (True, True): "$fromMillis($ms, $picture, $timezone)",
}


def _clock_ms() -> int:
    ms: int | None = getattr(_state, "clock_ms", None)
    if ms is None:
        ms = _state.clock_ms = int(time.time() * 1000)
    return ms


def _millis() -> int:
    return _clock_ms()


def _now(picture: Any = None, timezone: Any = None) -> Any:
    ms = _clock_ms()
    if picture is None and timezone is None:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
    for index, arg in enumerate((picture, timezone), 1):
        if arg is not None and not isinstance(arg, str):
            raise MappingError(f"Argument {index} of function $now must be a string", jsonata_code="T0410")
    # engine expressions belong to the thread that made them: one set per thread
    formats: dict[tuple[bool, bool], Any] | None = getattr(_state, "formats", None)
    if formats is None:
        formats = _state.formats = {}
    shape = (picture is not None, timezone is not None)
    expr = formats.get(shape)
    if expr is None:
        expr = formats[shape] = jsonatapy.compile(_FROM_MILLIS[shape])
    try:
        out = expr.evaluate_json_or_none("null", {"ms": ms, "picture": picture, "timezone": timezone})
    except ValueError as exc:
        raise error_from_engine_message(str(exc), expression=f"$now({picture!r}, {timezone!r})") from None
    return None if out is None else orjson.loads(out)


#: the engine's own functions seamline replaces in every expression
_CLOCK = {"now": _now, "millis": _millis}


_GUARD_NAME = "__seamline_limit"
#: functions whose result can be a much longer string than their arguments
_GROWING = frozenset({"join", "replace", "string", "pad"})


def _concatenates(node: Node) -> bool:
    return node.type == "binary" and node.value == "&"


def _has_range(node: Node) -> bool:
    """An array constructor with a range in it (``[1..n]``)."""
    return node.type == "unary" and node.value == "[" and any(
        isinstance(e, Node) and e.type == "binary" and e.value == ".." for e in getattr(node, "expressions", ()) or ()
    )


def _guard_spans(tree: Node) -> list[tuple[int, int]]:
    """Source spans to pass through the size guard.

    * every ``$pad`` call and each of its arguments (its width decides how much is allocated);
    * every array constructor with a range (``[1..n]``): ranges repeated by a path or a
      recursion are bounded together, not only one by one;
    * every string concatenation (``&``) and every call of a function that can lengthen a
      string (``$join``, ``$replace``, ...): a path or a recursion can repeat them without bound.
    """
    spans: list[tuple[int, int]] = []

    def visit(node: Any, chained: bool = False) -> None:
        if isinstance(node, Node):
            if node.type in ("apply", "binary") and node.value == "~>":
                # the right side of ~> is applied to the left, not called: keep it a function
                visit(node.lhs)
                visit(node.rhs, True)
                return
            if node.type == "function" and node.procedure.type == "variable" and not chained:
                name = node.procedure.value
                if name == "pad":
                    spans.extend(arg.span for arg in node.arguments if arg.span is not None)
                if name in _GROWING and node.span is not None:
                    spans.append(node.span)
            elif node.span is not None and (_concatenates(node) or _has_range(node)):
                spans.append(node.span)
            for value in node.__dict__.values():
                visit(value)
        elif isinstance(node, list | tuple):
            for item in node:
                visit(item)
        elif isinstance(node, dict):
            for item in node.values():
                visit(item)

    visit(tree)
    return sorted(set(spans))


def guard_source(source: str, tree: Node | None) -> str:
    """Rewrite ``source`` so that values which could exhaust memory pass a size guard first.

    The engine allocates whatever it is asked for -- ``$pad("x", 2000000000)``,
    or a string doubled in every step of a recursive function -- and cannot
    recover from running out of memory. Each guarded sub-expression ``E``
    becomes ``($v := (E); $guard($v); $v)``: evaluated once, checked, then used
    unchanged (undefined stays undefined), so results below the limits are
    exactly as before.
    """
    if tree is None:
        return source
    spans = _guard_spans(tree)
    if not spans:
        return source
    # apply innermost-last: a span nested in another is rewritten first (higher start, or same start and shorter)
    out = source
    edits = sorted(spans, key=lambda span: (span[0], -span[1]), reverse=True)
    applied: list[tuple[int, int, int]] = []  # (start, old_end, growth of that wrapper alone)
    for start, end in edits:
        growth_inside = sum(g for (s0, e0, g) in applied if s0 >= start and e0 <= end)
        new_end = end + growth_inside
        variable = f"$__seamline_v{start}_{end}"
        wrapped = f"({variable} := ({out[start:new_end]}); ${_GUARD_NAME}({variable}); {variable})"
        out = out[:start] + wrapped + out[new_end:]
        applied.append((start, end, len(wrapped) - (new_end - start)))  # this wrapper's own growth
    return out


#: what the guarded strings and ranges of one evaluation may allocate together, in units of the
#: sequence limit; a range item counts as ten units, a character as one (as in the compiled path)
ALLOCATION_FACTOR = 20
RANGE_ITEM_UNITS = 10


def _limit_guard(max_sequence: int) -> Callable[..., Any]:
    max_string = 10 * max_sequence
    budget = ALLOCATION_FACTOR * max_sequence

    def spend(units: int) -> None:
        spent = getattr(_state, "allocated", 0) + units
        _state.allocated = spent
        if spent > budget:
            raise MappingError(
                f"this evaluation allocated more than {ALLOCATION_FACTOR} x the sequence limit of"
                f" {max_sequence} in strings and ranges together",
                jsonata_code="D2015",
                details={"limit": "memory"},
            )

    def guard(value: Any = None) -> None:
        if isinstance(value, str):
            if len(value) > max_string:
                raise MappingError(
                    f"string of {len(value)} characters exceeds the limit of {max_string}",
                    jsonata_code="D2015",
                    details={"limit": "string"},
                )
            spend(len(value))
        elif isinstance(value, list):
            spend(len(value) * RANGE_ITEM_UNITS)
        elif isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > max_sequence:
            raise MappingError(
                f"$pad width {value} exceeds the limit of {max_sequence} characters",
                jsonata_code="D2015",
                details={"limit": "sequence"},
            )
        return None

    return guard


# A compiled native expression must be freed on the thread that created it. Python frees an
# object on whatever thread runs the cyclic garbage collector, which may be a store or executor
# thread; there the expression is parked instead, and freed later by its own thread.
_GRAVEYARD: deque[tuple[int, Any]] = deque()


def _drain_graveyard() -> None:
    """Free parked native expressions that belong to this thread (deque operations are atomic)."""
    me = threading.get_ident()
    for _ in range(len(_GRAVEYARD)):
        try:
            owner, native = _GRAVEYARD.popleft()
        except IndexError:
            return
        if owner != me:
            _GRAVEYARD.append((owner, native))
        del native


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
        tree: Node | None = None,
    ) -> None:
        _drain_graveyard()
        self._owner = threading.get_ident()
        self.source = source
        self._limits = (timeout_ms, max_depth, max_sequence)
        self._functions = dict(functions)
        self._run_source = guard_source(source, tree)
        if self._run_source != source:
            self._functions[_GUARD_NAME] = _limit_guard(max_sequence)
        self._expr = self._build(self._functions)

    def __del__(
        self,
        _get_ident: Callable[[], int] = threading.get_ident,
        _graveyard: deque[tuple[int, Any]] = _GRAVEYARD,
    ) -> None:
        # module globals may already be gone at interpreter exit: use what was bound at definition
        native = self.__dict__.pop("_expr", None)
        if native is not None and _get_ident() != self.__dict__.get("_owner"):
            _graveyard.append((self.__dict__.get("_owner", 0), native))

    def _build(self, functions: Mapping[str, Callable[..., Any]]) -> jsonatapy.JsonataExpression:
        timeout_ms, max_depth, max_sequence = self._limits
        try:
            expr = jsonatapy.compile(
                self._run_source,
                timeout=timeout_ms,
                max_stack_depth=max_depth,
                max_sequence_length=max_sequence,
            )
        except ValueError as exc:
            raise error_from_engine_message(str(exc), expression=self.source) from None
        for name, fn in _CLOCK.items():
            expr.register_override(name, _host(name, fn))
        for name, fn in functions.items():
            # a standard function the engine lacks replaces the engine's name for it deliberately
            register = expr.register_override if name in STANDINS else expr.register
            try:
                register(name, _host(name, fn))
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
        _state.allocated = 0
        _state.clock_ms = None
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
