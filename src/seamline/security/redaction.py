"""Remove credentials before anything is written to the journal, the DLQ or logs.

- :func:`redact_headers` replaces the values of credential-bearing headers.
- :func:`redact_fields` replaces configured payload fields (dotted paths with
  ``*`` for one level and ``**`` for any depth).
- :func:`scrub_text` removes every known secret value, DSN passwords,
  ``Bearer``/``Basic`` credentials and credential query parameters from text.

All functions return new objects; their input is never modified.
"""

from __future__ import annotations

import fnmatch
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from seamline.security.secrets import known_secret_values

__all__ = ["REDACTED", "is_sensitive_header", "redact_fields", "redact_headers", "scrub_text"]

#: what a redacted value is replaced with
REDACTED = "[REDACTED]"

_SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "apikey"}
)
_SENSITIVE_PARTS = (
    "token",
    "secret",
    "signature",
    "password",
    "passwd",
    "credential",
    "api-key",
    "api_key",
    "apikey",
    "auth",
    "session",
    "cookie",
    "hmac",
)
_DSN = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*):(?P<password>[^\s/?#]*)@")
_SCHEME_CREDENTIAL = re.compile(r"(?i)\b(?P<scheme>bearer|basic)(?P<sep>\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})")
_CREDENTIAL_LIKE = re.compile(r"[0-9._~+/=-]|.[A-Z]")  # prose words ("Basic authentication") have none
_QUERY_CREDENTIAL = re.compile(
    r"(?i)(?P<key>[?&;](?:access_token|refresh_token|id_token|token|api_key|apikey|key|secret|"
    r"client_secret|password|passwd|sig|signature|code)=)[^&#\s]*"
)
_secrets_cache: tuple[frozenset[str], re.Pattern[str] | None] = (frozenset(), None)


def is_sensitive_header(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether a header with this name carries a credential (``extra``: more names or globs)."""
    lower = name.lower()
    if lower in _SENSITIVE_HEADERS or any(part in lower for part in _SENSITIVE_PARTS):
        return True
    return any(fnmatch.fnmatchcase(lower, pattern.lower()) for pattern in extra)


def redact_headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]], extra: Iterable[str] = ()) -> dict[str, str]:
    """A copy of ``headers`` with credential values replaced by ``[REDACTED]``.

    Values of the other headers are passed through :func:`scrub_text`. A
    header given several times (a multidict) keeps all values, joined by
    ``", "``. Bytes values are decoded as Latin-1, as HTTP does.
    """
    extra = tuple(extra)
    items = headers.items() if isinstance(headers, Mapping) or hasattr(headers, "items") else headers
    result: dict[str, str] = {}
    for name, value in items:
        key = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        text = REDACTED if is_sensitive_header(key, extra) else scrub_text(text)
        result[key] = text if key not in result or text == REDACTED else f"{result[key]}, {text}"
    return result


def _split_path(path: str) -> list[str]:
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ValueError(f"invalid field path {path!r}")
    return parts


def _redact(value: Any, path: Sequence[str]) -> Any:
    if not path:
        return REDACTED
    head, rest = path[0], path[1:]
    if head == "**":
        # zero levels here, or one level down keeping '**'
        value = _redact(value, rest) if rest else REDACTED
        if isinstance(value, Mapping):
            return {k: _redact(v, path) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [_redact(v, path) for v in value]
        return value
    if isinstance(value, Mapping):
        return {k: (_redact(v, rest) if head == "*" or k == head else v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        index = int(head) if head.isdigit() else None
        return [_redact(v, rest) if head == "*" or i == index else v for i, v in enumerate(value)]
    return value


def redact_fields(obj: Any, paths: Iterable[str]) -> Any:
    """A copy of ``obj`` (parsed JSON-like data) with the fields at ``paths`` replaced.

    A path is dotted: ``customer.card.number``; ``*`` matches any key or list
    index at one level (``items.*.cvv``), ``**`` any number of levels
    (``**.password``), a number selects a list index (``items.0.cvv``).
    Paths that do not exist are ignored.
    """
    result = obj
    for path in paths:
        result = _redact(result, _split_path(path))
    return result


def _secrets_pattern() -> re.Pattern[str] | None:
    global _secrets_cache
    values = known_secret_values()
    cached_values, pattern = _secrets_cache
    if values != cached_values:
        forms = {v for v in values if v}
        forms |= {urllib.parse.quote(v, safe="") for v in forms} | {urllib.parse.quote_plus(v) for v in forms}
        ordered = sorted(forms, key=len, reverse=True)  # longest first: no partial leftovers
        pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        _secrets_cache = (values, pattern)
    return pattern


def _scheme_credential(match: re.Match[str]) -> str:
    if not _CREDENTIAL_LIKE.search(match["value"]):
        return match[0]
    return f"{match['scheme']}{match['sep']}{REDACTED}"


def scrub_text(text: str) -> str:
    """``text`` without secret values, DSN passwords and inline credentials.

    Removes every value known to :func:`seamline.security.secrets.known_secret_values`
    (also percent-encoded), rewrites ``scheme://user:pass@host`` to
    ``scheme://user:***@host``, ``Bearer <token>`` to ``Bearer [REDACTED]``
    and credential query parameters (``?access_token=...``) to ``[REDACTED]``.
    """
    if not isinstance(text, str):
        text = str(text)
    pattern = _secrets_pattern()
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _DSN.sub(r"\g<head>:***@", text)
    text = _SCHEME_CREDENTIAL.sub(_scheme_credential, text)
    return _QUERY_CREDENTIAL.sub(lambda m: f"{m['key']}{REDACTED}", text)
