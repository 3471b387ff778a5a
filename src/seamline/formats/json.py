"""Strict JSON and NDJSON decode/encode, safe against hostile input.

:func:`decode` accepts only interoperable JSON (RFC 8259) and rejects, each
with its own code (see :data:`seamline.formats.errors.CODES`):

* input larger than ``max_bytes`` (``format.json.too_large``),
* invalid UTF-8 or lone surrogate escapes (``format.json.utf8``),
* ``NaN``, ``Infinity``, ``-Infinity`` (``format.json.nan``),
* nesting deeper than ``max_depth`` (``format.json.depth``),
* duplicate object keys (``format.json.duplicate_key``),
* integers with more than 4,300 digits (``format.json.big_int``),
* numbers too large for a float (``format.json.number_range``),
* anything else (``format.json.syntax``, with line, column and byte offset).

A UTF-8 byte order mark at the start is ignored.

How it stays fast: orjson parses first. It already rejects NaN, invalid
UTF-8 and nesting beyond 1,024 levels without recursing in Python. Three
cheap byte-level checks then decide whether anything else needs a look:

* duplicate keys: every ``:`` outside strings introduces one key, so when no
  key was dropped the number of ``:`` bytes in the input equals that in
  orjson's re-encoding of the result (which writes ``:`` inside strings
  literally). Only if the input escapes a colon (``\\u003a``) or the counts
  differ does the strict parser run, and it names the duplicated key;
* depth: when the input holds fewer brackets than ``max_depth`` nothing can
  be too deep; otherwise orjson's indented re-encoding puts every value at
  two spaces per level, so one regex search finds a container beyond the
  limit;
* big integers: orjson turns integers beyond 64 bits into floats; a run of
  19 or more digits in the input sends the document to the strict parser,
  which keeps them as exact ``int``. :func:`decode_many` looks at the
  re-encoding it makes for the key count instead: orjson writes every float
  of magnitude 1e16 or more with an exponent (``e+``), and only a batch whose
  re-encoding holds one is decoded document by document.

Integers with 20 to 4,300 digits therefore decode exactly, at the cost of
the strict parser (the standard library's, with hooks).
"""

from __future__ import annotations

import json as _stdjson
import math
import re
from collections.abc import Iterable, Iterator
from decimal import Decimal
from functools import lru_cache
from typing import IO, Any, NamedTuple, NoReturn

import orjson

from seamline.formats._lines import ReadableBinary, as_stream, iter_lines
from seamline.formats.errors import JsonError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "MAX_INT_DIGITS",
    "NdjsonItem",
    "decode",
    "decode_each",
    "decode_many",
    "encode",
    "encode_ndjson",
    "iter_ndjson",
    "write_ndjson",
]

#: Default size limit for one document (16 MiB).
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: Default nesting limit: ``[]`` is depth 1, a scalar depth 0.
DEFAULT_MAX_DEPTH = 64
#: Integers with more digits than this are rejected (Python's own default limit).
MAX_INT_DIGITS = 4300

_ORJSON_MAX_DEPTH = 1024  # orjson refuses deeper input on its own
_BOM = b"\xef\xbb\xbf"
_DIGITS_ONLY = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_DIGIT_RUN = b"0" * 19  # shortest integer orjson may turn into a float
# deleted for decode_many's counts: what is left are the colons, brackets, backslashes and separators
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b":[{\\\x00")
_NON_FINITE = ("NaN", "Infinity", "-Infinity")


# --------------------------------------------------------------------------- decode


def decode(
    data: bytes | bytearray | memoryview | str,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Any:
    """Decode one JSON document, rejecting anything hostile or ambiguous.

    ``data`` is UTF-8 bytes or a ``str``. Raises :class:`JsonError` with a
    ``format.json.*`` code; ``details`` holds ``line``, ``column`` and
    ``offset`` (bytes) where a position is known.
    """
    if not 1 <= max_depth <= _ORJSON_MAX_DEPTH:
        raise ValueError(f"max_depth must be between 1 and {_ORJSON_MAX_DEPTH}")
    raw = _as_bytes(data, max_bytes)
    if raw.startswith(_BOM):
        raw = raw[3:]
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _after_orjson_error(raw, exc, max_depth)
    return _checked(raw, value, max_depth)


def decode_many(
    records: list[bytes],
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Any]:
    """Decode many JSON documents (say, NDJSON lines) as strictly as :func:`decode` does each.

    The checks orjson does not do run once over the whole batch; only when one of them
    trips (or orjson refuses a document) is each document decoded on its own, so the
    error raised is exactly the one :func:`decode` raises for the first bad document.
    """
    if not 1 <= max_depth <= _ORJSON_MAX_DEPTH:
        raise ValueError(f"max_depth must be between 1 and {_ORJSON_MAX_DEPTH}")
    if not records:
        return []
    loads = orjson.loads
    try:
        values = [loads(r) for r in records]
    except orjson.JSONDecodeError:
        return [decode(r, max_depth=max_depth, max_bytes=max_bytes) for r in records]
    # no valid JSON holds a NUL byte (orjson accepted every document): it separates them here
    joined = b"\x00".join(records)
    # every ':', '[', '{' and '\\' in order, and the separators: one pass, and what the key and depth checks
    # count is then a few percent of the input
    structure = joined.translate(None, _NOT_STRUCTURE)
    again = orjson.dumps(values)
    if (
        max(map(len, records)) > max_bytes
        or (b"\\" in structure and b"\\u003" in joined)  # an escaped ':' would upset the count
        # an integer beyond 64 bits became a float, and orjson writes every float of 1e16 or more with an
        # exponent: the documents are decoded one by one (``_checked`` keeps such integers exact)
        or b"e+" in again
        or again.count(b":") != structure.count(b":")  # a duplicate key was dropped
    ):
        return [decode(r, max_depth=max_depth, max_bytes=max_bytes) for r in records]
    opened = structure.translate(None, b":\\")  # the brackets, documents apart
    if len(opened) - len(records) + 1 > max_depth:
        # a document cannot nest deeper than it has brackets: only those with many are looked at
        counts = list(map(len, opened.split(b"\x00")))
        if len(counts) != len(records):  # cannot happen (see above); the slow count if it did
            counts = [r.count(b"[") + r.count(b"{") for r in records]
        if max(counts) > max_depth:
            for i, n in enumerate(counts):
                if n > max_depth:
                    values[i] = decode(records[i], max_depth=max_depth, max_bytes=max_bytes)
    return values


def decode_each(
    records: list[bytes],
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Any]:
    """Decode many documents as :func:`decode` does each; a document that is refused has its
    :class:`JsonError` in its place instead of failing the others (records of a broker batch).

    A batch with no bad document costs what :func:`decode_many` costs.
    """
    try:
        return decode_many(records, max_depth=max_depth, max_bytes=max_bytes)
    except JsonError:
        pass
    out: list[Any] = []
    for r in records:
        try:
            out.append(decode(r, max_depth=max_depth, max_bytes=max_bytes))
        except JsonError as exc:
            out.append(exc)
    return out


def _as_bytes(data: bytes | bytearray | memoryview | str, max_bytes: int) -> bytes:
    if isinstance(data, str):
        if len(data) > max_bytes:
            _too_large(len(data), max_bytes)
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise JsonError(
                f"invalid Unicode at character {exc.start}: lone surrogate",
                code="format.json.utf8",
                details={"offset": exc.start},
            ) from None
    elif isinstance(data, bytes):
        raw = data
    elif isinstance(data, bytearray | memoryview):
        raw = bytes(data)
    else:
        raise TypeError(f"expected bytes or str, got {type(data).__name__}")
    if len(raw) > max_bytes:
        _too_large(len(raw), max_bytes)
    return raw


def _too_large(size: int, max_bytes: int) -> NoReturn:
    raise JsonError(
        f"JSON document of {size} bytes is larger than the limit of {max_bytes} bytes",
        code="format.json.too_large",
        details={"size": size, "max_bytes": max_bytes},
    )


@lru_cache(maxsize=16)
def _too_deep_pattern(max_depth: int) -> re.Pattern[bytes]:
    # In orjson's OPT_INDENT_2 output a value inside n containers sits on a
    # line indented by 2n spaces (strings never contain a raw newline). A
    # container at depth max_depth + 1 therefore opens on a line indented by
    # 2 * max_depth, either as an array element or as an object member; any
    # deeper line is inside such a container.
    indent = 2 * max_depth
    return re.compile(rb'\n {%d}(?: |[\[{]|"(?:[^"\\]|\\.)*": [\[{])' % indent)


def _checked(raw: bytes, value: Any, max_depth: int) -> Any:
    """Apply the checks orjson does not do; fall back to the strict parser when needed."""
    if not isinstance(value, dict | list):
        if _DIGIT_RUN in raw.translate(_DIGITS_ONLY):
            return _strict(raw, max_depth)
        return value
    colons = raw.count(b":")
    need_depth = raw.count(b"[") + raw.count(b"{") > max_depth
    if colons > 1 or need_depth:
        if b"\\u003" in raw:  # an escaped ':' would upset the count
            return _strict(raw, max_depth)
        out = orjson.dumps(value, option=orjson.OPT_INDENT_2 if need_depth else 0)
        if need_depth and _too_deep_pattern(max_depth).search(out):
            _too_deep(max_depth)
        if out.count(b":") != colons:
            return _strict(raw, max_depth)  # a key was dropped: find and name it
    if _DIGIT_RUN in raw.translate(_DIGITS_ONLY):
        return _strict(raw, max_depth)
    return value


def _too_deep(max_depth: int) -> NoReturn:
    raise JsonError(
        f"JSON is nested deeper than the limit of {max_depth} arrays/objects",
        code="format.json.depth",
        details={"max_depth": max_depth},
    )


def _after_orjson_error(raw: bytes, exc: orjson.JSONDecodeError, max_depth: int) -> Any:
    msg = exc.msg
    if "depth limit" in msg:
        _too_deep(max_depth)
    if "UTF-8" in msg or "surrogate" in msg:
        _raise_utf8(raw, exc)
    if "infinity when parsed" in msg:
        # a huge number: maybe a long (legal) integer, so let the strict parser decide
        return _strict(raw, max_depth)
    text = raw.decode("utf-8")
    pos = exc.pos
    if any(text.startswith(literal, start) for literal in _NON_FINITE for start in (pos, max(pos - 1, 0))):
        raise JsonError(
            f"NaN/Infinity is not JSON (line {exc.lineno}, column {exc.colno})",
            code="format.json.nan",
            details=_where(text, pos, exc.lineno, exc.colno),
        )
    _syntax(text, exc.msg, pos, exc.lineno, exc.colno)


def _raise_utf8(raw: bytes, exc: orjson.JSONDecodeError) -> NoReturn:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JsonError(
            f"invalid UTF-8 at byte {err.start}", code="format.json.utf8", details={"offset": err.start}
        ) from None
    text = raw.decode("utf-8")
    raise JsonError(
        f"invalid Unicode escape (lone surrogate) at line {exc.lineno}, column {exc.colno}",
        code="format.json.utf8",
        details=_where(text, exc.pos, exc.lineno, exc.colno),
    )


def _where(text: str, pos: int, line: int, col: int) -> dict[str, int]:
    return {"line": line, "column": col, "offset": len(text[:pos].encode("utf-8"))}


def _syntax(text: str, msg: str, pos: int, line: int, col: int) -> NoReturn:
    raise JsonError(
        f"invalid JSON at line {line}, column {col}: {msg}",
        code="format.json.syntax",
        details=_where(text, pos, line, col),
    )


# ----------------------------------------------------------- strict (slow) path


class _Reject(Exception):
    """Carries a JsonError out of a stdlib json hook."""

    def __init__(self, error: JsonError) -> None:
        super().__init__(error.message)
        self.error = error


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Reject(
                    JsonError(
                        f"duplicate key {key!r} in a JSON object",
                        code="format.json.duplicate_key",
                        details={"key": key},
                    )
                )
            seen.add(key)
    return obj


def _parse_int(text: str) -> int:
    digits = len(text) - (text[0] == "-")
    if digits > MAX_INT_DIGITS:
        raise _Reject(
            JsonError(
                f"integer with {digits} digits exceeds the limit of {MAX_INT_DIGITS}",
                code="format.json.big_int",
                details={"digits": digits, "max_digits": MAX_INT_DIGITS},
            )
        )
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Reject(
            JsonError(
                f"number {text[:40]}{'...' if len(text) > 40 else ''} is out of float range",
                code="format.json.number_range",
            )
        )
    return value


def _parse_constant(name: str) -> NoReturn:
    raise _Reject(JsonError(f"{name} is not JSON", code="format.json.nan"))


def _strict(raw: bytes, max_depth: int) -> Any:
    """The standard library parser with hooks: exact ints, named duplicate keys."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JsonError(
            f"invalid UTF-8 at byte {err.start}", code="format.json.utf8", details={"offset": err.start}
        ) from None
    try:
        value = _stdjson.loads(
            text,
            object_pairs_hook=_pairs,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except _Reject as rej:
        raise rej.error from None
    except RecursionError:
        _too_deep(max_depth)
    except _stdjson.JSONDecodeError as exc:
        _syntax(text, exc.msg, exc.pos, exc.lineno, exc.colno)
    _walk_strict(value, max_depth)
    return value


def _walk_strict(value: Any, max_depth: int) -> None:
    """Check depth and lone surrogates of a strict-path result, iteratively."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            depth += 1
            if depth > max_depth:
                _too_deep(max_depth)
            if isinstance(node, dict):
                for key, item in node.items():
                    _check_str(key)
                    stack.append((item, depth))
            else:
                stack.extend((item, depth) for item in node)
        elif isinstance(node, str):
            _check_str(node)


def _check_str(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonError("invalid Unicode escape (lone surrogate) in a string", code="format.json.utf8") from None


# --------------------------------------------------------------------------- encode


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise _Reject(JsonError(f"cannot encode {obj} as JSON", code="format.json.nan"))
        return orjson.Fragment(str(obj))
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def encode(obj: Any, *, sort_keys: bool = False, indent: bool = False) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON.

    Supports what orjson supports (dict, list, str, int, float, bool, None,
    datetime, date, time, UUID, dataclasses, enums) plus ``Decimal`` (written
    as an exact number), sets and tuples. Integers of any size are written
    exactly. ``NaN``/``Infinity`` raise ``format.json.nan`` instead of being
    silently written as ``null``; anything else unencodable raises
    ``format.json.encode``.
    """
    option = (orjson.OPT_SORT_KEYS if sort_keys else 0) | (orjson.OPT_INDENT_2 if indent else 0)
    try:
        out = orjson.dumps(obj, default=_default, option=option)
    except orjson.JSONEncodeError as exc:
        if isinstance(exc.__cause__, _Reject):
            raise exc.__cause__.error from None
        if "64-bit" in str(exc):
            out = _encode_big_ints(obj, option)
        else:
            raise JsonError(f"cannot encode as JSON: {exc}", code="format.json.encode") from None
    if b"null" in out:
        _check_finite(obj)
    return out


def _encode_big_ints(obj: Any, option: int) -> bytes:
    try:
        return orjson.dumps(_fragment_big_ints(obj, 0), default=_default, option=option)
    except orjson.JSONEncodeError as exc:
        if isinstance(exc.__cause__, _Reject):
            raise exc.__cause__.error from None
        raise JsonError(f"cannot encode as JSON: {exc}", code="format.json.encode") from None


_I64_MIN = -(2**63)
_U64_MAX = 2**64 - 1
_ENCODE_MAX_DEPTH = 254  # orjson's own recursion limit


def _fragment_big_ints(obj: Any, depth: int) -> Any:
    if depth > _ENCODE_MAX_DEPTH:
        raise JsonError("value is nested too deeply (or is recursive) to encode", code="format.json.encode")
    if type(obj) is int:
        return orjson.Fragment(str(obj)) if not _I64_MIN <= obj <= _U64_MAX else obj
    if isinstance(obj, dict):
        return {k: _fragment_big_ints(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_fragment_big_ints(v, depth + 1) for v in obj]
    return obj


def _check_finite(obj: Any) -> None:
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, float):
            if not math.isfinite(node):
                raise JsonError(f"cannot encode {node} as JSON", code="format.json.nan")
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)


# --------------------------------------------------------------------------- NDJSON


class NdjsonItem(NamedTuple):
    """One NDJSON line: its 1-based line number, byte offset and value.

    ``value`` is the decoded value, or the :class:`JsonError` that line
    produced; a bad line does not stop the stream.
    """

    line: int
    offset: int
    value: Any

    @property
    def error(self) -> JsonError | None:
        """The error for this line, or ``None`` when it decoded."""
        return self.value if isinstance(self.value, JsonError) else None

    @property
    def ok(self) -> bool:
        """True when the line decoded."""
        return not isinstance(self.value, JsonError)


def iter_ndjson(
    stream: ReadableBinary | IO[bytes] | bytes,
    *,
    max_line_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    start_offset: int = 0,
    start_line: int = 1,
) -> Iterator[NdjsonItem]:
    """Stream newline-delimited JSON from a binary stream (or bytes).

    Yields ``(line, offset, value_or_error)`` for every non-blank line;
    blank lines are skipped but counted. A line over ``max_line_bytes`` is
    skipped without being buffered and yields ``format.json.too_large``.
    To resume after a checkpoint, seek the stream to a line start and pass
    that ``start_offset`` and ``start_line``.
    """
    line_no = start_line
    for line in iter_lines(as_stream(stream), max_line_bytes=max_line_bytes, start_offset=start_offset):
        if line.data is None:
            error = JsonError(
                f"line {line_no} of {line.length} bytes is longer than the limit of {max_line_bytes} bytes",
                code="format.json.too_large",
                details={"line": line_no, "offset": line.offset, "size": line.length},
            )
            yield NdjsonItem(line_no, line.offset, error)
        elif line.data.strip():
            try:
                value = decode(line.data, max_depth=max_depth, max_bytes=max_line_bytes)
            except JsonError as exc:
                value = _in_stream(exc, line_no, line.offset)
            yield NdjsonItem(line_no, line.offset, value)
        line_no += 1


def _in_stream(exc: JsonError, line_no: int, line_offset: int) -> JsonError:
    """Re-anchor a per-line error to the stream: stream line number and byte offset."""
    details = dict(exc.details)
    details["line"] = line_no
    details["offset"] = line_offset + details.get("offset", 0)
    return JsonError(f"NDJSON line {line_no}: {exc.message}", code=exc.code, details=details)


def encode_ndjson(objs: Iterable[Any], *, sort_keys: bool = False) -> bytes:
    """Encode values as NDJSON: one compact JSON document per line, each ending in ``\\n``."""
    return b"".join(encode(obj, sort_keys=sort_keys) + b"\n" for obj in objs)


def write_ndjson(stream: IO[bytes], objs: Iterable[Any], *, sort_keys: bool = False) -> int:
    """Write values to a binary stream as NDJSON, one at a time; return the number written."""
    count = 0
    for obj in objs:
        stream.write(encode(obj, sort_keys=sort_keys) + b"\n")
        count += 1
    return count
