"""The JSONata standard functions the compiler supports, ported from the reference ``functions.js``.

Each entry is a :class:`Builtin`: the JSONata signature (validated exactly
like the reference does, including context insertion and array wrapping)
and a Python implementation receiving the validated arguments. Functions
that are not here (regular expressions, date pictures, ``$eval``, ...) make
the compiler hand the expression to the full engine.
"""

from __future__ import annotations

import base64
import math
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from seamline.mapping.compiler import runtime as rt
from seamline.mapping.compiler.signature import Signature
from seamline.mapping.compiler.values import (
    MAX_SAFE,
    JError,
    Lambda,
    Seq,
    deep_equal,
    is_number,
    js_number_text,
    js_stringify,
    norm,
)
from seamline.mapping.values import UNDEFINED

__all__ = ["BUILTINS", "FAST", "RETURNS_SEQUENCE", "Builtin", "call", "round_to"]

U = UNDEFINED


@dataclass(frozen=True)
class Builtin:
    """A standard function: name, signature and implementation ``impl(state, *args)``."""

    name: str
    signature: Signature
    impl: Callable[..., Any]
    min_args: int
    max_args: int


def call(builtin: Builtin, state: rt.State, context: Any, args: list[Any]) -> Any:
    """Validate ``args`` against the signature (inserting the context if needed) and call."""
    return builtin.impl(state, *builtin.signature.validate(args, context))


# --- numbers -------------------------------------------------------------------------------


def _sum(state: rt.State, arr: Any) -> Any:
    if arr is U:
        return U
    total: Any = 0
    for n in arr:
        total += n
    return norm(total)


def _count(state: rt.State, arr: Any) -> Any:
    return 0 if arr is U else len(arr)


def _max(state: rt.State, arr: Any) -> Any:
    return U if arr is U or not arr else max(arr)


def _min(state: rt.State, arr: Any) -> Any:
    return U if arr is U or not arr else min(arr)


def _average(state: rt.State, arr: Any) -> Any:
    if arr is U or not arr:
        return U
    total: Any = 0
    for n in arr:
        total += n
    return norm(total / len(arr))


def _js_round_half_up(value: float) -> float:
    return math.floor(value + 0.5)


def _round(state: rt.State | None, value: Any, precision: Any = U) -> Any:
    if value.__class__ is float and precision.__class__ is int and 0 < precision < 16:
        # Python's round() agrees with JSONata's decimal-string rounding except when the
        # shortest decimal form is an exact tie at the rounding digit.
        text = repr(value)
        dot = text.find(".")
        if "e" not in text and not (len(text) - dot - 1 == precision + 1 and text[-1] == "5"):
            return norm(round(value, precision))
    if value is U:
        return U
    if precision.__class__ is float:
        if not precision.is_integer():
            return math.nan
        precision = int(precision)
    if precision is not U and precision:
        mantissa, _, exp = js_number_text(value).partition("e")
        value = float(f"{mantissa}e{int(exp) + precision if exp else precision}")
    result = _js_round_half_up(value)
    diff = result - value
    if abs(diff) == 0.5 and abs(math.fmod(result, 2)) == 1:
        result -= 1
    if precision is not U and precision:
        mantissa, _, exp = js_number_text(result).partition("e")
        result = float(f"{mantissa}e{int(exp) - precision if exp else -precision}")
    if result == 0:
        result = 0
    return norm(result)


def _floor(state: rt.State, value: Any) -> Any:
    return U if value is U else norm(math.floor(value))


def _ceil(state: rt.State, value: Any) -> Any:
    return U if value is U else norm(math.ceil(value))


def _abs(state: rt.State, value: Any) -> Any:
    return U if value is U else norm(abs(value))


def _sqrt(state: rt.State, value: Any) -> Any:
    if value is U:
        return U
    if value < 0:
        raise JError("D3060", f"The sqrt function cannot be applied to a negative number: {js_number_text(value)}")
    return norm(math.sqrt(value))


def _power(state: rt.State, base: Any, exponent: Any) -> Any:
    if base is U:
        return U
    try:
        result = math.pow(base, exponent)
    except (OverflowError, ValueError, ZeroDivisionError):
        result = math.nan
    if math.isinf(result) or math.isnan(result):
        raise JError(
            "D3061",
            f"The power function has resulted in a value that cannot be represented as a JSON number: "
            f"base={js_number_text(base)}, exponent={js_number_text(exponent)}",
        )
    return norm(result)


_NUMBER_RE = re.compile(r"^-?[0-9]+(\.[0-9]+)?([Ee][-+]?[0-9]+)?$")
_PREFIXED_RE = re.compile(r"^(0[xX][0-9A-Fa-f]+|0[oO][0-7]+|0[bB][01]+)$")


def _number(state: rt.State, value: Any) -> Any:
    if value is U:
        return U
    cls = value.__class__
    if cls is int or cls is float:
        return value
    if cls is bool:
        return 1 if value else 0
    if cls is str:
        if _NUMBER_RE.match(value):
            number = float(value)
            if not math.isinf(number):
                return norm(number)
        elif _PREFIXED_RE.match(value):
            return norm(int(value, 0))
    raise JError("D3030", f"Unable to cast value to a number: {js_stringify(value)}", index=1)


def _format_base(state: rt.State, value: Any, radix: Any = U) -> Any:
    if value is U:
        return U
    number = int(_round(state, value))
    base = 10 if radix is U else int(_round(state, radix))
    if base < 2 or base > 36:
        raise JError("D3100", f"The radix of the formatBase function must be between 2 and 36. It was given {base}")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    number = abs(number)
    out = []
    while number:
        number, rest = divmod(number, base)
        out.append(digits[rest])
    return sign + "".join(reversed(out))


# --- strings -------------------------------------------------------------------------------


def _string(state: rt.State, value: Any, pretty: Any = U) -> Any:
    if value is U:
        return U
    if value.__class__ is str:
        return value
    if pretty is True:
        if value.__class__ is float and math.isinf(value):
            raise JError("D3001", "Attempting to invoke string function on Infinity or NaN")
        text = js_stringify(value, pretty=True)
    else:
        text = rt.to_string(value)
    state.grow(len(text))  # a new string: counted like padding, so a path cannot repeat it without bound
    return text


def _js_int(value: Any) -> int:
    if isinstance(value, float):
        if math.isinf(value):
            return MAX_SAFE if value > 0 else -MAX_SAFE
        if value != value:
            return 0
        return int(value)
    return int(value)


def _substring(state: rt.State, text: Any, start: Any, length: Any = U) -> Any:
    if text is U:
        return U
    size = len(text)
    if size + start < 0:
        start = 0
    if length is not U:
        if length <= 0:
            return ""
        end = start + length if start >= 0 else size + start + length
        return text[_js_int(start) : _js_int(end)]
    return text[_js_int(start) :]


def _substring_before(state: rt.State, text: Any, chars: Any) -> Any:
    if text is U:
        return U
    token = "undefined" if chars is U else chars
    pos = text.find(token)
    return text[:pos] if pos > -1 else text


def _substring_after(state: rt.State, text: Any, chars: Any) -> Any:
    if text is U:
        return U
    token = "undefined" if chars is U else chars
    pos = text.find(token)
    return text[pos + len(token) :] if pos > -1 else text


def _lowercase(state: rt.State, text: Any) -> Any:
    return U if text is U else text.lower()


def _uppercase(state: rt.State, text: Any) -> Any:
    return U if text is U else text.upper()


def _length(state: rt.State, text: Any) -> Any:
    return U if text is U else len(text)


_WS_RE = re.compile(r"[ \t\n\r]+")


def _trim(state: rt.State | None, text: Any) -> Any:
    if text is U:
        return U
    result = _WS_RE.sub(" ", text)
    if result.startswith(" "):
        result = result[1:]
    if result.endswith(" "):
        result = result[:-1]
    return result


def _pad(state: rt.State, text: Any, width: Any, char: Any = U) -> Any:
    if text is U:
        return U
    if char is U or char == "":
        char = " "
    pad_length = _js_int(abs(width)) - len(text)
    if pad_length <= 0:
        return text
    state.size(pad_length)
    state.grow(pad_length)
    padding = (char * pad_length)[:pad_length] if len(char) > 1 else char * pad_length
    return text + padding if width > 0 else padding + text


def _contains(state: rt.State, text: Any, token: Any) -> Any:
    if text is U or token is U:
        return U
    if token.__class__ is not str:
        raise JError("T0410", "Argument 2 of function contains does not match function signature", index=2)
    return token in text


def _split(state: rt.State, text: Any, separator: Any, limit: Any = U) -> Any:
    if text is U:
        return U
    if limit is not U and limit < 0:
        raise JError("D3020", "Third argument of split function must evaluate to a positive number")
    if separator.__class__ is not str:
        raise JError("T0410", "Argument 2 of function split does not match function signature", index=2)
    parts = text.split(separator) if separator else list(text)
    if limit is not U:
        parts = parts[: _js_int(limit)]
    return parts


def _join(state: rt.State, strings: Any, separator: Any = U) -> Any:
    if strings is U:
        return U
    text = ("" if separator is U else separator).join(strings)
    state.grow(len(text))
    return text


def _base64encode(state: rt.State, text: Any) -> Any:
    if text is U:
        return U
    return base64.b64encode(bytes(ord(c) & 0xFF for c in text)).decode("ascii")


def _base64decode(state: rt.State, text: Any) -> Any:
    if text is U:
        return U
    cleaned = re.sub(r"[^A-Za-z0-9+/]", "", text)
    cleaned += "=" * (-len(cleaned) % 4)
    return base64.b64decode(cleaned).decode("latin-1")


_COMPONENT_SAFE = "-_.!~*'()"
_URI_SAFE = _COMPONENT_SAFE + ";,/?:@&=+$#"
_URI_RESERVED = set(";/?:@&=+$,#")


def _encoder(safe: str, name: str) -> Callable[[rt.State, Any], Any]:
    def encode(state: rt.State, text: Any) -> Any:
        if text is U:
            return U
        try:
            return urllib.parse.quote(text, safe=safe, encoding="utf-8", errors="strict")
        except UnicodeEncodeError:
            raise JError("D3140", f"Malformed URL passed to ${name}(): {js_stringify(text)}") from None

    return encode


_PERCENT_RE = re.compile(r"((?:%[0-9A-Fa-f]{2})+)")


def _decoder(keep_reserved: bool, name: str) -> Callable[[rt.State, Any], Any]:
    def decode(state: rt.State, text: Any) -> Any:
        if text is U:
            return U
        bad = JError("D3140", f"Malformed URL passed to ${name}(): {js_stringify(text)}")
        if re.search(r"%(?![0-9A-Fa-f]{2})", text):
            raise bad

        def one(match: re.Match[str]) -> str:
            raw = match.group(1)
            try:
                decoded = bytes.fromhex(raw.replace("%", "")).decode("utf-8", errors="strict")
            except UnicodeDecodeError:
                raise bad from None
            if not keep_reserved:
                return decoded
            out, i = [], 0
            for ch in decoded:
                size = len(ch.encode("utf-8")) * 3
                out.append(raw[i : i + size] if ch in _URI_RESERVED else ch)
                i += size
            return "".join(out)

        return _PERCENT_RE.sub(one, text)

    return decode


# --- booleans, types, objects, arrays ------------------------------------------------------


def _boolean(state: rt.State, value: Any) -> Any:
    return rt.to_bool(value)


def _not(state: rt.State, value: Any) -> Any:
    result = rt.to_bool(value)
    return U if result is U else not result


def _exists(state: rt.State, value: Any) -> Any:
    return value is not U


def _type(state: rt.State, value: Any) -> Any:
    if value is U:
        return U
    if value is None:
        return "null"
    cls = value.__class__
    if cls is bool:
        return "boolean"
    if (cls is int or cls is float) and is_number(value):
        return "number"
    if cls is str:
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Lambda) or (callable(value) and cls is not dict):
        return "function"
    return "object"


def _keys(state: rt.State, value: Any) -> Any:
    result = Seq()
    if isinstance(value, list):
        merged: dict[str, bool] = {}
        for item in value:
            for key in _keys(state, item):
                merged[key] = True
        result.extend(merged)
    elif value.__class__ is dict:
        result.extend(value)
    return result


def _lookup(state: rt.State, value: Any, key: Any) -> Any:
    return rt.lookup(value, key)


def _append(state: rt.State, first: Any, second: Any) -> Any:
    return rt._append(first, second)


def _reverse(state: rt.State, arr: Any) -> Any:
    if arr is U:
        return U
    if len(arr) <= 1:
        return arr
    return list(reversed(arr))


def _distinct(state: rt.State, arr: Any) -> Any:
    if arr is U:
        return U
    if not isinstance(arr, list) or len(arr) <= 1:
        return arr
    results: list[Any] = Seq() if arr.__class__ is Seq else []
    for value in arr:
        if not any(deep_equal(value, seen) for seen in results):
            results.append(value)
    return results


def _merge(state: rt.State, arr: Any) -> Any:
    if arr is U:
        return U
    result: dict[str, Any] = {}
    for obj in arr:
        result.update(obj)
    return result


def _spread(state: rt.State, value: Any) -> Any:
    if isinstance(value, list):
        result: Any = Seq()
        for item in value:
            result = rt._append(result, _spread(state, item))
        return result
    if value.__class__ is dict:
        result = Seq()
        result.extend({key: item} for key, item in value.items())
        return result
    return value


def _zip(state: rt.State, *arrays: Any) -> Any:
    length = min(len(a) if isinstance(a, list) else 0 for a in arrays)
    return [[a[i] for a in arrays] for i in range(length)]


def _error(state: rt.State, message: Any = U) -> Any:
    raise JError("D3137", message if message.__class__ is str and message else "$error() function evaluated")


def _assert(state: rt.State, condition: Any, message: Any = U) -> Any:
    if condition is not True:
        raise JError("D3141", message if message.__class__ is str and message else "$assert() statement failed")
    return U


def _now(state: rt.State) -> Any:
    moment = datetime.fromtimestamp(state.now(), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _millis(state: rt.State) -> Any:
    return int(state.now() * 1000)


# --- higher-order functions ----------------------------------------------------------------


def _hof_args(fn: Any, value: Any, index: Any, arr: Any) -> tuple[Any, ...]:
    arity = fn.arity if isinstance(fn, Lambda) else 1
    if arity >= 3:
        return (value, index, arr)
    if arity == 2:
        return (value, index)
    return (value,)


def _map(state: rt.State, arr: Any, fn: Any) -> Any:
    if arr is U:
        return U
    state.check()
    result = Seq()
    for i, value in enumerate(arr):
        res = fn(*_hof_args(fn, value, i, arr))
        if res is not U:
            result.append(res)
    return result


def _filter(state: rt.State, arr: Any, fn: Any) -> Any:
    if arr is U:
        return U
    state.check()
    result = Seq()
    for i, value in enumerate(arr):
        if rt.to_bool(fn(*_hof_args(fn, value, i, arr))) is True:
            result.append(value)
    return result


def _each(state: rt.State, obj: Any, fn: Any) -> Any:
    result = Seq()
    if obj.__class__ is not dict:
        return result
    state.check()
    for key, value in obj.items():
        res = fn(*_hof_args(fn, value, key, obj))
        if res is not U:
            result.append(res)
    return result


def _sift(state: rt.State, obj: Any, fn: Any) -> Any:
    result: dict[str, Any] = {}
    if obj.__class__ is dict:
        state.check()
        for key, value in obj.items():
            if rt.to_bool(fn(*_hof_args(fn, value, key, obj))) is True:
                result[key] = value
    return result if result else U


def _single(state: rt.State, arr: Any, fn: Any = U) -> Any:
    if arr is U:
        return U
    found = False
    result: Any = U
    for i, value in enumerate(arr):
        positive = True if fn is U else rt.to_bool(fn(*_hof_args(fn, value, i, arr))) is True
        if positive:
            if found:
                raise JError(
                    "D3138", "The $single() function expected exactly 1 matching result. Instead it matched more."
                )
            result, found = value, True
    if not found:
        raise JError("D3139", "The $single() function expected exactly 1 matching result. Instead it matched 0.")
    return result


def _js_truthy(value: Any) -> bool:
    if value is U or value is None or value is False:
        return False
    if value.__class__ in (int, float):
        return value != 0 and value == value
    if value.__class__ is str:
        return value != ""
    return True


def _merge_sort(items: list[Any], swap: Callable[[Any, Any], bool]) -> list[Any]:
    if len(items) <= 1:
        return items
    middle = len(items) // 2
    left = _merge_sort(items[:middle], swap)
    right = _merge_sort(items[middle:], swap)
    merged: list[Any] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if swap(left[i], right[j]):
            merged.append(right[j])
            j += 1
        else:
            merged.append(left[i])
            i += 1
    merged.extend(left[i:])
    merged.extend(right[j:])
    return merged


def _sort(state: rt.State, arr: Any, fn: Any = U) -> Any:
    if arr is U:
        return U
    if len(arr) <= 1:
        return arr
    state.check()
    if fn is U:
        numbers = all(v.__class__ in (int, float) for v in arr)
        strings = all(v.__class__ is str for v in arr)
        if not numbers and not strings:
            raise JError(
                "D3070",
                "The single argument form of the sort function can only be applied to an array "
                "of strings or an array of numbers.  Use the second argument to specify a comparison function",
            )
        return _merge_sort(list(arr), lambda a, b: a > b)
    return _merge_sort(list(arr), lambda a, b: _js_truthy(fn(a, b)))


# --- fast paths ------------------------------------------------------------------------------
# Direct implementations for the common argument types; anything unusual goes through the
# signature (which raises the reference errors). Keyed by (name, argument count).


def _fast_count(state: rt.State, ctx: Any, arr: Any) -> Any:
    if isinstance(arr, list):
        return len(arr)
    return 0 if arr is U else 1


def _fast_sum(state: rt.State, ctx: Any, arr: Any) -> Any:
    if isinstance(arr, list):
        total: Any = 0
        for n in arr:
            cls = n.__class__
            if cls is not int and cls is not float:
                return call(BUILTINS["sum"], state, ctx, [arr])
            total += n
        return norm(total)
    cls = arr.__class__
    if cls is int or cls is float:
        return arr
    return call(BUILTINS["sum"], state, ctx, [arr])


_POWERS = [10.0**i for i in range(16)]


def round_to(value: Any, precision: int, state: rt.State, ctx: Any) -> Any:
    """``$round(value, precision)`` for a literal precision of 1-15 digits."""
    if value.__class__ is float:
        shifted = value * _POWERS[precision]
        if abs(shifted - math.floor(shifted) - 0.5) > 1e-6:
            result = round(value, precision)
            return int(result) if result.is_integer() and -MAX_SAFE <= result <= MAX_SAFE else result
    elif value.__class__ is int:
        return value
    return _fast_round(state, ctx, value, precision)


def _fast_round(state: rt.State, ctx: Any, value: Any, precision: Any = U) -> Any:
    cls = value.__class__
    if (cls is float or cls is int) and (precision is U or precision.__class__ is int):
        return _round(state, value, precision)
    return call(BUILTINS["round"], state, ctx, [value] if precision is U else [value, precision])


def _string_fast(name: str, method: Callable[[str], Any]) -> Callable[..., Any]:
    def fast(state: rt.State, ctx: Any, text: Any) -> Any:
        if text.__class__ is str:
            return method(text)
        if text is U:
            return U
        return call(BUILTINS[name], state, ctx, [text])

    return fast


def _fast_string(state: rt.State, ctx: Any, value: Any) -> Any:
    cls = value.__class__
    if cls is str:
        return value
    if cls is int and -MAX_SAFE <= value <= MAX_SAFE:
        return str(value)
    return call(BUILTINS["string"], state, ctx, [value])


def _fast_number(state: rt.State, ctx: Any, value: Any) -> Any:
    cls = value.__class__
    if cls is int or cls is float:
        return value
    return call(BUILTINS["number"], state, ctx, [value])


def _fast_exists(state: rt.State, ctx: Any, value: Any) -> Any:
    return value is not U


def _fast_boolean(state: rt.State, ctx: Any, value: Any) -> Any:
    return rt.to_bool(value)


def _fast_join(state: rt.State, ctx: Any, strings: Any, separator: Any = U) -> Any:
    if (
        isinstance(strings, list)
        and (separator is U or separator.__class__ is str)
        and all(item.__class__ is str for item in strings)
    ):
        glue: str = "" if separator is U else cast(str, separator)
        text = glue.join(strings)
        state.grow(len(text))
        return text
    return call(BUILTINS["join"], state, ctx, [strings] if separator is U else [strings, separator])


def _fast_substring(state: rt.State, ctx: Any, text: Any, start: Any, length: Any = U) -> Any:
    if text.__class__ is str and start.__class__ is int and (length is U or length.__class__ is int):
        return _substring(state, text, start, length)
    return call(BUILTINS["substring"], state, ctx, [text, start] if length is U else [text, start, length])


FAST: dict[tuple[str, int], Callable[..., Any]] = {
    ("count", 1): _fast_count,
    ("sum", 1): _fast_sum,
    ("round", 1): _fast_round,
    ("round", 2): _fast_round,
    ("uppercase", 1): _string_fast("uppercase", str.upper),
    ("lowercase", 1): _string_fast("lowercase", str.lower),
    ("length", 1): _string_fast("length", len),
    ("trim", 1): _string_fast("trim", lambda text: _trim(None, text)),
    ("string", 1): _fast_string,
    ("number", 1): _fast_number,
    ("exists", 1): _fast_exists,
    ("boolean", 1): _fast_boolean,
    ("join", 1): _fast_join,
    ("join", 2): _fast_join,
    ("substring", 2): _fast_substring,
    ("substring", 3): _fast_substring,
}

#: functions whose result can be a sequence (and so must be collapsed after the call)
RETURNS_SEQUENCE = frozenset(
    {"keys", "lookup", "map", "filter", "each", "spread", "append", "reverse", "distinct", "sort"}
)


# --- table ---------------------------------------------------------------------------------

_TABLE: list[tuple[str, str, Callable[..., Any]]] = [
    ("sum", "<a<n>:n>", _sum),
    ("count", "<a:n>", _count),
    ("max", "<a<n>:n>", _max),
    ("min", "<a<n>:n>", _min),
    ("average", "<a<n>:n>", _average),
    ("string", "<x-b?:s>", _string),
    ("substring", "<s-nn?:s>", _substring),
    ("substringBefore", "<s-s:s>", _substring_before),
    ("substringAfter", "<s-s:s>", _substring_after),
    ("lowercase", "<s-:s>", _lowercase),
    ("uppercase", "<s-:s>", _uppercase),
    ("length", "<s-:n>", _length),
    ("trim", "<s-:s>", _trim),
    ("pad", "<s-ns?:s>", _pad),
    ("contains", "<s-(sf):b>", _contains),
    ("split", "<s-(sf)n?:a<s>>", _split),
    ("join", "<a<s>s?:s>", _join),
    ("formatBase", "<n-n?:s>", _format_base),
    ("number", "<(nsb)-:n>", _number),
    ("floor", "<n-:n>", _floor),
    ("ceil", "<n-:n>", _ceil),
    ("round", "<n-n?:n>", _round),
    ("abs", "<n-:n>", _abs),
    ("sqrt", "<n-:n>", _sqrt),
    ("power", "<n-n:n>", _power),
    ("boolean", "<x-:b>", _boolean),
    ("not", "<x-:b>", _not),
    ("map", "<af>", _map),
    ("zip", "<a+>", _zip),
    ("filter", "<af>", _filter),
    ("single", "<af?>", _single),
    ("sift", "<o-f?:o>", _sift),
    ("keys", "<x-:a<s>>", _keys),
    ("lookup", "<x-s:x>", _lookup),
    ("append", "<xx:a>", _append),
    ("exists", "<x:b>", _exists),
    ("spread", "<x-:a<o>>", _spread),
    ("merge", "<a<o>:o>", _merge),
    ("reverse", "<a:a>", _reverse),
    ("each", "<o-f:a>", _each),
    ("error", "<s?:x>", _error),
    ("assert", "<bs?:x>", _assert),
    ("type", "<x:s>", _type),
    ("sort", "<af?:a>", _sort),
    ("distinct", "<x:x>", _distinct),
    ("base64encode", "<s-:s>", _base64encode),
    ("base64decode", "<s-:s>", _base64decode),
    ("encodeUrlComponent", "<s-:s>", _encoder(_COMPONENT_SAFE, "encodeUrlComponent")),
    ("encodeUrl", "<s-:s>", _encoder(_URI_SAFE, "encodeUrl")),
    ("decodeUrlComponent", "<s-:s>", _decoder(False, "decodeUrlComponent")),
    ("decodeUrl", "<s-:s>", _decoder(True, "decodeUrl")),
    ("now", "<:s>", _now),
    ("millis", "<:n>", _millis),
]


def _arity(signature: Signature) -> tuple[int, int]:
    low = high = 0
    for param in signature.params:
        if param.regex.endswith("+"):
            low += 1
            high += 64
        elif param.regex.endswith("?"):
            high += 1
        else:
            low += 1
            high += 1
    return low, high


def _build() -> dict[str, Builtin]:
    table = {}
    for name, text, impl in _TABLE:
        signature = Signature(text, name)
        low, high = _arity(signature)
        table[name] = Builtin(name, signature, impl, low, high)
    return table


#: the standard functions the compiler supports, by name
BUILTINS: dict[str, Builtin] = _build()
