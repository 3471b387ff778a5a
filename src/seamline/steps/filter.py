"""The ``filter`` step: keep messages for which a JSONata condition is true."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field

from seamline.config.models import StepConfig
from seamline.core.component import FILTERED, BuildContext, Step
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.mapping import Expression, compile

__all__ = ["FilterConfig", "FilterStep"]


class FilterConfig(StepConfig):
    """Keep a message when `condition` is true; drop it (journalled as filtered) otherwise."""

    condition: str = Field(..., description="JSONata expression evaluated against the body; truthy keeps it.")


def truthy(value: object) -> bool:
    """JSONata's boolean cast: empty strings, 0, empty arrays/objects and undefined are false."""
    if value is None:
        return False
    if isinstance(value, list):
        return any(truthy(v) for v in value)
    if isinstance(value, dict | str):
        return len(value) > 0
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return True


class FilterStep(Step):
    def __init__(self, expr: Expression) -> None:
        self.expr = expr

    def process(self, message: Message) -> Message | None:
        return message if truthy(self.expr.evaluate(message.body)) else None

    def body_function(self) -> Callable[[Any], Any]:
        evaluate = self.expr.evaluate

        def keep(body: Any) -> Any:
            return body if truthy(evaluate(body)) else FILTERED

        return keep


@register(
    "step",
    "filter",
    config=FilterConfig,
    summary="Keep only messages whose JSONata condition is true.",
    examples=("filter: {condition: \"status != 'cancelled'\"}",),
)
def _filter(cfg: FilterConfig, ctx: BuildContext) -> FilterStep:
    return FilterStep(compile(cfg.condition))
