"""The public surface of seamline.formats: exports, error codes, lazy imports."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import seamline.formats as formats
from seamline.core.errors import FatalError, classify
from seamline.formats.errors import CODES, FormatError

EXPORTS = {
    "seamline.formats": {
        "CODES", "AvroError", "CsvError", "FormatError", "JsonError", "ParquetError", "SchemaError", "XmlError",
        "XsltError", "avro", "csv", "json", "parquet", "schema", "xml", "xslt",
    },
    "seamline.formats.errors": {
        "CODES", "AvroError", "CsvError", "FormatError", "JsonError", "ParquetError", "SchemaError", "XmlError",
        "XsltError",
    },
    "seamline.formats.json": {
        "DEFAULT_MAX_BYTES", "DEFAULT_MAX_DEPTH", "MAX_INT_DIGITS", "NdjsonItem", "decode", "decode_each",
        "decode_many", "encode",
        "encode_ndjson", "iter_ndjson", "write_ndjson",
    },
    "seamline.formats.xml": {
        "ATTR_PREFIX", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_DEPTH", "TEXT_KEY", "decode", "encode", "parse_document",
    },
    "seamline.formats.csv": {
        "DEFAULT_MAX_FIELD_CHARS", "DEFAULT_MAX_RECORD_BYTES", "Checkpoint", "Column", "ColumnType", "CsvDialect",
        "CsvReader", "CsvRow", "CsvWriter", "decode", "encode", "neutralize",
    },
    "seamline.formats.avro": {
        "SINGLE_OBJECT_MAGIC", "AvroSchema", "ContainerReader", "decode_single", "encode_single", "parse_schema",
        "single_object_fingerprint", "write_container",
    },
    "seamline.formats.parquet": {"available", "iter_row_groups", "iter_rows", "write_batches"},
    "seamline.formats.schema": {
        "DEFAULT_MAX_ISSUES", "JsonSchema", "SchemaIssue", "XmlSchema", "avro_issues", "validate_avro",
    },
    "seamline.formats.xslt": {"ALLOWED_FUNCTION_NAMESPACES", "DEFAULT_MAX_BYTES", "Stylesheet", "transform"},
}  # fmt: skip

SOURCE = Path(formats.__file__).parent


@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_all_is_pinned_and_importable(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) == EXPORTS[module_name]
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_submodules_are_reachable_as_attributes() -> None:
    assert formats.json.decode(b"[1]") == [1]
    with pytest.raises(AttributeError):
        formats.nope  # noqa: B018


def test_every_code_raised_is_documented_and_every_documented_code_is_used() -> None:
    used: set[str] = set()
    for path in SOURCE.glob("*.py"):
        if path.name != "errors.py":
            used |= set(re.findall(r'"(format\.[a-z_]+\.[a-z_0-9]+)"', path.read_text()))
    assert used - set(CODES) == set()
    assert set(CODES) - used == set()
    assert all(re.fullmatch(r"format\.[a-z]+\.[a-z_0-9]+", code) for code in CODES)


def test_format_errors_are_fatal_and_say_their_code() -> None:
    error = FormatError("bad", code="format.json.nan", details={"line": 1})
    assert isinstance(error, FatalError)
    assert classify(error) is False
    assert str(error) == "[format.json.nan] bad"
    assert error.details == {"line": 1}


def test_importing_the_package_does_not_load_heavy_libraries() -> None:
    code = (
        "import sys, seamline.formats, seamline.formats.parquet;"
        "heavy = {'lxml', 'fastavro', 'pyarrow', 'jsonschema_rs'} & {m.split('.')[0] for m in sys.modules};"
        "print(sorted(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"
