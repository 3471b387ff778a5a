"""The ``decode``, ``encode`` and ``xslt`` steps: bytes to data and back, and XML transforms.

Hostile input (billion laughs, external entities, DTDs, deep nesting,
duplicate keys, formula injection, malformed rows) fails the message with a
stable ``format.*`` code, so it goes to the dead-letter queue with its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from seamline.config.models import ComponentConfig, StepConfig
from seamline.config.types import ByteSize
from seamline.core.component import BuildContext, Step
from seamline.core.errors import FatalError
from seamline.core.message import Message
from seamline.core.registry import register

__all__ = ["DecodeConfig", "DecodeStep", "EncodeConfig", "EncodeStep", "XsltConfig", "XsltStep"]

_TYPES = {
    "json": "application/json",
    "xml": "application/xml",
    "csv": "text/csv",
    "avro": "application/avro",
}


class CsvFormat(ComponentConfig):
    """CSV dialect and column types."""

    delimiter: str = Field(",", min_length=1, max_length=1, description="Field separator.")
    quotechar: str = Field('"', min_length=1, max_length=1, description="Quote character.")
    header: bool = Field(True, description="The first row names the columns.")
    columns: dict[str, str] | None = Field(
        None, description="Column types: int, float, decimal, bool, date, datetime or str."
    )
    neutralize_formulas: bool = Field(True, description="When encoding, defuse cells that start with = + - @.")


class DecodeConfig(StepConfig):
    """Turn the raw body (bytes) into data."""

    format: Literal["json", "xml", "csv", "avro"] = Field(..., description="Format of the body.")
    max_bytes: ByteSize = Field(16 * 2**20, description="Larger bodies are refused (`format.*.too_large`).")
    max_depth: int = Field(64, ge=1, le=1000, description="Deepest nesting accepted.")
    force_list: list[str] = Field(default_factory=list, description="XML elements that are always lists.")
    namespaces: dict[str, str] | None = Field(None, description="XML namespace URI to key prefix.")
    csv: CsvFormat = Field(default_factory=CsvFormat, description="CSV options.")
    split: bool = Field(False, description="CSV: one message per row (ids `<id>#<row>`).")
    avro_schema: str | dict[str, Any] | None = Field(
        None, description="Avro writer schema (file path or inline) for single-object encoded bodies."
    )


class EncodeConfig(StepConfig):
    """Turn the body (data) into bytes of a format."""

    format: Literal["json", "xml", "csv", "avro"] = Field(..., description="Target format.")
    namespaces: dict[str, str] | None = Field(None, description="XML namespace URI to key prefix.")
    pretty: bool = Field(False, description="Indent XML output.")
    csv: CsvFormat = Field(default_factory=CsvFormat, description="CSV options.")
    avro_schema: str | dict[str, Any] | None = Field(None, description="Avro schema for single-object encoding.")

    @model_validator(mode="after")
    def _avro(self) -> EncodeConfig:
        if self.format == "avro" and self.avro_schema is None:
            raise ValueError("format 'avro' needs 'avro_schema'")
        return self


class XsltConfig(StepConfig):
    """Transform an XML body with an XSLT stylesheet (no extensions, no file or network access)."""

    stylesheet: str = Field(..., description="XSLT file, relative to the flow file.")
    params: dict[str, str] = Field(default_factory=dict, description="Stylesheet parameters (string values).")


def _load_schema(ref: str | dict[str, Any] | None, ctx: BuildContext) -> Any:
    if ref is None or isinstance(ref, dict):
        return ref
    try:
        return orjson.loads(ctx.resolve_path(ref).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise FatalError(f"cannot load schema {ref}: {exc}", code="format.schema.bad_schema") from None


def _raw(m: Message) -> bytes:
    body = m.body
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return m.raw


def _dialect(c: CsvFormat) -> Any:
    from seamline.formats.csv import CsvDialect

    return CsvDialect(delimiter=c.delimiter, quotechar=c.quotechar, header=c.header)


class DecodeStep(Step):
    def __init__(self, cfg: DecodeConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.schema = _load_schema(cfg.avro_schema, ctx)

    def process(self, message: Message) -> Message | list[Message]:
        cfg = self.cfg
        data = _raw(message)
        if cfg.format == "json":
            from seamline.formats import json as fjson

            body: Any = fjson.decode(data, max_depth=cfg.max_depth, max_bytes=cfg.max_bytes)
        elif cfg.format == "xml":
            from seamline.formats import xml as fxml

            body = fxml.decode(data, force_list=cfg.force_list, namespaces=cfg.namespaces, max_bytes=cfg.max_bytes,
                               max_depth=max(cfg.max_depth, 1))
        elif cfg.format == "csv":
            from seamline.formats import csv as fcsv

            if len(data) > cfg.max_bytes:
                raise FatalError(f"CSV body of {len(data)} bytes exceeds {cfg.max_bytes}", code="format.csv.too_large")
            body = fcsv.decode(data, dialect=_dialect(cfg.csv), columns=cfg.csv.columns)
            if cfg.split:
                return [message.evolve(row, id=f"{message.id}#{i}", content_type="application/json")
                        for i, row in enumerate(body)]
        else:
            from seamline.formats import avro as favro

            if self.schema is None:
                raise FatalError("decoding Avro needs 'avro_schema'", code="format.avro.schema")
            body = favro.decode_single(data, favro.parse_schema(self.schema))
        return message.evolve(body, content_type="application/json")


class EncodeStep(Step):
    def __init__(self, cfg: EncodeConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.schema = _load_schema(cfg.avro_schema, ctx)

    def process(self, message: Message) -> Message:
        cfg = self.cfg
        body = message.body
        if cfg.format == "json":
            from seamline.formats import json as fjson

            data = fjson.encode(body)
        elif cfg.format == "xml":
            from seamline.formats import xml as fxml

            if not isinstance(body, dict):
                raise FatalError("XML needs an object with one root key", code="format.xml.encode")
            data = fxml.encode(body, namespaces=cfg.namespaces, pretty=cfg.pretty)
        elif cfg.format == "csv":
            from seamline.formats import csv as fcsv

            rows = body if isinstance(body, list) else [body]
            data = fcsv.encode(rows, dialect=_dialect(cfg.csv), neutralize_formulas=cfg.csv.neutralize_formulas)
        else:
            from seamline.formats import avro as favro

            data = favro.encode_single(body, favro.parse_schema(self.schema))
        return message.evolve(data, content_type=_TYPES[cfg.format])


class XsltStep(Step):
    def __init__(self, cfg: XsltConfig, ctx: BuildContext) -> None:
        from seamline.formats.xslt import Stylesheet

        path = ctx.resolve_path(cfg.stylesheet)
        self.sheet = Stylesheet(Path(path))
        self.params = cfg.params

    def process(self, message: Message) -> Message:
        out = self.sheet.transform(_raw(message), params=self.params or None)
        return message.evolve(out, content_type="application/xml")


@register(
    "step",
    "decode",
    config=DecodeConfig,
    summary="Parse the body from JSON, XML, CSV or Avro, safely (limits, no DTDs or entities).",
    examples=("decode: {format: xml, force_list: [line]}",),
)
def _decode(cfg: DecodeConfig, ctx: BuildContext) -> DecodeStep:
    return DecodeStep(cfg, ctx)


@register(
    "step",
    "encode",
    config=EncodeConfig,
    summary="Write the body as JSON, XML, CSV (formula-safe) or Avro bytes.",
    examples=("encode: {format: xml, pretty: true}",),
)
def _encode(cfg: EncodeConfig, ctx: BuildContext) -> EncodeStep:
    return EncodeStep(cfg, ctx)


@register(
    "step",
    "xslt",
    config=XsltConfig,
    summary="Transform an XML body with XSLT (extensions, includes and document() refused).",
    examples=("xslt: {stylesheet: to-erp.xsl}",),
)
def _xslt(cfg: XsltConfig, ctx: BuildContext) -> XsltStep:
    return XsltStep(cfg, ctx)
