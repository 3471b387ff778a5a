"""Retry policy: bounded attempts, exponential backoff with full jitter, a cap."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["DEFAULT_RETRY", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again and how long to wait.

    ``max_attempts`` counts every attempt including the first, so 5 means one
    try and four retries. The delay before retry *n* (n >= 1) is drawn
    uniformly from ``[0, min(cap, initial * multiplier**(n-1))]`` ("full
    jitter"), and never shorter than a ``Retry-After`` the target asked for.
    ``max_elapsed`` bounds the total time since the first attempt.
    """

    max_attempts: int = 5
    initial: float = 0.5
    multiplier: float = 2.0
    cap: float = 300.0
    max_elapsed: float | None = None
    jitter: bool = True

    def delay(self, retry_number: int, *, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry_number`` (1-based)."""
        ceiling = min(self.cap, self.initial * (self.multiplier ** max(0, retry_number - 1)))
        d = (rng or random).uniform(0.0, ceiling) if self.jitter else ceiling
        if retry_after is not None and retry_after > d:
            d = retry_after
        return d

    def gives_up(self, attempts_made: int, *, first_attempt_at: float, now: float, next_delay: float) -> bool:
        """True when no further attempt is allowed."""
        if attempts_made >= self.max_attempts:
            return True
        return self.max_elapsed is not None and (now + next_delay - first_attempt_at) > self.max_elapsed


DEFAULT_RETRY = RetryPolicy()
