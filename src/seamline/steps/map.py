"""The ``map`` step: transform the body with a JSONata mapping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from seamline.config.models import StepConfig
from seamline.core.component import BuildContext, Step
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.mapping import MapConfig, Mapping, build_mapping

__all__ = ["MapStep", "MapStepConfig"]


class MapStepConfig(StepConfig, MapConfig):
    """Transform the message body with JSONata: one `expression` for the whole document,
    or `fields`, one expression per target field. Lookup tables (`$xref`) and value maps
    (`$translate`) are declared beside them."""


class MapStep(Step):
    def __init__(self, mapping: Mapping, *, portable: bool = False) -> None:
        self.mapping = mapping
        self._apply = mapping.apply
        # only a mapping whose lookups are files or inline tables is rebuilt in a worker process:
        # SQL and HTTP lookups hold connections and credentials that stay in the engine
        self._portable = portable

    def process(self, message: Message) -> Message:
        return message.evolve(self._apply(message.body))

    def body_function(self) -> Callable[[Any], Any] | None:
        return self._apply if self._portable else None


@register(
    "step",
    "map",
    config=MapStepConfig,
    summary="Transform the body with JSONata (whole document or per field), with lookups and value maps.",
    examples=(
        "map: {expression: \"{'id': order_id, 'total': $sum(lines.(qty * price))}\"}",
        "map: {fields: {customer.id: \"$xref('accounts', customer_no)\"}, lookups: {accounts: {csv: ...}}}",
    ),
)
def _map(cfg: MapStepConfig, ctx: BuildContext) -> MapStep:
    portable = all(lk.source_kind in ("inline", "csv") for lk in cfg.lookups.values())
    return MapStep(build_mapping(cfg, base_dir=ctx.base_dir, clock=ctx.clock), portable=portable)
