"""Circuit breakers: stop calling an endpoint that is down, probe it, resume when it is back.

States:

* ``closed``: calls flow. The breaker opens after ``failure_threshold``
  consecutive failures, or when at least ``min_calls`` calls in the last
  ``window`` seconds failed at ``failure_rate`` or more.
* ``open``: no call is allowed. After ``cool_down`` the breaker becomes
  half-open (checked lazily, when someone asks).
* ``half_open``: at most ``half_open_max_calls`` probes run at once. When that
  many probes have succeeded the breaker closes; any probe failure reopens it.

Use ``async with breaker.guard():`` around a call, or ``allow()`` followed by
exactly one ``record_success()``/``record_failure()``. Transitions are
reported to listeners (the runtime journals them). :class:`BreakerRegistry`
keeps one breaker per endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from seamline.core.clock import SYSTEM_CLOCK, Clock
from seamline.core.errors import RetryableError, classify
from seamline.resilience.http_classify import endpoint_key

__all__ = [
    "BreakerConfig",
    "BreakerListener",
    "BreakerRegistry",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "CircuitOpenError",
]

log = logging.getLogger(__name__)

#: calls remembered for the failure-rate window (older ones fall out early)
MAX_WINDOW_CALLS = 4096


class BreakerState(StrEnum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerTransition:
    """One state change, as given to listeners."""

    breaker: str
    from_state: BreakerState
    to_state: BreakerState
    #: wall-clock Unix time of the change
    at: float
    #: why, e.g. ``consecutive_failures=5`` or ``probe_failed``
    reason: str


BreakerListener = Callable[[BreakerTransition], object]


class CircuitOpenError(RetryableError):
    """The breaker refused the call; ``retry_after`` is the cool-down left."""

    code = "resilience.circuit_open"


def _seconds(value: float | timedelta, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return seconds


@dataclass(frozen=True)
class BreakerConfig:
    """The settings of one breaker, validated on creation."""

    failure_threshold: int | None = 5
    failure_rate: float | None = None
    window: float | timedelta = 60.0
    min_calls: int = 10
    cool_down: float | timedelta = 30.0
    half_open_max_calls: int = 1

    def __post_init__(self) -> None:
        if self.failure_threshold is None and self.failure_rate is None:
            raise ValueError("a breaker needs failure_threshold, failure_rate or both")
        if self.failure_threshold is not None and self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {self.failure_threshold}")
        if self.failure_rate is not None and not 0 < self.failure_rate <= 1:
            raise ValueError(f"failure_rate must be in (0, 1], got {self.failure_rate}")
        if self.min_calls < 1:
            raise ValueError(f"min_calls must be at least 1, got {self.min_calls}")
        if self.half_open_max_calls < 1:
            raise ValueError(f"half_open_max_calls must be at least 1, got {self.half_open_max_calls}")
        _seconds(self.window, "window")
        _seconds(self.cool_down, "cool_down")


def _default_is_failure(exc: BaseException) -> bool:
    """Retryable errors (timeouts, 5xx, connection errors) count; a 4xx proves the endpoint is up."""
    return classify(exc)


class CircuitBreaker:
    """A circuit breaker for one endpoint; see the module docstring for the rules.

    ``is_failure`` decides which exceptions raised inside :meth:`guard` count
    as failures (default: retryable ones); other exceptions count as
    successes, because the endpoint answered.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int | None = 5,
        failure_rate: float | None = None,
        window: float | timedelta = 60.0,
        min_calls: int = 10,
        cool_down: float | timedelta = 30.0,
        half_open_max_calls: int = 1,
        clock: Clock = SYSTEM_CLOCK,
        listeners: Iterable[BreakerListener] = (),
        is_failure: Callable[[BaseException], bool] = _default_is_failure,
    ) -> None:
        self.name = name
        self.config = BreakerConfig(
            failure_threshold=failure_threshold,
            failure_rate=failure_rate,
            window=window,
            min_calls=min_calls,
            cool_down=cool_down,
            half_open_max_calls=half_open_max_calls,
        )
        self._window = _seconds(window, "window")
        self._cool_down = _seconds(cool_down, "cool_down")
        self._clock = clock
        self._listeners: list[BreakerListener] = list(listeners)
        self._is_failure = is_failure
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._consecutive = 0
        self._calls: deque[tuple[float, bool]] = deque(maxlen=MAX_WINDOW_CALLS)
        self._opened_mono = 0.0
        self._opened_at: float | None = None
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._transitions = 0
        self._last_error: str | None = None
        self._waiters: set[asyncio.Future[None]] = set()

    # -- listeners --------------------------------------------------------------------------------

    def add_listener(self, listener: BreakerListener) -> None:
        """Call ``listener(transition)`` on every state change (synchronously; keep it quick)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: BreakerListener) -> None:
        self._listeners.remove(listener)

    # -- state ------------------------------------------------------------------------------------

    def _notify(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)

    def _transition(self, to: BreakerState, reason: str) -> None:
        old = self._state
        if old is to:
            return
        self._state = to
        self._generation += 1
        self._transitions += 1
        self._probes_in_flight = 0
        self._probe_successes = 0
        if to is BreakerState.OPEN:
            self._opened_mono = self._clock.monotonic()
            self._opened_at = self._clock.now()
        elif to is BreakerState.CLOSED:
            self._opened_at = None
            self._consecutive = 0
            self._calls.clear()
        event = BreakerTransition(self.name, old, to, self._clock.now(), reason)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not break delivery
                log.exception("breaker %s: listener %r failed", self.name, listener)
        self._notify()

    def _poll(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self.cool_down_remaining <= 0:
            self._transition(BreakerState.HALF_OPEN, "cool_down_elapsed")
        return self._state

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose cool-down has passed turns half-open here)."""
        return self._poll()

    @property
    def cool_down_remaining(self) -> float:
        """Seconds until an open breaker lets a probe through (0 otherwise)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_mono + self._cool_down - self._clock.monotonic())

    # -- the call protocol ------------------------------------------------------------------------

    def allow(self) -> bool:
        """May a call go now? A ``True`` in half-open state takes a probe slot.

        Every ``True`` must be followed by one :meth:`record_success` or
        :meth:`record_failure` (or :meth:`release` if the call never happened).
        """
        state = self._poll()
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes_in_flight < self.config.half_open_max_calls:
            self._probes_in_flight += 1
            return True
        return False

    def _prune(self, now: float) -> None:
        horizon = now - self._window
        while self._calls and self._calls[0][0] <= horizon:
            self._calls.popleft()

    def _outcome(self, ok: bool, generation: int | None, error: str | None = None) -> None:
        if generation is not None and generation != self._generation:
            return  # the call began under another state; its result says nothing now
        state = self._poll()
        if state is BreakerState.OPEN:
            return
        if state is BreakerState.HALF_OPEN:
            if self._probes_in_flight <= 0:
                return  # not a probe: a straggler from before the breaker opened
            self._probes_in_flight -= 1
            if not ok:
                self._last_error = error
                self._transition(BreakerState.OPEN, "probe_failed")
                return
            self._probe_successes += 1
            if self._probe_successes >= self.config.half_open_max_calls:
                self._transition(BreakerState.CLOSED, "probe_succeeded")
            else:
                self._notify()
            return
        now = self._clock.monotonic()
        self._calls.append((now, ok))
        self._prune(now)
        if ok:
            self._consecutive = 0
            return
        self._consecutive += 1
        self._last_error = error
        threshold = self.config.failure_threshold
        if threshold is not None and self._consecutive >= threshold:
            self._transition(BreakerState.OPEN, f"consecutive_failures={self._consecutive}")
            return
        rate = self.config.failure_rate
        if rate is not None and len(self._calls) >= self.config.min_calls:
            failures = sum(1 for _, good in self._calls if not good)
            observed = failures / len(self._calls)
            if observed >= rate:
                self._transition(BreakerState.OPEN, f"failure_rate={observed:.2f} over {len(self._calls)} calls")

    def record_success(self) -> None:
        """Report that an allowed call succeeded."""
        self._outcome(True, None)

    def record_failure(self, error: BaseException | str | None = None) -> None:
        """Report that an allowed call failed; ``error`` (its code or type) shows in the snapshot."""
        self._outcome(False, None, _describe(error))

    def release(self) -> None:
        """Give back a half-open probe slot of a call that never happened (e.g. cancelled)."""
        if self._state is BreakerState.HALF_OPEN and self._probes_in_flight > 0:
            self._probes_in_flight -= 1
            self._notify()

    def _open_error(self) -> CircuitOpenError:
        remaining = self.cool_down_remaining
        return CircuitOpenError(
            f"circuit '{self.name}' is {self._state}; calls are paused"
            + (f" for {remaining:.1f}s more" if remaining else " while a probe runs"),
            retry_after=remaining,
            details={"breaker": self.name, "state": str(self._state)},
        )

    def enter(self) -> int:
        """Take a call slot, or raise :class:`CircuitOpenError`; pass the result to :meth:`leave`."""
        if not self.allow():
            raise self._open_error()
        return self._generation

    def leave(self, generation: int, exc: BaseException | None = None) -> None:
        """Count the call taken with :meth:`enter`: a success, ``exc`` (if it is a failure) or,
        for a cancellation, nothing (the probe slot is released)."""
        if exc is None:
            self._outcome(True, generation)
        elif isinstance(exc, asyncio.CancelledError):
            if generation == self._generation:
                self.release()
        else:
            failed = self._is_failure(exc)
            self._outcome(not failed, generation, _describe(exc) if failed else None)

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Run the body as one call: refused with :class:`CircuitOpenError`, or counted.

        Exceptions are re-raised after being recorded; cancellation counts as
        nothing (the probe slot is released).
        """
        generation = self.enter()
        try:
            yield
        except BaseException as exc:
            self.leave(generation, exc)
            raise
        else:
            self.leave(generation)

    async def wait_until_closed_or_probe(self) -> None:
        """Wait until a call would be allowed, without taking a probe slot.

        Returns at once when closed, or half-open with a free probe slot;
        otherwise sleeps out the cool-down (on the clock) or waits for a
        running probe to finish. Another caller may still win the slot, so
        follow with :meth:`allow` or :meth:`guard`.
        """
        while True:
            state = self._poll()
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN and self._probes_in_flight < self.config.half_open_max_calls:
                return
            changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.add(changed)
            sleeper = (
                asyncio.ensure_future(self._clock.sleep(self.cool_down_remaining))
                if state is BreakerState.OPEN
                else None
            )
            try:
                pending: set[asyncio.Future[Any]] = {changed}
                if sleeper is not None:
                    pending.add(sleeper)
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._waiters.discard(changed)
                changed.cancel()
                if sleeper is not None:
                    sleeper.cancel()

    # -- operator actions -------------------------------------------------------------------------

    def reset(self) -> None:
        """Close the breaker and forget its history (operator action)."""
        self._transition(BreakerState.CLOSED, "manual_reset")
        self._consecutive = 0
        self._calls.clear()

    def force_open(self, reason: str = "forced_open") -> None:
        """Open the breaker now; it probes again after the cool-down."""
        if self._state is BreakerState.OPEN:
            self._opened_mono = self._clock.monotonic()
            return
        self._transition(BreakerState.OPEN, reason)

    def snapshot(self) -> dict[str, Any]:
        """State for ``seamline status``."""
        state = self._poll()
        self._prune(self._clock.monotonic())
        calls = len(self._calls)
        failures = sum(1 for _, good in self._calls if not good)
        return {
            "name": self.name,
            "state": str(state),
            "consecutive_failures": self._consecutive,
            "window_calls": calls,
            "window_failures": failures,
            "failure_rate": round(failures / calls, 4) if calls else 0.0,
            "opened_at": self._opened_at,
            "cool_down_remaining": round(self.cool_down_remaining, 3),
            "probes_in_flight": self._probes_in_flight,
            "transitions": self._transitions,
            "last_error": self._last_error,
        }

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state})"


def _describe(error: BaseException | str | None) -> str | None:
    if error is None or isinstance(error, str):
        return error
    code = getattr(error, "code", None)
    return code if isinstance(code, str) else type(error).__name__


def _key(endpoint: str) -> str:
    return endpoint_key(endpoint) if "://" in endpoint else endpoint


class BreakerRegistry:
    """One :class:`CircuitBreaker` per endpoint (``scheme://host:port``, or any name).

    New breakers use ``default`` unless :meth:`configure` gave the endpoint
    its own settings. Listeners added here hear every breaker.
    """

    def __init__(
        self,
        default: BreakerConfig | None = None,
        *,
        overrides: dict[str, BreakerConfig] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        listeners: Iterable[BreakerListener] = (),
    ) -> None:
        self.default = default or BreakerConfig()
        self._configs = {_key(k): v for k, v in (overrides or {}).items()}
        self._clock = clock
        self._listeners = list(listeners)
        self._breakers: dict[str, CircuitBreaker] = {}

    def configure(self, endpoint: str, config: BreakerConfig) -> None:
        """Give ``endpoint`` its own settings (takes effect when its breaker is first created)."""
        key = _key(endpoint)
        if key in self._breakers:
            raise ValueError(f"breaker {key!r} already exists; configure endpoints before use")
        self._configs[key] = config

    def add_listener(self, listener: BreakerListener) -> None:
        """Listen to every breaker, existing and future."""
        self._listeners.append(listener)
        for breaker in self._breakers.values():
            breaker.add_listener(listener)

    def get(self, endpoint: str) -> CircuitBreaker:
        """The breaker of ``endpoint`` (a URL or a name), created on first use."""
        key = _key(endpoint)
        breaker = self._breakers.get(key)
        if breaker is None:
            config = self._configs.get(key, self.default)
            breaker = CircuitBreaker(key, **asdict(config), clock=self._clock, listeners=self._listeners)
            self._breakers[key] = breaker
        return breaker

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every breaker's state, by endpoint."""
        return {key: breaker.snapshot() for key, breaker in self._breakers.items()}

    def __contains__(self, endpoint: object) -> bool:
        return isinstance(endpoint, str) and _key(endpoint) in self._breakers

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)
