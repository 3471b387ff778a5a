"""Data formats: decode, encode and validate message bodies, safely.

One module per format, each with an explicit public API:

* :mod:`seamline.formats.json` -- strict JSON and NDJSON (orjson);
* :mod:`seamline.formats.xml` -- hardened XML parsing and the XML <-> dict convention;
* :mod:`seamline.formats.csv` -- dialects, typed columns, per-row errors, checkpoints;
* :mod:`seamline.formats.avro` -- container files and single-object encoding (fastavro);
* :mod:`seamline.formats.parquet` -- row groups in, batches out (pyarrow, optional);
* :mod:`seamline.formats.schema` -- JSON Schema, XSD and Avro validation;
* :mod:`seamline.formats.xslt` -- sandboxed XSLT 1.0.

Every problem with input is a :class:`FormatError` carrying a stable code
from :data:`CODES`. Submodules load on first access, so importing this
package does not import lxml, fastavro or pyarrow.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from seamline.formats.errors import (
    CODES,
    AvroError,
    CsvError,
    FormatError,
    JsonError,
    ParquetError,
    SchemaError,
    XmlError,
    XsltError,
)

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
    "avro",
    "csv",
    "json",
    "parquet",
    "schema",
    "xml",
    "xslt",
]

_SUBMODULES = frozenset({"avro", "csv", "json", "parquet", "schema", "xml", "xslt"})


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
