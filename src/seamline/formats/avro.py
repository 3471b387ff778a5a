"""Avro: schemas, object container files and single-object encoding (fastavro).

* :func:`parse_schema` checks a schema and computes its parsing canonical
  form and CRC-64-AVRO fingerprint.
* :class:`ContainerReader` streams records out of an object container file;
  :func:`write_container` streams records into one.
* :func:`encode_single` / :func:`decode_single` implement the single-object
  encoding (``C3 01`` + 8-byte little-endian fingerprint + binary body) and
  check the fingerprint against the schemas you trust.

Untrusted data is read with two guards fastavro lacks: a writer schema with
arrays of zero-size items (``null``, empty records) is refused, because a
four-byte block count could otherwise make the reader build a list of
billions of ``None`` (``format.avro.schema``); and reads from file objects
are chunked, so a forged block length cannot make Python allocate it up
front. Every failure is an :class:`AvroError` with a ``format.avro.*`` code.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import fastavro
from fastavro import schema as _schema
from fastavro.validation import ValidationError as _FastavroValidationError

from seamline.formats import json as _json
from seamline.formats.errors import AvroError, JsonError

__all__ = [
    "SINGLE_OBJECT_MAGIC",
    "AvroSchema",
    "ContainerReader",
    "decode_single",
    "encode_single",
    "parse_schema",
    "single_object_fingerprint",
    "write_container",
]

#: The two bytes every single-object encoded message starts with.
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_HEADER_LEN = len(SINGLE_OBJECT_MAGIC) + 8
_READ_CHUNK = 1024 * 1024
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


# --------------------------------------------------------------------------- schemas


@dataclass(frozen=True, slots=True)
class AvroSchema:
    """A checked Avro schema.

    ``parsed`` is fastavro's form, ``canonical`` the Parsing Canonical Form
    and ``fingerprint`` its CRC-64-AVRO as the 8 little-endian bytes used by
    the single-object encoding.
    """

    parsed: Any
    canonical: str
    fingerprint: bytes

    @property
    def name(self) -> str | None:
        """The full name of a named schema (record, enum, fixed), else ``None``."""
        parsed = self.parsed
        return parsed.get("name") if isinstance(parsed, dict) else None


def parse_schema(schema: AvroSchema | Mapping[str, Any] | Sequence[Any] | str) -> AvroSchema:
    """Check an Avro schema (a dict, a list for a union, a type name or JSON text).

    Raises ``format.avro.schema`` with fastavro's explanation when invalid.
    """
    if isinstance(schema, AvroSchema):
        return schema
    raw: Any = schema
    if isinstance(raw, str) and raw.lstrip()[:1] in ("{", "[", '"'):
        try:
            raw = _json.decode(raw)
        except JsonError as exc:
            raise AvroError(f"Avro schema is not valid JSON: {exc.message}", code="format.avro.schema") from None
    try:
        parsed = _schema.parse_schema(raw)
        canonical = _schema.to_parsing_canonical_form(raw)
        fingerprint = bytes.fromhex(_schema.fingerprint(canonical, "CRC-64-AVRO"))
    except Exception as exc:  # fastavro raises many types for a bad schema
        reason = _describe(exc)
        if type(exc).__name__ == "UnknownType":
            reason = f"unknown type {reason!r}"
        raise AvroError(f"invalid Avro schema: {reason}", code="format.avro.schema") from None
    return AvroSchema(parsed, canonical, fingerprint)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _zero_size(schema: Any, named: dict[str, Any], visiting: set[str]) -> bool:
    """True when values of ``schema`` can be encoded in zero bytes."""
    if isinstance(schema, str):
        if schema == "null":
            return True
        if schema in _PRIMITIVES:
            return False
        if schema in visiting or schema not in named:
            return False
        return _zero_size(named[schema], named, visiting | {schema})
    if isinstance(schema, list):
        return False  # a union writes its branch index
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "fixed":
            return schema.get("size") == 0
        if kind in ("record", "error"):
            name = schema.get("name", "")
            return all(_zero_size(f.get("type"), named, visiting | {name}) for f in schema.get("fields", []))
        if kind in ("array", "map", "enum"):
            return False
        return _zero_size(kind, named, visiting)
    return False


def _collect_named(schema: Any, named: dict[str, Any]) -> None:
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "error", "enum", "fixed") and "name" in node:
                named[node["name"]] = node
            stack.extend(f.get("type") for f in node.get("fields", []) if isinstance(f, dict))
            for key in ("items", "values"):
                if key in node:
                    stack.append(node[key])
            if isinstance(node.get("type"), dict | list):
                stack.append(node["type"])


def _check_readable(schema: Any) -> None:
    """Refuse schemas whose arrays hold zero-size items (unbounded decoding work)."""
    named: dict[str, Any] = {}
    _collect_named(schema, named)
    stack = [schema]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if node.get("type") == "array" and _zero_size(node.get("items"), named, set()):
                raise AvroError(
                    "the schema has an array of zero-size items (null, empty record), which cannot be read "
                    "safely from untrusted data",
                    code="format.avro.schema",
                )
            stack.extend(f.get("type") for f in node.get("fields", []) if isinstance(f, dict))
            for key in ("items", "values"):
                if key in node:
                    stack.append(node[key])
            if isinstance(node.get("type"), dict | list):
                stack.append(node["type"])


# --------------------------------------------------------------------------- container files


class _ChunkedReader(io.RawIOBase):
    """Wraps a stream so ``read(n)`` never allocates more than what is actually there."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._stream.read()
        parts: list[bytes] = []
        remaining = size
        while remaining > 0:
            chunk = self._stream.read(min(remaining, _READ_CHUNK))
            if not chunk:
                break
            parts.append(chunk)
            remaining -= len(chunk)
        return b"".join(parts)


def _open(source: bytes | bytearray | memoryview | IO[bytes]) -> IO[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    if isinstance(source, io.BytesIO):
        return source
    return _ChunkedReader(source)  # type: ignore[return-value]


def _read_error(exc: Exception, where: str) -> AvroError:
    name = type(exc).__name__
    text = _describe(exc)
    if "codec" in text.lower():
        return AvroError(f"{where}: unsupported codec ({text})", code="format.avro.codec")
    if name == "SchemaResolutionError":
        return AvroError(f"{where}: schemas do not match: {text}", code="format.avro.resolution")
    return AvroError(f"{where}: corrupt Avro data ({name}: {text})", code="format.avro.corrupt")


class ContainerReader:
    """Stream records from an Avro object container file.

    ``source`` is bytes or a binary stream. ``reader_schema`` (optional)
    resolves records to the schema you expect. ``writer_schema``,
    ``metadata`` and ``codec`` describe the file. Iterating yields dicts;
    corrupt data raises :class:`AvroError` at the record where it is found.
    """

    def __init__(
        self,
        source: bytes | bytearray | memoryview | IO[bytes],
        *,
        reader_schema: AvroSchema | Mapping[str, Any] | Sequence[Any] | str | None = None,
    ) -> None:
        reader_parsed = parse_schema(reader_schema).parsed if reader_schema is not None else None
        try:
            self._reader = fastavro.reader(_open(source), reader_schema=reader_parsed)
        except ValueError as exc:
            if "cannot read header" in str(exc):
                raise AvroError(
                    "not an Avro object container file (bad magic or truncated header)", code="format.avro.container"
                ) from None
            raise AvroError(
                f"the container header's schema is invalid: {_describe(exc)}", code="format.avro.schema"
            ) from None
        except Exception as exc:
            raise AvroError(
                f"the container header is invalid: {_describe(exc)}", code="format.avro.container"
            ) from None
        self.metadata: dict[str, str] = dict(self._reader.metadata)
        self.codec: str = self.metadata.get("avro.codec", "null")
        self.writer_schema: AvroSchema = parse_schema(self._reader.writer_schema)
        _check_readable(self.writer_schema.parsed)
        self.records_read = 0

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self._reader)
        while True:
            try:
                record = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                raise _read_error(exc, f"record {self.records_read + 1}") from None
            self.records_read += 1
            yield record


def write_container(
    sink: IO[bytes],
    schema: AvroSchema | Mapping[str, Any] | Sequence[Any] | str,
    records: Iterable[Any],
    *,
    codec: str = "null",
    metadata: Mapping[str, str] | None = None,
    sync_interval: int = 16000,
    validate: bool = True,
) -> int:
    """Write records to ``sink`` as an Avro object container file; return how many.

    Records are consumed lazily and written in blocks. With ``validate`` each
    record is checked against the schema first (``format.avro.invalid``
    names the field); the sink then holds a partial file and should be
    discarded. ``codec`` is ``null``, ``deflate`` or any codec whose library
    is installed (``format.avro.codec`` otherwise).
    """
    checked = parse_schema(schema)
    counter = _Counter(records)
    try:
        fastavro.writer(
            sink,
            checked.parsed,
            counter,
            codec=codec,
            metadata=dict(metadata or {}),
            sync_interval=sync_interval,
            validator=validate,
        )
    except _FastavroValidationError as exc:
        raise _invalid(exc, counter.count) from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        text = _describe(exc)
        if "codec" in text.lower():
            raise AvroError(f"unsupported codec {codec!r}: {text}", code="format.avro.codec") from None
        raise AvroError(
            f"record {counter.count} does not match the schema: {text}", code="format.avro.invalid"
        ) from None
    return counter.count


class _Counter:
    def __init__(self, records: Iterable[Any]) -> None:
        self._records = iter(records)
        self.count = 0

    def __iter__(self) -> _Counter:
        return self

    def __next__(self) -> Any:
        record = next(self._records)
        self.count += 1
        return record


def _invalid(exc: _FastavroValidationError, index: int | None) -> AvroError:
    problems = [f"{e.field}: {e.datum!r} is not {e.schema}" for e in getattr(exc, "errors", ())]
    where = f"record {index}" if index else "record"
    summary = "; ".join(problems[:5]) or _describe(exc)
    return AvroError(
        f"{where} does not match the schema: {summary}",
        code="format.avro.invalid",
        details={"problems": problems},
    )


# --------------------------------------------------------------------------- single-object encoding


def single_object_fingerprint(data: bytes | bytearray | memoryview) -> bytes:
    """The 8-byte schema fingerprint of a single-object encoded message."""
    raw = bytes(data[:_HEADER_LEN])
    if len(raw) < _HEADER_LEN or raw[:2] != SINGLE_OBJECT_MAGIC:
        raise AvroError(
            "not a single-object encoded Avro message (expected marker C3 01 and an 8-byte fingerprint)",
            code="format.avro.single_object_header",
        )
    return raw[2:]


def encode_single(
    record: Any, schema: AvroSchema | Mapping[str, Any] | Sequence[Any] | str, *, validate: bool = True
) -> bytes:
    """Encode one record with the Avro single-object encoding."""
    checked = parse_schema(schema)
    if validate:
        try:
            fastavro.validation.validate(record, checked.parsed, raise_errors=True)
        except _FastavroValidationError as exc:
            raise _invalid(exc, None) from None
    out = io.BytesIO()
    out.write(SINGLE_OBJECT_MAGIC + checked.fingerprint)
    try:
        fastavro.schemaless_writer(out, checked.parsed, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise AvroError(f"record does not match the schema: {_describe(exc)}", code="format.avro.invalid") from None
    return out.getvalue()


def decode_single(
    data: bytes | bytearray | memoryview,
    schemas: AvroSchema | Mapping[str, Any] | str | Iterable[AvroSchema],
    *,
    reader_schema: AvroSchema | Mapping[str, Any] | Sequence[Any] | str | None = None,
) -> Any:
    """Decode a single-object encoded message.

    ``schemas`` is the writer schema, or several :class:`AvroSchema` to pick
    from by fingerprint. A fingerprint that matches none of them raises
    ``format.avro.fingerprint``; a body that is truncated, corrupt or has
    trailing bytes raises ``format.avro.corrupt``.
    """
    fingerprint = single_object_fingerprint(data)
    candidates = _candidates(schemas)
    writer = next((s for s in candidates if s.fingerprint == fingerprint), None)
    if writer is None:
        raise AvroError(
            f"message fingerprint {fingerprint.hex()} matches none of the known schemas "
            f"({', '.join(s.fingerprint.hex() for s in candidates)})",
            code="format.avro.fingerprint",
            details={"fingerprint": fingerprint.hex(), "known": [s.fingerprint.hex() for s in candidates]},
        )
    _check_readable(writer.parsed)
    reader_parsed = parse_schema(reader_schema).parsed if reader_schema is not None else None
    body = io.BytesIO(bytes(data[_HEADER_LEN:]))
    try:
        value = fastavro.schemaless_reader(body, writer.parsed, reader_parsed)
    except Exception as exc:
        raise _read_error(exc, "single-object message") from None
    if body.tell() != len(body.getbuffer()):
        raise AvroError(
            f"single-object message has {len(body.getbuffer()) - body.tell()} trailing bytes after the record",
            code="format.avro.corrupt",
        )
    return value


def _candidates(schemas: AvroSchema | Mapping[str, Any] | str | Iterable[AvroSchema]) -> list[AvroSchema]:
    if isinstance(schemas, AvroSchema | Mapping | str):
        return [parse_schema(schemas)]
    return [parse_schema(s) for s in schemas]
