"""JwtVerifier: policy checks against tokens made by PyJWT and by hand (forgeries)."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from seamline.core.errors import FatalError
from seamline.security.errors import AuthError
from seamline.security.jwt import JwtVerifier, VerifyKey, load_keys
from seamline.security.secrets import Secret

NOW = 1_700_000_000
HMAC_KEY = b"0123456789abcdef0123456789abcdef"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forge(header: dict[str, Any] | bytes, claims: dict[str, Any] | bytes, signature: bytes = b"") -> str:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    c = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    return f"{b64(h)}.{b64(c)}.{b64(signature)}"


def hs_token(body: dict[str, Any], key: bytes, alg: str, kid: str) -> str:
    """An HMAC token made by hand (PyJWT refuses or warns about what these tests need)."""
    import hmac as _hmac

    signing_input = f"{b64(json.dumps({'alg': alg, 'kid': kid}).encode())}.{b64(json.dumps(body).encode())}"
    return signing_input + "." + b64(_hmac.digest(key, signing_input.encode(), "sha" + alg[2:]))


def claims(**extra: Any) -> dict[str, Any]:
    base = {"sub": "svc-1", "iss": "https://idp.example", "aud": "orders-api", "exp": NOW + 600, "iat": NOW - 10}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def code(excinfo: pytest.ExceptionInfo[AuthError]) -> str:
    assert isinstance(excinfo.value, FatalError)
    return excinfo.value.code


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def jwks(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> dict:
    keys = [
        {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "rsa-1", "use": "sig"},
        {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec-1"},
        {**OKPAlgorithm.to_jwk(ed_key.public_key(), as_dict=True), "kid": "ed-1"},
    ]
    return {"keys": keys}


@pytest.fixture
def verifier(jwks: dict) -> JwtVerifier:
    return JwtVerifier(
        keys=jwks,
        algorithms=["RS256", "PS256", "ES256", "EdDSA"],
        issuer="https://idp.example",
        audience="orders-api",
        clock=lambda: NOW,
    )


@pytest.fixture(scope="module")
def rsa_pem(rsa_key: rsa.RSAPrivateKey) -> bytes:
    return rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- accepted ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "kid", "keyname"),
    [("RS256", "rsa-1", "rsa"), ("PS256", "rsa-1", "rsa"), ("ES256", "ec-1", "ec"), ("EdDSA", "ed-1", "ed")],
)
def test_valid_tokens(verifier: JwtVerifier, request: pytest.FixtureRequest, alg: str, kid: str, keyname: str) -> None:
    key = request.getfixturevalue(f"{keyname}_key")
    token = pyjwt.encode(claims(scope="orders:read"), key, algorithm=alg, headers={"kid": kid})
    result = verifier.verify(token)
    assert result["sub"] == "svc-1" and result["scope"] == "orders:read"
    assert verifier.verify(token.encode()) == result


def test_pem_key_and_hmac_secret_keys(rsa_key: rsa.RSAPrivateKey, rsa_pem: bytes) -> None:
    by_pem = JwtVerifier(keys=rsa_pem.decode(), algorithms=["RS256"], clock=lambda: NOW)
    token = pyjwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "anything"})
    assert by_pem.verify(token)["sub"] == "svc-1"  # a single kid-less key serves any kid
    by_secret = JwtVerifier(keys={"hs": Secret(HMAC_KEY.decode())}, algorithms=["HS256"], clock=lambda: NOW)
    assert by_secret.verify(pyjwt.encode(claims(), HMAC_KEY, algorithm="HS256", headers={"kid": "hs"}))["sub"]


def test_scopes_from_scope_or_scp(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey, jwks: dict) -> None:
    strict = JwtVerifier(
        keys=jwks, algorithms=["RS256"], required_scopes=["orders:read", "orders:write"], clock=lambda: NOW
    )
    for extra in (
        {"scope": "orders:read orders:write extra"},
        {"scp": ["orders:write", "orders:read"]},
        {"scp": "orders:read orders:write"},
        {"scope": "orders:read", "scp": ["orders:write"]},
    ):
        assert strict.verify(pyjwt.encode(claims(**extra), rsa_key, "RS256", headers={"kid": "rsa-1"}))
    for extra in ({"scope": "orders:read"}, {"scp": ["orders:read"]}, {}, {"scope": "orders:readorders:write"}):
        with pytest.raises(AuthError) as exc:
            strict.verify(pyjwt.encode(claims(**extra), rsa_key, "RS256", headers={"kid": "rsa-1"}))
        assert code(exc) == "auth.jwt.scope"
    with pytest.raises(AuthError) as exc:
        strict.verify(pyjwt.encode(claims(scp=[1, 2]), rsa_key, "RS256", headers={"kid": "rsa-1"}))
    assert code(exc) == "auth.jwt.claim_invalid"


# --- algorithm policy -----------------------------------------------------------------------


NONE_SPELLINGS = ["none", "None", "NONE", "nOnE", "NoNe", "nONE", "none ", " none"]


@pytest.mark.parametrize("alg", NONE_SPELLINGS)
@pytest.mark.parametrize("signature", [b"", b"x" * 32])
def test_alg_none_in_every_casing(verifier: JwtVerifier, alg: str, signature: bytes) -> None:
    token = forge({"alg": alg, "kid": "rsa-1"}, claims(), signature)
    with pytest.raises(AuthError) as exc:
        verifier.verify(token)
    assert code(exc) == "auth.jwt.alg_forbidden"


@pytest.mark.parametrize("algorithms", [["none"], ["RS256", "NONE"], ["nOnE"], [], "RS256", ["RS1"], ["rs256"], None])
def test_allow_list_must_be_explicit_and_sane(jwks: dict, algorithms: object) -> None:
    with pytest.raises(AuthError) as exc:
        JwtVerifier(keys=jwks, algorithms=algorithms)  # type: ignore[arg-type]
    assert code(exc) == "auth.jwt.config"


def test_alg_outside_allow_list(verifier: JwtVerifier) -> None:
    token = pyjwt.encode(claims(), HMAC_KEY, algorithm="HS256", headers={"kid": "rsa-1"})
    with pytest.raises(AuthError) as exc:
        verifier.verify(token)
    assert code(exc) == "auth.jwt.alg_forbidden"


def test_hs256_signed_with_the_rsa_public_key_pem(rsa_pem: bytes) -> None:
    """The classic key-confusion forgery: HMAC keyed with the public PEM the verifier holds."""
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}".encode()
    import hmac as _hmac

    forged = signing_input.decode() + "." + b64(_hmac.digest(rsa_pem, signing_input, "sha256"))
    # even a careless allow-list that names both families cannot be tricked
    careless = JwtVerifier(keys=rsa_pem, algorithms=["RS256", "HS256"], clock=lambda: NOW)
    with pytest.raises(AuthError) as exc:
        careless.verify(forged)
    assert code(exc) == "auth.jwt.key_mismatch"
    strict = JwtVerifier(keys=rsa_pem, algorithms=["RS256"], clock=lambda: NOW)
    with pytest.raises(AuthError) as exc:
        strict.verify(forged)
    assert code(exc) == "auth.jwt.alg_forbidden"


@pytest.mark.parametrize("form", ["Secret", "bytearray", "oct-jwk"])
def test_a_pem_is_never_accepted_as_an_hmac_secret(rsa_pem: bytes, form: str) -> None:
    value = {
        "Secret": Secret(rsa_pem.decode()),
        "bytearray": bytearray(rsa_pem),
        "oct-jwk": {"kty": "oct", "k": b64(rsa_pem)},
    }[form]
    with pytest.raises(AuthError) as exc:
        load_keys({"k": value})
    assert code(exc) == "auth.jwk.invalid"
    # PEM given as text or bytes is what it is: a public key, typed RSA
    assert [k.kty for k in load_keys({"k": rsa_pem}).keys] == ["RSA"]


def test_key_type_must_match_alg_family(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    verifier = JwtVerifier(
        keys={"keys": [{**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec-1"}]},
        algorithms=["RS256", "ES256", "ES384"],
        clock=lambda: NOW,
    )
    for alg, key in (("RS256", rsa_key), ("ES384", ec.generate_private_key(ec.SECP384R1()))):
        with pytest.raises(AuthError) as exc:
            verifier.verify(pyjwt.encode(claims(), key, algorithm=alg, headers={"kid": "ec-1"}))
        assert code(exc) == "auth.jwt.key_mismatch"


def test_pinned_key_alg_is_enforced(rsa_key: rsa.RSAPrivateKey) -> None:
    jwk = {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r", "alg": "PS256"}
    verifier = JwtVerifier(keys={"keys": [jwk]}, algorithms=["RS256", "PS256"], clock=lambda: NOW)
    assert verifier.verify(pyjwt.encode(claims(), rsa_key, "PS256", headers={"kid": "r"}))
    with pytest.raises(AuthError) as exc:
        verifier.verify(pyjwt.encode(claims(), rsa_key, "RS256", headers={"kid": "r"}))
    assert code(exc) == "auth.jwt.key_mismatch"


def test_short_hmac_key_never_verifies_longer_hash() -> None:
    verifier = JwtVerifier(keys={"k": HMAC_KEY}, algorithms=["HS256", "HS512"], clock=lambda: NOW)
    assert verifier.verify(pyjwt.encode(claims(), HMAC_KEY, "HS256", headers={"kid": "k"}))
    with pytest.raises(AuthError) as exc:
        verifier.verify(hs_token(claims(), HMAC_KEY, "HS512", "k"))
    assert code(exc) == "auth.jwt.key_mismatch"


# --- kid and untrusted header parameters -------------------------------------------------------


@pytest.mark.parametrize(
    "kid",
    [
        "../../etc/passwd",
        "' OR 1=1 --",
        "/dev/zero",
        "file:///etc/passwd",
        "rsa-1\x00",
        "RSA-1",
        "__class__",
        "get",
        "keys",
        "http://169.254.169.254/",
        "rsa-1 ",
        "\u0440sa-1",
    ],
)
def test_kid_is_only_a_dictionary_key(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey, kid: str) -> None:
    token = pyjwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": kid})
    with pytest.raises(AuthError) as exc:
        verifier.verify(token)
    assert code(exc) == "auth.jwt.kid_unknown"


@pytest.mark.parametrize("kid", [["rsa-1"], {"$ne": None}, 7, "k" * 300])
def test_non_string_or_huge_kid_is_malformed(verifier: JwtVerifier, kid: object) -> None:
    with pytest.raises(AuthError) as exc:
        verifier.verify(forge({"alg": "RS256", "kid": kid}, claims(), b"x"))
    assert code(exc) == "auth.jwt.malformed"


def test_embedded_keys_and_key_urls_are_never_trusted(verifier: JwtVerifier) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_jwk = RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    headers = {
        "kid": "rsa-1",
        "jwk": attacker_jwk,
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": ["MIIB..."],
    }
    token = pyjwt.encode(claims(), attacker, algorithm="RS256", headers=headers)
    with pytest.raises(AuthError) as exc:
        verifier.verify(token)
    assert code(exc) == "auth.jwt.signature"
    headers.pop("kid")
    with pytest.raises(AuthError) as exc:
        verifier.verify(pyjwt.encode(claims(), attacker, algorithm="RS256", headers=headers))
    assert code(exc) == "auth.jwt.kid_unknown"  # three keys, no kid: no guessing


def test_crit_header_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = pyjwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1", "crit": ["exp"], "exp": 1})
    with pytest.raises(AuthError) as exc:
        verifier.verify(token)
    assert code(exc) == "auth.jwt.malformed"


# --- claims -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"exp": None}, "auth.jwt.claim_missing"),
        ({"exp": NOW - 31}, "auth.jwt.expired"),
        ({"exp": NOW - 10**9}, "auth.jwt.expired"),
        ({"exp": "tomorrow"}, "auth.jwt.claim_invalid"),
        ({"exp": True}, "auth.jwt.claim_invalid"),
        ({"exp": [NOW + 60]}, "auth.jwt.claim_invalid"),
        ({"nbf": NOW + 31}, "auth.jwt.not_yet_valid"),
        ({"iat": NOW + 3600}, "auth.jwt.not_yet_valid"),
        ({"nbf": "now"}, "auth.jwt.claim_invalid"),
        ({"nbf": 10**400}, "auth.jwt.not_yet_valid"),
        ({"exp": -(10**400)}, "auth.jwt.expired"),
        ({"aud": None}, "auth.jwt.audience"),
        ({"aud": "billing-api"}, "auth.jwt.audience"),
        ({"aud": ["billing-api", "crm"]}, "auth.jwt.audience"),
        ({"aud": 7}, "auth.jwt.claim_invalid"),
        ({"aud": ["orders-api", 7]}, "auth.jwt.claim_invalid"),
        ({"iss": None}, "auth.jwt.issuer"),
        ({"iss": "https://evil.example"}, "auth.jwt.issuer"),
        ({"iss": ["https://idp.example"]}, "auth.jwt.issuer"),
    ],
)
def test_claim_checks(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey, changes: dict, expected: str) -> None:
    body = claims()
    for name, value in changes.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    token = pyjwt.api_jws.encode(json.dumps(body).encode(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(AuthError) as exc:
        verifier.verify(token)
    assert code(exc) == expected


def test_leeway_and_audience_lists(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    ok = claims(exp=NOW - 29, nbf=NOW + 29, aud=["crm", "orders-api"])
    assert verifier.verify(pyjwt.encode(ok, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}))
    assert verifier.verify(
        pyjwt.encode(claims(exp=NOW - 100, iat=None), rsa_key, "RS256", headers={"kid": "rsa-1"}), now=NOW - 200
    )


def test_non_finite_numbers_are_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    for raw in (b'{"exp": 1e400}', b'{"exp": NaN}', b'{"exp": Infinity}', b'{"exp": -Infinity}'):
        signing_input = f"{b64(json.dumps({'alg': 'RS256', 'kid': 'rsa-1'}).encode())}.{b64(raw)}".encode()
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        sig = rsa_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        with pytest.raises(AuthError) as exc:
            verifier.verify(signing_input.decode() + "." + b64(sig))
        assert code(exc) in {"auth.jwt.claim_invalid", "auth.jwt.malformed"}


# --- structure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d.e",  # JWE
        "!!!.e30.",
        forge(b'{"alg":"RS256","alg":"none"}', claims()),  # duplicate member
        forge(b'["RS256"]', claims()),
        forge(b"\xff\xfe{}", claims()),  # invalid UTF-8
        forge(b"not json", claims()),
        forge({"kid": "rsa-1"}, claims()),  # no alg
        forge({"alg": 256}, claims()),
        forge({"alg": "RS256", "kid": "rsa-1"}, claims()) + "\r\nX-Injected: 1",
        " " + forge({"alg": "RS256", "kid": "rsa-1"}, claims()),
        b"\xff\xfe.\x00.\x01",
        None,
        12345,
        '{"payload":"e30","signatures":[]}',
    ],
)
def test_malformed_tokens(verifier: JwtVerifier, token: object) -> None:
    with pytest.raises(AuthError) as exc:
        verifier.verify(token)  # type: ignore[arg-type]
    assert code(exc) == "auth.jwt.malformed"


def test_payload_must_be_a_json_object(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    for payload in (b"[1,2]", b"", b"\xff", b'{"a":1,"a":2}'):
        token = pyjwt.api_jws.encode(payload, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
        with pytest.raises(AuthError) as exc:
            verifier.verify(token)
        assert code(exc) == "auth.jwt.malformed"


def test_token_size_cap(jwks: dict, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(keys=jwks, algorithms=["RS256"], max_token_bytes=1024, clock=lambda: NOW)
    token = pyjwt.encode(claims(pad="x" * 2000), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(AuthError) as exc:
        verifier.verify(token)
    assert code(exc) == "auth.jwt.too_large"


def test_modified_signature(verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = pyjwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[5] ^= 1
    with pytest.raises(AuthError) as exc:
        verifier.verify(f"{head}.{body}.{b64(bytes(raw))}")
    assert code(exc) == "auth.jwt.signature"


# --- key material ----------------------------------------------------------------------------------


def test_key_set_validation(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    rsa_jwk = {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "a"}
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    bad_sets = {
        "duplicate kid": {"keys": [rsa_jwk, {**rsa_jwk}]},
        "mixed": {"keys": [rsa_jwk, {"kty": "oct", "k": b64(HMAC_KEY), "kid": "h"}]},
        "weak rsa": {"keys": [{**RSAAlgorithm.to_jwk(small.public_key(), as_dict=True), "kid": "s"}]},
        "private rsa": {"keys": [{**RSAAlgorithm.to_jwk(rsa_key, as_dict=True), "kid": "p"}]},
        "private pem": rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "enc only": {"keys": [{**rsa_jwk, "use": "enc"}]},
        "empty": {"keys": []},
        "short hmac": {"k": b"short"},
        "unknown kty": {"kty": "XYZ"},
        "bad curve": {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "crv": "P-384"},
        "not a key": {"k": 3.14},
        "keys not a list": {"keys": "abc"},
    }
    for name, source in bad_sets.items():
        with pytest.raises(AuthError) as exc:
            load_keys(source)
        assert code(exc) == "auth.jwk.invalid", name


def test_fetched_key_sets_drop_bad_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    good = {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "good"}
    dup = {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "dup"}
    source = {"keys": [good, dup, dict(dup), {"kty": "oct", "k": b64(HMAC_KEY), "kid": "h"}, {"kty": "RSA"}]}
    loaded = load_keys(source, strict=False)
    assert [k.kid for k in loaded.keys] == ["good"]


def test_key_repr_hides_material() -> None:
    key = load_keys({"k": HMAC_KEY}).keys[0]
    assert isinstance(key, VerifyKey)
    assert HMAC_KEY.decode() not in repr(key) and "oct" in repr(key)


def test_config_errors(jwks: dict) -> None:
    for kwargs in (
        {},
        {"keys": jwks, "leeway": -1},
        {"jwks_url": "ftp://x"},
        {"jwks_url": "http://idp.example/jwks"},
        {"keys": jwks, "max_token_bytes": 0},
    ):
        with pytest.raises(AuthError) as exc:
            JwtVerifier(algorithms=["RS256"], **kwargs)  # type: ignore[arg-type]
        assert code(exc) == "auth.jwt.config"
