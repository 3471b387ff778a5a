"""Isolation around a sink: circuit breaker, rate limit, bulkhead and timeout.

While the breaker is open the writer *waits* (no attempt is spent, nothing
is dropped); the bounded queue then slows the source down. A write that
exceeds its timeout fails as retryable, so a hung endpoint holds nothing
longer than that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from seamline.core.component import BatchError, Sink, _confirmed
from seamline.core.errors import RetryableError, classify
from seamline.core.message import Message

__all__ = ["SinkGuard", "SinkTimeout"]


class SinkTimeout(RetryableError):
    code = "sink.timeout"


class SinkGuard:
    """Wraps ``sink.write`` with the protections its config asks for."""

    def __init__(self, sink: Sink, cfg: Any, *, flow: str, breakers: Any, limiters: Any) -> None:
        self.sink = sink
        self.endpoint = sink.endpoint or f"{flow}/{sink.label}"
        # a sink that guards itself times out per request, and must not lose a breaker wait to a timeout
        self.timeout: float | None = None if sink.guards_itself else getattr(cfg, "timeout", None)
        concurrency = getattr(cfg, "concurrency", None)
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        self.breaker: Any = None
        self.bucket: Any = None
        self.chunk: int | None = None
        if sink.guards_itself:
            return
        bcfg = getattr(cfg, "breaker", None)
        if bcfg is not None and breakers is not None:
            try:
                breakers.configure(self.endpoint, bcfg.config())
            except ValueError:
                pass  # another sink on the same endpoint configured it first
            self.breaker = breakers.get(self.endpoint)
        rcfg = getattr(cfg, "rate_limit", None)
        if rcfg is not None and limiters is not None:
            self.bucket = limiters.configure(self.endpoint, rcfg.rate, burst=rcfg.burst)
            self.chunk = max(1, int(self.bucket.burst))

    async def write(self, batch: Sequence[Message]) -> None:
        if self.chunk is None or len(batch) <= self.chunk:
            await self._write(batch)
            return
        errors: dict[int, BaseException] = {}
        for start in range(0, len(batch), self.chunk):
            part = batch[start : start + self.chunk]
            try:
                await self._write(part)
            except BatchError as be:
                errors.update({start + i: e for i, e in be.errors.items()})
            except Exception as exc:
                errors.update({start + i: exc for i in range(len(part))})
        if errors:
            raise BatchError(errors)

    async def write_lines(self, data: bytes, count: int) -> None:
        """``count`` records as NDJSON lines through ``sink.write_lines``, with the same protections
        (the rate limit takes the whole batch at once)."""
        await self._guarded(count, lambda: self.sink.write_lines(data, count))

    async def _write(self, batch: Sequence[Message]) -> None:
        await self._guarded(len(batch), lambda: self.sink.write(batch))

    async def submit(self, batch: Sequence[Message]) -> Callable[[], Awaitable[None]]:
        """``sink.submit`` with the same protections as ``write``: the breaker and the rate limit admit
        the batch before it is handed over; the bulkhead, the timeout and the breaker's verdict apply to
        the wait for its confirmation (which the returned function runs). A sink that is not pipelined,
        or a batch the rate limit splits, is written whole here."""
        if not self.sink.pipelined or (self.chunk is not None and len(batch) > self.chunk):
            await self.write(batch)
            return _confirmed
        return await self._handed(len(batch), lambda: self.sink.submit(batch))

    async def submit_encoded(self, payload: Any, count: int) -> Callable[[], Awaitable[None]]:
        """``sink.submit_encoded`` (records a worker encoded) with the protections of ``submit``; the
        rate limit takes the whole batch at once."""
        return await self._handed(count, lambda: self.sink.submit_encoded(payload, count))

    async def _handed(
        self, size: int, hand_over: Callable[[], Awaitable[Callable[[], Awaitable[None]]]]
    ) -> Callable[[], Awaitable[None]]:
        await self._admit(size)
        try:
            confirm = await hand_over()
        except asyncio.CancelledError:
            if self.breaker is not None:
                self.breaker.release()
            raise
        except Exception as exc:
            failed = exc

            async def confirm() -> None:
                raise failed

        return lambda: self._checked(size, confirm)

    async def _guarded(self, size: int, call: Callable[[], Awaitable[None]]) -> None:
        await self._admit(size)
        await self._checked(size, call)

    async def _admit(self, size: int) -> None:
        breaker = self.breaker
        if breaker is not None:
            while True:
                await breaker.wait_until_closed_or_probe()
                if breaker.allow():
                    break
        if self.bucket is not None:
            await self.bucket.acquire(size)

    async def _checked(self, size: int, call: Callable[[], Awaitable[None]]) -> None:
        breaker = self.breaker
        try:
            if self._slots is not None:
                async with self._slots:
                    await self._call(call)
            else:
                await self._call(call)
        except asyncio.CancelledError:
            if breaker is not None:
                breaker.release()
            raise
        except BatchError as be:
            if breaker is not None:
                if len(be.errors) == size and any(classify(e) for e in be.errors.values()):
                    breaker.record_failure(next(iter(be.errors.values())))
                else:
                    breaker.record_success()
            self._penalize(be.errors.values())
            raise
        except Exception as exc:
            if breaker is not None:
                if classify(exc):
                    breaker.record_failure(exc)
                else:
                    breaker.record_success()
            self._penalize([exc])
            raise
        else:
            if breaker is not None:
                breaker.record_success()

    async def _call(self, call: Callable[[], Awaitable[None]]) -> None:
        if self.timeout is None:
            await call()
            return
        try:
            await asyncio.wait_for(call(), self.timeout)
        except TimeoutError:
            raise SinkTimeout(f"sink '{self.sink.label}' did not answer within {self.timeout:g}s") from None

    def _penalize(self, errors: Any) -> None:
        if self.bucket is None:
            return
        for e in errors:
            ra = getattr(e, "retry_after", None)
            if ra:
                self.bucket.penalize(ra)
                return
