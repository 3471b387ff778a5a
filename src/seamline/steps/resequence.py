"""The ``resequence`` step: deliver messages per key in sequence order.

A message whose predecessor has not arrived yet is parked in the store
(custody moves there and the source is acknowledged); it is released as
soon as the gap closes, or after `timeout` by the gap policy. Messages at or
below what was already passed are stale: dropped, with a journal record.
The next expected number per key is a checkpoint committed with the batch
that settles the message, so a restart neither skips nor repeats a number.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from seamline.config.models import StepConfig
from seamline.config.types import Duration
from seamline.core.component import BuildContext, Drop, Held, Step
from seamline.core.errors import FatalError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.mapping import Expression, compile

__all__ = ["ResequenceConfig", "ResequenceStep"]


class ResequenceConfig(StepConfig):
    """Put messages of the same key back into order by a sequence number or version."""

    key: str = Field(..., description="JSONata expression giving the ordering key, e.g. `order_id`.")
    sequence: str = Field(..., description="JSONata expression giving the sequence number or version.")
    mode: Literal["sequence", "version"] = Field(
        "sequence",
        description="sequence: numbers without gaps, the first being `start`; "
        "version: increasing numbers, gaps allowed (only stale versions are dropped).",
    )
    start: int = Field(1, description="First sequence number of every key (mode: sequence).")
    timeout: Duration = Field(60.0, description="How long a gap may stay open.")
    on_gap: Literal["skip", "wait"] = Field(
        "skip", description="After the timeout: skip the missing numbers and release what waits, or keep waiting."
    )


class ResequenceStep(Step):
    is_async = True

    def __init__(self, cfg: ResequenceConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.key_expr: Expression = compile(cfg.key)
        self.seq_expr: Expression = compile(cfg.sequence)
        self.store = ctx.store
        self.clock = ctx.clock
        self.scope = f"reseq:{ctx.flow}/{cfg.label or 'resequence'}"
        self._next: dict[str, int] = {}
        # key -> seq -> (park_id, message, parked_at)
        self._parked: dict[str, dict[int, tuple[str, Message, float]]] = {}
        # concurrent batches must not interleave between "check expected" and "park"
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        for park_id, key, seq, rec, in await self.store.parked(self.scope):
            m = Message.from_record(rec)
            m.custody = park_id
            self._parked.setdefault(key, {})[int(seq)] = (park_id, m, self.clock.now())

    def _cp(self, key: str) -> str:
        return f"{self.scope}:{key}"

    async def _expected(self, key: str) -> int:
        n = self._next.get(key)
        if n is None:
            stored = await self.store.get_checkpoint(self._cp(key))
            n = int(stored) if stored is not None else (self.cfg.start if self.cfg.mode == "sequence" else -(2**62))
            self._next[key] = n
        return n

    def _pass(self, key: str, seq: int, m: Message) -> Message:
        nxt = seq + 1
        self._next[key] = nxt
        out = m.evolve()
        effects: list[Any] = out.effects or []
        effects.append(("checkpoint", "settled", self._cp(key), nxt))
        out.effects = effects
        return out

    def _release_run(self, key: str) -> list[Message]:
        out: list[Message] = []
        waiting = self._parked.get(key)
        while waiting:
            nxt = self._next[key]
            item = waiting.pop(nxt, None)
            if item is None:
                break
            out.append(self._pass(key, nxt, item[1]))
        if waiting is not None and not waiting:
            self._parked.pop(key, None)
        return out

    async def process_async(self, message: Message) -> Sequence[Message]:
        async with self._lock:
            return await self._process(message)

    def next_due(self) -> float | None:
        if self.cfg.on_gap == "wait":
            return None
        oldest = [t for waiting in self._parked.values() for _p, _m, t in waiting.values()]
        return min(oldest) + self.cfg.timeout if oldest else None

    async def _process(self, message: Message) -> Sequence[Message]:
        body = message.body
        key_v = self.key_expr.evaluate(body)
        seq_v = self.seq_expr.evaluate(body)
        if key_v is None or isinstance(key_v, dict | list):
            raise FatalError("resequence key is missing or not a scalar", code="resequence.key")
        if isinstance(seq_v, bool) or not isinstance(seq_v, int | float) or int(seq_v) != seq_v:
            raise FatalError(f"resequence number must be an integer, got {seq_v!r}", code="resequence.sequence")
        key, seq = str(key_v), int(seq_v)
        expected = await self._expected(key)
        if seq < expected:
            raise Drop(f"stale: {self.cfg.mode} {seq} of {key!r}, already at {expected - 1}")
        if self.cfg.mode == "version":
            if seq in self._parked.get(key, {}):
                raise Drop(f"duplicate version {seq} of {key!r}")
            return [self._pass(key, seq, message)]
        if seq > expected:
            waiting = self._parked.setdefault(key, {})
            if seq in waiting:
                raise Drop(f"duplicate: {seq} of {key!r} is already waiting")
            park_id = uuid.uuid4().hex
            await self.store.park(self.scope, [(park_id, key, float(seq), message.to_record())])
            held = message.evolve()
            held.custody = park_id
            waiting[seq] = (park_id, held, self.clock.now())
            raise Held(f"waiting for {expected} of {key!r} (got {seq})")
        return [self._pass(key, seq, message), *self._release_run(key)]

    async def tick(self, now: float) -> Sequence[Message]:
        if self.cfg.on_gap == "wait":
            return ()
        async with self._lock:
            return self._expire(now)

    def _expire(self, now: float) -> list[Message]:
        out: list[Message] = []
        for key in list(self._parked):
            waiting = self._parked[key]
            if not waiting:
                continue
            oldest = min(t for _p, _m, t in waiting.values())
            if now - oldest < self.cfg.timeout:
                continue
            self._next[key] = min(waiting)
            out.extend(self._release_run(key))
        return out


@register(
    "step",
    "resequence",
    config=ResequenceConfig,
    summary="Restore per-key order by sequence number or version; gaps wait (durably) up to a timeout.",
    examples=("resequence: {key: order_id, sequence: version, timeout: 30s}",),
)
def _resequence(cfg: ResequenceConfig, ctx: BuildContext) -> ResequenceStep:
    return ResequenceStep(cfg, ctx)
