"""In-memory source and sink: flows testable in-process, with programmable failures.

    from seamline.testing.memory import channel
    ch = channel("orders-in")          # what the ``memory`` source reads
    ch.put({"id": 1})
    out = channel("orders-out")        # what the ``memory`` sink wrote
    out.fail_next(RetryableError("503"), times=2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from seamline.config.models import SinkConfig, SourceConfig
from seamline.core.component import BatchError, BuildContext, Delivery, Emit, Sink, Source
from seamline.core.message import Message
from seamline.core.registry import register

__all__ = ["Channel", "MemorySink", "MemorySource", "channel", "reset_channels"]


class Channel:
    """A named in-process queue with an acknowledgement log."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pending: list[Message] = []
        #: handed to a source, neither acked nor nacked yet (a broker would redeliver these)
        self.inflight: dict[str, Message] = {}
        self.written: list[Message] = []
        self.acked: list[str] = []
        self.nacked: list[str] = []
        self.calls = 0
        self._failures: list[tuple[BaseException, int]] = []
        self.fail_when: Callable[[Message], BaseException | None] | None = None
        self.closed = True  # finite by default: the source ends when drained
        #: when set, writes never return (a hung endpoint)
        self.hang = False

    def put(self, body: Any, **kw: Any) -> Message:
        m = body if isinstance(body, Message) else Message(body, **kw)
        self.pending.append(m)
        return m

    def fail_next(self, exc: BaseException, times: int = 1) -> None:
        """The next ``times`` writes raise ``exc``."""
        self._failures.append((exc, times))

    def _next_failure(self) -> BaseException | None:
        if not self._failures:
            return None
        exc, times = self._failures[0]
        if times <= 1:
            self._failures.pop(0)
        else:
            self._failures[0] = (exc, times - 1)
        return exc

    def bodies(self) -> list[Any]:
        return [m.body for m in self.written]


_CHANNELS: dict[str, Channel] = {}


def channel(name: str) -> Channel:
    ch = _CHANNELS.get(name)
    if ch is None:
        ch = _CHANNELS[name] = Channel(name)
    return ch


def reset_channels() -> None:
    _CHANNELS.clear()


class MemorySourceConfig(SourceConfig):
    """Read messages put on an in-process channel (tests and embedding)."""

    channel: str = Field(..., description="Channel name.")


class MemorySinkConfig(SinkConfig):
    """Append messages to an in-process channel (tests and embedding)."""

    channel: str = Field(..., description="Channel name.")


class MemorySource(Source):
    """Broker-like: a message stays in flight until acked; a new run redelivers what was in flight."""

    finite = True

    def __init__(self, cfg: MemorySourceConfig, ctx: BuildContext) -> None:
        self.ch = channel(cfg.channel)
        self.batch_size = ctx.batch_size

    async def open(self) -> None:
        ch = self.ch
        if ch.inflight:  # a previous consumer died without settling these
            ch.pending[:0] = list(ch.inflight.values())
            ch.inflight.clear()

    async def run(self, emit: Emit) -> None:
        ch = self.ch
        while ch.pending:
            batch, ch.pending = ch.pending[: self.batch_size], ch.pending[self.batch_size :]
            for m in batch:
                ch.inflight[m.id] = m
            await emit([Delivery(m, self._acker(m), self._nacker(m)) for m in batch])

    def _acker(self, m: Message) -> Callable[[], None]:
        def ack() -> None:
            self.ch.inflight.pop(m.id, None)
            self.ch.acked.append(m.id)

        return ack

    def _nacker(self, m: Message) -> Callable[[bool], None]:
        def nack(requeue: bool) -> None:
            self.ch.nacked.append(m.id)
            if self.ch.inflight.pop(m.id, None) is not None and requeue:
                self.ch.pending.append(m)

        return nack


class MemorySink(Sink):
    def __init__(self, cfg: MemorySinkConfig, ctx: BuildContext) -> None:
        self.ch = channel(cfg.channel)

    async def write(self, batch: Sequence[Message]) -> None:
        self.ch.calls += 1
        if self.ch.hang:
            import asyncio

            await asyncio.Event().wait()
        exc = self.ch._next_failure()
        if exc is not None:
            raise exc
        if self.ch.fail_when is not None:
            errors: dict[int, BaseException] = {}
            for i, m in enumerate(batch):
                e = self.ch.fail_when(m)
                if e is not None:
                    errors[i] = e
                else:
                    self.ch.written.append(m)
            if errors:
                raise BatchError(errors)
            return
        self.ch.written.extend(batch)


@register("source", "memory", config=MemorySourceConfig, summary="Read from an in-process channel (tests).")
def _memory_source(cfg: MemorySourceConfig, ctx: BuildContext) -> MemorySource:
    return MemorySource(cfg, ctx)


@register("sink", "memory", config=MemorySinkConfig, summary="Write to an in-process channel (tests).")
def _memory_sink(cfg: MemorySinkConfig, ctx: BuildContext) -> MemorySink:
    return MemorySink(cfg, ctx)
