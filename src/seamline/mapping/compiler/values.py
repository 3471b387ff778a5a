"""Value helpers shared by the compiled code: sequences, type tests, number and JSON text.

JSONata distinguishes *sequences* (results of path navigation, flattened and
collapsed: an empty sequence is undefined, a one-item sequence is its item)
from *arrays* (constructed or from the data). :class:`Seq` is a sequence;
:class:`Cons` marks an array built by an array constructor at the end of a
path (which must not be flattened).
"""

from __future__ import annotations

import json
import math
from typing import Any

from seamline.mapping.values import UNDEFINED

__all__ = [
    "MAX_SAFE",
    "Cons",
    "JError",
    "Lambda",
    "Seq",
    "collapse",
    "deep_equal",
    "is_number",
    "js_number_text",
    "js_stringify",
    "norm",
    "plain",
    "strict_equal",
    "type_symbol",
]

U = UNDEFINED
MAX_SAFE = 2**53


class JError(Exception):
    """An evaluation error with its JSONata code (turned into MappingError at the boundary)."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class Seq(list):  # type: ignore[type-arg]
    """A JSONata sequence. ``keep``: do not collapse a singleton; ``outer``: wraps an input array."""

    __slots__ = ("keep", "outer")

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.keep = False
        self.outer = False


class Cons(list):  # type: ignore[type-arg]
    """An array built by an array constructor that is the first or last step of a path."""

    __slots__ = ()


class Lambda:
    """A function value: a compiled inline lambda, passed to ``$map``/``$filter``/..."""

    __slots__ = ("arity", "fn")

    def __init__(self, fn: Any, arity: int) -> None:
        self.fn = fn
        self.arity = arity

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def collapse(value: Any) -> Any:
    """Leave a node: an empty sequence is undefined, a singleton sequence its item.

    A longer sequence becomes a plain list: once collapsed, a sequence behaves
    exactly like an array, so values never carry the sequence marker beyond
    the node that made them (and need no conversion on output).
    """
    if value.__class__ is Seq:
        n = len(value)
        if n == 0:
            return U
        if n == 1 and not value.keep:
            return value[0]
        return list(value)
    return value


def plain(value: Any) -> Any:
    """A sequence stored in an object or returned becomes a plain list."""
    cls = value.__class__
    if cls is Seq or cls is Cons:
        return list(value)
    return value


def norm(value: float | int) -> Any:
    """JSON has one number type: integral results are ints, huge ints become floats."""
    if value.__class__ is float:
        if value.is_integer() and -MAX_SAFE <= value <= MAX_SAFE:
            return int(value)
        return value
    if -MAX_SAFE <= value <= MAX_SAFE:
        return value
    return float(value)


def is_number(value: Any) -> bool:
    """JSONata ``isNumeric``: a number that is not NaN; infinite numbers are an error (D1001)."""
    cls = value.__class__
    if cls is int:
        return True
    if cls is float:
        if value != value:
            return False
        if value in (math.inf, -math.inf):
            raise JError("D1001", "Number out of range")
        return True
    return False


def type_symbol(value: Any) -> str:
    """The signature symbol of a value: s n b l a o f, or m for undefined."""
    cls = value.__class__
    if cls is str:
        return "s"
    if cls is bool:
        return "b"
    if cls is int or cls is float:
        return "n"
    if value is None:
        return "l"
    if isinstance(value, list):
        return "a"
    if cls is dict:
        return "o"
    if value is U:
        return "m"
    if callable(value):
        return "f"
    return "o"


def strict_equal(a: Any, b: Any) -> bool:
    """JavaScript ``===`` on JSON values (objects and arrays by identity)."""
    if a is b:
        return True
    ca, cb = a.__class__, b.__class__
    if ca is bool or cb is bool:
        return False
    if (ca is int or ca is float) and (cb is int or cb is float):
        return bool(a == b)
    if ca is str and cb is str:
        return bool(a == b)
    return False


def deep_equal(a: Any, b: Any) -> bool:
    """JSONata's ``=``: deep equality, booleans never equal numbers."""
    if a is b:
        return True
    ca, cb = a.__class__, b.__class__
    if ca is bool or cb is bool:
        return False
    if (ca is int or ca is float) and (cb is int or cb is float):
        return bool(a == b)
    if ca is str and cb is str:
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b, strict=True))
    if ca is dict and cb is dict:
        return a.keys() == b.keys() and all(deep_equal(a[k], b[k]) for k in a)
    return False


def js_number_text(value: float | int) -> str:
    """A number as JavaScript's ``String(n)`` writes it (shortest round trip, JS exponent rules)."""
    if value.__class__ is int:
        if -MAX_SAFE <= value <= MAX_SAFE:
            return str(value)
        value = float(value)
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    text = repr(value)
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, _, exp_text = text.partition("e")
    exponent = int(exp_text) if exp_text else 0
    whole, _, frac = mantissa.partition(".")
    if frac == "0":
        frac = ""
    digits = (whole + frac).lstrip("0")
    scale = exponent - len(frac)
    stripped = digits.rstrip("0")
    scale += len(digits) - len(stripped)
    digits = stripped or "0"
    k = len(digits)
    n = scale + k
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        e_text = f"e{'+' if e >= 0 else '-'}{abs(e)}"
        out = digits + e_text if k == 1 else digits[0] + "." + digits[1:] + e_text
    return sign + out


def _precision15(value: float | int) -> float | int:
    if value.__class__ is int and -MAX_SAFE <= value <= MAX_SAFE:
        return value
    return float(f"{float(value):.15g}")


def _dump(value: Any, out: list[str], indent: str | None, level: int) -> None:
    cls = value.__class__
    if cls is str:
        out.append(json.dumps(value, ensure_ascii=False))
    elif cls is bool:
        out.append("true" if value else "false")
    elif cls is int or cls is float:
        if not is_number(value):
            out.append("null")
        else:
            out.append(js_number_text(_precision15(value)))
    elif value is None:
        out.append("null")
    elif isinstance(value, list):
        items = [v for v in value]
        if not items:
            out.append("[]")
            return
        out.append("[")
        for i, item in enumerate(items):
            if i:
                out.append(",")
            if indent is not None:
                out.append("\n" + indent * (level + 1))
            if item is U:
                out.append("null")
            else:
                _dump(item, out, indent, level + 1)
        if indent is not None:
            out.append("\n" + indent * level)
        out.append("]")
    elif cls is dict:
        pairs = [(k, v) for k, v in value.items() if v is not U]
        if not pairs:
            out.append("{}")
            return
        out.append("{")
        for i, (key, item) in enumerate(pairs):
            if i:
                out.append(",")
            if indent is not None:
                out.append("\n" + indent * (level + 1))
            out.append(json.dumps(str(key), ensure_ascii=False))
            out.append(": " if indent is not None else ":")
            _dump(item, out, indent, level + 1)
        if indent is not None:
            out.append("\n" + indent * level)
        out.append("}")
    elif callable(value):
        out.append('""')
    else:
        out.append(json.dumps(value, ensure_ascii=False, default=str))


def js_stringify(value: Any, pretty: bool = False) -> str:
    """``JSON.stringify`` as JSONata's ``$string`` uses it (15 significant digits, functions as "")."""
    out: list[str] = []
    _dump(value, out, "  " if pretty else None, 0)
    return "".join(out)
