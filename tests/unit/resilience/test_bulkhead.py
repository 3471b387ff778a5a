"""Bulkhead: concurrency limit, bounded waiting, per-call timeouts on a manual clock."""

from __future__ import annotations

import asyncio
import math

import pytest

from seamline.core.clock import ManualClock
from seamline.resilience.bulkhead import Bulkhead, BulkheadFullError, CallTimeoutError


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def hold(bulkhead: Bulkhead, gate: asyncio.Event, log: list[str], name: str) -> None:
    async with bulkhead.slot():
        log.append(name)
        await gate.wait()


async def test_limits_concurrency_and_counts(clock: ManualClock) -> None:
    bulkhead = Bulkhead("erp", max_concurrent=2, clock=clock)
    gate = asyncio.Event()
    log: list[str] = []
    tasks = [asyncio.create_task(hold(bulkhead, gate, log, f"c{i}")) for i in range(5)]
    await settle()
    assert log == ["c0", "c1"]
    assert (bulkhead.in_use, bulkhead.waiting, bulkhead.available) == (2, 3, 0)
    gate.set()
    await asyncio.gather(*tasks)
    assert log == ["c0", "c1", "c2", "c3", "c4"]  # arrival order
    assert (bulkhead.in_use, bulkhead.waiting) == (0, 0)


async def test_slot_is_released_when_the_body_fails(clock: ManualClock) -> None:
    bulkhead = Bulkhead("erp", max_concurrent=1, clock=clock)
    with pytest.raises(KeyError):
        async with bulkhead.slot():
            raise KeyError("boom")
    assert bulkhead.in_use == 0
    async with bulkhead.slot():
        assert bulkhead.in_use == 1


async def test_queue_bound_rejects_at_once(clock: ManualClock) -> None:
    bulkhead = Bulkhead("erp", max_concurrent=1, max_waiting=1, clock=clock)
    gate = asyncio.Event()
    log: list[str] = []
    tasks = [asyncio.create_task(hold(bulkhead, gate, log, n)) for n in ("a", "b")]
    await settle()
    with pytest.raises(BulkheadFullError, match="queue holds at most 1") as info:
        async with bulkhead.slot():
            pass
    assert info.value.retryable and info.value.code == "resilience.bulkhead_full"
    gate.set()
    await asyncio.gather(*tasks)
    assert bulkhead.snapshot()["rejected"] == 1


async def test_acquire_timeout_on_the_clock(clock: ManualClock) -> None:
    bulkhead = Bulkhead("erp", max_concurrent=1, acquire_timeout=5, clock=clock)
    gate = asyncio.Event()
    holder = asyncio.create_task(hold(bulkhead, gate, [], "holder"))
    await settle()

    async def late() -> None:
        async with bulkhead.slot():
            pass

    waiter = asyncio.create_task(late())
    await settle()
    clock.advance(4.9)
    await settle()
    assert not waiter.done()
    clock.advance(0.1)
    await settle()
    with pytest.raises(BulkheadFullError, match="within 5s"):
        await waiter
    assert bulkhead.waiting == 0
    gate.set()
    await holder
    assert bulkhead.in_use == 0


async def test_cancelled_waiter_leaves_the_queue(clock: ManualClock) -> None:
    bulkhead = Bulkhead("erp", max_concurrent=1, clock=clock)
    gate = asyncio.Event()
    log: list[str] = []
    holder = asyncio.create_task(hold(bulkhead, gate, log, "holder"))
    await settle()
    waiter = asyncio.create_task(hold(bulkhead, gate, log, "cancelled"))
    nxt = asyncio.create_task(hold(bulkhead, gate, log, "next"))
    await settle()
    waiter.cancel()
    await settle()
    assert bulkhead.waiting == 1
    gate.set()
    await asyncio.gather(holder, nxt)
    assert log == ["holder", "next"]
    assert bulkhead.in_use == 0


async def test_call_timeout_cancels_the_body(clock: ManualClock) -> None:
    bulkhead = Bulkhead("erp", max_concurrent=1, call_timeout=10, clock=clock)
    cancelled = asyncio.Event()

    async def hung_call() -> None:
        async with bulkhead.slot():
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    task = asyncio.create_task(hung_call())
    await settle()
    clock.advance(9.9)
    await settle()
    assert not task.done()
    clock.advance(0.1)
    await settle()
    with pytest.raises(CallTimeoutError, match="exceeded 10s") as info:
        await task
    assert cancelled.is_set()
    assert info.value.retryable and info.value.code == "resilience.timeout"
    assert bulkhead.in_use == 0
    assert bulkhead.snapshot()["timeouts"] == 1


async def test_per_slot_timeout_overrides_the_default(clock: ManualClock) -> None:
    bulkhead = Bulkhead("erp", max_concurrent=1, call_timeout=10, clock=clock)

    async def call() -> None:
        async with bulkhead.slot(timeout=2):
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await settle()
    clock.advance(2)
    await settle()
    with pytest.raises(CallTimeoutError):
        await task


async def test_fast_call_is_untouched_by_the_timeout(clock: ManualClock) -> None:
    bulkhead = Bulkhead("erp", max_concurrent=1, call_timeout=10, clock=clock)
    async with bulkhead.slot():
        await asyncio.sleep(0)
    clock.advance(20)
    await settle()
    await asyncio.sleep(0)  # no stray cancellation arrives later
    assert bulkhead.in_use == 0


async def test_outside_cancellation_is_not_a_timeout(clock: ManualClock) -> None:
    bulkhead = Bulkhead("erp", max_concurrent=1, call_timeout=10, clock=clock)

    async def call() -> None:
        async with bulkhead.slot():
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bulkhead.in_use == 0


async def test_a_body_that_swallows_cancellation_still_times_out(clock: ManualClock) -> None:
    bulkhead = Bulkhead("erp", max_concurrent=1, clock=clock)

    async def stubborn() -> str:
        async with bulkhead.slot(timeout=1):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                pass
        return "finished"

    task = asyncio.create_task(stubborn())
    await settle()
    clock.advance(1)
    await settle()
    with pytest.raises(CallTimeoutError):
        await task


async def test_a_hung_sink_does_not_stall_another(clock: ManualClock) -> None:
    hung = Bulkhead("hung-sink", max_concurrent=2, clock=clock)
    healthy = Bulkhead("healthy-sink", max_concurrent=2, clock=clock)
    never = asyncio.Event()
    stuck = [asyncio.create_task(hold(hung, never, [], f"h{i}")) for i in range(4)]
    await settle()
    assert (hung.in_use, hung.waiting) == (2, 2)
    done = 0
    for _ in range(10):
        async with healthy.slot():
            done += 1
    assert done == 10
    for task in stuck:
        task.cancel()
    await asyncio.gather(*stuck, return_exceptions=True)
    assert (hung.in_use, hung.waiting) == (0, 0)


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        Bulkhead("x", max_concurrent=0)
    with pytest.raises(ValueError):
        Bulkhead("x", max_concurrent=1, max_waiting=-1)
    with pytest.raises(ValueError):
        Bulkhead("x", max_concurrent=1, call_timeout=0)
    assert Bulkhead("x", max_concurrent=1, call_timeout=math.inf).call_timeout is None
