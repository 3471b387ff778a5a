"""Verify signed webhook deliveries before they are accepted.

:func:`verify` checks a delivery against one of the known schemes
(``standard-webhooks``, ``stripe``, ``github``, ``shopify``) and returns its
delivery id; :class:`HmacScheme` / :func:`verify_hmac` cover any other
provider that signs with an HMAC in a header.

Every failure, whatever the input (wrong types, invalid UTF-8, CRLF, a
thousand signatures, ``nan`` timestamps), is a
:class:`~seamline.security.errors.SignatureError` with a stable ``code``;
nothing else escapes. Comparisons are constant time, the number of
signatures examined and the header length are capped, and messages never
contain the expected signature.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from seamline.security.errors import SignatureError
from seamline.security.secrets import Secret

__all__ = [
    "DEFAULT_TOLERANCE",
    "MAX_HEADER_LENGTH",
    "MAX_SIGNATURES",
    "SCHEMES",
    "HeaderView",
    "HmacScheme",
    "verify",
    "verify_hmac",
]

#: seconds a signed timestamp may differ from now, in either direction
DEFAULT_TOLERANCE = 300
#: signatures examined in one header; more is refused (``signature.too_many``)
MAX_SIGNATURES = 20
#: characters in one signature header; more is refused (``signature.header_too_long``)
MAX_HEADER_LENGTH = 8192
#: the known schemes accepted by :func:`verify`
SCHEMES = ("standard-webhooks", "stripe", "github", "shopify")

_TIMESTAMP = re.compile(r"-?[0-9]{1,19}", re.ASCII)
_DELIVERY_ID = re.compile(r"[\x21-\x7e]{1,256}", re.ASCII)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+", re.ASCII)
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}", re.ASCII)
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}", re.ASCII)
_PLACEHOLDER = re.compile(r"\{(body|timestamp|id)\}")
_DIGESTS = ("sha1", "sha256", "sha384", "sha512")
_ENCODINGS = ("hex", "base64", "base64url")
_INVALID = object()  # a header value that is neither str nor bytes


def _fail(code: str, message: str) -> SignatureError:
    return SignatureError(message, code=f"signature.{code}")


# --- inputs -----------------------------------------------------------------


class _Headers:
    """Case-insensitive view of any header mapping (dict, multidict, pairs)."""

    __slots__ = ("_values",)

    @classmethod
    def from_lists(cls, values: dict[str, list[str]]) -> _Headers:
        """A view over headers a caller has already split: lower-case names, every value as text,
        in order. Taken over as it is (no copy): the caller must not change it afterwards."""
        view = cls.__new__(cls)
        view._values = values  # type: ignore[assignment]
        return view

    def __init__(self, headers: object) -> None:
        self._values: dict[str, list[object]] = {}
        values = self._values
        try:
            source: Any = headers
            items: Iterable[Any] = source.items() if hasattr(source, "items") else source
            for pair in items:
                name, value = pair
                if type(name) is not str or type(value) is not str:
                    name = _as_text(name)
                    if not isinstance(name, str):
                        continue
                    value = _as_text(value)
                key = name.lower()
                got = values.get(key)
                if got is None:
                    values[key] = [value]
                else:
                    got.append(value)
        except Exception:  # whatever the object is, it is not usable headers
            raise _fail("malformed", "headers must be a mapping of header names to values") from None

    def get(self, name: str) -> str | None:
        """The single value of ``name``; a header given twice with different values is malformed."""
        values = self._values.get(name.lower())
        if not values:
            return None
        first = values[0]
        if len(values) > 1 and any(v != first for v in values[1:]):
            raise _fail("malformed", f"header {name!r} is given more than once with different values")
        if not isinstance(first, str):
            raise _fail("malformed", f"header {name!r} is not text")
        return first


#: a header view built once by a receiver that already split its headers (``HeaderView.from_lists``)
HeaderView = _Headers


def _as_text(value: object) -> object:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    return _INVALID


def _body_bytes(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    raise _fail("malformed", "body must be the raw request bytes, exactly as received")


def _secret_value(secret: object) -> str | bytes:
    if isinstance(secret, Secret):
        try:
            secret = secret.reveal()
        except Exception:
            raise _fail("secret_invalid", "the secret cannot be read") from None
    if isinstance(secret, bytes | bytearray | memoryview):
        value: str | bytes = bytes(secret)
    elif isinstance(secret, str):
        value = secret
    else:
        raise _fail("secret_invalid", "the secret must be a string, bytes or a Secret")
    if not value:
        raise _fail("secret_invalid", "the secret is empty")
    return value


def _hmac_key(secret: object) -> bytes:
    value = _secret_value(secret)
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("utf-8")
    except UnicodeError:
        raise _fail("secret_invalid", "the secret is not valid text") from None


def _clock(now: object, tolerance: object) -> tuple[float, float]:
    if now is None:
        now = time.time()
    if type(now) is float and type(tolerance) is int and tolerance >= 0 and math.isfinite(now):
        return now, float(tolerance)  # the common case, without the checks below
    for name, value in (("now", now), ("tolerance", tolerance)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail("config_invalid", f"{name} must be a number of seconds")
        try:
            as_float = float(value)
        except OverflowError:
            raise _fail("config_invalid", f"{name} is out of range") from None
        if not math.isfinite(as_float) or (name == "tolerance" and as_float < 0):
            raise _fail("config_invalid", f"{name} must be a finite number" + (" >= 0" if name == "tolerance" else ""))
    return float(now), float(tolerance)  # type: ignore[arg-type]


def _delivery_id(headers: _Headers, name: str, *, required: bool) -> str | None:
    value = headers.get(name)
    if value is None:
        if required:
            raise _fail("missing", f"header {name!r} is missing")
        return None
    if not _DELIVERY_ID.fullmatch(value):
        raise _fail("id_malformed", f"header {name!r} must be 1-256 visible ASCII characters")
    return value


def _check_timestamp(raw: str, now: float, tolerance: float) -> None:
    if len(raw) > 20 or not _TIMESTAMP.fullmatch(raw):
        raise _fail("timestamp_malformed", "the signed timestamp must be whole Unix seconds")
    skew = now - int(raw)
    if abs(skew) > tolerance:
        when = "in the past" if skew > 0 else "in the future"
        raise _fail(
            "timestamp_out_of_range",
            f"the signed timestamp is {abs(skew):.0f} s {when}; at most {tolerance:.0f} s is accepted",
        )


def _split(value: str, sep: str, *, limit: int) -> list[str]:
    if value.count(sep) + 1 > limit:
        raise _fail("too_many", f"more than {MAX_SIGNATURES} signatures in one header")
    if len(value) > MAX_HEADER_LENGTH:
        raise _fail("header_too_long", f"signature header longer than {MAX_HEADER_LENGTH} characters")
    return [part for part in value.split(sep) if part]


def _decode(text: str, encoding: str) -> bytes | None:
    """Strictly decode a signature; ``None`` when it is not valid in ``encoding``."""
    try:
        if encoding == "hex":
            return bytes.fromhex(text) if _HEX.fullmatch(text) else None
        if encoding == "base64url":
            if not _B64URL.fullmatch(text):
                return None
            bare = text.rstrip("=")
            return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
        if not _B64.fullmatch(text):
            return None
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None


# --- Standard Webhooks -------------------------------------------------------


@dataclass(frozen=True)
class _SwKeys:
    hmac_key: bytes | None = None
    public_key: Ed25519PublicKey | None = None


def _b64_key(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True) if _B64.fullmatch(text) else b""
    except (ValueError, binascii.Error):
        raw = b""
    if not raw:
        raise _fail("secret_invalid", f"the {what} is not valid base64")
    return raw


def _ed25519_ok(key: Ed25519PublicKey, message: bytes, signature: bytes) -> bool:
    """Strict Ed25519 verification (RFC 8032: 64-byte signatures, canonical S)."""
    if len(signature) != 64:
        return False
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _sw_keys(secret: object) -> _SwKeys:
    value = _secret_value(secret)
    if isinstance(value, bytes):
        return _SwKeys(hmac_key=value)
    if value.startswith("whpk_"):
        raw = _b64_key(value[5:], "whpk_ public key")
        if len(raw) != 32:
            raise _fail("secret_invalid", "a whpk_ public key must hold 32 bytes")
        try:
            return _SwKeys(public_key=Ed25519PublicKey.from_public_bytes(raw))
        except ValueError:
            raise _fail("secret_invalid", "the whpk_ public key is not an Ed25519 key") from None
    if value.startswith("whsk_"):
        raw = _b64_key(value[5:], "whsk_ secret key")
        if len(raw) not in (32, 64):
            raise _fail("secret_invalid", "a whsk_ secret key must hold 32 or 64 bytes")
        public = Ed25519PrivateKey.from_private_bytes(raw[:32]).public_key()
        if len(raw) == 64 and not hmac.compare_digest(raw[32:], public.public_bytes_raw()):
            raise _fail("secret_invalid", "the whsk_ secret key does not match its public half")
        return _SwKeys(public_key=public)
    body = value.removeprefix("whsec_")
    return _SwKeys(hmac_key=_b64_key(body, "whsec_ secret"))


def _header_first(headers: _Headers, *names: str) -> str | None:
    for name in names:
        value = headers.get(name)
        if value is not None:
            return value
    return None


def _verify_standard(secret: object, headers: _Headers, body: bytes, now: float, tolerance: float) -> str | None:
    keys = _sw_keys(secret)
    msg_id = _header_first(headers, "webhook-id", "svix-id")
    timestamp = _header_first(headers, "webhook-timestamp", "svix-timestamp")
    signatures = _header_first(headers, "webhook-signature", "svix-signature")
    if msg_id is None or signatures is None:
        raise _fail("missing", "headers 'webhook-id' and 'webhook-signature' are required")
    if timestamp is None:
        raise _fail("timestamp_missing", "header 'webhook-timestamp' is missing")
    if not _DELIVERY_ID.fullmatch(msg_id):
        raise _fail("id_malformed", "header 'webhook-id' must be 1-256 visible ASCII characters")
    _check_timestamp(timestamp, now, tolerance)
    entries = _split(signatures, " ", limit=MAX_SIGNATURES)
    if not entries:
        raise _fail("missing", "header 'webhook-signature' is empty")
    content = f"{msg_id}.{timestamp}.".encode("ascii") + body
    expected = hmac.digest(keys.hmac_key, content, "sha256") if keys.hmac_key is not None else None
    malformed = False
    for entry in entries:
        version, sep, encoded = entry.partition(",")
        if not sep:
            malformed = True
            continue
        usable = (version == "v1" and expected is not None) or (version == "v1a" and keys.public_key is not None)
        if not usable:
            continue
        sig = _decode(encoded, "base64")
        if sig is None:
            malformed = True
        elif version == "v1" and expected is not None:
            if hmac.compare_digest(sig, expected):
                return msg_id
        elif keys.public_key is not None and _ed25519_ok(keys.public_key, content, sig):
            return msg_id
    if malformed:
        raise _fail("malformed", "header 'webhook-signature' holds an entry that is not 'version,base64'")
    kind = "v1 (HMAC)" if expected is not None else "v1a (Ed25519)"
    raise _fail("mismatch", f"no {kind} signature in 'webhook-signature' matches the body")


# --- Stripe --------------------------------------------------------------------


def _verify_stripe(secret: object, headers: _Headers, body: bytes, now: float, tolerance: float) -> None:
    key = _hmac_key(secret)
    header = headers.get("stripe-signature")
    if not header:
        raise _fail("missing", "header 'Stripe-Signature' is missing")
    timestamp: str | None = None
    v1: list[str] = []
    for item in _split(header, ",", limit=MAX_SIGNATURES + 1):
        name, sep, value = item.partition("=")
        if not sep:
            raise _fail("malformed", "header 'Stripe-Signature' must be 't=...,v1=...'")
        if name == "t":
            if timestamp is not None:
                raise _fail("malformed", "header 'Stripe-Signature' holds two timestamps")
            timestamp = value
        elif name == "v1":
            v1.append(value)
    if timestamp is None:
        raise _fail("timestamp_missing", "header 'Stripe-Signature' has no 't=' timestamp")
    if not v1:
        raise _fail("missing", "header 'Stripe-Signature' has no v1 signature")
    _check_timestamp(timestamp, now, tolerance)
    expected = hmac.digest(key, timestamp.encode("ascii") + b"." + body, "sha256")
    malformed = False
    for encoded in v1:
        sig = _decode(encoded, "hex")
        if sig is None:
            malformed = True
        elif hmac.compare_digest(sig, expected):
            return None
    if malformed:
        raise _fail("malformed", "a v1 signature in 'Stripe-Signature' is not hex")
    raise _fail("mismatch", "no v1 signature in 'Stripe-Signature' matches the body")


# --- generic HMAC ----------------------------------------------------------------


@dataclass(frozen=True)
class HmacScheme:
    """An HMAC signature carried in one header, described once and reused.

    ``signed_content`` is a template over ``{body}`` (the raw bytes),
    ``{timestamp}`` (the value of ``timestamp_header``, checked against the
    tolerance) and ``{id}`` (the value of ``id_header``); any other text is
    signed literally. ``prefix`` (such as ``sha256=``) must start the header
    value; ``separator`` allows several signatures in one header.
    """

    header: str
    algorithm: str = "sha256"
    encoding: Literal["hex", "base64", "base64url"] = "hex"
    prefix: str = ""
    signed_content: str = "{body}"
    timestamp_header: str | None = None
    id_header: str | None = None
    separator: str | None = None
    _parts: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _needs_id: bool = field(init=False, repr=False, compare=False)
    _body_only: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def bad(message: str) -> SignatureError:
            return _fail("config_invalid", message)

        if not isinstance(self.header, str) or not self.header:
            raise bad("header must name the signature header")
        if self.algorithm not in _DIGESTS:
            raise bad(f"algorithm must be one of {list(_DIGESTS)}")
        if self.encoding not in _ENCODINGS:
            raise bad(f"encoding must be one of {list(_ENCODINGS)}")
        if not isinstance(self.prefix, str) or not isinstance(self.signed_content, str):
            raise bad("prefix and signed_content must be strings")
        if self.separator is not None and (not isinstance(self.separator, str) or not self.separator):
            raise bad("separator must be a non-empty string")
        parts = tuple(_PLACEHOLDER.split(self.signed_content))
        names = set(parts[1::2])
        if "body" not in names:
            raise bad("signed_content must contain {body}")
        if "timestamp" in names and not self.timestamp_header:
            raise bad("signed_content uses {timestamp} but no timestamp_header is set")
        if "id" in names and not self.id_header:
            raise bad("signed_content uses {id} but no id_header is set")
        object.__setattr__(self, "_parts", parts)
        object.__setattr__(self, "_needs_id", "id" in names)
        object.__setattr__(self, "_body_only", parts == ("", "body", ""))

    def verify(
        self,
        secret: object,
        headers: object,
        body: object,
        *,
        now: float | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> str | None:
        """Check the signature; return the ``id_header`` value (``None`` when unset or absent)."""
        now_s, tol = _clock(now, tolerance)
        hdrs = headers if type(headers) is _Headers else _Headers(headers)
        data = _body_bytes(body)
        return self._verify(secret, hdrs, data, now_s, tol)

    def _verify(self, secret: object, headers: _Headers, body: bytes, now: float, tolerance: float) -> str | None:
        key = _hmac_key(secret)
        header = headers.get(self.header)
        if not header:
            raise _fail("missing", f"header {self.header!r} is missing")
        delivery = _delivery_id(headers, self.id_header, required=self._needs_id) if self.id_header else None
        timestamp = ""
        if self.timestamp_header:
            raw = headers.get(self.timestamp_header)
            if raw is None:
                raise _fail("timestamp_missing", f"header {self.timestamp_header!r} is missing")
            _check_timestamp(raw, now, tolerance)
            timestamp = raw
        if self._body_only:
            content = body
        else:
            values = {"body": body, "timestamp": timestamp.encode("ascii"), "id": (delivery or "").encode("ascii")}
            content = b"".join(values[part] if i % 2 else part.encode("utf-8") for i, part in enumerate(self._parts))
        expected = hmac.digest(key, content, self.algorithm)
        if self.separator:
            entries = _split(header, self.separator, limit=MAX_SIGNATURES)
        elif len(header) > MAX_HEADER_LENGTH:
            raise _fail("header_too_long", f"signature header longer than {MAX_HEADER_LENGTH} characters")
        else:
            entries = [header]
        malformed = False
        for entry in entries:
            if not entry.startswith(self.prefix):
                malformed = True
                continue
            sig = _decode(entry[len(self.prefix) :], self.encoding)
            if sig is None:
                malformed = True
            elif hmac.compare_digest(sig, expected):
                return delivery
        if malformed:
            raise _fail("malformed", f"header {self.header!r} is not a {self.prefix}<{self.encoding}> signature")
        raise _fail("mismatch", f"the signature in {self.header!r} does not match the body")


def verify_hmac(
    secret: object,
    headers: object,
    body: object,
    *,
    header: str,
    algorithm: str = "sha256",
    encoding: Literal["hex", "base64", "base64url"] = "hex",
    prefix: str = "",
    signed_content: str = "{body}",
    timestamp_header: str | None = None,
    id_header: str | None = None,
    separator: str | None = None,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str | None:
    """Verify a generic HMAC signature; see :class:`HmacScheme` for the options."""
    scheme = HmacScheme(
        header=header,
        algorithm=algorithm,
        encoding=encoding,
        prefix=prefix,
        signed_content=signed_content,
        timestamp_header=timestamp_header,
        id_header=id_header,
        separator=separator,
    )
    return scheme.verify(secret, headers, body, now=now, tolerance=tolerance)


_GITHUB = HmacScheme(header="X-Hub-Signature-256", prefix="sha256=", id_header="X-GitHub-Delivery")
_SHOPIFY = HmacScheme(header="X-Shopify-Hmac-Sha256", encoding="base64", id_header="X-Shopify-Webhook-Id")

_Verifier = Callable[[object, _Headers, bytes, float, float], "str | None"]
_VERIFIERS: dict[str, _Verifier] = {
    "standard-webhooks": _verify_standard,
    "stripe": _verify_stripe,
    "github": _GITHUB._verify,
    "shopify": _SHOPIFY._verify,
}


def verify(
    scheme: str,
    secret: str | bytes | Secret,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | _Headers,
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str | None:
    """Verify a webhook delivery signed with ``scheme``; return its delivery id.

    The id is ``webhook-id`` (Standard Webhooks, signed), ``X-GitHub-Delivery``
    (GitHub) or ``X-Shopify-Webhook-Id`` (Shopify), both unsigned and ``None``
    when absent; Stripe sends no delivery id header, so it is always ``None``
    (the event id is ``id`` in the verified body). ``now`` is Unix seconds
    (default: the current time); ``tolerance`` bounds the clock skew of signed
    timestamps in both directions.

    Raises :class:`SignatureError` for every failure and every malformed input.
    """
    try:
        verifier = _VERIFIERS[scheme]
    except (KeyError, TypeError):
        raise _fail("scheme_unknown", f"unknown signature scheme; use one of {list(SCHEMES)}") from None
    now_s, tol = _clock(now, tolerance)
    hdrs = headers if type(headers) is _Headers else _Headers(headers)
    data = _body_bytes(body)
    return verifier(secret, hdrs, data, now_s, tol)
