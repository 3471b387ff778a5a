"""Token bucket: rate strings, burst and refill on a manual clock, adaptive pauses, registry."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seamline.core.clock import ManualClock
from seamline.resilience.ratelimit import RateLimiterRegistry, RateSpecError, TokenBucket, parse_rate


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


class TestParseRate:
    @pytest.mark.parametrize(
        ("spec", "per_second"),
        [
            ("100/s", 100.0),
            ("600/min", 10.0),
            ("600/m", 10.0),
            ("3600/h", 1.0),
            ("86400/day", 1.0),
            ("10/30s", 1 / 3),
            ("5 per second", 5.0),
            (" 120 / MINUTE ", 2.0),
            ("1/500ms", 2.0),
            ("2.5/s", 2.5),
            (7, 7.0),
            (0.5, 0.5),
        ],
    )
    def test_accepted_forms(self, spec: str | float, per_second: float) -> None:
        assert parse_rate(spec) == pytest.approx(per_second)

    @pytest.mark.parametrize(
        "spec", ["", "100", "fast", "100/fortnight", "/s", "0/s", "10/0s", "-5/s", "1e3/s", 0, -1, True]
    )
    def test_rejected_with_a_clear_message(self, spec: object) -> None:
        with pytest.raises(RateSpecError) as info:
            parse_rate(spec)  # type: ignore[arg-type]
        assert repr(spec) in str(info.value) or "rate" in str(info.value)

    def test_message_shows_examples(self) -> None:
        with pytest.raises(RateSpecError, match=r"'100/s', '600/min'"):
            parse_rate("100 a second")

    @given(st.text(max_size=20))
    def test_never_fails_with_another_error(self, text: str) -> None:
        try:
            assert parse_rate(text) > 0
        except RateSpecError:
            pass


class TestBucket:
    def test_burst_then_refill_at_rate(self, clock: ManualClock) -> None:
        bucket = TokenBucket("2/s", burst=5, clock=clock)
        assert [bucket.try_acquire() for _ in range(6)] == [True] * 5 + [False]
        clock.advance(0.5)
        assert bucket.try_acquire()
        assert not bucket.try_acquire()
        clock.advance(10)  # refills up to burst, not beyond
        assert bucket.tokens == pytest.approx(5)

    def test_default_burst_is_one_second_of_tokens(self, clock: ManualClock) -> None:
        assert TokenBucket("600/min", clock=clock).burst == 10
        assert TokenBucket("1/h", clock=clock).burst == 1

    def test_delay_for(self, clock: ManualClock) -> None:
        bucket = TokenBucket(4, burst=4, clock=clock)
        assert bucket.delay_for(4) == 0
        assert bucket.try_acquire(3)
        assert bucket.delay_for(2) == pytest.approx(0.25)
        with pytest.raises(ValueError, match="burst"):
            bucket.delay_for(5)
        with pytest.raises(ValueError):
            bucket.try_acquire(0)

    async def test_acquire_waits_on_the_clock(self, clock: ManualClock) -> None:
        bucket = TokenBucket("10/s", burst=1, clock=clock)
        assert await bucket.acquire() == 0
        task = asyncio.create_task(bucket.acquire())
        await settle()
        assert not task.done() and bucket.waiting == 1
        clock.advance(0.05)
        await settle()
        assert not task.done()
        clock.advance(0.05)
        await settle()
        assert await task == pytest.approx(0.1)
        assert bucket.waiting == 0

    async def test_throughput_matches_the_rate(self, clock: ManualClock) -> None:
        bucket = TokenBucket("5/s", burst=5, clock=clock)
        done: list[float] = []

        async def caller() -> None:
            await bucket.acquire()
            done.append(clock.monotonic())

        tasks = [asyncio.create_task(caller()) for _ in range(15)]
        await settle()
        for _ in range(20):
            clock.advance(0.1)
            await settle()
        await asyncio.gather(*tasks)
        assert done.count(0.0) == 5  # the burst
        assert max(done) == pytest.approx(2.0)  # then 10 more at 5/s

    async def test_waiters_are_served_in_order(self, clock: ManualClock) -> None:
        bucket = TokenBucket("1/s", burst=3, clock=clock)
        assert bucket.try_acquire(3)
        order: list[str] = []

        async def take(name: str, n: int) -> None:
            await bucket.acquire(n)
            order.append(name)

        big = asyncio.create_task(take("big", 3))
        await settle()
        small = asyncio.create_task(take("small", 1))
        await settle()
        clock.advance(1)
        await settle()
        assert not bucket.try_acquire()  # queued callers go first
        assert order == []  # the small one does not overtake
        clock.advance(2)
        await settle()
        clock.advance(1)
        await settle()
        await asyncio.gather(big, small)
        assert order == ["big", "small"]

    def test_unlimited_bucket(self, clock: ManualClock) -> None:
        bucket = TokenBucket(None, clock=clock)
        assert all(bucket.try_acquire() for _ in range(1000))
        assert bucket.snapshot()["rate_per_second"] is None


class TestAdaptive:
    def test_penalize_pauses_then_resumes_gently(self, clock: ManualClock) -> None:
        bucket = TokenBucket("10/s", burst=10, clock=clock)
        assert bucket.penalize(7) == 7
        assert not bucket.try_acquire()
        assert bucket.paused_for == pytest.approx(7)
        clock.advance(6.9)
        assert not bucket.try_acquire()
        clock.advance(0.1)
        assert bucket.try_acquire()  # one request at the end of the pause...
        assert not bucket.try_acquire()  # ...not a full burst
        clock.advance(0.1)
        assert bucket.try_acquire()

    def test_pauses_never_shorten_and_are_capped(self, clock: ManualClock) -> None:
        bucket = TokenBucket("10/s", clock=clock, max_pause=60)
        bucket.penalize(30)
        bucket.penalize(5)
        assert bucket.paused_for == pytest.approx(30)
        assert bucket.penalize(10_000) == 60
        assert bucket.paused_for == pytest.approx(60)
        assert bucket.penalize(None) == 1.0  # default penalty

    async def test_a_penalty_extends_a_running_wait(self, clock: ManualClock) -> None:
        bucket = TokenBucket("1/s", burst=1, clock=clock)
        assert bucket.try_acquire()
        task = asyncio.create_task(bucket.acquire())
        await settle()
        bucket.penalize(5)
        clock.advance(1)
        await settle()
        assert not task.done()
        clock.advance(4)
        await settle()
        assert await task == pytest.approx(5)

    def test_unlimited_bucket_still_honours_the_server(self, clock: ManualClock) -> None:
        bucket = TokenBucket(None, clock=clock)
        bucket.observe_headers({"Retry-After": "3"}, status=429)
        assert not bucket.try_acquire()
        clock.advance(3)
        assert all(bucket.try_acquire() for _ in range(10))

    def test_retry_after_on_429(self, clock: ManualClock) -> None:
        bucket = TokenBucket("10/s", clock=clock)
        assert bucket.observe_headers({"retry-after": "12"}, status=429) == 12
        assert bucket.paused_for == pytest.approx(12)

    def test_retry_after_as_http_date(self, clock: ManualClock) -> None:
        clock.set(784111777.0)  # Sun, 06 Nov 1994 08:49:37 GMT
        bucket = TokenBucket("10/s", clock=clock)
        assert bucket.observe_headers({"Retry-After": "Sun, 06 Nov 1994 08:50:07 GMT"}, status=503) == 30

    def test_retry_after_on_success_is_ignored(self, clock: ManualClock) -> None:
        bucket = TokenBucket("10/s", clock=clock)
        assert bucket.observe_headers({"Retry-After": "12"}, status=201) is None
        assert bucket.try_acquire()

    def test_x_ratelimit_exhausted_with_epoch_reset(self, clock: ManualClock) -> None:
        bucket = TokenBucket("10/s", clock=clock)
        reset = int(clock.now()) + 42
        pause = bucket.observe_headers({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)})
        assert pause == pytest.approx(42)

    def test_x_ratelimit_exhausted_with_delta_reset(self, clock: ManualClock) -> None:
        bucket = TokenBucket("10/s", clock=clock)
        assert bucket.observe_headers({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "15"}) == 15

    def test_ietf_ratelimit_fields(self, clock: ManualClock) -> None:
        bucket = TokenBucket("10/s", clock=clock)
        assert bucket.observe_headers({"RateLimit-Remaining": "0", "RateLimit-Reset": "20"}) == 20
        other = TokenBucket("10/s", clock=clock)
        assert other.observe_headers({"RateLimit": '"default";r=0;t=9'}) == 9

    def test_remaining_quota_caps_our_tokens(self, clock: ManualClock) -> None:
        bucket = TokenBucket("10/s", burst=10, clock=clock)
        assert bucket.observe_headers({"X-RateLimit-Remaining": "2", "X-RateLimit-Reset": "60"}) is None
        assert [bucket.try_acquire() for _ in range(3)] == [True, True, False]

    def test_exhausted_quota_without_reset_uses_default_penalty(self, clock: ManualClock) -> None:
        bucket = TokenBucket("10/s", clock=clock, default_penalty=2.0)
        assert bucket.observe_headers({"X-RateLimit-Remaining": "0"}) == 2.0

    def test_bare_429_uses_default_penalty(self, clock: ManualClock) -> None:
        bucket = TokenBucket("10/s", clock=clock)
        assert bucket.observe_headers({}, status=429) == 1.0
        assert bucket.observe_headers(None, status=200) is None

    def test_garbage_headers_change_nothing(self, clock: ManualClock) -> None:
        bucket = TokenBucket("10/s", burst=10, clock=clock)
        headers = {"Retry-After": "soon", "X-RateLimit-Remaining": "lots", "X-RateLimit-Reset": "later"}
        assert bucket.observe_headers(headers) is None
        assert bucket.tokens == 10

    def test_snapshot(self, clock: ManualClock) -> None:
        bucket = TokenBucket("600/min", clock=clock, name="https://api.example.com:443")
        bucket.penalize(3)
        snap = bucket.snapshot()
        assert snap == {
            "name": "https://api.example.com:443",
            "rate_per_second": 10.0,
            "burst": 10.0,
            "tokens": 0.0,
            "paused_for": 3.0,
            "waiting": 0,
            "penalties": 1,
        }


class TestRegistry:
    def test_per_endpoint_buckets(self, clock: ManualClock) -> None:
        registry = RateLimiterRegistry(default_rate="100/s", limits={"https://slow.example.com": "1/s"}, clock=clock)
        slow = registry.get("https://slow.example.com/api/v2?x=1")
        assert slow.rate == 1
        assert registry.get("https://slow.example.com:443") is slow
        fast = registry.get("https://fast.example.com/")
        assert fast.rate == 100
        slow.penalize(10)
        assert fast.try_acquire()
        assert set(registry.snapshot()) == {"https://slow.example.com:443", "https://fast.example.com:443"}
        assert len(registry) == 2 and "https://fast.example.com" in registry

    def test_default_is_unlimited_but_adaptive(self, clock: ManualClock) -> None:
        registry = RateLimiterRegistry(clock=clock)
        bucket = registry.get("http://localhost:8080")
        assert bucket.rate == float("inf")
        bucket.observe_headers({"Retry-After": "1"}, status=503)
        assert not bucket.try_acquire()

    def test_bad_default_rate_fails_early(self) -> None:
        with pytest.raises(RateSpecError):
            RateLimiterRegistry(default_rate="lots")
