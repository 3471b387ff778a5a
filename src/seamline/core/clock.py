"""Injectable clocks, so time-dependent behaviour is testable without sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Wall time in Unix seconds (``now``) and a way to wait (``sleep``)."""

    def now(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told to: ``advance()`` wakes due sleepers."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        """Sleep ``seconds`` of this clock, counted from the call, not from the first await.

        A sleep created now and started a moment later (``ensure_future``) must not
        miss an ``advance`` that happened in between.
        """
        return self._sleep_until(self._mono + max(0.0, seconds))

    async def _sleep_until(self, due: float) -> None:
        if due <= self._mono:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((due, fut))
        try:
            await fut
        finally:
            self._waiters = [(t, f) for (t, f) in self._waiters if f is not fut]

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds
        for due, fut in list(self._waiters):
            if due <= self._mono and not fut.done():
                fut.set_result(None)

    def set(self, now: float) -> None:
        self.advance(now - self._now)
