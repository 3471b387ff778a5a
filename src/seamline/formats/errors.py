"""Errors raised by :mod:`seamline.formats`.

Every problem with input data is a :class:`FormatError` (a
:class:`~seamline.core.errors.FatalError`: retrying the same bytes cannot
help, so the message goes to the dead-letter queue). Each error carries a
stable dotted ``code`` listed in :data:`CODES`, a one-line message that says
where the problem is, and ``details`` with machine-readable context
(``line``, ``column``, ``offset``, ``path``, ...).

The subclasses only group codes by format so callers can catch, say, every
XML problem with ``except XmlError``; the ``code`` is what to match on.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from seamline.core.errors import FatalError

__all__ = [
    "CODES",
    "AvroError",
    "CsvError",
    "FormatError",
    "JsonError",
    "ParquetError",
    "SchemaError",
    "XmlError",
    "XsltError",
]

#: Every code a format error can carry, with what it means.
CODES: MappingProxyType[str, str] = MappingProxyType(
    {
        # JSON
        "format.json.too_large": "the document is larger than max_bytes",
        "format.json.utf8": "the bytes are not valid UTF-8 (or a string escape is a lone surrogate)",
        "format.json.syntax": "the text is not valid JSON; details give line, column and byte offset",
        "format.json.nan": "NaN, Infinity or -Infinity appear (not JSON); also raised when encoding them",
        "format.json.depth": "arrays/objects are nested deeper than max_depth",
        "format.json.duplicate_key": "an object has the same key twice",
        "format.json.big_int": "an integer has more than 4,300 digits",
        "format.json.number_range": "a number is too large to be represented as a float",
        "format.json.encode": "a value cannot be encoded as JSON (unsupported type, non-string key)",
        # XML
        "format.xml.too_large": "the document is larger than max_bytes",
        "format.xml.syntax": "the document is not well-formed XML; details give line and column",
        "format.xml.dtd_forbidden": "the document has a DOCTYPE declaration",
        "format.xml.entity_forbidden": "the document declares entities (billion laughs, quadratic blowup)",
        "format.xml.external_forbidden": "the document refers to an external DTD or external entity",
        "format.xml.depth": "elements are nested deeper than max_depth",
        "format.xml.encode": "a dict cannot be encoded as XML (bad name, value or structure)",
        # CSV
        "format.csv.dialect": "the dialect options are invalid",
        "format.csv.header": "the header row is missing, malformed or does not match the columns",
        "format.csv.field_count": "a row has a different number of fields than the header",
        "format.csv.quote": "a quoted field is malformed or never closed",
        "format.csv.syntax": "a record is malformed in another way (for example a stray line break)",
        "format.csv.field_too_long": "a field is longer than max_field_chars",
        "format.csv.record_too_long": "a record is longer than max_record_bytes",
        "format.csv.encoding": "a line cannot be decoded with the dialect's encoding",
        "format.csv.type": "a cell cannot be converted to its column's type",
        "format.csv.encode": "a row cannot be written (unknown field, unsupported value)",
        # Avro
        "format.avro.schema": "the Avro schema is invalid or unsafe to read",
        "format.avro.container": "the bytes are not an Avro object container file",
        "format.avro.codec": "the container uses a compression codec that is not available",
        "format.avro.corrupt": "the Avro data is truncated or corrupt",
        "format.avro.resolution": "the writer schema cannot be resolved to the reader schema",
        "format.avro.invalid": "a record does not match the Avro schema",
        "format.avro.single_object_header": "the bytes do not start with the single-object marker C3 01",
        "format.avro.fingerprint": "the single-object fingerprint does not match any known schema",
        # Parquet
        "format.parquet.unavailable": "pyarrow is not installed (install the 'parquet' extra)",
        "format.parquet.corrupt": "the bytes are not a readable Parquet file",
        "format.parquet.invalid": "records cannot be written with the Parquet schema",
        # schemas
        "format.schema.bad_schema": "the schema itself is invalid",
        "format.schema.ref_forbidden": "the schema refers to a resource outside what is allowed",
        "format.schema.invalid": "the instance does not conform to the schema; details list the issues",
        # XSLT
        "format.xslt.bad_stylesheet": "the stylesheet cannot be compiled",
        "format.xslt.extension_forbidden": "the stylesheet uses extension elements or extension functions",
        "format.xslt.include_forbidden": "the stylesheet uses xsl:include or xsl:import",
        "format.xslt.access_forbidden": "the stylesheet reads or writes documents, files or the network",
        "format.xslt.runtime": "the transformation failed (xsl:message terminate, runtime error)",
    }
)


class FormatError(FatalError):
    """Input data could not be decoded, encoded or validated.

    ``code`` is one of :data:`CODES`; ``details`` says where (line, column,
    byte offset, path) when that is known.
    """

    code = "format.error"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code, details=details)


class JsonError(FormatError):
    """A JSON or NDJSON document was rejected."""

    code = "format.json.syntax"


class XmlError(FormatError):
    """An XML document was rejected or a dict could not be encoded as XML."""

    code = "format.xml.syntax"


class CsvError(FormatError):
    """A CSV record was rejected or could not be written."""

    code = "format.csv.quote"


class AvroError(FormatError):
    """Avro data or an Avro schema was rejected."""

    code = "format.avro.corrupt"


class ParquetError(FormatError):
    """Parquet data was rejected, or Parquet support is not installed."""

    code = "format.parquet.corrupt"


class SchemaError(FormatError):
    """A schema is invalid, or an instance does not conform to it.

    For ``format.schema.invalid``, ``details["issues"]`` is a list of
    ``{"path": ..., "message": ...}`` dicts and :attr:`issues` holds the
    :class:`~seamline.formats.schema.SchemaIssue` objects.
    """

    code = "format.schema.invalid"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        issues: list[Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.issues: list[Any] = list(issues or [])


class XsltError(FormatError):
    """A stylesheet was rejected or a transformation failed."""

    code = "format.xslt.bad_stylesheet"
