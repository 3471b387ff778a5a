"""Resilience: retry policy, circuit breakers, rate limits, bulkheads, HTTP error classification."""

from __future__ import annotations

from seamline.resilience.breaker import BreakerRegistry, BreakerState, CircuitBreaker, CircuitOpenError
from seamline.resilience.bulkhead import Bulkhead, BulkheadFullError, CallTimeoutError
from seamline.resilience.http_classify import classify_status, error_for_response, parse_retry_after
from seamline.resilience.ratelimit import RateLimiterRegistry, TokenBucket, parse_rate
from seamline.resilience.retry import DEFAULT_RETRY, RetryPolicy

__all__ = [
    "DEFAULT_RETRY",
    "BreakerRegistry",
    "BreakerState",
    "Bulkhead",
    "BulkheadFullError",
    "CallTimeoutError",
    "CircuitBreaker",
    "CircuitOpenError",
    "RateLimiterRegistry",
    "RetryPolicy",
    "TokenBucket",
    "classify_status",
    "error_for_response",
    "parse_rate",
    "parse_retry_after",
]
