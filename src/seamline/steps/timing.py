"""The ``throttle`` and ``delay`` steps."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import Field, model_validator

from seamline.config.models import StepConfig
from seamline.config.types import Duration
from seamline.core.component import BuildContext, Defer, Step
from seamline.core.errors import FatalError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.mapping import compile

__all__ = ["DelayConfig", "DelayStep", "ThrottleConfig", "ThrottleStep"]


class ThrottleConfig(StepConfig):
    """Let at most `rate` messages through; the rest wait (back-pressure reaches the source)."""

    rate: str = Field(..., description="e.g. `50/s`, `1000/min`.")
    burst: int | None = Field(None, ge=1, description="Messages that may pass at once (default: one second's worth).")


class ThrottleStep(Step):
    is_async = True

    def __init__(self, cfg: ThrottleConfig, ctx: BuildContext) -> None:
        from seamline.resilience.ratelimit import TokenBucket

        self.bucket = TokenBucket(cfg.rate, burst=cfg.burst, clock=ctx.clock, name=cfg.label or "throttle")

    async def process_async(self, message: Message) -> Message:
        await self.bucket.acquire(1)
        return message


class DelayConfig(StepConfig):
    """Hold each message until a time: a fixed delay (`for`) or a time taken from the message (`until`).
    Waiting messages are kept in the store, so a delay of hours survives a restart."""

    for_: Duration | None = Field(None, alias="for", description="Fixed delay, e.g. `15m`.")
    until: str | None = Field(
        None, description="JSONata expression giving the time to continue: ISO-8601 text or Unix seconds."
    )

    @model_validator(mode="after")
    def _one(self) -> DelayConfig:
        if (self.for_ is None) == (self.until is None):
            raise ValueError("give exactly one of 'for' (a duration) or 'until' (an expression)")
        return self


def _to_epoch(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if t.tzinfo is None:
            raise FatalError(f"delay time {value!r} has no time zone", code="delay.naive_time")
        return t.timestamp()
    raise FatalError(f"delay time must be ISO-8601 text or Unix seconds, got {value!r}", code="delay.bad_time")


class DelayStep(Step):
    def __init__(self, cfg: DelayConfig, ctx: BuildContext) -> None:
        self.clock = ctx.clock
        self.fixed = cfg.for_
        self.expr = compile(cfg.until) if cfg.until is not None else None

    def process(self, message: Message) -> Message:
        now = self.clock.now()
        if self.expr is not None:
            try:
                due = _to_epoch(self.expr.evaluate(message.body))
            except ValueError as exc:
                raise FatalError(f"delay time is not ISO-8601: {exc}", code="delay.bad_time") from None
        else:
            assert self.fixed is not None
            due = now + self.fixed
        if due <= now:
            return message
        # the store keeps it; it continues at the next step when due
        raise Defer(due, reason="delay")


@register(
    "step",
    "throttle",
    config=ThrottleConfig,
    summary="Limit the rate of messages through the flow (token bucket); excess waits.",
    examples=("throttle: {rate: 50/s}",),
)
def _throttle(cfg: ThrottleConfig, ctx: BuildContext) -> ThrottleStep:
    return ThrottleStep(cfg, ctx)


@register(
    "step",
    "delay",
    config=DelayConfig,
    summary="Hold messages for a duration or until a time from the message; durable across restarts.",
    examples=("delay: {for: 15m}", "delay: {until: send_at}"),
)
def _delay(cfg: DelayConfig, ctx: BuildContext) -> DelayStep:
    return DelayStep(cfg, ctx)
