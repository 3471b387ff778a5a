"""What an HTTP answer means for delivery: ok, retry later, or dead-letter now.

This module holds the HTTP knowledge shared by the resilience primitives:

* :func:`classify_status` maps a status code (and a few headers) to a verdict;
* :func:`parse_retry_after` reads ``Retry-After`` (delta-seconds or HTTP-date,
  RFC 9110 section 10.2.3) and never raises on garbage;
* :func:`parse_rate_limit_headers` reads ``Retry-After``, the IETF draft
  ``RateLimit``/``RateLimit-*`` fields and the de-facto ``X-RateLimit-*`` ones;
* :func:`error_for_response` builds the :class:`RetryableError` or
  :class:`FatalError` the runtime acts on, with a stable ``http.status.NNN`` code;
* :func:`endpoint_key` names the endpoint a URL talks to, the key of the
  breaker and rate-limit registries.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Literal, TypeAlias, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from seamline.core.errors import FatalError, RetryableError
from seamline.security.secrets import known_secret_values

__all__ = [
    "DEFAULT_MAX_RETRY_AFTER",
    "RETRYABLE_STATUSES",
    "RateLimitInfo",
    "Verdict",
    "classify_status",
    "endpoint_key",
    "error_for_response",
    "get_header",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "redact_url",
]

Verdict: TypeAlias = Literal["ok", "retryable", "fatal"]
Headers: TypeAlias = Mapping[str, str]

_VERDICTS: frozenset[str] = frozenset({"ok", "retryable", "fatal"})

#: 4xx codes worth retrying: Request Timeout, Too Early, Too Many Requests
RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 425, 429})

#: the longest wait any server header can impose (a day, e.g. a long maintenance window); larger values are capped
DEFAULT_MAX_RETRY_AFTER = 86400.0

_DELTA = re.compile(r"\d{1,30}(?:\.\d{1,9})?")
_INT = re.compile(r"\d{1,18}")
_EPOCH_MS = 1e12  # a reset value above this is epoch milliseconds
_EPOCH_S = 1e9  # above this (about 2001-09-09) epoch seconds; below, delta seconds
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SENSITIVE_QUERY = re.compile(r"key|token|secret|pass|sig|auth|code|credential|session", re.I)
_SNIPPET_CHARS = 300


# -- headers -------------------------------------------------------------------------------------


def get_header(headers: Headers | None, name: str) -> str | None:
    """Return header ``name`` case-insensitively from any mapping (aiohttp's or a plain dict)."""
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


# -- classification ------------------------------------------------------------------------------


def _check_verdict(value: str, key: object) -> Verdict:
    if value not in _VERDICTS:
        raise ValueError(f"status override {key!r} -> {value!r} is invalid: use 'ok', 'retryable' or 'fatal'")
    return cast(Verdict, value)


def _override_for(status: int, overrides: Mapping[int | str, str]) -> Verdict | None:
    """Exact code first (``404`` or ``"404"``), then its class (``"4xx"``)."""
    for key in (status, str(status), f"{status // 100}xx", f"{status // 100}XX"):
        if key in overrides:
            return _check_verdict(overrides[key], key)
    return None


def _signals_rate_limit(headers: Headers | None) -> bool:
    """A 4xx that says "come back later" (GitHub's 403 rate limits, for one)."""
    info = parse_rate_limit_headers(headers)
    return info.retry_after is not None or info.remaining == 0


def classify_status(
    status: int,
    headers: Headers | None = None,
    overrides: Mapping[int | str, str] | None = None,
) -> Verdict:
    """Say what an HTTP status means for delivery.

    * ``ok``: 2xx;
    * ``retryable``: 408, 425, 429 and every 5xx except 501, plus any other
      4xx that carries ``Retry-After`` or an exhausted rate-limit header;
    * ``fatal``: other 4xx, 501, and final 1xx/3xx answers (a redirect that was
      not followed means the message did not arrive) or out-of-range codes.

    ``overrides`` maps a code (``409``, ``"409"``) or a class (``"4xx"``) to a
    verdict and wins over the table above.
    """
    if overrides:
        chosen = _override_for(status, overrides)
        if chosen is not None:
            return chosen
    if 200 <= status <= 299:
        return "ok"
    if status in RETRYABLE_STATUSES:
        return "retryable"
    if 500 <= status <= 599:
        return "fatal" if status == 501 else "retryable"
    if 400 <= status <= 499 and _signals_rate_limit(headers):
        return "retryable"
    return "fatal"


# -- Retry-After and rate-limit headers ----------------------------------------------------------


def _clamp(seconds: float, cap: float) -> float:
    if math.isnan(seconds):
        return 0.0
    return min(max(seconds, 0.0), cap)


def parse_retry_after(
    value: str | None, now: float | None = None, *, cap: float = DEFAULT_MAX_RETRY_AFTER
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or ``None`` when it is absent or garbage.

    Accepts delta-seconds (``"120"``, leniently ``"1.5"``) and HTTP-dates in
    the three RFC 9110 forms (IMF-fixdate, RFC 850, asctime). ``now`` is the
    current Unix time (defaults to the system clock). A date in the past gives
    ``0.0``; anything above ``cap`` gives ``cap``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA.fullmatch(text):
        return _clamp(float(text), cap)
    if not any(c.isalpha() for c in text) or len(text) > 64:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime carries no zone; HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    try:
        target = when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    current = time.time() if now is None else now
    return _clamp(target - current, cap)


@dataclass(frozen=True)
class RateLimitInfo:
    """What a response said about the caller's quota (``None`` = not said)."""

    limit: int | None = None
    remaining: int | None = None
    #: seconds until the quota window resets
    reset_after: float | None = None
    #: seconds from ``Retry-After``
    retry_after: float | None = None

    @property
    def wait(self) -> float | None:
        """How long to hold off: ``Retry-After``, else the reset time of an exhausted quota."""
        if self.retry_after is not None:
            return self.retry_after
        if self.remaining == 0:
            return self.reset_after
        return None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    head = value.split(",", 1)[0].split(";", 1)[0].strip()  # "100, 100;w=60" -> "100"
    return int(head) if _INT.fullmatch(head) else None


def _reset_after(value: str | None, now: float, cap: float) -> float | None:
    """A reset given as delta seconds, epoch seconds or epoch milliseconds (or an HTTP-date)."""
    if value is None:
        return None
    text = value.strip()
    if not _DELTA.fullmatch(text):
        return parse_retry_after(text, now, cap=cap) if any(c.isalpha() for c in text) else None
    number = float(text)
    if number >= _EPOCH_MS:
        number = number / 1000.0 - now
    elif number >= _EPOCH_S:
        number -= now
    return _clamp(number, cap)


_STRUCTURED = re.compile(r"(?:^|[;,\s])(r|t|remaining|reset|limit)\s*=\s*(\d{1,18})", re.I)


def _structured_ratelimit(value: str | None) -> tuple[int | None, int | None, int | None]:
    """Parse the IETF draft ``RateLimit`` field: ``"default";r=50;t=30`` or ``limit=100, remaining=5, reset=9``.

    With several policies the most restrictive (least remaining) one is used.
    Returns ``(limit, remaining, reset_seconds)``.
    """
    if not value:
        return None, None, None
    best: tuple[int | None, int | None, int | None] = (None, None, None)
    items = value.split(",") if re.search(r"\b(r|t)\s*=", value) else [value]
    for item in items:
        params = {k.lower(): int(v) for k, v in _STRUCTURED.findall(item)}
        remaining = params.get("r", params.get("remaining"))
        reset = params.get("t", params.get("reset"))
        limit = params.get("limit")
        if remaining is None and reset is None and limit is None:
            continue
        if best == (None, None, None) or (remaining is not None and (best[1] is None or remaining < best[1])):
            best = (limit, remaining, reset)
    return best


def parse_rate_limit_headers(
    headers: Headers | None, now: float | None = None, *, cap: float = DEFAULT_MAX_RETRY_AFTER
) -> RateLimitInfo:
    """Read every rate-limit hint of a response; never raises.

    The IETF draft fields (``RateLimit``, ``RateLimit-Limit``/``-Remaining``/
    ``-Reset``, reset in delta seconds) win over the ``X-RateLimit-*`` family,
    whose reset may be delta seconds, epoch seconds or epoch milliseconds.
    """
    if not headers:
        return RateLimitInfo()
    current = time.time() if now is None else now
    retry_after = parse_retry_after(get_header(headers, "Retry-After"), current, cap=cap)

    limit, remaining, reset_int = _structured_ratelimit(get_header(headers, "RateLimit"))
    reset_after = _clamp(float(reset_int), cap) if reset_int is not None else None
    for prefix in ("RateLimit-", "X-RateLimit-", "X-Rate-Limit-"):
        if remaining is None:
            remaining = _int(get_header(headers, prefix + "Remaining"))
        if limit is None:
            limit = _int(get_header(headers, prefix + "Limit"))
        if reset_after is None:
            raw = get_header(headers, prefix + "Reset")
            if prefix == "RateLimit-":  # the draft says delta seconds, always
                parsed = _int(raw)
                reset_after = _clamp(float(parsed), cap) if parsed is not None else None
            else:
                reset_after = _reset_after(raw, current, cap)
    return RateLimitInfo(limit=limit, remaining=remaining, reset_after=reset_after, retry_after=retry_after)


# -- errors --------------------------------------------------------------------------------------


def _scrub(text: str) -> str:
    for secret in known_secret_values():
        if secret in text:
            text = text.replace(secret, "**********")
    return text


def redact_url(url: str) -> str:
    """The URL without user-info and with credential-like query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _scrub(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        pairs: Iterable[tuple[str, str]] = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SENSITIVE_QUERY.search(k) else v) for k, v in pairs], safe="*")
    return _scrub(urlunsplit((parts.scheme, netloc, parts.path, query, "")))


def _snippet(body: bytes | str | None) -> str:
    if body is None:
        return ""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    if len(text) > _SNIPPET_CHARS:
        text = text[:_SNIPPET_CHARS] + "..."
    return _scrub(text)


_HINTS: dict[int, str] = {
    400: "the target rejected the payload; check the mapping and the target's contract",
    401: "check the credentials configured for this endpoint",
    403: "the credentials lack permission for this resource",
    404: "check the URL and path parameters",
    405: "check the HTTP method",
    409: "the target reports a conflict; override 409 to 'ok' if it means 'already done'",
    413: "the payload is too large for the target",
    415: "check the content type sent",
    422: "the target rejected the payload; check the mapping and the target's contract",
    501: "the target does not implement this method",
}


def error_for_response(
    status: int,
    headers: Headers | None = None,
    body_snippet: bytes | str | None = None,
    url: str | None = None,
    *,
    method: str | None = None,
    now: float | None = None,
    overrides: Mapping[int | str, str] | None = None,
    cap: float = DEFAULT_MAX_RETRY_AFTER,
) -> RetryableError | FatalError:
    """Build the error for a failed HTTP exchange, code ``http.status.NNN``.

    Retryable errors carry ``retry_after`` from ``Retry-After`` (or from the
    reset time of an exhausted rate limit). The URL is redacted and the body
    snippet shortened and scrubbed of known secrets. Raises ``ValueError`` if
    the status is classified ``ok`` (there is no error to build).
    """
    verdict = classify_status(status, headers, overrides)
    if verdict == "ok":
        raise ValueError(f"HTTP {status} is classified 'ok'; there is no error to build")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown Status"
    target = redact_url(url) if url else "the endpoint"
    method = method.upper() if method else None
    prefix = f"{method} " if method else ""
    message = f"{prefix}{target} answered HTTP {status} {phrase}"
    snippet = _snippet(body_snippet)
    details: dict[str, object] = {"status": status, "url": target if url else None, "method": method}
    if snippet:
        details["body"] = snippet
        message += f": {snippet}"
    code = f"http.status.{status}"
    if verdict == "retryable":
        wait = parse_rate_limit_headers(headers, now, cap=cap).wait
        if wait is not None:
            message += f" (retry after {wait:g}s)"
        details["retry_after"] = wait
        return RetryableError(message, code=code, retry_after=wait, details=details)
    hint = _HINTS.get(status)
    if 300 <= status <= 399:
        location = get_header(headers, "Location")
        hint = "a redirect was not followed" + (f" (Location: {redact_url(location)})" if location else "")
    if hint:
        message += f" ({hint})"
    return FatalError(message, code=code, details=details)


# -- endpoints -----------------------------------------------------------------------------------


def endpoint_key(url: str) -> str:
    """``scheme://host:port`` of a URL, lower-cased with default ports filled in.

    ``https://API.example.com/v1/orders?x=1`` and ``https://api.example.com:443``
    give the same key, so every call to one endpoint shares one breaker and one
    rate limit. Raises ``ValueError`` for a URL without scheme or host.
    """
    parts = urlsplit(url.strip())
    host = parts.hostname
    if not parts.scheme or not host:
        raise ValueError(f"endpoint {url!r} needs a scheme and a host, e.g. 'https://api.example.com'")
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + (f":{port}" if port else "")
