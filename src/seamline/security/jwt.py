"""Verify JSON Web Tokens (JWS compact serialisation) against an explicit policy.

:class:`JwtVerifier` checks a bearer token: structure, an explicit algorithm
allow-list, a key of the right type for that algorithm, the signature, then
the claims (``exp``, ``nbf``, ``iat``, ``iss``, ``aud``, scopes). The
primitives come from ``cryptography``; every policy decision is made here:

- ``alg: none`` (any casing) is never accepted, and ``none`` cannot be put on
  the allow-list.
- A key is typed (``oct``, ``RSA``, ``EC`` + curve, ``OKP``) and only used for
  the algorithm family it belongs to; a key that names an ``alg`` is only used
  for that ``alg``. An RSA/EC public key is never an HMAC secret, so the
  HS256-with-the-public-key trick fails.
- ``jku``, ``x5u``, ``jwk`` and ``x5c`` header parameters are never fetched or
  trusted: keys come only from the configuration or the configured JWKS URL.
- ``kid`` is only ever a dictionary key.
- Key material is validated when loaded: RSA >= 2048 bits with a sane
  exponent and without the ROCA fingerprint, points on the named curve, HMAC
  keys at least as long as the hash, no private key material, no key sets
  with duplicate ``kid`` or symmetric and asymmetric keys mixed.

Errors are :class:`~seamline.security.errors.AuthError` with stable codes;
an unreachable JWKS endpoint without a cached copy is the retryable
:class:`~seamline.security.errors.AuthUnavailableError`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from seamline.security.errors import AuthError, AuthUnavailableError
from seamline.security.secrets import Secret

if TYPE_CHECKING:
    import aiohttp

    from seamline.core.clock import Clock
    from seamline.security.egress import EgressPolicy

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "JwtVerifier",
    "KeySet",
    "VerifiedJws",
    "VerifyKey",
    "load_keys",
    "verify_jws",
]

log = logging.getLogger("seamline.security.jwt")

#: the JWS algorithms this module can verify
SUPPORTED_ALGORITHMS = (
    *(f"{family}{bits}" for family in ("HS", "RS", "PS", "ES") for bits in (256, 384, 512)),
    "EdDSA",
)
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_EC_CURVES: dict[str, tuple[type[ec.EllipticCurve], int, str]] = {
    "P-256": (ec.SECP256R1, 32, "ES256"),
    "P-384": (ec.SECP384R1, 48, "ES384"),
    "P-521": (ec.SECP521R1, 66, "ES512"),
}
_ENCRYPTION_ALG = re.compile(r"RSA1_5|RSA-OAEP.*|A\d+(KW|GCM|GCMKW|CBC-HS\d+)|dir|ECDH-ES.*|PBES2.*")
_RSA_PRIVATE = ("d", "p", "q", "dp", "dq", "qi", "oth")
_B64URL = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)
_MAX_KID = 256
_MIN_RSA_BITS = 2048
_MAX_RSA_BITS = 16384
# the small primes of the ROCA fingerprint (3..167): a ROCA modulus is a power of 65537 modulo each
_ROCA_PRIMES = tuple(p for p in range(3, 168) if all(p % d for d in range(2, int(p**0.5) + 1)))
_ROCA_SUBGROUPS = tuple(frozenset(pow(65537, k, p) for k in range(p)) for p in _ROCA_PRIMES)

PublicKey = bytes | rsa.RSAPublicKey | ec.EllipticCurvePublicKey | Ed25519PublicKey


def _err(code: str, message: str) -> AuthError:
    return AuthError(message, code=code)


def _b64url_decode(text: str) -> bytes | None:
    """Strict, canonical base64url without padding (RFC 7515 section 2); ``None`` if invalid."""
    if len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        return None
    # reject non-zero unused bits: one value, one encoding
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        return None
    return raw


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise ValueError(f"duplicate member {key!r}")
            result[key] = value
        return result

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except (ValueError, RecursionError):
        raise _err("auth.jwt.malformed", f"the token {what} is not a JSON object") from None
    if not isinstance(value, dict):
        raise _err("auth.jwt.malformed", f"the token {what} is not a JSON object")
    return value


# --- keys --------------------------------------------------------------------------


class _Unusable(Exception):
    """A key that is fine but not for verifying signatures (``use: enc``...)."""


class _Invalid(Exception):
    """A key that is broken, weak or ambiguous."""


@dataclass(frozen=True, repr=False)
class VerifyKey:
    """One verification key: its type, optional ``kid`` and pinned ``alg``."""

    kty: str
    key: PublicKey
    kid: str | None = None
    alg: str | None = None
    crv: str | None = None

    def __repr__(self) -> str:  # never shows key material
        return f"VerifyKey(kty={self.kty!r}, kid={self.kid!r}, alg={self.alg!r}, crv={self.crv!r})"

    def accepts(self, alg: str) -> bool:
        """Whether this key may verify a token signed with ``alg``."""
        if self.alg is not None and self.alg != alg:
            return False
        family, bits = alg[:2], alg[2:]
        if family == "HS":
            return self.kty == "oct" and isinstance(self.key, bytes) and len(self.key) * 8 >= int(bits)
        if family in ("RS", "PS"):
            return self.kty == "RSA"
        if family == "ES":
            return self.kty == "EC" and self.crv is not None and _EC_CURVES[self.crv][2] == alg
        return alg == "EdDSA" and self.kty == "OKP"


@dataclass(frozen=True)
class KeySet:
    """Verification keys by ``kid`` (``None`` for keys without one)."""

    keys: tuple[VerifyKey, ...] = ()
    by_kid: Mapping[str | None, VerifyKey] = field(default_factory=dict)

    @classmethod
    def of(cls, keys: Iterable[VerifyKey]) -> KeySet:
        """Index ``keys``; kid-less keys are kept but only found by the single-key rule."""
        items = tuple(keys)
        return cls(items, {k.kid: k for k in items if k.kid is not None})

    def select(self, kid: str | None) -> VerifyKey | None:
        """The key for ``kid`` in this set alone (the same rules as for several sets)."""
        return _select_key([self], kid)


def _select_key(sets: Sequence[KeySet], kid: str | None) -> VerifyKey | None:
    """The key for ``kid``: a plain dictionary lookup across ``sets``.

    Without a match, the only key of all sets is used when it has no ``kid``
    of its own (a single PEM key) or the token names none; otherwise there is
    no key: the verifier never guesses between several.
    """
    if kid is not None:
        for keyset in sets:
            found = keyset.by_kid.get(kid)
            if found is not None:
                return found
    candidates = [key for keyset in sets for key in keyset.keys]
    if len(candidates) == 1 and (kid is None or candidates[0].kid is None):
        return candidates[0]
    return None


def _member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    raw = _b64url_decode(value) if isinstance(value, str) else None
    if raw is None:
        raise _Invalid(f"member {name!r} is missing or not base64url")
    return raw


def _roca_fingerprint(n: int) -> bool:
    """True when ``n`` has the structure of an Infineon ROCA key (CVE-2017-15361)."""
    return all(n % p in group for p, group in zip(_ROCA_PRIMES, _ROCA_SUBGROUPS, strict=True))


def _check_rsa(key: rsa.RSAPublicKey) -> rsa.RSAPublicKey:
    numbers = key.public_numbers()
    if not _MIN_RSA_BITS <= key.key_size <= _MAX_RSA_BITS:
        raise _Invalid(f"RSA keys must have {_MIN_RSA_BITS}-{_MAX_RSA_BITS} bits, not {key.key_size}")
    if numbers.e < 3 or numbers.e % 2 == 0 or numbers.e.bit_length() > 256:
        raise _Invalid("the RSA public exponent must be odd and at least 3")
    if _roca_fingerprint(numbers.n):
        raise _Invalid("the RSA key has the ROCA fingerprint (CVE-2017-15361); replace it")
    return key


def _check_oct(raw: bytes, alg: str | None) -> bytes:
    need = int(alg[2:]) // 8 if alg else 32
    if len(raw) < need:
        raise _Invalid(f"HMAC keys must be at least {need} bytes")
    if raw.lstrip().startswith((b"-----BEGIN", b"ssh-", b"ecdsa-")):
        raise _Invalid("a PEM or SSH public key is never an HMAC secret")
    return raw


def _jwk_key(jwk: Mapping[str, Any]) -> VerifyKey:
    if not isinstance(jwk, Mapping):
        raise _Invalid("a JWK must be a JSON object")
    kty, kid, alg = jwk.get("kty"), jwk.get("kid"), jwk.get("alg")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= _MAX_KID):
        raise _Invalid("'kid' must be a string of 1-256 characters")
    use, ops = jwk.get("use"), jwk.get("key_ops")
    if use is not None and use != "sig":
        raise _Unusable("'use' is not 'sig'")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise _Unusable("'key_ops' does not include 'verify'")
    if alg is not None:
        if not isinstance(alg, str):
            raise _Invalid("'alg' must be a string")
        if _ENCRYPTION_ALG.fullmatch(alg):
            raise _Unusable(f"an encryption key ({alg})")
        if alg not in SUPPORTED_ALGORITHMS:
            raise _Invalid(f"unsupported or unknown 'alg' {alg[:20]!r}")
    if kty == "oct":
        if alg is not None and not alg.startswith("HS"):
            raise _Invalid("an 'oct' key can only be used with HS256/384/512")
        return VerifyKey("oct", _check_oct(_member(jwk, "k"), alg), kid, alg)
    if kty == "RSA":
        if any(name in jwk for name in _RSA_PRIVATE):
            raise _Invalid("private RSA key material; a verifier needs only 'n' and 'e'")
        if alg is not None and alg[:2] not in ("RS", "PS"):
            raise _Invalid("an RSA key can only be used with RS* or PS*")
        n = int.from_bytes(_member(jwk, "n"), "big")
        e = int.from_bytes(_member(jwk, "e"), "big")
        try:
            key = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            raise _Invalid("not a valid RSA public key") from None
        return VerifyKey("RSA", _check_rsa(key), kid, alg)
    if kty == "EC":
        crv = jwk.get("crv")
        if "d" in jwk:
            raise _Invalid("private EC key material; a verifier needs only 'x' and 'y'")
        if not isinstance(crv, str) or crv not in _EC_CURVES:
            raise _Invalid("'crv' must be P-256, P-384 or P-521")
        curve, size, curve_alg = _EC_CURVES[crv]
        if alg is not None and alg != curve_alg:
            raise _Invalid(f"curve {crv} is used with {curve_alg}, not {alg}")
        x, y = _member(jwk, "x"), _member(jwk, "y")
        if len(x) != size or len(y) != size:
            raise _Invalid(f"'x' and 'y' must be {size} bytes for {crv}")
        try:
            point = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()
            ).public_key()
        except ValueError:
            raise _Invalid(f"the point is not on {crv}") from None
        return VerifyKey("EC", point, kid, alg, crv)
    if kty == "OKP":
        if "d" in jwk:
            raise _Invalid("private OKP key material; a verifier needs only 'x'")
        if jwk.get("crv") != "Ed25519" or (alg is not None and alg != "EdDSA"):
            raise _Invalid("only Ed25519 (EdDSA) OKP keys are supported")
        x = _member(jwk, "x")
        if len(x) != 32:
            raise _Invalid("an Ed25519 key is 32 bytes")
        try:
            return VerifyKey("OKP", Ed25519PublicKey.from_public_bytes(x), kid, alg, "Ed25519")
        except ValueError:
            raise _Invalid("not a valid Ed25519 public key") from None
    raise _Invalid("'kty' must be oct, RSA, EC or OKP")


def _pem_key(data: str | bytes, kid: str | None) -> VerifyKey:
    from cryptography import x509

    raw = data.encode("ascii", "strict") if isinstance(data, str) else bytes(data)
    try:
        if b"-----BEGIN CERTIFICATE-----" in raw:
            public: Any = x509.load_pem_x509_certificate(raw).public_key()
        elif b"PRIVATE KEY-----" in raw:
            raise _Invalid("a private key; a verifier needs only the public key")
        else:
            public = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise _Invalid("not a PEM public key or certificate") from None
    if isinstance(public, rsa.RSAPublicKey):
        return VerifyKey("RSA", _check_rsa(public), kid)
    if isinstance(public, ec.EllipticCurvePublicKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        crv = names.get(public.curve.name)
        if crv is None:
            raise _Invalid(f"unsupported curve {public.curve.name}")
        return VerifyKey("EC", public, kid, None, crv)
    if isinstance(public, Ed25519PublicKey):
        return VerifyKey("OKP", public, kid, None, "Ed25519")
    raise _Invalid("unsupported public key type")


def _is_pem(value: object) -> bool:
    if isinstance(value, str):
        return "-----BEGIN" in value
    return isinstance(value, bytes) and b"-----BEGIN" in value


def _one_key(value: object, kid: str | None) -> VerifyKey:
    if isinstance(value, Mapping):
        key = _jwk_key(value)
        if kid is not None and key.kid not in (None, kid):
            raise _Invalid(f"the JWK's own kid differs from {kid!r}")
        return key if key.kid is not None or kid is None else VerifyKey(key.kty, key.key, kid, key.alg, key.crv)
    if _is_pem(value):
        return _pem_key(value, kid)  # type: ignore[arg-type]
    if isinstance(value, Secret):
        value = value.reveal().encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return VerifyKey("oct", _check_oct(bytes(value), None), kid)
    raise _Invalid("a key must be a JWK, a PEM public key, or an HMAC secret as bytes or Secret")


def _entries(source: object) -> list[tuple[str | None, object]]:
    if isinstance(source, Mapping):
        if "keys" in source:
            keys = source["keys"]
            if not isinstance(keys, list):
                raise _Invalid("'keys' must be a list of JWKs")
            return [(None, k) for k in keys]
        if "kty" in source:
            return [(None, source)]
        entries: list[tuple[str | None, object]] = []
        for kid, value in source.items():
            if not isinstance(kid, str) or not 0 < len(kid) <= _MAX_KID:
                raise _Invalid("key ids must be strings of 1-256 characters")
            entries.append((kid, value))
        return entries
    if isinstance(source, str | bytes | Secret | bytearray):
        return [(None, source)]
    if isinstance(source, Sequence):
        return [(None, k) for k in source]
    raise _Invalid("keys must be a JWK set, a JWK, a PEM key, a list of them or a mapping kid -> key")


def load_keys(source: object, *, strict: bool = True) -> KeySet:
    """Load verification keys from a JWK set, JWK, PEM, list or ``{kid: key}`` mapping.

    ``strict`` (configured keys): any broken, weak or ambiguous key raises
    ``auth.jwk.invalid``. Not strict (a fetched JWKS): such keys are dropped
    and logged, symmetric keys are never taken from a fetched set, and a
    ``kid`` that appears twice is dropped entirely. Keys meant for encryption
    (``use: enc``, ``key_ops`` without ``verify``, an encryption ``alg``) are
    skipped in both modes.
    """
    try:
        entries = _entries(source)
    except _Invalid as exc:
        raise _err("auth.jwk.invalid", str(exc)) from None
    keys: list[VerifyKey] = []
    for index, (kid, value) in enumerate(entries):
        where = f"key {kid!r}" if kid is not None else f"key #{index}"
        try:
            key = _one_key(value, kid)
        except _Unusable as exc:
            log.info("%s skipped: %s", where, exc)
            continue
        except (_Invalid, UnicodeError) as exc:
            if strict:
                raise _err("auth.jwk.invalid", f"{where}: {exc}") from None
            log.warning("%s dropped from the fetched key set: %s", where, exc)
            continue
        if not strict and key.kty == "oct":
            log.warning("%s dropped: symmetric keys are never taken from a fetched key set", where)
            continue
        keys.append(key)
    counts = Counter(k.kid for k in keys if k.kid is not None)
    duplicates = {kid for kid, n in counts.items() if n > 1}
    if duplicates:
        if strict:
            raise _err("auth.jwk.invalid", f"duplicate kid {sorted(duplicates)[0]!r} makes the key set ambiguous")
        log.warning("kids %s appear twice in the fetched key set; dropped", sorted(duplicates))
        keys = [k for k in keys if k.kid not in duplicates]
    if strict:
        if {k.kty == "oct" for k in keys} == {True, False}:
            raise _err("auth.jwk.invalid", "a key set must not mix HMAC secrets and public keys")
        if not keys:
            raise _err("auth.jwk.invalid", "no key usable for verifying signatures")
    return KeySet.of(keys)


# --- JWS ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedJws:
    """A JWS whose signature checked out: protected header, payload bytes and the key used."""

    header: dict[str, Any]
    payload: bytes
    key: VerifyKey


@dataclass(frozen=True)
class _Parsed:
    header: dict[str, Any]
    alg: str
    kid: str | None
    signing_input: bytes
    payload: bytes
    signature: bytes


def _parse(token: object, algorithms: frozenset[str], max_bytes: int) -> _Parsed:
    if isinstance(token, bytes | bytearray):
        try:
            token = bytes(token).decode("ascii")
        except UnicodeDecodeError:
            raise _err("auth.jwt.malformed", "the token is not ASCII") from None
    if not isinstance(token, str):
        raise _err("auth.jwt.malformed", "the token must be a string")
    if len(token) > max_bytes:
        raise _err("auth.jwt.too_large", f"the token is longer than {max_bytes} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        kind = "encrypted tokens (JWE) are not accepted" if len(parts) == 5 else "a JWS has three parts"
        raise _err("auth.jwt.malformed", f"the token is not a compact JWS: {kind}")
    h64, p64, s64 = parts
    raw_header = _b64url_decode(h64)
    if raw_header is None:
        raise _err("auth.jwt.malformed", "the token header is not base64url")
    header = _json_object(raw_header, "header")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise _err("auth.jwt.malformed", "the token header has no 'alg'")
    if alg.strip().lower() == "none":
        raise _err("auth.jwt.alg_forbidden", "unsigned tokens (alg 'none') are never accepted")
    if alg not in algorithms:
        raise _err("auth.jwt.alg_forbidden", f"algorithm {alg[:20]!r} is not allowed here")
    if "crit" in header:
        raise _err("auth.jwt.malformed", "the token has critical header parameters ('crit'), none are supported")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > _MAX_KID):
        raise _err("auth.jwt.malformed", "'kid' must be a string of at most 256 characters")
    payload = _b64url_decode(p64)
    signature = _b64url_decode(s64)
    if payload is None or signature is None:
        raise _err("auth.jwt.malformed", "the token payload or signature is not base64url")
    return _Parsed(header, alg, kid, f"{h64}.{p64}".encode("ascii"), payload, signature)


def _signature_ok(key: VerifyKey, alg: str, message: bytes, signature: bytes) -> bool:
    family, bits = alg[:2], alg[2:]
    try:
        if family == "HS" and isinstance(key.key, bytes):
            return hmac.compare_digest(hmac.digest(key.key, message, f"sha{bits}"), signature)
        if family in ("RS", "PS") and isinstance(key.key, rsa.RSAPublicKey):
            if len(signature) != (key.key.key_size + 7) // 8:
                return False
            algo = _HASHES[bits]()
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if family == "RS"
                else padding.PSS(mgf=padding.MGF1(_HASHES[bits]()), salt_length=algo.digest_size)
            )
            key.key.verify(signature, message, pad, algo)
            return True
        if family == "ES" and isinstance(key.key, ec.EllipticCurvePublicKey) and key.crv:
            size = _EC_CURVES[key.crv][1]
            if len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.key.verify(encode_dss_signature(r, s), message, ec.ECDSA(_HASHES[bits]()))
            return True
        if alg == "EdDSA" and isinstance(key.key, Ed25519PublicKey):
            key.key.verify(signature, message)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def _check_signature(parsed: _Parsed, keys: Sequence[KeySet]) -> VerifyKey:
    key = _select_key(keys, parsed.kid)
    if key is None:
        raise _err("auth.jwt.kid_unknown", "no key for the token's kid" if parsed.kid else "the token has no kid")
    if not key.accepts(parsed.alg):
        raise _err("auth.jwt.key_mismatch", f"the key for this kid cannot verify {parsed.alg} tokens")
    if not _signature_ok(key, parsed.alg, parsed.signing_input, parsed.signature):
        raise _err("auth.jwt.signature", "the token signature is not valid")
    return key


def _algorithms(algorithms: object) -> frozenset[str]:
    if isinstance(algorithms, str) or not isinstance(algorithms, Iterable):
        raise _err("auth.jwt.config", "algorithms must be an explicit list such as ['RS256']")
    algs = list(algorithms)
    if not algs:
        raise _err("auth.jwt.config", "algorithms must list at least one algorithm")
    for alg in algs:
        if not isinstance(alg, str) or alg.strip().lower() == "none":
            raise _err("auth.jwt.config", "'none' is never an allowed algorithm")
        if alg not in SUPPORTED_ALGORITHMS:
            raise _err("auth.jwt.config", f"unsupported algorithm {alg!r}; use {list(SUPPORTED_ALGORITHMS)}")
    return frozenset(algs)


def verify_jws(
    token: str | bytes, keys: KeySet, algorithms: Iterable[str], *, max_token_bytes: int = 16384
) -> VerifiedJws:
    """Verify a compact JWS signature only (no claims); return header, payload and key."""
    parsed = _parse(token, _algorithms(algorithms), max_token_bytes)
    key = _check_signature(parsed, [keys])
    return VerifiedJws(parsed.header, parsed.payload, key)


# --- claims -------------------------------------------------------------------------


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _err("auth.jwt.claim_invalid", f"claim {name!r} must be a number of seconds")
    if isinstance(value, int):  # beyond float range it is effectively +/- infinity
        return float(value) if abs(value) < 2**1000 else (math.inf if value > 0 else -math.inf)
    if not math.isfinite(value):
        raise _err("auth.jwt.claim_invalid", f"claim {name!r} must be a finite number")
    return value


def _strings(value: object, name: str, *, split: bool = False) -> set[str]:
    if isinstance(value, str):
        return set(value.split()) if split else {value}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return set(value)
    raise _err("auth.jwt.claim_invalid", f"claim {name!r} must be a string or a list of strings")


def _one_or_many(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


@dataclass
class _JwksCache:
    keys: KeySet | None = None
    fetched_at: float = -math.inf
    attempted_at: float = -math.inf
    lock: asyncio.Lock | None = None


class JwtVerifier:
    """Verify bearer JWTs against static keys and/or a JWKS URL with an explicit policy.

    ``algorithms`` is required and explicit. ``issuer`` and ``audience`` are
    checked when set (recommended; a token for another service is otherwise
    accepted). ``required_scopes`` must all be present in ``scope`` (space
    separated) or ``scp`` (list or space-separated string). ``require`` lists
    claims that must be present (``exp`` by default). ``leeway`` is the clock
    skew allowed for ``exp``/``nbf``/``iat`` in seconds.

    JWKS (``jwks_url``, used by :meth:`verify_async`): fetched with aiohttp,
    cached for ``jwks_ttl`` seconds, refetched once when a token names an
    unknown ``kid``, never more often than every ``jwks_min_interval``
    seconds; a stale copy is used when a refresh fails.
    """

    def __init__(
        self,
        *,
        algorithms: Sequence[str],
        keys: object = None,
        jwks_url: str | None = None,
        issuer: str | Iterable[str] | None = None,
        audience: str | Iterable[str] | None = None,
        required_scopes: Iterable[str] = (),
        require: Iterable[str] = ("exp",),
        leeway: float = 30.0,
        max_token_bytes: int = 16384,
        jwks_ttl: float = 300.0,
        jwks_min_interval: float = 30.0,
        jwks_timeout: float = 5.0,
        jwks_max_bytes: int = 262144,
        require_https: bool = True,
        egress: EgressPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] | Clock = time.time,
    ) -> None:
        self.algorithms = _algorithms(algorithms)
        if keys is None and jwks_url is None:
            raise _err("auth.jwt.config", "give keys, a jwks_url, or both")
        self._static = load_keys(keys, strict=True) if keys is not None else KeySet()
        if jwks_url is not None:
            if not isinstance(jwks_url, str) or not jwks_url.startswith(("https://", "http://")):
                raise _err("auth.jwt.config", "jwks_url must be an http(s) URL")
            if require_https and not jwks_url.startswith("https://"):
                raise _err("auth.jwt.config", "jwks_url must use https (or set require_https=False)")
        if not isinstance(leeway, int | float) or not 0 <= leeway <= 3600:
            raise _err("auth.jwt.config", "leeway must be 0-3600 seconds")
        if not isinstance(max_token_bytes, int) or max_token_bytes < 64:
            raise _err("auth.jwt.config", "max_token_bytes must be an integer >= 64")
        self.jwks_url = jwks_url
        self.issuers = _one_or_many(issuer)
        self.audiences = _one_or_many(audience)
        self.required_scopes = frozenset(required_scopes)
        self.require = tuple(require)
        self.leeway = float(leeway)
        self.max_token_bytes = max_token_bytes
        self.jwks_ttl = jwks_ttl
        self.jwks_min_interval = jwks_min_interval
        self.jwks_timeout = jwks_timeout
        self.jwks_max_bytes = jwks_max_bytes
        self._egress = egress
        self._session = session
        # a Clock (its .now) or a plain callable
        self._clock = cast("Callable[[], float]", getattr(clock, "now", clock))
        self._jwks = _JwksCache()
        #: JWKS fetches made so far (for metrics and tests)
        self.jwks_fetches = 0

    def __repr__(self) -> str:
        return f"JwtVerifier(algorithms={sorted(self.algorithms)}, jwks_url={self.jwks_url!r})"

    # -- public API --

    def verify(self, token: str | bytes, *, now: float | None = None) -> dict[str, Any]:
        """Verify ``token`` with the static keys (and a JWKS copy already cached); return its claims."""
        parsed = _parse(token, self.algorithms, self.max_token_bytes)
        if self.jwks_url is not None and self._jwks.keys is None and parsed.kid not in self._static.by_kid:
            raise AuthUnavailableError("the JWKS has not been fetched yet; use verify_async")
        key = _check_signature(parsed, self._key_sets())
        return self._claims(parsed, key, now)

    async def verify_async(self, token: str | bytes, *, now: float | None = None) -> dict[str, Any]:
        """Verify ``token``, fetching or refreshing the JWKS when needed; return its claims."""
        parsed = _parse(token, self.algorithms, self.max_token_bytes)
        if self.jwks_url is not None:
            if self._clock() - self._jwks.fetched_at > self.jwks_ttl:
                await self._refresh()
            if _select_key(self._key_sets(), parsed.kid) is None:
                await self._refresh()
            if self._jwks.keys is None and self._static.select(parsed.kid) is None:
                raise AuthUnavailableError("the JWKS has not been fetched yet; retry shortly")
        key = _check_signature(parsed, self._key_sets())
        return self._claims(parsed, key, now)

    # -- internals --

    def _key_sets(self) -> list[KeySet]:
        return [self._static] if self._jwks.keys is None else [self._static, self._jwks.keys]

    def _claims(self, parsed: _Parsed, key: VerifyKey, now: float | None) -> dict[str, Any]:
        claims = _json_object(parsed.payload, "claims")
        t = self._clock() if now is None else float(now)
        for name in self.require:
            if name not in claims:
                raise _err("auth.jwt.claim_missing", f"the token has no {name!r} claim")
        exp, nbf, iat = _number(claims, "exp"), _number(claims, "nbf"), _number(claims, "iat")
        if exp is not None and t >= exp + self.leeway:
            raise _err("auth.jwt.expired", "the token has expired")
        if nbf is not None and t + self.leeway < nbf:
            raise _err("auth.jwt.not_yet_valid", "the token is not valid yet (nbf)")
        if iat is not None and iat > t + self.leeway:
            raise _err("auth.jwt.not_yet_valid", "the token was issued in the future (iat)")
        if self.issuers is not None:
            iss = claims.get("iss")
            if not isinstance(iss, str) or iss not in self.issuers:
                raise _err("auth.jwt.issuer", "the token issuer is not accepted")
        if self.audiences is not None:
            if "aud" not in claims:
                raise _err("auth.jwt.audience", "the token has no audience")
            if not _strings(claims["aud"], "aud") & self.audiences:
                raise _err("auth.jwt.audience", "the token is not meant for this audience")
        if self.required_scopes:
            granted: set[str] = set()
            for name in ("scope", "scp"):
                if name in claims:
                    granted |= _strings(claims[name], name, split=True)
            missing = self.required_scopes - granted
            if missing:
                raise _err("auth.jwt.scope", f"the token lacks scope(s) {sorted(missing)}")
        return claims

    async def _refresh(self) -> None:
        cache = self._jwks
        if cache.lock is None:
            cache.lock = asyncio.Lock()
        asked_at = self._clock()
        async with cache.lock:
            now = self._clock()
            if cache.attempted_at >= asked_at or now - cache.attempted_at < self.jwks_min_interval:
                return  # another task just fetched, or the rate limit holds
            cache.attempted_at = now
            try:
                document = await self._fetch()
                if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
                    raise AuthUnavailableError("the JWKS document has no 'keys' list")
                keys = load_keys(document, strict=False)
            except (AuthError, AuthUnavailableError) as exc:
                if cache.keys is None:
                    raise AuthUnavailableError(f"JWKS unavailable: {exc.message}") from None
                log.warning("JWKS refresh failed, keeping the cached key set: %s", exc.message)
                return
            cache.keys, cache.fetched_at = keys, self._clock()

    async def _fetch(self) -> object:
        import aiohttp

        assert self.jwks_url is not None
        self.jwks_fetches += 1
        timeout = aiohttp.ClientTimeout(total=self.jwks_timeout)
        owned = self._session is None
        if self._session is not None:
            session = self._session
        elif self._egress is not None:
            session = self._egress.client_session(timeout=timeout)
        else:
            session = aiohttp.ClientSession(timeout=timeout)
        try:
            async with session.get(self.jwks_url, timeout=timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise AuthUnavailableError(f"JWKS endpoint answered HTTP {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > self.jwks_max_bytes:
                        raise AuthUnavailableError(f"JWKS document larger than {self.jwks_max_bytes} bytes")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AuthUnavailableError(f"JWKS fetch failed: {type(exc).__name__}") from None
        finally:
            if owned:
                await session.close()
        try:
            return json.loads(bytes(body).decode("utf-8"))
        except (ValueError, RecursionError):
            raise AuthUnavailableError("JWKS document is not JSON") from None
