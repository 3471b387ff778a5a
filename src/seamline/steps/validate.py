"""The ``validate`` step: check the body against a JSON Schema, an XSD or an Avro schema."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from seamline.config.models import StepConfig
from seamline.core.component import BuildContext, Step
from seamline.core.errors import FatalError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.formats.errors import SchemaError

__all__ = ["ValidateConfig", "ValidateStep", "ValidationFailed"]


class ValidationFailed(FatalError):
    code = "validate.schema"


class ValidateConfig(StepConfig):
    """Check the body against a schema; a violation dead-letters the message with every error and its path."""

    schema_: str | dict[str, Any] = Field(
        ..., alias="schema", description="The schema: a file path (relative to the flow file) or, for JSON Schema "
        "and Avro, the schema inline."
    )
    kind: Literal["json-schema", "xsd", "avro"] = Field(
        "json-schema", description="Schema language: JSON Schema (data), XSD (XML bodies) or Avro (data)."
    )
    max_errors: int = Field(10, ge=1, description="How many violations to report per message.")
    formats: bool = Field(
        True,
        description="JSON Schema: check `format` (`date-time`, `date`, `email`, `uuid`, `ipv4`, `uri`, ...); "
        "`false` leaves formats as annotations, as the specification does unless asked.",
    )

    @model_validator(mode="after")
    def _check(self) -> ValidateConfig:
        if isinstance(self.schema_, dict):
            if self.kind == "xsd":
                raise ValueError("an XSD is given as a file path")
            if self.kind == "json-schema":
                from seamline.formats.schema import JsonSchema  # (lxml and fastavro: imported when needed)

                try:
                    JsonSchema(self.schema_, validate_formats=self.formats)
                except SchemaError as exc:
                    raise ValueError(exc.message) from None
        return self


class ValidateStep(Step):
    def __init__(self, schema: Any, kind: str, max_errors: int, name: str, *, formats: bool = True,
                 source: Path | None = None) -> None:
        self.schema_kind = kind
        self.max_errors = max_errors
        self.name = name
        if kind == "json-schema":
            from seamline.formats.schema import JsonSchema

            try:
                self.json_schema = JsonSchema(schema, validate_formats=formats, source=source)
            except SchemaError as exc:
                raise FatalError(f"{name}: {exc.message}", code="validate.schema_invalid") from None
        elif kind == "xsd":
            from seamline.formats.schema import XmlSchema

            self.xsd = XmlSchema(schema)
        else:
            from seamline.formats.avro import parse_schema

            self.avro = parse_schema(schema)

    def process(self, message: Message) -> Message:
        if self.schema_kind == "json-schema":
            return self._json(message)
        problems = self._issues(message)
        if not problems:
            return message
        self._raise(problems)
        return message  # pragma: no cover

    def body_function(self) -> Callable[[Any], Any] | None:
        if self.schema_kind != "json-schema":
            return None  # XML and Avro checks read the raw bytes
        is_valid = self.json_schema.is_valid

        def check(body: Any) -> Any:
            if not is_valid(body):
                raise ValueError("invalid")  # the batch goes the whole-message way, which names the problems
            return body

        return check

    def _issues(self, message: Message) -> list[dict[str, str]]:
        if self.schema_kind == "xsd":
            body = message.body
            data = body if isinstance(body, bytes | str) else message.raw
            found = self.xsd.issues(data, limit=self.max_errors)
        else:
            from seamline.formats.schema import avro_issues

            found = avro_issues(message.body, self.avro)[: self.max_errors]
        return [{"path": i.path, "error": i.message} for i in found]

    def _json(self, message: Message) -> Message:
        body = message.body
        if self.json_schema.is_valid(body):
            return message
        found = self.json_schema.issues(body, limit=self.max_errors)
        self._raise([{"path": i.path or "/", "error": i.message} for i in found])
        return message  # pragma: no cover

    def _raise(self, problems: list[dict[str, str]]) -> None:
        text = "; ".join(f"{p['path']}: {p['error']}" for p in problems)
        raise ValidationFailed(f"{self.name}: {text}", details={"violations": problems})


@register(
    "step",
    "validate",
    config=ValidateConfig,
    summary="Validate the body against a JSON Schema, XSD or Avro schema; violations go to the DLQ with paths.",
    examples=("validate: {schema: schemas/order.json}", "validate: {schema: order.xsd, kind: xsd}"),
)
def _validate(cfg: ValidateConfig, ctx: BuildContext) -> ValidateStep:
    if isinstance(cfg.schema_, dict):
        return ValidateStep(cfg.schema_, cfg.kind, cfg.max_errors, "schema", formats=cfg.formats)
    path = Path(ctx.resolve_path(cfg.schema_))
    if cfg.kind == "xsd":
        return ValidateStep(path, "xsd", cfg.max_errors, path.name)
    try:
        schema = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise FatalError(f"cannot load schema {cfg.schema_}: {exc}", code="validate.schema_unreadable") from None
    return ValidateStep(schema, cfg.kind, cfg.max_errors, path.name, formats=cfg.formats, source=path)
