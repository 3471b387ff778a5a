"""CSV reading and writing: dialects, typed columns, per-row errors, checkpoints.

Reading streams a binary source record by record. Every record comes back
as a :class:`CsvRow` with its first line number, byte offset and the offset
just after it, so a file source can checkpoint (:attr:`CsvRow.checkpoint`)
and resume (``CsvReader(..., resume=checkpoint)``). A malformed record --
wrong field count, unclosed or stray quote, over-long field or record,
undecodable bytes, a cell that is not of its column's type -- is yielded
as a row with ``error`` set (and its ``raw`` bytes, for a dead-letter
queue); reading goes on after it. Only a bad header stops the reader.

An unclosed quote swallows the following lines until the end of the data,
``max_field_chars`` or ``max_record_bytes``; the whole span is reported as
one bad record, and reading resumes after it (never re-reading lines, so
hostile input stays linear).

Writing neutralises spreadsheet formula injection by default: a string cell
beginning with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a
leading ``'`` (OWASP "CSV Injection"). Numbers are never touched.
"""

from __future__ import annotations

import codecs
import csv as _csv
import io
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import IO, Any, Literal, NamedTuple, NoReturn

from seamline.formats._lines import ReadableBinary, as_stream
from seamline.formats.errors import CsvError

__all__ = [
    "DEFAULT_MAX_FIELD_CHARS",
    "DEFAULT_MAX_RECORD_BYTES",
    "Checkpoint",
    "Column",
    "ColumnType",
    "CsvDialect",
    "CsvReader",
    "CsvRow",
    "CsvWriter",
    "decode",
    "encode",
    "neutralize",
]

#: Default limit for one field, in characters.
DEFAULT_MAX_FIELD_CHARS = 64 * 1024
#: Default limit for one record (all its physical lines), in bytes.
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024

ColumnType = Literal["int", "float", "decimal", "bool", "date", "datetime", "str"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PROBE = "\n\r,;|\t\"'azAZ09 "


# --------------------------------------------------------------------------- dialect


@dataclass(frozen=True, slots=True)
class CsvDialect:
    """How a CSV file is written: delimiter, quoting, header, encoding.

    ``quotechar=None`` disables quoting (then ``escapechar`` is needed to
    write delimiters). ``encoding`` must be ASCII-compatible (UTF-8,
    Latin-1, cp1252, ...). ``line_terminator`` and ``quote_all`` only
    affect writing; reading accepts ``\\n`` and ``\\r\\n``.
    """

    delimiter: str = ","
    quotechar: str | None = '"'
    escapechar: str | None = None
    doublequote: bool = True
    header: bool = True
    skip_initial_space: bool = False
    encoding: str = "utf-8"
    line_terminator: str = "\r\n"
    quote_all: bool = False

    def __post_init__(self) -> None:
        for name in ("delimiter", "quotechar", "escapechar"):
            value = getattr(self, name)
            if value is None and name != "delimiter":
                continue
            if not isinstance(value, str) or len(value) != 1 or value in "\r\n":
                _dialect_error(f"{name} must be one character other than a line break, got {value!r}")
        if self.delimiter in (self.quotechar, self.escapechar):
            _dialect_error("delimiter must differ from quotechar and escapechar")
        if self.quotechar is not None and self.quotechar == self.escapechar:
            _dialect_error("quotechar must differ from escapechar")
        if self.line_terminator not in ("\r\n", "\n", "\r"):
            _dialect_error(f"line_terminator must be \\r\\n, \\n or \\r, got {self.line_terminator!r}")
        try:
            codecs.lookup(self.encoding)
            compatible = _PROBE.encode(self.encoding) == _PROBE.encode("ascii")
        except (LookupError, UnicodeError):
            compatible = False
        if not compatible:
            _dialect_error(f"encoding {self.encoding!r} is unknown or not ASCII-compatible")

    def _csv_options(self) -> dict[str, Any]:
        if self.quotechar is None:
            quoting = _csv.QUOTE_NONE
        else:
            quoting = _csv.QUOTE_ALL if self.quote_all else _csv.QUOTE_MINIMAL
        return {
            "delimiter": self.delimiter,
            "quotechar": self.quotechar,
            "escapechar": self.escapechar,
            "doublequote": self.doublequote,
            "skipinitialspace": self.skip_initial_space,
            "lineterminator": self.line_terminator,
            "quoting": quoting,
            "strict": True,
        }


def _dialect_error(message: str) -> NoReturn:
    raise CsvError(message, code="format.csv.dialect")


# --------------------------------------------------------------------------- columns


@dataclass(frozen=True, slots=True)
class Column:
    """A typed column: ``type``, an optional ``strptime`` ``format`` for dates, ``required``.

    Empty cells become ``None`` for every type but ``str``; with
    ``required=True`` an empty cell is a ``format.csv.type`` error instead.
    """

    type: ColumnType | type = "str"
    format: str | None = None
    required: bool = False


_TYPE_NAMES: dict[Any, ColumnType] = {
    int: "int",
    float: "float",
    Decimal: "decimal",
    bool: "bool",
    date: "date",
    datetime: "datetime",
    str: "str",
}
_INT = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})
_MAX_INT_DIGITS = 4300


def _to_int(text: str, _: str | None) -> int:
    if not _INT.fullmatch(text) or len(text) > _MAX_INT_DIGITS + 1:
        raise ValueError("not an integer")
    return int(text)


def _to_float(text: str, _: str | None) -> float:
    if not _NUMBER.fullmatch(text):
        raise ValueError("not a number")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("out of float range")
    return value


def _to_decimal(text: str, _: str | None) -> Decimal:
    if not _NUMBER.fullmatch(text):
        raise ValueError("not a decimal number")
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueError("not a decimal number") from None


def _to_bool(text: str, _: str | None) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("not a boolean (true/false, yes/no, 1/0)")


def _to_date(text: str, fmt: str | None) -> date:
    return datetime.strptime(text, fmt).date() if fmt else date.fromisoformat(text)


def _to_datetime(text: str, fmt: str | None) -> datetime:
    return datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)


def _to_str(text: str, _: str | None) -> str:
    return text


_CONVERTERS: dict[ColumnType, Callable[[str, str | None], Any]] = {
    "int": _to_int,
    "float": _to_float,
    "decimal": _to_decimal,
    "bool": _to_bool,
    "date": _to_date,
    "datetime": _to_datetime,
    "str": _to_str,
}


def _column(spec: str | type | Column, name: str) -> Column:
    column = spec if isinstance(spec, Column) else Column(type=spec)  # type: ignore[arg-type]
    kind = _TYPE_NAMES.get(column.type, column.type)
    if kind not in _CONVERTERS:
        _dialect_error(f"column {name!r}: unknown type {column.type!r}; use one of {sorted(_CONVERTERS)}")
    return Column(type=kind, format=column.format, required=column.required)


# --------------------------------------------------------------------------- reading


class Checkpoint(NamedTuple):
    """Where to resume reading: a byte offset at a record start and its line number."""

    offset: int
    line: int


@dataclass(slots=True)
class CsvRow:
    """One record: where it is in the file and its values, or the error it produced.

    ``values`` is a dict when field names are known (header or
    ``fieldnames``), else a list; ``None`` when ``error`` is set. ``raw`` holds
    the record's bytes for bad records (``None`` when it was too long to keep).
    """

    line: int
    end_line: int
    offset: int
    end_offset: int
    values: dict[str, Any] | list[Any] | None
    error: CsvError | None = None
    raw: bytes | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when the record was read without error."""
        return self.error is None

    @property
    def checkpoint(self) -> Checkpoint:
        """The position just after this record, to resume from."""
        return Checkpoint(self.end_offset, self.end_line + 1)


class _TooLong(Exception):
    pass


class _Undecodable(Exception):
    def __init__(self, error: UnicodeDecodeError) -> None:
        super().__init__(str(error))
        self.error = error


_SKIP_CHUNK = 64 * 1024


class _Feeder:
    """Feeds text lines to :mod:`csv`, tracking byte offsets and the lines of the current record.

    A line longer than the record limit is skipped to its newline without
    being held in memory.
    """

    def __init__(self, stream: ReadableBinary, encoding: str, max_record_bytes: int, offset: int) -> None:
        self.readline = stream.readline
        self.encoding = encoding
        self.limit = max_record_bytes
        self.offset = offset  # of the next unread byte
        self.start = offset  # of the current record
        self.lines: list[bytes | None] = []  # of the current record; None for a skipped line
        self.size = 0

    def __iter__(self) -> _Feeder:
        return self

    def __next__(self) -> str:
        chunk = self.readline(self.limit + 1)
        if not chunk:
            raise StopIteration
        if not isinstance(chunk, bytes | bytearray):
            raise TypeError("the stream must be opened in binary mode")
        length = len(chunk)
        data: bytes | None = chunk
        if length > self.limit:
            data = None
            while not chunk.endswith(b"\n"):
                chunk = self.readline(_SKIP_CHUNK)
                if not chunk:
                    break
                length += len(chunk)
        at_start = self.offset == 0
        self.offset += length
        self.size += length
        self.lines.append(data)
        if data is None or self.size > self.limit:
            raise _TooLong
        try:
            text = data.decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise _Undecodable(exc) from None
        if at_start and text.startswith("\ufeff"):
            text = text[1:]
        return text

    def take(self) -> tuple[int, int, list[bytes | None]]:
        """Start offset, end offset and lines of the record just read; start the next one."""
        taken = (self.start, self.offset, self.lines)
        self.start, self.lines, self.size = self.offset, [], 0
        return taken


class _Record(NamedTuple):
    fields: list[str] | None
    error: CsvError | None
    line: int
    end_line: int
    offset: int
    end_offset: int
    lines: list[bytes | None]

    @property
    def raw(self) -> bytes | None:
        """The record's bytes, or ``None`` when a line was too long to keep."""
        if None in self.lines:
            return None
        return b"".join(data for data in self.lines if data is not None)


def _csv_error(exc: _csv.Error, where: str) -> CsvError:
    message = str(exc)
    if "field larger than field limit" in message:
        return CsvError(f"{where}: a field is longer than the limit", code="format.csv.field_too_long")
    if "unexpected end of data" in message:
        return CsvError(f"{where}: a quoted field is never closed", code="format.csv.quote")
    if "expected after" in message:
        return CsvError(f"{where}: unexpected character after a closing quote ({message})", code="format.csv.quote")
    return CsvError(f"{where}: {message}", code="format.csv.syntax")


def _failure(failure: Exception, where: str, dialect: CsvDialect, max_record_bytes: int) -> CsvError:
    if isinstance(failure, _csv.Error):
        return _csv_error(failure, where)
    if isinstance(failure, _TooLong):
        return CsvError(
            f"{where}: the record is longer than the limit of {max_record_bytes} bytes",
            code="format.csv.record_too_long",
        )
    assert isinstance(failure, _Undecodable)
    return CsvError(
        f"{where}: bytes cannot be decoded as {dialect.encoding} ({failure.error.reason})",
        code="format.csv.encoding",
    )


def _records(
    stream: ReadableBinary,
    dialect: CsvDialect,
    max_record_bytes: int,
    start_offset: int,
    start_line: int,
) -> Iterator[_Record]:
    """Parse records, turning every failure into an error record; skip blank lines."""
    feeder = _Feeder(stream, dialect.encoding, max_record_bytes, start_offset)
    options = dialect._csv_options()
    del options["lineterminator"]
    reader = _csv.reader(feeder, **options)
    line_no = start_line
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except (_csv.Error, _TooLong, _Undecodable) as exc:
            offset, end_offset, lines = feeder.take()
            end_line = line_no + len(lines) - 1
            where = f"line {line_no}" if end_line == line_no else f"lines {line_no}-{end_line}"
            error = _failure(exc, where, dialect, max_record_bytes)
            error.details.update(line=line_no, end_line=end_line, offset=offset)
            yield _Record(None, error, line_no, end_line, offset, end_offset, lines)
            line_no = end_line + 1
            continue
        offset, end_offset, lines = feeder.take()
        end_line = line_no + len(lines) - 1
        if fields:
            yield _Record(fields, None, line_no, end_line, offset, end_offset, lines)
        line_no = end_line + 1


class CsvReader:
    """Stream records from a binary CSV source as :class:`CsvRow` objects.

    ``columns`` maps field names to types (``"int"``, ``"float"``,
    ``"decimal"``, ``"bool"``, ``"date"``, ``"datetime"``, ``"str"``, the
    Python types, or :class:`Column`); other fields stay strings.
    ``fieldnames`` names the fields when there is no header (or replaces
    it). With ``resume``, reading starts at that checkpoint (the source must
    be seekable; the header is read from the start first).

    A bad header raises :class:`CsvError` (``format.csv.header``); every other
    problem is reported on the row it concerns.
    """

    def __init__(
        self,
        source: bytes | ReadableBinary | IO[bytes],
        *,
        dialect: CsvDialect | None = None,
        columns: Mapping[str, str | type | Column] | None = None,
        fieldnames: Sequence[str] | None = None,
        max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        resume: Checkpoint | None = None,
    ) -> None:
        self.dialect = dialect or CsvDialect()
        self._stream = as_stream(source)
        self._columns = {name: _column(spec, name) for name, spec in (columns or {}).items()}
        self._max_field_chars = max_field_chars
        self._max_record_bytes = max_record_bytes
        self._resume = resume
        self.fieldnames: list[str] | None = list(fieldnames) if fieldnames is not None else None
        if self.fieldnames is not None:
            self._check_names(self.fieldnames, 0)
        if self._columns and self.fieldnames is None and not self.dialect.header:
            _dialect_error("typed columns need field names: a header or fieldnames=")

    def _check_names(self, names: list[str], line: int) -> None:
        where = f"header (line {line})" if line else "fieldnames"
        seen: set[str] = set()
        for index, name in enumerate(names, 1):
            if not name:
                raise CsvError(f"{where}: field {index} has no name", code="format.csv.header")
            if name in seen:
                raise CsvError(f"{where}: field name {name!r} appears twice", code="format.csv.header")
            seen.add(name)
        missing = [name for name in self._columns if name not in seen]
        if missing:
            raise CsvError(f"{where}: typed columns {missing} are not in it", code="format.csv.header")

    def _read_header(self, records: Iterator[_Record]) -> _Record | None:
        record = next(records, None)
        if record is None:
            return None
        if record.error is not None or record.fields is None:
            raise CsvError(
                f"header is malformed: {record.error.message if record.error else 'empty'}",
                code="format.csv.header",
                details={"line": record.line},
            )
        names = list(record.fields)
        if self.fieldnames is None:
            self._check_names(names, record.line)
            self.fieldnames = names
        return record

    def __iter__(self) -> Iterator[CsvRow]:
        start_offset, start_line = 0, 1
        if self._resume is not None and self._resume.offset > 0:
            seek = getattr(self._stream, "seek", None)
            if seek is None:
                raise TypeError("resuming needs a seekable stream")
            if self.dialect.header:
                seek(0)
                self._read_header(_records(self._stream, self.dialect, self._max_record_bytes, 0, 1))
            seek(self._resume.offset)
            start_offset, start_line = self._resume
        records = _records(self._stream, self.dialect, self._max_record_bytes, start_offset, start_line)
        if self.dialect.header and start_offset == 0 and self._read_header(records) is None:
            return
        expected = len(self.fieldnames) if self.fieldnames is not None else None
        for record in records:
            if record.error is not None or record.fields is None:
                yield self._bad(record, record.error)
                continue
            fields = record.fields
            if expected is None:
                expected = len(fields)
            problem = self._check_fields(fields, expected, record)
            if problem is not None:
                yield self._bad(record, problem)
                continue
            try:
                values = self._convert(fields, record)
            except CsvError as exc:
                yield self._bad(record, exc)
                continue
            yield CsvRow(record.line, record.end_line, record.offset, record.end_offset, values)

    def _bad(self, record: _Record, error: CsvError | None) -> CsvRow:
        if error is None:  # pragma: no cover - records without fields always carry an error
            error = CsvError(f"{self._where(record)}: unreadable record", code="format.csv.syntax")
        return CsvRow(record.line, record.end_line, record.offset, record.end_offset, None, error, record.raw)

    def _where(self, record: _Record) -> str:
        if record.end_line == record.line:
            return f"line {record.line}"
        return f"lines {record.line}-{record.end_line}"

    def _details(self, record: _Record, **extra: Any) -> dict[str, Any]:
        return {"line": record.line, "end_line": record.end_line, "offset": record.offset, **extra}

    def _check_fields(self, fields: list[str], expected: int, record: _Record) -> CsvError | None:
        if len(fields) != expected:
            return CsvError(
                f"{self._where(record)}: {len(fields)} fields, expected {expected}",
                code="format.csv.field_count",
                details=self._details(record, fields=len(fields), expected=expected),
            )
        if max(map(len, fields)) > self._max_field_chars:
            index = next(i for i, text in enumerate(fields) if len(text) > self._max_field_chars)
            name = self.fieldnames[index] if self.fieldnames else index + 1
            return CsvError(
                f"{self._where(record)}: field {name!r} has {len(fields[index])} characters, "
                f"more than the limit of {self._max_field_chars}",
                code="format.csv.field_too_long",
                details=self._details(record, column=name, size=len(fields[index])),
            )
        return None

    def _convert(self, fields: list[str], record: _Record) -> dict[str, Any] | list[Any]:
        if self.fieldnames is None:
            return list(fields)
        values: dict[str, Any] = dict(zip(self.fieldnames, fields, strict=True))
        if not self._columns:
            return values
        for name, column in self._columns.items():
            text = values[name]
            if text == "" and (column.type != "str" or column.required):
                if column.required:
                    raise CsvError(
                        f"{self._where(record)}: column {name!r} is required but empty",
                        code="format.csv.type",
                        details=self._details(record, column=name),
                    )
                values[name] = None
                continue
            try:
                values[name] = _CONVERTERS[column.type](text, column.format)  # type: ignore[index]
            except ValueError as exc:
                shown = text if len(text) <= 40 else text[:40] + "..."
                raise CsvError(
                    f"{self._where(record)}: column {name!r}: {shown!r} is not a valid {column.type} ({exc})",
                    code="format.csv.type",
                    details=self._details(record, column=name, type=column.type),
                ) from None
        return values


def decode(
    data: bytes,
    *,
    dialect: CsvDialect | None = None,
    columns: Mapping[str, str | type | Column] | None = None,
    fieldnames: Sequence[str] | None = None,
    max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> list[dict[str, Any]] | list[list[Any]]:
    """Read a whole CSV body; raise the first row error instead of reporting it."""
    rows: list[Any] = []
    reader = CsvReader(
        data,
        dialect=dialect,
        columns=columns,
        fieldnames=fieldnames,
        max_field_chars=max_field_chars,
        max_record_bytes=max_record_bytes,
    )
    for row in reader:
        if row.error is not None:
            raise row.error
        rows.append(row.values)
    return rows


# --------------------------------------------------------------------------- writing


def neutralize(value: str) -> str:
    """Prefix ``'`` to a cell a spreadsheet would run as a formula (OWASP CSV injection)."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | Decimal):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    raise CsvError(f"cannot write a value of type {type(value).__name__}", code="format.csv.encode")


class CsvWriter:
    """Write rows to a binary stream, one record at a time.

    Rows are mappings (written in ``fieldnames`` order; a key not in
    ``fieldnames`` is an error, a missing one an empty cell) or sequences.
    The header is written before the first row when ``dialect.header`` is
    true and field names are known (given, or the keys of the first mapping).
    ``neutralize_formulas`` (on by default) defuses formula injection.
    """

    def __init__(
        self,
        stream: IO[bytes],
        *,
        fieldnames: Sequence[str] | None = None,
        dialect: CsvDialect | None = None,
        neutralize_formulas: bool = True,
    ) -> None:
        self.dialect = dialect or CsvDialect()
        self.fieldnames = list(fieldnames) if fieldnames is not None else None
        self.neutralize_formulas = neutralize_formulas
        self._stream = stream
        self._buffer = io.StringIO()
        self._writer = _csv.writer(self._buffer, **self.dialect._csv_options())
        self._started = False
        self.rows_written = 0

    def _emit(self, cells: Iterable[Any]) -> None:
        cells = [_cell(value) for value in cells]
        if self.neutralize_formulas:
            cells = [neutralize(value) if isinstance(value, str) else value for value in cells]
        self._buffer.seek(0)
        self._buffer.truncate()
        try:
            self._writer.writerow(cells)
        except _csv.Error as exc:
            raise CsvError(f"cannot write row {self.rows_written + 1}: {exc}", code="format.csv.encode") from None
        try:
            data = self._buffer.getvalue().encode(self.dialect.encoding)
        except UnicodeEncodeError as exc:
            raise CsvError(
                f"row {self.rows_written + 1}: {exc.object[exc.start : exc.end]!r} cannot be written "
                f"as {self.dialect.encoding}",
                code="format.csv.encode",
            ) from None
        self._stream.write(data)

    def _start(self, row: Mapping[str, Any] | Sequence[Any]) -> None:
        self._started = True
        if self.fieldnames is None and isinstance(row, Mapping):
            self.fieldnames = [str(key) for key in row]
        if self.dialect.header and self.fieldnames is not None:
            self._emit(self.fieldnames)

    def writerow(self, row: Mapping[str, Any] | Sequence[Any]) -> None:
        """Write one row (a mapping or a sequence of cells)."""
        if not self._started:
            self._start(row)
        if isinstance(row, Mapping):
            if self.fieldnames is None:  # pragma: no cover - set by _start
                raise CsvError("mapping rows need fieldnames", code="format.csv.encode")
            unknown = [key for key in row if key not in self.fieldnames]
            if unknown:
                raise CsvError(
                    f"row {self.rows_written + 1}: fields {unknown} are not in fieldnames", code="format.csv.encode"
                )
            self._emit(row.get(name) for name in self.fieldnames)
        elif isinstance(row, str | bytes):
            raise CsvError(
                f"row {self.rows_written + 1}: a row must be a mapping or a sequence", code="format.csv.encode"
            )
        else:
            self._emit(row)
        self.rows_written += 1

    def writerows(self, rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> int:
        """Write every row; return how many were written."""
        count = 0
        for row in rows:
            self.writerow(row)
            count += 1
        return count

    def finish(self) -> None:
        """Write the header if no row was written (so an empty export still has one)."""
        if not self._started and self.dialect.header and self.fieldnames is not None:
            self._started = True
            self._emit(self.fieldnames)


def encode(
    rows: Iterable[Mapping[str, Any] | Sequence[Any]],
    *,
    fieldnames: Sequence[str] | None = None,
    dialect: CsvDialect | None = None,
    neutralize_formulas: bool = True,
) -> bytes:
    """Write rows to CSV bytes (see :class:`CsvWriter`)."""
    out = io.BytesIO()
    writer = CsvWriter(out, fieldnames=fieldnames, dialect=dialect, neutralize_formulas=neutralize_formulas)
    writer.writerows(rows)
    writer.finish()
    return out.getvalue()
