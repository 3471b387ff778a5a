"""Property tests: whatever arrives, the security layer answers with its own error type."""

from __future__ import annotations

import base64
import hmac
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seamline.security.egress import EgressPolicy
from seamline.security.errors import AuthError, EgressError, SignatureError
from seamline.security.jwt import JwtVerifier
from seamline.security.redaction import redact_fields, redact_headers, scrub_text
from seamline.security.secrets import Secret
from seamline.security.webhooks import SCHEMES, verify, verify_hmac

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_NAMES = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "Stripe-Signature",
    "X-Hub-Signature-256",
    "X-GitHub-Delivery",
    "X-Shopify-Hmac-Sha256",
    "X-Shopify-Webhook-Id",
    "svix-signature",
]
# fixed Secret values only: every Secret is registered for scrubbing for the life of the process
_SECRETS = [Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Secret("fuzz-secret-value-0001")]

header_names = st.one_of(
    st.sampled_from(_NAMES).flatmap(lambda n: st.sampled_from([n, n.upper(), n.lower()])),
    st.text(max_size=20),
    st.binary(max_size=20),
)
signature_like = st.one_of(
    st.builds(
        lambda parts: " ".join(parts),
        st.lists(st.from_regex(r"v1a?,[A-Za-z0-9+/=]{0,90}", fullmatch=True), max_size=25),
    ),
    st.builds(lambda t, v: f"t={t},v1={v}", st.text(max_size=25), st.text(max_size=70)),
    st.from_regex(r"sha256=[0-9a-fA-F]{0,70}", fullmatch=True),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-1", "1614265330", "9" * 30, "\r\n", "\x00"]),
)
header_values = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60),
    signature_like,
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
)
headers = st.one_of(
    st.dictionaries(header_names, header_values, max_size=8),
    st.lists(st.tuples(header_names, header_values), max_size=8),
    st.none(),
    st.text(max_size=10),
    st.integers(),
    st.lists(st.integers(), max_size=3),
)
secrets = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from(_SECRETS),
    st.from_regex(r"wh(sec|pk|sk)_[A-Za-z0-9+/=]{0,60}", fullmatch=True),
    st.none(),
    st.integers(),
    st.floats(),
)
bodies = st.one_of(st.binary(max_size=200), st.text(max_size=50), st.none(), st.integers())
clocks = st.one_of(st.none(), st.floats(), st.integers(min_value=-(10**30), max_value=10**30), st.text(max_size=3))


@FUZZ
@given(
    scheme=st.one_of(st.sampled_from(SCHEMES), st.text(max_size=10), st.none()),
    secret=secrets,
    hdrs=headers,
    body=bodies,
    now=clocks,
    tolerance=st.one_of(st.just(300), st.floats(), st.integers(min_value=-5, max_value=10**20)),
)
def test_verify_raises_only_signature_errors(
    scheme: object, secret: object, hdrs: object, body: object, now: object, tolerance: object
) -> None:
    try:
        result = verify(scheme, secret, hdrs, body, now=now, tolerance=tolerance)  # type: ignore[arg-type]
    except SignatureError as exc:
        assert exc.code.startswith("signature.")
    else:
        assert result is None or isinstance(result, str)


@FUZZ
@given(secret=secrets, hdrs=headers, body=bodies, encoding=st.sampled_from(["hex", "base64", "base64url", "x"]))
def test_generic_hmac_raises_only_signature_errors(secret: object, hdrs: object, body: object, encoding: str) -> None:
    try:
        verify_hmac(
            secret,
            hdrs,
            body,
            header="X-Hub-Signature-256",
            encoding=encoding,  # type: ignore[arg-type]
            prefix="sha256=",
            timestamp_header="webhook-timestamp",
            signed_content="{timestamp}.{body}",
            now=1614265330,
        )
    except SignatureError as exc:
        assert exc.code.startswith("signature.")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([10**400, -(10**400), 2**1024, 1e308]),
        st.floats(allow_nan=False),
        st.text(max_size=10),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
jwt_headers = st.fixed_dictionaries(
    {
        "alg": st.one_of(
            st.sampled_from(["none", "NONE", "nOnE", "HS256", "RS256", "ES256", "EdDSA", "hs256"]), json_values
        )
    },
    optional={
        "kid": st.one_of(st.sampled_from(["k1", "../../etc/passwd", "' OR 1=1 --", ""]), json_values),
        "crit": json_values,
        "jku": st.just("https://attacker.example/jwks"),
        "typ": json_values,
    },
)
tokens = st.one_of(
    st.text(max_size=120),
    st.binary(max_size=120),
    st.builds(
        lambda h, p, s: f"{_b64(json.dumps(h).encode())}.{_b64(json.dumps(p).encode())}.{_b64(s)}",
        jwt_headers,
        st.dictionaries(st.sampled_from(["exp", "nbf", "iat", "aud", "iss", "scope", "scp"]), json_values),
        st.binary(max_size=80),
    ),
    st.none(),
    st.integers(),
)


@FUZZ
@given(token=tokens)
def test_jwt_verify_raises_only_auth_errors(token: object) -> None:
    verifier = JwtVerifier(
        keys={"k1": b"k" * 32}, algorithms=["HS256", "ES256"], audience="a", issuer="i", required_scopes=["read"]
    )
    try:
        verifier.verify(token)  # type: ignore[arg-type]
    except AuthError as exc:
        assert exc.code.startswith("auth.jwt.")
    else:  # pragma: no cover - a random token never carries a valid MAC
        raise AssertionError("a random token was accepted")


@FUZZ
@given(
    host=st.one_of(
        st.text(max_size=40),
        st.from_regex(r"(0x[0-9a-f]{1,8}|0[0-7]{1,11}|[0-9]{1,10})(\.[0-9a-fx]{1,4}){0,3}", fullmatch=True),
    )
)
def test_egress_check_host_raises_only_egress_errors(host: str) -> None:
    policy = EgressPolicy()
    try:
        normalised = policy.check_host(host)
    except EgressError as exc:
        assert exc.code.startswith("egress.")
    else:
        assert isinstance(normalised, str)


@FUZZ
@given(text=st.text(max_size=200), obj=json_values, hdrs=st.dictionaries(st.text(max_size=20), st.text(max_size=20)))
def test_redaction_total_on_any_input(text: str, obj: object, hdrs: dict[str, str]) -> None:
    assert isinstance(scrub_text(text), str)
    redact_fields(obj, ["**.password", "a.*.b", "0"])
    out = redact_headers(hdrs)
    assert set(out) == set(hdrs)


_CLAIM_NAMES = ["exp", "nbf", "iat", "aud", "iss", "scope", "scp", "sub"]


@FUZZ
@given(body=st.dictionaries(st.sampled_from(_CLAIM_NAMES), json_values, max_size=8))
def test_jwt_claims_of_validly_signed_tokens_raise_only_auth_errors(body: dict[str, object]) -> None:
    key = b"k" * 32
    header = _b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(body).encode())}"
    token = f"{signing_input}.{_b64(hmac.digest(key, signing_input.encode(), 'sha256'))}"
    verifier = JwtVerifier(keys={"k1": key}, algorithms=["HS256"], audience="a", issuer="i", required_scopes=["r"])
    try:
        claims = verifier.verify(token, now=1_700_000_000)
    except AuthError as exc:
        assert exc.code.startswith("auth.jwt.")
    else:
        assert claims["iss"] == "i" and "exp" in claims
