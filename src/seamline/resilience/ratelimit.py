"""Token-bucket rate limiting that also listens to what the server says.

A :class:`TokenBucket` refills at ``rate`` tokens per second up to ``burst``.
It is *adaptive*: :meth:`TokenBucket.penalize` pauses it (a 429 with
``Retry-After``) and :meth:`TokenBucket.observe_headers` reads the rate-limit
headers of every response, so a flow slows down before the server has to say
no. A bucket with ``rate=None`` never limits on its own but still honours the
server's pauses. :class:`RateLimiterRegistry` keeps one bucket per endpoint.

Time comes from an injected :class:`~seamline.core.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from seamline.core.clock import SYSTEM_CLOCK, Clock
from seamline.resilience.http_classify import (
    DEFAULT_MAX_RETRY_AFTER,
    endpoint_key,
    parse_rate_limit_headers,
)

__all__ = ["RateLimiterRegistry", "RateSpecError", "TokenBucket", "parse_rate"]

_EPS = 1e-9
_UNITS: dict[str, float] = {
    "ms": 0.001,
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}
_RATE = re.compile(
    r"\s*(?P<count>\d+(?:\.\d+)?)\s*(?:/|per\s+)\s*(?P<every>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)\s*",
    re.IGNORECASE,
)
_EXAMPLES = "'100/s', '600/min', '5000/h' or '10/30s'"


class RateSpecError(ValueError):
    """A rate such as ``"100/s"`` could not be understood."""

    code = "config.rate"


def parse_rate(spec: str | float | int) -> float:
    """Tokens per second from ``"100/s"``, ``"600/min"``, ``"10/30s"``, ``"5 per hour"`` or a number.

    A bare number is tokens per second. Raises :class:`RateSpecError` with the
    accepted forms when ``spec`` is malformed, zero, negative or not finite.
    """
    if isinstance(spec, bool):
        raise RateSpecError(f"rate {spec!r} is not a rate; use a number per second or {_EXAMPLES}")
    if isinstance(spec, int | float):
        value = float(spec)
    elif isinstance(spec, str):
        match = _RATE.fullmatch(spec)
        unit = match.group("unit").lower() if match else ""
        if not match or unit not in _UNITS:
            raise RateSpecError(f"rate {spec!r} is not understood; write it like {_EXAMPLES}")
        every = float(match.group("every") or 1.0)
        if every <= 0:
            raise RateSpecError(f"rate {spec!r} has a zero period; write it like {_EXAMPLES}")
        value = float(match.group("count")) / (every * _UNITS[unit])
    else:
        raise RateSpecError(f"rate must be a string like {_EXAMPLES} or a number, not {type(spec).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise RateSpecError(f"rate {spec!r} must be positive and finite")
    return value


class TokenBucket:
    """An adaptive token bucket.

    ``rate`` is tokens per second (or a spec for :func:`parse_rate`; ``None``
    means unlimited). ``burst`` is the bucket size, by default one second's
    worth of tokens (at least 1). The bucket starts full. Waiters are served
    in arrival order, so a large request is never starved by small ones.
    """

    def __init__(
        self,
        rate: str | float | None,
        *,
        burst: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "",
        max_pause: float = DEFAULT_MAX_RETRY_AFTER,
        default_penalty: float = 1.0,
    ) -> None:
        self.name = name
        self.rate = math.inf if rate is None else parse_rate(rate)
        self._unlimited = math.isinf(self.rate)
        if burst is None:
            burst = math.inf if self._unlimited else max(1.0, self.rate)
        if not burst >= 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        if max_pause < 0 or default_penalty < 0:
            raise ValueError("max_pause and default_penalty must not be negative")
        self.burst = float(burst)
        self.max_pause = max_pause
        self.default_penalty = default_penalty
        self._clock = clock
        self._tokens = self.burst
        self._last = clock.monotonic()
        self._paused_until = -math.inf
        self._lock: asyncio.Lock | None = None
        self._waiting = 0
        self._penalties = 0

    # -- bookkeeping ------------------------------------------------------------------------------

    def _refill(self) -> float:
        now = self._clock.monotonic()
        if now < self._paused_until:
            return now
        if self._last < self._paused_until:  # first look after a pause: one request may go
            self._tokens = max(self._tokens, min(1.0, self.burst))
            self._last = self._paused_until
        if self._unlimited:
            self._tokens = self.burst
        elif now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = max(self._last, now)
        return now

    def _check(self, n: float) -> None:
        if not n > 0:
            raise ValueError(f"token count must be positive, got {n!r}")
        if n > self.burst:
            raise ValueError(f"cannot take {n:g} tokens from a bucket of burst {self.burst:g}")

    def delay_for(self, n: float = 1) -> float:
        """Seconds until ``n`` tokens would be available (0 when they are now)."""
        self._check(n)
        now = self._refill()
        pause = self._paused_until - now
        if pause > _EPS:
            # after the pause one token is granted, the rest refills at `rate`
            missing_after = max(0.0, n - max(self._tokens, min(1.0, self.burst)))
            return pause + (0.0 if self._unlimited else missing_after / self.rate)
        if self._unlimited:
            return 0.0
        missing = n - self._tokens
        return 0.0 if missing <= _EPS else missing / self.rate

    def _take(self, n: float) -> None:
        if not self._unlimited:
            self._tokens = max(0.0, self._tokens - n)

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill()
        return 0.0 if self.paused_for > 0 else self._tokens

    @property
    def paused_for(self) -> float:
        """Seconds left of a server-imposed pause (0 when not paused)."""
        remaining = self._paused_until - self._clock.monotonic()
        return remaining if remaining > _EPS else 0.0

    @property
    def waiting(self) -> int:
        """Callers currently blocked in :meth:`acquire`."""
        return self._waiting

    # -- taking tokens ----------------------------------------------------------------------------

    def try_acquire(self, n: float = 1) -> bool:
        """Take ``n`` tokens if available now without queueing ahead of waiters."""
        if self._waiting:
            return False
        if self._unlimited and n == 1:  # no rate configured: only a server-imposed pause stops a call
            return self._paused_until - self._clock.monotonic() <= _EPS
        if self.delay_for(n) > 0:
            return False
        self._take(n)
        return True

    async def acquire(self, n: float = 1) -> float:
        """Wait (on the clock) for ``n`` tokens and take them; returns the seconds waited."""
        self._check(n)
        if self._lock is None:
            self._lock = asyncio.Lock()
        start = self._clock.monotonic()
        self._waiting += 1
        try:
            async with self._lock:
                while (delay := self.delay_for(n)) > 0:
                    await self._clock.sleep(delay)
                self._take(n)
        finally:
            self._waiting -= 1
        return self._clock.monotonic() - start

    # -- listening to the server ------------------------------------------------------------------

    def penalize(self, retry_after: float | None = None) -> float:
        """Pause the bucket for ``retry_after`` seconds (default ``default_penalty``).

        Pauses never shorten an earlier one and are capped at ``max_pause``.
        The bucket is emptied; when the pause ends one request may go and the
        rest follow at ``rate``. Returns the pause applied.
        """
        seconds = self.default_penalty if retry_after is None else retry_after
        seconds = min(max(0.0, seconds), self.max_pause) if not math.isnan(seconds) else self.default_penalty
        now = self._refill()
        self._paused_until = max(self._paused_until, now + seconds)
        self._tokens = 0.0
        self._penalties += 1
        return seconds

    def observe_headers(self, headers: Mapping[str, str] | None, *, status: int | None = None) -> float | None:
        """Adapt to a response's rate-limit headers; returns the pause applied, if any.

        * ``Retry-After`` (on an error status, or when ``status`` is not given)
          pauses for that long;
        * a remaining quota of 0 (``RateLimit``, ``RateLimit-Remaining``,
          ``X-RateLimit-Remaining``) pauses until the advertised reset;
        * a positive remaining quota caps the tokens on hand, so the server's
          view wins over ours;
        * a 429 without any hint pauses for ``default_penalty``.
        """
        info = parse_rate_limit_headers(headers, self._clock.now(), cap=self.max_pause)
        pause: float | None = None
        if info.retry_after is not None and (status is None or status >= 400):
            pause = info.retry_after
        elif info.remaining is not None and info.remaining <= 0:
            pause = info.reset_after if info.reset_after is not None else self.default_penalty
        elif info.remaining is not None:
            self._refill()
            self._tokens = min(self._tokens, float(info.remaining))
        if pause is None and status == 429:
            pause = self.default_penalty
        return self.penalize(pause) if pause is not None else None

    def snapshot(self) -> dict[str, Any]:
        """State for ``seamline status``."""
        tokens = self.tokens
        return {
            "name": self.name,
            "rate_per_second": None if self._unlimited else self.rate,
            "burst": None if math.isinf(self.burst) else self.burst,
            "tokens": None if math.isinf(tokens) else round(tokens, 3),
            "paused_for": round(self.paused_for, 3),
            "waiting": self._waiting,
            "penalties": self._penalties,
        }

    def __repr__(self) -> str:
        rate = "unlimited" if self._unlimited else f"{self.rate:g}/s"
        return f"TokenBucket({self.name!r}, rate={rate}, burst={self.burst:g})"


def _key(endpoint: str) -> str:
    return endpoint_key(endpoint) if "://" in endpoint else endpoint


class RateLimiterRegistry:
    """One :class:`TokenBucket` per endpoint (``scheme://host:port``, or any name).

    Endpoints without their own limit get ``default_rate`` (``None``: no limit
    of our own, but the server's 429s and quota headers are still honoured).
    """

    def __init__(
        self,
        *,
        default_rate: str | float | None = None,
        default_burst: float | None = None,
        limits: Mapping[str, str | float] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if default_rate is not None:
            parse_rate(default_rate)  # fail at configuration time
        self._default_rate = default_rate
        self._default_burst = default_burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        for endpoint, rate in (limits or {}).items():
            self.configure(endpoint, rate)

    def configure(self, endpoint: str, rate: str | float | None, *, burst: float | None = None) -> TokenBucket:
        """Set (or replace) the limit of one endpoint."""
        key = _key(endpoint)
        bucket = TokenBucket(rate, burst=burst, clock=self._clock, name=key)
        self._buckets[key] = bucket
        return bucket

    def get(self, endpoint: str) -> TokenBucket:
        """The bucket of ``endpoint`` (a URL or a name), created with the defaults if new."""
        key = _key(endpoint)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self._default_rate, burst=self._default_burst, clock=self._clock, name=key)
            self._buckets[key] = bucket
        return bucket

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every bucket's state, by endpoint."""
        return {key: bucket.snapshot() for key, bucket in self._buckets.items()}

    def __contains__(self, endpoint: object) -> bool:
        return isinstance(endpoint, str) and _key(endpoint) in self._buckets

    def __iter__(self) -> Iterator[TokenBucket]:
        return iter(list(self._buckets.values()))

    def __len__(self) -> int:
        return len(self._buckets)
