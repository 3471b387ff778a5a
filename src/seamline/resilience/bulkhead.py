"""Bulkheads: a concurrency limit and a per-call timeout for one sink.

Each sink gets its own :class:`Bulkhead`, so a sink that hangs holds only its
own slots and every other sink keeps moving::

    async with bulkhead.slot(timeout=10):
        await post(message)

Waiting for a slot is bounded (``max_waiting``, ``acquire_timeout``:
:class:`BulkheadFullError`) and so is the call itself (``timeout``: the body
is cancelled and :class:`CallTimeoutError` raised). Both errors are retryable.
Time comes from an injected :class:`~seamline.core.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from seamline.core.clock import SYSTEM_CLOCK, Clock
from seamline.core.errors import RetryableError

__all__ = ["Bulkhead", "BulkheadFullError", "CallTimeoutError"]


class BulkheadFullError(RetryableError):
    """No slot became free in time (or too many callers were already waiting)."""

    code = "resilience.bulkhead_full"


class CallTimeoutError(RetryableError):
    """The call inside a slot took longer than its timeout and was cancelled."""

    code = "resilience.timeout"


def _check_timeout(value: float | None, what: str) -> float | None:
    if value is not None and not value > 0:
        raise ValueError(f"{what} must be positive (or None for no limit), got {value!r}")
    return None if value is None or math.isinf(value) else value


class Bulkhead:
    """At most ``max_concurrent`` calls at once; the rest wait in arrival order.

    ``max_waiting`` bounds the queue (``None``: unbounded), ``acquire_timeout``
    bounds the wait for a slot and ``call_timeout`` is the default per-call
    timeout of :meth:`slot`. Timeouts are seconds; ``math.inf`` disables one.
    """

    def __init__(
        self,
        name: str,
        *,
        max_concurrent: int,
        max_waiting: int | None = None,
        acquire_timeout: float | None = None,
        call_timeout: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        if max_waiting is not None and max_waiting < 0:
            raise ValueError(f"max_waiting must not be negative, got {max_waiting}")
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        self.acquire_timeout = _check_timeout(acquire_timeout, "acquire_timeout")
        self.call_timeout = _check_timeout(call_timeout, "call_timeout")
        self._clock = clock
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._rejected = 0
        self._timeouts = 0

    @property
    def in_use(self) -> int:
        """Slots held right now."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Callers queued for a slot."""
        return len(self._waiters)

    @property
    def available(self) -> int:
        """Slots free right now."""
        return self.max_concurrent - self._in_use

    # -- slots ------------------------------------------------------------------------------------

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand the slot over; in_use stays the same
                return
        self._in_use -= 1

    def _full(self, why: str) -> BulkheadFullError:
        self._rejected += 1
        return BulkheadFullError(
            f"bulkhead '{self.name}' is full ({self._in_use}/{self.max_concurrent} busy, "
            f"{self.waiting} waiting): {why}",
            details={"bulkhead": self.name},
        )

    async def _acquire(self, timeout: float | None) -> None:
        if self._in_use < self.max_concurrent and not self.waiting:
            self._in_use += 1
            return
        if self.max_waiting is not None and self.waiting >= self.max_waiting:
            raise self._full(f"the queue holds at most {self.max_waiting}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        sleeper = asyncio.ensure_future(self._clock.sleep(timeout)) if timeout is not None else None
        try:
            if sleeper is None:
                await fut
            else:
                await asyncio.wait({fut, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._abandon(fut)
            raise
        finally:
            if sleeper is not None:
                sleeper.cancel()
        if not fut.done():
            self._abandon(fut)
            raise self._full(f"no slot freed within {timeout:g}s")

    def _abandon(self, fut: asyncio.Future[None]) -> None:
        """Leave the queue; a slot already handed to us is passed on."""
        if fut.done() and not fut.cancelled():
            self._release()
        else:
            fut.cancel()
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass

    @asynccontextmanager
    async def slot(self, *, timeout: float | None = None, acquire_timeout: float | None = None) -> AsyncIterator[None]:
        """Hold one slot for the body, cancelling it after ``timeout`` seconds.

        ``timeout``/``acquire_timeout`` default to the bulkhead's settings.
        Raises :class:`BulkheadFullError` when no slot is had in time and
        :class:`CallTimeoutError` when the body overruns.
        """
        call_timeout = _check_timeout(timeout, "timeout") if timeout is not None else self.call_timeout
        wait_timeout = (
            _check_timeout(acquire_timeout, "acquire_timeout") if acquire_timeout is not None else self.acquire_timeout
        )
        await self._acquire(wait_timeout)
        try:
            if call_timeout is None:
                yield
            else:
                async with self._deadline(call_timeout):
                    yield
        finally:
            self._release()

    @asynccontextmanager
    async def _deadline(self, seconds: float) -> AsyncIterator[None]:
        """Like ``asyncio.timeout`` but on the injected clock."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always inside a task under asyncio
            raise RuntimeError("Bulkhead.slot() must run inside an asyncio task")
        cancelling = task.cancelling()
        expired = False

        async def watchdog() -> None:
            nonlocal expired
            await self._clock.sleep(seconds)
            expired = True
            task.cancel()

        dog = asyncio.ensure_future(watchdog())
        try:
            yield
        except asyncio.CancelledError:
            if expired and task.uncancel() <= cancelling:
                self._timeouts += 1
                raise CallTimeoutError(
                    f"call in bulkhead '{self.name}' exceeded {seconds:g}s and was cancelled",
                    details={"bulkhead": self.name, "timeout": seconds},
                ) from None
            raise
        finally:
            dog.cancel()
        if expired and task.uncancel() <= cancelling:
            # the body swallowed the cancellation; still report the overrun
            self._timeouts += 1
            raise CallTimeoutError(
                f"call in bulkhead '{self.name}' exceeded {seconds:g}s",
                details={"bulkhead": self.name, "timeout": seconds},
            )

    def snapshot(self) -> dict[str, Any]:
        """State for ``seamline status``."""
        return {
            "name": self.name,
            "max_concurrent": self.max_concurrent,
            "in_use": self._in_use,
            "waiting": self.waiting,
            "rejected": self._rejected,
            "timeouts": self._timeouts,
        }

    def __repr__(self) -> str:
        return f"Bulkhead({self.name!r}, {self._in_use}/{self.max_concurrent} in use, {self.waiting} waiting)"
