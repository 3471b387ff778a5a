"""Errors raised by the security layer.

Every error carries a stable dotted ``code``. Callers at the edge (webhook
ingress, admin API) map them to responses: a :class:`SignatureError` or an
:class:`AuthError` is a 401, an :class:`EgressError` refuses an outbound call,
and :class:`AuthUnavailableError` (the key server could not be reached) is the
one retryable case, a 503.

Messages never contain secret values, expected signatures or key material.
"""

from __future__ import annotations

from typing import Any

from seamline.core.errors import FatalError, RetryableError

__all__ = [
    "AuthError",
    "AuthUnavailableError",
    "EgressError",
    "SecurityError",
    "SignatureError",
]


class SecurityError(FatalError):
    """Base of the fatal security errors: retrying the same input cannot help."""

    code = "security.error"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message, code=code, details=details)


class SignatureError(SecurityError):
    """A webhook signature is missing, malformed, stale or does not match.

    Codes: ``signature.missing``, ``signature.malformed``, ``signature.mismatch``,
    ``signature.timestamp_missing``, ``signature.timestamp_malformed``,
    ``signature.timestamp_out_of_range``, ``signature.too_many``,
    ``signature.header_too_long``, ``signature.id_malformed``,
    ``signature.scheme_unknown``, ``signature.secret_invalid``,
    ``signature.config_invalid``.
    """

    code = "signature.mismatch"


class AuthError(SecurityError):
    """A bearer token (JWT) or its key material is not acceptable.

    Token codes: ``auth.jwt.malformed``, ``auth.jwt.too_large``,
    ``auth.jwt.alg_forbidden``, ``auth.jwt.kid_unknown``, ``auth.jwt.key_mismatch``,
    ``auth.jwt.signature``, ``auth.jwt.expired``, ``auth.jwt.not_yet_valid``,
    ``auth.jwt.claim_missing``, ``auth.jwt.claim_invalid``, ``auth.jwt.audience``,
    ``auth.jwt.issuer``, ``auth.jwt.scope``. Configuration codes:
    ``auth.jwt.config``, ``auth.jwk.invalid``.
    """

    code = "auth.jwt.malformed"


class AuthUnavailableError(RetryableError):
    """The key set (JWKS) could not be fetched and no usable cached copy exists.

    Code ``auth.jwks.unavailable``. Retryable: the token may be fine, the key
    server is not.
    """

    code = "auth.jwks.unavailable"


class EgressError(SecurityError):
    """An outbound connection was refused by the egress policy.

    Codes: ``egress.blocked`` (the address is in a forbidden range),
    ``egress.not_allowed`` (the host is not on the allow list),
    ``egress.invalid`` (the URL or host cannot be checked).
    """

    code = "egress.blocked"
