"""Operators and path navigation used by generated code, with JSONata's semantics.

Each helper mirrors a function of the reference evaluator (``jsonata.js``):
``name_step``/``map_step`` are ``evaluateStep``, ``filter_*`` is
``evaluateFilter``, ``group`` is ``evaluateGroupExpression`` and so on.
:class:`State` carries the limits of one evaluation: the deadline and the
maximum sequence length, checked wherever a loop can grow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from seamline.mapping.compiler.values import (
    Cons,
    JError,
    Seq,
    collapse,
    deep_equal,
    is_number,
    js_stringify,
    norm,
    plain,
    strict_equal,
)
from seamline.mapping.values import UNDEFINED

__all__ = [
    "State",
    "add",
    "append_into",
    "boolize",
    "concat",
    "div",
    "eq",
    "filter_index",
    "filter_pred",
    "ge",
    "group",
    "gt",
    "in_",
    "le",
    "lookup",
    "lt",
    "map_step",
    "mod",
    "mul",
    "name_step",
    "names_path",
    "ne",
    "neg",
    "range_",
    "seq1",
    "single_step",
    "sub",
    "to_bool",
    "to_seq",
    "truthy",
    "unwrap",
]

U = UNDEFINED
_monotonic = time.monotonic
_new = object.__new__


#: what the ranges and paddings of one evaluation may allocate together, in units of the sequence
#: limit; a range item counts as ten units (a list slot and an int), a padding character as one
ALLOCATION_FACTOR = 20
RANGE_ITEM_UNITS = 10

_LIMITED: dict[tuple[type, int, int], type[State]] = {}


class State:
    """Limits and clock of one evaluation.

    The limits are class attributes of a subclass made once per expression
    (:meth:`limited`), so starting an evaluation only sets the deadline.
    """

    __slots__ = ("allocated", "deadline", "started")

    deadline: float
    started: float
    #: units allocated by ranges and paddings so far (see ``ALLOCATION_FACTOR``): many small
    #: allocations, each below the limits, are bounded together
    allocated: int
    timeout_ms: int = 1000
    max_sequence: int = 1_000_000

    @classmethod
    def limited(cls, timeout_ms: int, max_sequence: int) -> type[State]:
        """The state class of evaluations with these limits (one class per distinct pair)."""
        key = (cls, timeout_ms, max_sequence)
        found = _LIMITED.get(key)
        if found is None:
            attributes = {"__slots__": (), "timeout_ms": timeout_ms, "max_sequence": max_sequence}
            found = _LIMITED.setdefault(key, type("State", (cls,), attributes))
        return found

    @classmethod
    def start(cls, timeout_ms: int, max_sequence: int, seconds: float | None = None) -> State:
        """A state for one evaluation (compiled expressions start theirs inline)."""
        state: State = _new(cls.limited(timeout_ms, max_sequence))
        state.deadline = _monotonic() + (seconds if seconds is not None else timeout_ms / 1000.0)
        state.started = 0.0
        state.allocated = 0
        return state

    def now(self) -> float:
        """Wall time of the evaluation: fixed at the first use, as ``$now()`` requires."""
        if not self.started:
            self.started = time.time()
        return self.started

    def check(self) -> None:
        """Raise once the time limit has passed."""
        if _monotonic() > self.deadline:
            raise JError(
                "U1001",
                f"Expression evaluation timeout after {self.timeout_ms} ms: check for an infinite loop",
                limit="timeout",
            )

    def grow(self, units: int) -> None:
        """Count an allocation against the evaluation's budget; raise once it is spent."""
        self.allocated += units
        if self.allocated > ALLOCATION_FACTOR * self.max_sequence:
            raise JError(
                "D2015",
                f"this evaluation allocated more than {ALLOCATION_FACTOR} x the sequence limit of"
                f" {self.max_sequence} in ranges and padding together",
                limit="memory",
            )

    def size(self, n: int) -> None:
        """Raise when a sequence grows beyond the limit."""
        if n > self.max_sequence:
            raise JError(
                "D2015",
                f"Sequence of {n} items exceeds the limit of {self.max_sequence}",
                limit="sequence",
            )


# --- sequences and paths -------------------------------------------------------------------


def seq1(value: Any) -> Seq:
    """``createSequence(value)``."""
    s = Seq()
    s.append(value)
    return s


def to_seq(ctx: Any) -> Any:
    """The input sequence of a path whose first step is not a variable."""
    if isinstance(ctx, list):
        return ctx
    s = Seq()
    s.append(ctx)
    return s


def unwrap(ctx: Any) -> Any:
    """``$``: the context, or the input array if the context is the outer wrapper."""
    if ctx.__class__ is Seq and ctx.outer:
        return ctx[0]
    return ctx


def lookup(value: Any, key: str) -> Any:
    """A field of an object; over an array, the flattened sequence of the field in each item."""
    if value.__class__ is dict:
        return value.get(key, U)
    if isinstance(value, list):
        out = Seq()
        for item in value:
            res = lookup(item, key)
            if res is not U:
                if isinstance(res, list):
                    out.extend(res)
                else:
                    out.append(res)
        return out
    return U


def _finish(result: list[Any], last: bool, state: State | None) -> Any:
    if last and len(result) == 1:
        only = result[0]
        if only.__class__ is list or only.__class__ is Cons:
            return only
    out = Seq()
    for res in result:
        if isinstance(res, list) and res.__class__ is not Cons:
            out.extend(res)
        else:
            out.append(res)
    if state is not None and len(out) > state.max_sequence:
        state.size(len(out))
    return out


def name_step(seq: Sequence[Any], key: str, last: bool, state: State | None = None) -> Any:
    """``evaluateStep`` for a field-name step."""
    result = []
    for item in seq:
        res = item.get(key, U) if item.__class__ is dict else collapse(lookup(item, key))
        if res is not U:
            result.append(res)
    return _finish(result, last, state)


def names_path(seq: Sequence[Any], names: tuple[str, ...], state: State) -> Any:
    """A path made only of field names, from an input sequence (the slow path)."""
    last = len(names) - 1
    for i, key in enumerate(names):
        seq = name_step(seq, key, i == last, state)
        if not seq:
            break
    return seq


def map_step(state: State, seq: Sequence[Any], fn: Callable[[Any], Any], last: bool) -> Any:
    """``evaluateStep`` for any other step: ``fn`` evaluates the step for one item."""
    if len(seq) > 1:
        state.check()
    result = []
    for item in seq:
        res = fn(item)
        if res is not U:
            result.append(res)
    return _finish(result, last, state)


def single_step(value: Any, last: bool) -> Any:
    """``evaluateStep`` over a one-item input whose step value is ``value`` (a variable step)."""
    return _finish([] if value is U else [value], last, None)


def _floor(value: Any) -> int:
    result: int = math.floor(value)
    return result


def filter_index(value: Any, index: float) -> Any:
    """A predicate that is a number literal: select by position (negative from the end)."""
    seq = value if isinstance(value, list) else seq1(value)
    i = _floor(index)
    if i < 0:
        i += len(seq)
    results = Seq()
    if 0 <= i < len(seq):
        item = seq[i]
        if item is not U:
            if isinstance(item, list):
                return item
            results.append(item)
    return results


def filter_pred(state: State, value: Any, fn: Callable[[Any], Any]) -> Any:
    """A predicate expression: keep the items for which it is true (or whose index it gives)."""
    seq = value if isinstance(value, list) else seq1(value)
    if len(seq) > 1:
        state.check()
    results = Seq()
    n = len(seq)
    for index, item in enumerate(seq):
        res = fn(item)
        if is_number(res):
            res = [res]
        if isinstance(res, list) and all((r.__class__ is int or r.__class__ is float) for r in res):
            for ires in res:
                ii = _floor(ires)
                if ii < 0:
                    ii += n
                if ii == index:
                    results.append(item)
        elif to_bool(res) is True:
            results.append(item)
    return results


def append_into(target: list[Any], value: Any) -> None:
    """``fn.append`` into an array being constructed (arrays are spliced in)."""
    if isinstance(value, list):
        target.extend(value)
    else:
        target.append(value)


def _append(first: Any, second: Any) -> Any:
    if first is U:
        return second
    if second is U:
        return first
    out = list(first) if isinstance(first, list) else [first]
    if isinstance(second, list):
        out.extend(second)
    else:
        out.append(second)
    return out


def group(
    state: State,
    ctx: Any,
    pairs: Sequence[tuple[Any, Callable[[Any], Any]]],
    position: int | None = None,
) -> dict[str, Any]:
    """``evaluateGroupExpression``: an object constructor over a context that may be a sequence.

    ``pairs`` holds (key, value function); a key is a literal string or a
    function of the item.
    """
    items = list(ctx) if isinstance(ctx, list) else [ctx]
    if not items:
        items = [U]
    if len(items) > 1:
        state.check()
    groups: dict[str, list[Any]] = {}
    for item in items:
        for index, (key_fn, _) in enumerate(pairs):
            key = key_fn if key_fn.__class__ is str else key_fn(item)
            if key is U:
                continue
            if key.__class__ is not str:
                raise JError("T1003", f"Key in object structure must evaluate to a string; got: {_text(key)}")
            entry = groups.get(key)
            if entry is None:
                groups[key] = [item, index]
            else:
                if entry[1] != index:
                    raise JError("D1009", f"Multiple key definitions evaluate to same key: {_text(key)}")
                entry[0] = _append(entry[0], item)
    out: dict[str, Any] = {}
    for key, (data, index) in groups.items():
        value = pairs[index][1](data)
        if value is not U:
            out[key] = plain(value)
    return out


# --- truth ---------------------------------------------------------------------------------


def to_bool(value: Any) -> Any:
    """``$boolean``: JSONata's effective boolean value (undefined stays undefined)."""
    cls = value.__class__
    if cls is bool:
        return value
    if cls is str:
        return len(value) > 0
    if cls is int:
        return value != 0
    if cls is float:
        return value != 0 and value == value
    if value is None:
        return False
    if isinstance(value, list):
        if len(value) == 1:
            return to_bool(value[0])
        return any(to_bool(v) is True for v in value)
    if cls is dict:
        return len(value) > 0
    if value is U:
        return U
    return False


def truthy(value: Any) -> bool:
    """Effective boolean value as a Python bool (undefined is false)."""
    return to_bool(value) is True


boolize = truthy


# --- operators -----------------------------------------------------------------------------


def _text(value: Any) -> str:
    try:
        return js_stringify(value)
    except Exception:  # pragma: no cover - defensive
        return repr(value)


def _arith(a: Any, b: Any, op: str) -> bool:
    """Check operands of an arithmetic operator; True when the result is undefined."""
    if a is not U and not is_number(a):
        raise JError("T2001", f"The left side of the {op} operator must evaluate to a number")
    if b is not U and not is_number(b):
        raise JError("T2002", f"The right side of the {op} operator must evaluate to a number")
    return a is U or b is U


def add(a: Any, b: Any) -> Any:
    if a.__class__ is int and b.__class__ is int:
        return norm(a + b)
    if _arith(a, b, "+"):
        return U
    return norm(a + b)


def sub(a: Any, b: Any) -> Any:
    if a.__class__ is int and b.__class__ is int:
        return norm(a - b)
    if _arith(a, b, "-"):
        return U
    return norm(a - b)


def mul(a: Any, b: Any) -> Any:
    if a.__class__ is int and b.__class__ is int:
        return norm(a * b)
    if _arith(a, b, "*"):
        return U
    return norm(a * b)


def div(a: Any, b: Any) -> Any:
    if _arith(a, b, "/"):
        return U
    if b == 0:
        if a == 0 or a != a:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return norm(a / b)


def mod(a: Any, b: Any) -> Any:
    if _arith(a, b, "%"):
        return U
    if b == 0:
        return math.nan
    return norm(math.fmod(a, b))


def neg(value: Any) -> Any:
    if value is U:
        return U
    if is_number(value):
        return -value if value != 0 else 0
    raise JError("D1002", f"Cannot negate a non-numeric value: {_text(value)}")


def eq(a: Any, b: Any) -> bool:
    if a is U or b is U:
        return False
    return deep_equal(a, b)


def ne(a: Any, b: Any) -> bool:
    if a is U or b is U:
        return False
    return not deep_equal(a, b)


def _comparable(a: Any, b: Any, op: str) -> bool:
    ca, cb = a.__class__, b.__class__
    a_ok = a is U or ca is str or ca is int or ca is float
    b_ok = b is U or cb is str or cb is int or cb is float
    if not a_ok or not b_ok:
        raise JError(
            "T2010",
            f"The expressions either side of operator {op} must evaluate to numeric or string values",
        )
    if a is U or b is U:
        return False
    if (ca is str) != (cb is str):
        raise JError(
            "T2009",
            f"The values {_text(a)} and {_text(b)} either side of operator {op} must be of the same data type",
        )
    return True


def lt(a: Any, b: Any) -> Any:
    return (a < b) if _comparable(a, b, "<") else U


def le(a: Any, b: Any) -> Any:
    return (a <= b) if _comparable(a, b, "<=") else U


def gt(a: Any, b: Any) -> Any:
    return (a > b) if _comparable(a, b, ">") else U


def ge(a: Any, b: Any) -> Any:
    return (a >= b) if _comparable(a, b, ">=") else U


def to_string(value: Any) -> Any:
    """``$string`` of one value (undefined stays undefined)."""
    if value.__class__ is str:
        return value
    if value is U:
        return U
    cls = value.__class__
    if (cls is float) and value in (math.inf, -math.inf):
        raise JError("D3001", "Attempting to invoke string function on Infinity or NaN")
    if cls is Seq and value.outer:
        value = value[0]
    if callable(value) and not isinstance(value, list | dict):
        return ""
    return js_stringify(value)


def concat(a: Any, b: Any) -> str:
    if a.__class__ is str and b.__class__ is str:
        return a + b
    left = "" if a is U else to_string(a)
    right = "" if b is U else to_string(b)
    return left + right


def in_(a: Any, b: Any) -> bool:
    if a is U or b is U:
        return False
    items = b if isinstance(b, list) else [b]
    return any(strict_equal(item, a) for item in items)


def range_(state: State, a: Any, b: Any) -> Any:
    if a is not U and not (a.__class__ in (int, float) and float(a).is_integer()):
        raise JError("T2003", "The left side of the range operator (..) must evaluate to an integer")
    if b is not U and not (b.__class__ in (int, float) and float(b).is_integer()):
        raise JError("T2004", "The right side of the range operator (..) must evaluate to an integer")
    if a is U or b is U:
        return U
    lo, hi = int(cast(float, a)), int(cast(float, b))
    if lo > hi:
        return U
    size = hi - lo + 1
    if size > 10_000_000:
        raise JError("D2014", f"The size of the sequence allocated by the range operator ({size}) must not exceed 1e7")
    state.size(size)
    state.grow(size * RANGE_ITEM_UNITS)
    state.check()
    return Seq(range(lo, hi + 1))
