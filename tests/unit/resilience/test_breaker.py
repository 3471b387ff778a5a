"""Circuit breaker: thresholds, the failure-rate window, probes, waiting, registry."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from seamline.core.clock import ManualClock
from seamline.core.errors import FatalError, RetryableError
from seamline.resilience.breaker import (
    BreakerConfig,
    BreakerRegistry,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    CircuitOpenError,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make(clock: ManualClock, **kw: object) -> tuple[CircuitBreaker, list[BreakerTransition]]:
    events: list[BreakerTransition] = []
    breaker = CircuitBreaker("api", clock=clock, listeners=[events.append], **kw)  # type: ignore[arg-type]
    return breaker, events


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record_failure(RetryableError("down", code="http.status.503"))


def trip(breaker: CircuitBreaker, clock: ManualClock) -> None:
    fail(breaker, breaker.config.failure_threshold or 1)
    assert breaker.state is OPEN


class TestConsecutiveFailures:
    def test_opens_exactly_at_threshold(self, clock: ManualClock) -> None:
        breaker, events = make(clock, failure_threshold=5)
        fail(breaker, 4)
        assert breaker.state is CLOSED
        fail(breaker, 1)
        assert breaker.state is OPEN
        assert [(e.from_state, e.to_state, e.reason) for e in events] == [(CLOSED, OPEN, "consecutive_failures=5")]
        assert events[0].breaker == "api"
        assert events[0].at == clock.now()

    def test_a_success_resets_the_count(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=3)
        fail(breaker, 2)
        assert breaker.allow()
        breaker.record_success()
        fail(breaker, 2)
        assert breaker.state is CLOSED
        fail(breaker, 1)
        assert breaker.state is OPEN

    def test_zero_calls_allowed_while_open(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=1, cool_down=30)
        trip(breaker, clock)
        clock.advance(29.9)
        assert not any(breaker.allow() for _ in range(100))
        assert breaker.state is OPEN
        assert breaker.cool_down_remaining == pytest.approx(0.1)

    async def test_guard_refuses_without_running_the_body(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=1, cool_down=30)
        trip(breaker, clock)
        clock.advance(10)
        ran = False
        with pytest.raises(CircuitOpenError) as info:
            async with breaker.guard():
                ran = True
        assert not ran
        assert info.value.retryable
        assert info.value.code == "resilience.circuit_open"
        assert info.value.retry_after == pytest.approx(20)


class TestHalfOpen:
    def test_exactly_one_probe(self, clock: ManualClock) -> None:
        breaker, events = make(clock, failure_threshold=2, cool_down=timedelta(seconds=30))
        trip(breaker, clock)
        clock.advance(30)
        assert breaker.state is HALF_OPEN
        assert breaker.allow()
        assert [breaker.allow() for _ in range(50)] == [False] * 50
        assert events[-1].reason == "cool_down_elapsed"

    def test_probe_success_closes(self, clock: ManualClock) -> None:
        breaker, events = make(clock, failure_threshold=2)
        trip(breaker, clock)
        clock.advance(30)
        assert breaker.allow()
        breaker.record_success()
        assert breaker.state is CLOSED
        assert events[-1].reason == "probe_succeeded"
        assert all(breaker.allow() for _ in range(10))
        assert breaker.snapshot()["consecutive_failures"] == 0

    def test_probe_failure_reopens_for_a_new_cool_down(self, clock: ManualClock) -> None:
        breaker, events = make(clock, failure_threshold=2, cool_down=30)
        trip(breaker, clock)
        clock.advance(30)
        assert breaker.allow()
        clock.advance(5)
        breaker.record_failure("http.status.502")
        assert breaker.state is OPEN
        assert events[-1].reason == "probe_failed"
        clock.advance(29)
        assert not breaker.allow()
        clock.advance(1)
        assert breaker.allow()
        assert breaker.snapshot()["last_error"] == "http.status.502"

    def test_several_probes_must_all_succeed(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=1, half_open_max_calls=2)
        trip(breaker, clock)
        clock.advance(30)
        assert breaker.allow() and breaker.allow()
        assert not breaker.allow()
        breaker.record_success()
        assert breaker.state is HALF_OPEN
        assert breaker.allow()  # the finished probe's slot is free again
        breaker.record_success()
        assert breaker.state is CLOSED

    def test_stragglers_are_not_probes(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=1)
        trip(breaker, clock)
        clock.advance(30)
        assert breaker.state is HALF_OPEN
        breaker.record_success()  # a call allowed long before; no probe is out
        assert breaker.state is HALF_OPEN
        breaker.record_failure()
        assert breaker.state is HALF_OPEN

    async def test_cancelled_probe_frees_its_slot(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=1)
        trip(breaker, clock)
        clock.advance(30)
        started = asyncio.Event()

        async def probe() -> None:
            async with breaker.guard():
                started.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(probe())
        await started.wait()
        assert not breaker.allow()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert breaker.state is HALF_OPEN
        assert breaker.allow()


class TestFailureRate:
    def test_needs_min_calls_then_opens_at_rate(self, clock: ManualClock) -> None:
        breaker, events = make(clock, failure_threshold=None, failure_rate=0.5, min_calls=4, window=10)
        for ok in (True, False, False):
            assert breaker.allow()
            breaker.record_success() if ok else breaker.record_failure()
        assert breaker.state is CLOSED  # 2/3 failed, but only 3 calls
        assert breaker.allow()
        breaker.record_failure()
        assert breaker.state is OPEN
        assert events[-1].reason == "failure_rate=0.75 over 4 calls"

    def test_below_rate_stays_closed(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=None, failure_rate=0.5, min_calls=4, window=10)
        for ok in (True, True, True, False, True, False):
            breaker.allow()
            breaker.record_success() if ok else breaker.record_failure()
        assert breaker.state is CLOSED
        assert breaker.snapshot()["failure_rate"] == pytest.approx(2 / 6, abs=1e-3)

    def test_old_calls_slide_out_of_the_window(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=None, failure_rate=0.5, min_calls=4, window=10)
        for _ in range(3):
            breaker.allow()
            breaker.record_failure()
        clock.advance(10)  # those failures are now exactly one window old: gone
        for ok in (True, True, True, False):
            breaker.allow()
            breaker.record_success() if ok else breaker.record_failure()
        assert breaker.state is CLOSED
        snap = breaker.snapshot()
        assert (snap["window_calls"], snap["window_failures"]) == (4, 1)

    def test_both_rules_together(self, clock: ManualClock) -> None:
        breaker, events = make(clock, failure_threshold=3, failure_rate=0.9, min_calls=100)
        fail(breaker, 3)
        assert breaker.state is OPEN
        assert events[-1].reason == "consecutive_failures=3"


class TestGuard:
    async def test_retryable_errors_count_and_fatal_ones_do_not(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=2)
        for _ in range(5):
            with pytest.raises(FatalError):
                async with breaker.guard():
                    raise FatalError("bad request", code="http.status.400")
        assert breaker.state is CLOSED
        for exc in (RetryableError("x", code="http.status.503"), ConnectionRefusedError()):
            with pytest.raises(type(exc)):
                async with breaker.guard():
                    raise exc
        assert breaker.state is OPEN
        assert breaker.snapshot()["last_error"] == "ConnectionRefusedError"

    async def test_custom_failure_predicate(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=1, is_failure=lambda e: isinstance(e, KeyError))
        with pytest.raises(ValueError):
            async with breaker.guard():
                raise ValueError
        assert breaker.state is CLOSED
        with pytest.raises(KeyError):
            async with breaker.guard():
                raise KeyError
        assert breaker.state is OPEN

    async def test_result_of_a_call_begun_in_an_older_state_is_ignored(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=1)
        inside = asyncio.Event()
        release = asyncio.Event()

        async def slow_call() -> None:
            async with breaker.guard():
                inside.set()
                await release.wait()

        task = asyncio.create_task(slow_call())
        await inside.wait()
        fail(breaker, 1)  # another call trips the breaker meanwhile
        clock.advance(30)
        assert breaker.state is HALF_OPEN
        release.set()
        await task  # succeeds, but it was no probe
        assert breaker.state is HALF_OPEN
        assert breaker.allow()

    async def test_probe_through_guard_closes(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=1)
        trip(breaker, clock)
        clock.advance(30)
        async with breaker.guard():
            with pytest.raises(CircuitOpenError, match="while a probe runs"):
                async with breaker.guard():
                    pass
        assert breaker.state is CLOSED


class TestWaiting:
    async def test_sleeps_out_the_cool_down_without_taking_the_probe(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=1, cool_down=30)
        trip(breaker, clock)
        waiter = asyncio.create_task(breaker.wait_until_closed_or_probe())
        await settle()
        clock.advance(29)
        await settle()
        assert not waiter.done()
        clock.advance(1)
        await settle()
        assert waiter.done()
        await waiter
        assert breaker.state is HALF_OPEN
        assert breaker.allow()  # the probe slot is still free

    async def test_returns_at_once_when_closed(self, clock: ManualClock) -> None:
        breaker, _ = make(clock)
        await asyncio.wait_for(breaker.wait_until_closed_or_probe(), 1)

    async def test_waits_for_a_running_probe(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=1)
        trip(breaker, clock)
        clock.advance(30)
        assert breaker.allow()  # the probe is out
        waiters = [asyncio.create_task(breaker.wait_until_closed_or_probe()) for _ in range(3)]
        await settle()
        assert not any(w.done() for w in waiters)
        breaker.record_success()
        await settle()
        assert all(w.done() for w in waiters)
        assert breaker.state is CLOSED

    async def test_a_reopened_breaker_keeps_waiters_waiting(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=1, cool_down=30)
        trip(breaker, clock)
        clock.advance(30)
        assert breaker.allow()
        waiter = asyncio.create_task(breaker.wait_until_closed_or_probe())
        await settle()
        breaker.record_failure()
        await settle()
        assert not waiter.done()
        clock.advance(30)
        await settle()
        assert waiter.done()

    async def test_cancelling_one_waiter_leaves_the_others(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=1)
        trip(breaker, clock)
        first = asyncio.create_task(breaker.wait_until_closed_or_probe())
        second = asyncio.create_task(breaker.wait_until_closed_or_probe())
        await settle()
        first.cancel()
        await settle()
        clock.advance(30)
        await settle()
        assert first.cancelled()
        assert second.done() and second.exception() is None


class TestOperations:
    def test_reset_and_force_open(self, clock: ManualClock) -> None:
        breaker, events = make(clock, failure_threshold=1)
        breaker.force_open("maintenance")
        assert breaker.state is OPEN
        breaker.reset()
        assert breaker.state is CLOSED
        assert [e.reason for e in events] == ["maintenance", "manual_reset"]

    def test_a_broken_listener_does_not_break_the_breaker(self, clock: ManualClock) -> None:
        def boom(event: BreakerTransition) -> None:
            raise RuntimeError("listener bug")

        breaker, events = make(clock, failure_threshold=1)
        breaker.add_listener(boom)
        trip(breaker, clock)
        assert len(events) == 1

    def test_snapshot(self, clock: ManualClock) -> None:
        breaker, _ = make(clock, failure_threshold=2, cool_down=30)
        fail(breaker, 1)
        snap = breaker.snapshot()
        assert snap["state"] == "closed"
        assert snap["consecutive_failures"] == 1
        assert snap["opened_at"] is None
        fail(breaker, 1)
        clock.advance(12)
        snap = breaker.snapshot()
        assert snap["state"] == "open"
        assert snap["opened_at"] == clock.now() - 12
        assert snap["cool_down_remaining"] == pytest.approx(18)
        assert snap["last_error"] == "http.status.503"
        assert snap["transitions"] == 1

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"failure_threshold": None},
            {"failure_threshold": 0},
            {"failure_rate": 1.5},
            {"failure_rate": 0},
            {"min_calls": 0},
            {"cool_down": 0},
            {"window": timedelta(0)},
            {"half_open_max_calls": 0},
        ],
    )
    def test_invalid_settings(self, kwargs: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            CircuitBreaker("x", **kwargs)  # type: ignore[arg-type]


class TestRegistry:
    def test_one_breaker_per_endpoint(self, clock: ManualClock) -> None:
        registry = BreakerRegistry(clock=clock)
        a = registry.get("https://API.example.com/v1/orders?id=1")
        assert registry.get("https://api.example.com:443/other") is a
        assert registry.get("http://api.example.com/") is not a
        assert a.name == "https://api.example.com:443"
        assert registry.get("erp-sink").name == "erp-sink"
        assert len(registry) == 3
        assert "https://api.example.com" in registry

    def test_defaults_overrides_and_listeners(self, clock: ManualClock) -> None:
        events: list[BreakerTransition] = []
        registry = BreakerRegistry(
            BreakerConfig(failure_threshold=3),
            overrides={"https://fragile.example.com": BreakerConfig(failure_threshold=1)},
            clock=clock,
        )
        plain = registry.get("https://api.example.com")
        registry.add_listener(events.append)
        fragile = registry.get("https://fragile.example.com/x")
        assert plain.config.failure_threshold == 3
        fail(fragile, 1)
        fail(plain, 3)
        assert {e.breaker for e in events} == {"https://fragile.example.com:443", "https://api.example.com:443"}
        snap = registry.snapshot()
        assert snap["https://fragile.example.com:443"]["state"] == "open"
        with pytest.raises(ValueError, match="already exists"):
            registry.configure("https://api.example.com", BreakerConfig())
