"""``seamline map``: evaluate a mapping against a document."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from seamline.cli.common import EXIT_CONFIG, EXIT_FAILURE, fail, print_json


def _read(path: Path, fmt: str) -> Any:
    data = path.read_bytes()
    if fmt == "json":
        import orjson

        return orjson.loads(data)
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    if fmt == "xml":
        from seamline.formats import xml as xmlfmt

        return xmlfmt.decode(data)
    fail(f"unknown format {fmt!r} (json, xml or csv)", EXIT_CONFIG)


def map_command(input_path: Path, expr: str | None, mapping: Path | None, fmt: str) -> None:
    from seamline.core.errors import SeamlineError
    from seamline.mapping import MappingError, compile

    if (expr is None) == (mapping is None):
        fail("give exactly one of --expr or --mapping", EXIT_CONFIG)
    text = expr if expr is not None else mapping.read_text(encoding="utf-8")  # type: ignore[union-attr]
    try:
        data = _read(input_path, fmt)
    except (OSError, ValueError, SeamlineError) as exc:
        fail(f"cannot read {input_path}: {exc}", EXIT_FAILURE)
    try:
        result = compile(text).evaluate(data)
    except MappingError as exc:
        fail(f"{exc}\n{exc.caret(text)}", EXIT_FAILURE)
    print_json(result)
