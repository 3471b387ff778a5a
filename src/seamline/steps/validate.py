"""The ``validate`` step: check the body against a JSON Schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
from pydantic import Field, model_validator

from seamline.config.models import StepConfig
from seamline.core.component import BuildContext, Step
from seamline.core.errors import FatalError
from seamline.core.message import Message
from seamline.core.registry import register

__all__ = ["ValidateConfig", "ValidateStep", "ValidationFailed"]


class ValidationFailed(FatalError):
    code = "validate.schema"


class ValidateConfig(StepConfig):
    """Check the body against a JSON Schema; a violation dead-letters the message with every error and its path."""

    schema_: str | dict[str, Any] = Field(
        ..., alias="schema", description="JSON Schema: a file path (relative to the flow file) or the schema inline."
    )
    max_errors: int = Field(10, ge=1, description="How many violations to report per message.")

    @model_validator(mode="after")
    def _check(self) -> ValidateConfig:
        if isinstance(self.schema_, dict):
            try:
                jsonschema_rs.validator_for(self.schema_)
            except Exception as exc:
                raise ValueError(f"invalid JSON Schema: {exc}") from None
        return self


class ValidateStep(Step):
    def __init__(self, schema: dict[str, Any], max_errors: int, name: str) -> None:
        self.validator = jsonschema_rs.validator_for(schema)
        self.max_errors = max_errors
        self.name = name

    def process(self, message: Message) -> Message:
        body = message.body
        if self.validator.is_valid(body):
            return message
        problems: list[dict[str, str]] = []
        for err in self.validator.iter_errors(body):
            path = "/" + "/".join(str(p) for p in err.instance_path)
            problems.append({"path": path, "error": err.message})
            if len(problems) >= self.max_errors:
                break
        text = "; ".join(f"{p['path']}: {p['error']}" for p in problems)
        raise ValidationFailed(f"{self.name}: {text}", details={"violations": problems})


@register(
    "step",
    "validate",
    config=ValidateConfig,
    summary="Validate the body against a JSON Schema; violations go to the DLQ with their JSON paths.",
    examples=("validate: {schema: schemas/order.json}",),
)
def _validate(cfg: ValidateConfig, ctx: BuildContext) -> ValidateStep:
    if isinstance(cfg.schema_, dict):
        return ValidateStep(cfg.schema_, cfg.max_errors, "schema")
    path = ctx.resolve_path(cfg.schema_)
    try:
        schema = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise FatalError(f"cannot load schema {cfg.schema_}: {exc}", code="validate.schema_unreadable") from None
    return ValidateStep(schema, cfg.max_errors, Path(cfg.schema_).name)
