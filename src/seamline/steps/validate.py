"""The ``validate`` step: check the body against a JSON Schema, an XSD or an Avro schema."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import jsonschema_rs
import orjson
from pydantic import Field, model_validator

from seamline.config.models import StepConfig
from seamline.core.component import BuildContext, Step
from seamline.core.errors import FatalError
from seamline.core.message import Message
from seamline.core.registry import register

__all__ = ["ValidateConfig", "ValidateStep", "ValidationFailed", "json_validator"]


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
                try:
                    json_validator(self.schema_, formats=self.formats)
                except Exception as exc:
                    raise ValueError(f"invalid JSON Schema: {exc}") from None
        return self


def _local_only(uri: str) -> Any:
    """``$ref`` to another schema: a file (beside the schema, or anywhere by path); never the network."""
    if uri.startswith("file:"):
        path = Path(unquote(urlparse(uri).path))
        try:
            return orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"cannot load {path}: {exc}") from None
    raise ValueError(f"the schema refers to {uri}: only schema files may be referred to, nothing is fetched")


def json_validator(schema: Any, *, formats: bool, source: Path | None = None) -> Any:
    """A JSON Schema validator; relative ``$ref`` resolve against ``source`` (the schema's file)."""
    return jsonschema_rs.validator_for(
        schema, validate_formats=formats, retriever=_local_only,
        base_uri=source.resolve().as_uri() if source is not None else None,
    )


class ValidateStep(Step):
    def __init__(self, schema: Any, kind: str, max_errors: int, name: str, *, formats: bool = True,
                 source: Path | None = None) -> None:
        self.schema_kind = kind
        self.max_errors = max_errors
        self.name = name
        if kind == "json-schema":
            try:
                self.validator = json_validator(schema, formats=formats, source=source)
            except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
                raise FatalError(f"{name}: invalid JSON Schema: {str(exc).splitlines()[0]}",
                                 code="validate.schema_invalid") from None
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
        is_valid = self.validator.is_valid

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
        if self.validator.is_valid(body):
            return message
        problems: list[dict[str, str]] = []
        for err in self.validator.iter_errors(body):
            path = "/" + "/".join(str(p) for p in err.instance_path)
            problems.append({"path": path, "error": err.message})
            if len(problems) >= self.max_errors:
                break
        self._raise(problems)
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
