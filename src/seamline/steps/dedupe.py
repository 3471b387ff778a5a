"""The ``dedupe`` step: an idempotent receiver. A key seen within the window is dropped.

Keys are remembered in the store when the message is delivered (in the same
transaction), so a duplicate arriving after a restart is still recognised.
A duplicate that arrives while the first copy is still in flight is deferred
briefly and checked again, so concurrent copies cause one side effect.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from seamline.config.models import StepConfig
from seamline.config.types import Duration
from seamline.core.component import BuildContext, Defer, Drop, Step
from seamline.core.errors import FatalError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.mapping import Expression, compile

__all__ = ["DedupeConfig", "DedupeStep"]


class DedupeConfig(StepConfig):
    """Drop messages whose key was already delivered within `window`."""

    key: str = Field(..., description="JSONata expression giving the deduplication key, e.g. `order_id`.")
    window: Duration = Field(86400.0, description="How long a delivered key is remembered (e.g. 24h).")
    scope: str | None = Field(None, description="Share keys between flows by giving them the same scope.")
    recheck: Duration = Field(1.0, description="While a copy is in flight, check a duplicate again after this.")


class DedupeStep(Step):
    is_async = True

    def __init__(self, cfg: DedupeConfig, ctx: BuildContext) -> None:
        self.expr: Expression = compile(cfg.key)
        self.window = cfg.window
        self.recheck = cfg.recheck
        self.scope = f"dedupe:{cfg.scope or ctx.flow + '/' + (cfg.label or 'dedupe')}"
        self.store = ctx.store
        self.clock = ctx.clock
        self._inflight: dict[str, float] = {}
        self.inflight_ttl = 120.0

    def _key(self, m: Message) -> str:
        value = self.expr.evaluate(m.body)
        if value is None or isinstance(value, dict | list):
            raise FatalError(f"dedupe key is {'missing' if value is None else 'not a scalar'}", code="dedupe.key")
        return str(value)

    async def process_async(self, message: Message) -> Message:
        key = self._key(message)
        now = self.clock.now()
        if await self.store.seen(self.scope, [key], now):
            raise Drop(f"duplicate of key {key!r}")
        started = self._inflight.get(key)
        if started is not None and now - started < self.inflight_ttl:
            raise Defer(now + self.recheck, rerun=True, reason=f"a copy with key {key!r} is in flight")
        self._inflight[key] = now
        if len(self._inflight) > 10_000:
            self._inflight = {k: t for k, t in self._inflight.items() if now - t < self.inflight_ttl}
        out = message.evolve()
        effects: list[Any] = out.effects or []
        effects.append(("idem", "delivered", self.scope, key, now + self.window))
        out.effects = effects
        return out


@register(
    "step",
    "dedupe",
    config=DedupeConfig,
    summary="Idempotent receiver: drop messages whose key was delivered within a time window (survives restarts).",
    examples=("dedupe: {key: order_id, window: 24h}",),
)
def _dedupe(cfg: DedupeConfig, ctx: BuildContext) -> DedupeStep:
    return DedupeStep(cfg, ctx)
