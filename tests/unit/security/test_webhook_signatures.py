"""Webhook signature schemes: known answers, interop with stripe, hostile input."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
import stripe
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from seamline.core.errors import FatalError
from seamline.security.errors import SignatureError
from seamline.security.secrets import Secret
from seamline.security.webhooks import MAX_SIGNATURES, HmacScheme, verify, verify_hmac

# Standard Webhooks documentation example
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TS = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# GitHub documentation example
GH_SECRET = "It's a Secret to Everybody"
GH_BODY = b"Hello, World!"
GH_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def sw_headers(sig: str = SW_SIG, ts: object = SW_TS, msg_id: str = SW_ID) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def sw_sign(body: bytes, ts: int = SW_TS, msg_id: str = SW_ID, secret: str = SW_SECRET) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.digest(key, f"{msg_id}.{ts}.".encode() + body, "sha256")
    return "v1," + base64.b64encode(mac).decode()


def code_of(excinfo: pytest.ExceptionInfo[SignatureError]) -> str:
    assert isinstance(excinfo.value, FatalError)
    return excinfo.value.code


# --- Standard Webhooks ----------------------------------------------------------------


def test_standard_webhooks_known_answer() -> None:
    assert verify("standard-webhooks", SW_SECRET, sw_headers(), SW_BODY, now=SW_TS) == SW_ID


@pytest.mark.parametrize(
    "secret",
    [SW_SECRET, Secret(SW_SECRET), SW_SECRET.removeprefix("whsec_"), base64.b64decode(SW_SECRET[6:])],
    ids=["whsec", "Secret", "bare-base64", "raw-bytes"],
)
def test_standard_webhooks_secret_forms(secret: object) -> None:
    assert verify("standard-webhooks", secret, sw_headers(), SW_BODY, now=SW_TS) == SW_ID  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "headers",
    [
        {"Webhook-Id": SW_ID, "WEBHOOK-TIMESTAMP": str(SW_TS), "Webhook-Signature": SW_SIG},
        [("webhook-id", SW_ID), ("webhook-timestamp", str(SW_TS)), ("webhook-signature", SW_SIG)],
        {
            b"webhook-id": SW_ID.encode(),
            b"webhook-timestamp": str(SW_TS).encode(),
            b"webhook-signature": SW_SIG.encode(),
        },
        {"svix-id": SW_ID, "svix-timestamp": str(SW_TS), "svix-signature": SW_SIG},
    ],
    ids=["mixed-case", "pairs", "bytes", "svix-names"],
)
def test_headers_are_case_insensitive_in_any_shape(headers: object) -> None:
    assert verify("standard-webhooks", SW_SECRET, headers, SW_BODY, now=SW_TS) == SW_ID  # type: ignore[arg-type]


def test_several_signatures_one_matching() -> None:
    other = sw_sign(SW_BODY, secret="whsec_" + base64.b64encode(b"k" * 24).decode())
    header = f"v2,abc {other}  v1a,AAAA {SW_SIG}"
    assert verify("standard-webhooks", SW_SECRET, sw_headers(header), SW_BODY, now=SW_TS) == SW_ID


def test_reserialised_body_is_a_mismatch() -> None:
    for body in (b'{"test":2432232314}', b'{"test": 2432232314}\n', b'{"test": 2432232315}', b""):
        with pytest.raises(SignatureError) as exc:
            verify("standard-webhooks", SW_SECRET, sw_headers(), body, now=SW_TS)
        assert code_of(exc) == "signature.mismatch"
        assert "g0hM9SsE" not in str(exc.value)  # never echo signatures


def test_wrong_secret_is_a_mismatch() -> None:
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", "whsec_" + base64.b64encode(b"x" * 32).decode(), sw_headers(), SW_BODY, now=SW_TS)
    assert code_of(exc) == "signature.mismatch"


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_timestamp_inside_tolerance(skew: int) -> None:
    assert verify("standard-webhooks", SW_SECRET, sw_headers(), SW_BODY, now=SW_TS + skew) == SW_ID


@pytest.mark.parametrize("skew", [-301, 301, 86400, -86400 * 365])
def test_replay_outside_window_is_refused(skew: int) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", SW_SECRET, sw_headers(), SW_BODY, now=SW_TS + skew)
    assert code_of(exc) == "signature.timestamp_out_of_range"


def test_custom_tolerance() -> None:
    assert verify("standard-webhooks", SW_SECRET, sw_headers(), SW_BODY, now=SW_TS + 900, tolerance=900) == SW_ID
    with pytest.raises(SignatureError):
        verify("standard-webhooks", SW_SECRET, sw_headers(), SW_BODY, now=SW_TS + 11, tolerance=10)


@pytest.mark.parametrize(
    ("timestamp", "code"),
    [
        ("nan", "signature.timestamp_malformed"),
        ("NaN", "signature.timestamp_malformed"),
        ("inf", "signature.timestamp_malformed"),
        ("-inf", "signature.timestamp_malformed"),
        ("1e400", "signature.timestamp_malformed"),
        ("1614265330.0", "signature.timestamp_malformed"),
        (" 1614265330", "signature.timestamp_malformed"),
        ("1614265330\r\n", "signature.timestamp_malformed"),
        ("1_614_265_330", "signature.timestamp_malformed"),
        ("\uff11\uff16\uff11\uff14", "signature.timestamp_malformed"),  # full-width digits
        ("0x603", "signature.timestamp_malformed"),
        ("", "signature.timestamp_malformed"),
        ("9" * 40, "signature.timestamp_malformed"),
        ("-1", "signature.timestamp_out_of_range"),
        ("0", "signature.timestamp_out_of_range"),
        ("9" * 19, "signature.timestamp_out_of_range"),
    ],
)
def test_hostile_timestamps(timestamp: str, code: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", SW_SECRET, sw_headers(ts=timestamp), SW_BODY, now=SW_TS)
    assert code_of(exc) == code


def test_a_thousand_signatures_are_refused_before_any_work() -> None:
    header = " ".join([SW_SIG] * 1000)
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", SW_SECRET, sw_headers(header), SW_BODY, now=SW_TS)
    assert code_of(exc) == "signature.too_many"


def test_signature_cap_boundary() -> None:
    bad = "v1," + base64.b64encode(b"\0" * 32).decode()
    at_cap = " ".join([bad] * (MAX_SIGNATURES - 1) + [SW_SIG])
    assert verify("standard-webhooks", SW_SECRET, sw_headers(at_cap), SW_BODY, now=SW_TS) == SW_ID
    over = " ".join([bad] * MAX_SIGNATURES + [SW_SIG])
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", SW_SECRET, sw_headers(over), SW_BODY, now=SW_TS)
    assert code_of(exc) == "signature.too_many"


def test_overlong_header_is_refused() -> None:
    header = "v1," + "A" * 10000
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", SW_SECRET, sw_headers(header), SW_BODY, now=SW_TS)
    assert code_of(exc) == "signature.header_too_long"


@pytest.mark.parametrize(
    "header",
    [
        "v1",
        "v1,",
        "v1,not base64!",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",
        "v1;" + SW_SIG[3:],
        SW_SIG + "\r\nX-Injected: 1",
        "v1,\x00\x01",
    ],
)
def test_malformed_signature_entries(header: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", SW_SECRET, sw_headers(header), SW_BODY, now=SW_TS)
    assert code_of(exc) == "signature.malformed"


def test_only_unknown_versions_is_a_mismatch() -> None:
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", SW_SECRET, sw_headers("v2,abc v0,def"), SW_BODY, now=SW_TS)
    assert code_of(exc) == "signature.mismatch"


@pytest.mark.parametrize("msg_id", ["msg\r\nX-Evil: 1", "msg 1", "", "m" * 257, "msg_\u00e9"])
def test_hostile_message_ids(msg_id: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", SW_SECRET, sw_headers(msg_id=msg_id), SW_BODY, now=SW_TS)
    assert code_of(exc) in {"signature.id_malformed", "signature.missing"}


@pytest.mark.parametrize(
    ("drop", "code"),
    [
        ("webhook-id", "signature.missing"),
        ("webhook-signature", "signature.missing"),
        ("webhook-timestamp", "signature.timestamp_missing"),
    ],
)
def test_missing_headers(drop: str, code: str) -> None:
    headers = sw_headers()
    del headers[drop]
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", SW_SECRET, headers, SW_BODY, now=SW_TS)
    assert code_of(exc) == code


def test_conflicting_duplicate_headers_are_malformed() -> None:
    pairs = [*sw_headers().items(), ("Webhook-Signature", "v1,AAAA")]
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", SW_SECRET, pairs, SW_BODY, now=SW_TS)
    assert code_of(exc) == "signature.malformed"


def test_invalid_utf8_body_is_signed_as_bytes() -> None:
    body = b"\xff\xfe\x00{broken"
    headers = sw_headers(sw_sign(body))
    assert verify("standard-webhooks", SW_SECRET, headers, body, now=SW_TS) == SW_ID
    assert verify("standard-webhooks", SW_SECRET, headers, bytearray(body), now=SW_TS) == SW_ID


def test_invalid_utf8_in_header_bytes() -> None:
    headers = {b"webhook-id": SW_ID.encode(), b"webhook-timestamp": b"\xff\xfe", b"webhook-signature": b"v1,\xc3\x28"}
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", SW_SECRET, headers, SW_BODY, now=SW_TS)
    assert code_of(exc) == "signature.timestamp_malformed"


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "whsec_",
        "whsec_!!!!",
        "whsec_\u00e9\u00e9",
        None,
        42,
        Secret(""),
        "whpk_AAAA",
        "whsk_" + "A" * 8,
        "whsec_\udcff",
    ],
)
def test_invalid_secrets(secret: object) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", secret, sw_headers(), SW_BODY, now=SW_TS)  # type: ignore[arg-type]
    assert code_of(exc) == "signature.secret_invalid"


# --- Standard Webhooks v1a (Ed25519) --------------------------------------------------


@pytest.fixture(scope="module")
def ed_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def v1a(key: Ed25519PrivateKey, body: bytes, ts: int = SW_TS) -> str:
    return "v1a," + base64.b64encode(key.sign(f"{SW_ID}.{ts}.".encode() + body)).decode()


def key_strings(key: Ed25519PrivateKey) -> dict[str, str]:
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    b64 = base64.b64encode
    return {
        "whpk": "whpk_" + b64(pub).decode(),
        "whsk32": "whsk_" + b64(seed).decode(),
        "whsk64": "whsk_" + b64(seed + pub).decode(),
    }


@pytest.mark.parametrize("form", ["whpk", "whsk32", "whsk64"])
def test_v1a_ed25519(ed_key: Ed25519PrivateKey, form: str) -> None:
    secret = key_strings(ed_key)[form]
    header = f"v1,{base64.b64encode(b'x' * 32).decode()} {v1a(ed_key, SW_BODY)}"
    assert verify("standard-webhooks", secret, sw_headers(header), SW_BODY, now=SW_TS) == SW_ID
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", secret, sw_headers(header), SW_BODY + b" ", now=SW_TS)
    assert code_of(exc) == "signature.mismatch"


def test_v1a_wrong_key_and_wrong_kind(ed_key: Ed25519PrivateKey) -> None:
    other = key_strings(Ed25519PrivateKey.generate())["whpk"]
    header = sw_headers(v1a(ed_key, SW_BODY))
    for secret in (other, SW_SECRET):  # another public key; an HMAC secret cannot check v1a
        with pytest.raises(SignatureError) as exc:
            verify("standard-webhooks", secret, header, SW_BODY, now=SW_TS)
        assert code_of(exc) == "signature.mismatch"
    # and a v1a key never accepts v1 HMAC signatures
    with pytest.raises(SignatureError):
        verify("standard-webhooks", key_strings(ed_key)["whpk"], sw_headers(), SW_BODY, now=SW_TS)


def test_whsk_with_a_foreign_public_half_is_refused(ed_key: Ed25519PrivateKey) -> None:
    seed = ed_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    bad = "whsk_" + base64.b64encode(seed + b"\0" * 32).decode()
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", bad, sw_headers(v1a(ed_key, SW_BODY)), SW_BODY, now=SW_TS)
    assert code_of(exc) == "signature.secret_invalid"


# --- Stripe (signed by the official stripe package) ------------------------------------


STRIPE_SECRET = "whsec_test_" + "a1b2c3" * 5
STRIPE_BODY = '{"id": "evt_1", "object": "event", "type": "charge.succeeded", "note": "caf\u00e9"}'
NOW = 1_700_000_000


def stripe_header(body: str = STRIPE_BODY, ts: int = NOW, secret: str = STRIPE_SECRET) -> str:
    return stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=ts)


def test_stripe_signature_from_the_official_package() -> None:
    header = stripe_header()
    assert header.startswith(f"t={NOW},v1=")
    body = STRIPE_BODY.encode()
    assert verify("stripe", STRIPE_SECRET, {"Stripe-Signature": header}, body, now=NOW) is None
    assert verify("stripe", Secret(STRIPE_SECRET), {"stripe-signature": header}, body, now=NOW + 299) is None
    # stripe agrees with itself on the same input (sanity of the fixture)
    assert stripe.WebhookSignature.verify_header(body, header, STRIPE_SECRET, tolerance=10**10)


def test_stripe_several_v1_and_v0() -> None:
    good = stripe_header().split(",")[1]
    wrong = "v1=" + "0" * 64
    header = f"t={NOW},{wrong},v0={'1' * 64},{good},v2=zz"
    assert verify("stripe", STRIPE_SECRET, {"Stripe-Signature": header}, STRIPE_BODY.encode(), now=NOW) is None


def test_stripe_tampered_body_rejected_by_both() -> None:
    header = stripe_header()
    tampered = STRIPE_BODY.replace("succeeded", "refunded").encode()
    with pytest.raises(SignatureError) as exc:
        verify("stripe", STRIPE_SECRET, {"Stripe-Signature": header}, tampered, now=NOW)
    assert code_of(exc) == "signature.mismatch"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(tampered, header, STRIPE_SECRET, tolerance=10**10)


@pytest.mark.parametrize("now", [NOW - 301, NOW + 301])
def test_stripe_tolerance_both_directions(now: int) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("stripe", STRIPE_SECRET, {"Stripe-Signature": stripe_header()}, STRIPE_BODY.encode(), now=now)
    assert code_of(exc) == "signature.timestamp_out_of_range"


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("garbage", "signature.malformed"),
        (f"v1={'0' * 64}", "signature.timestamp_missing"),
        (f"t={NOW}", "signature.missing"),
        (f"t={NOW},t={NOW},v1={'0' * 64}", "signature.malformed"),
        (f"t=nan,v1={'0' * 64}", "signature.timestamp_malformed"),
        (f"t=1e400,v1={'0' * 64}", "signature.timestamp_malformed"),
        (f"t={NOW},v1=zz", "signature.malformed"),
        (f"t={NOW}," + ",".join(["v1=00"] * 1000), "signature.too_many"),
        ("", "signature.missing"),
    ],
)
def test_stripe_malformed_headers(header: str, code: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("stripe", STRIPE_SECRET, {"Stripe-Signature": header}, STRIPE_BODY.encode(), now=NOW)
    assert code_of(exc) == code


# --- GitHub and Shopify -------------------------------------------------------------------


def test_github_known_answer_returns_delivery() -> None:
    headers = {"X-Hub-Signature-256": GH_SIG, "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    assert verify("github", GH_SECRET, headers, GH_BODY) == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert verify("github", GH_SECRET, {"x-hub-signature-256": GH_SIG}, GH_BODY) is None


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"X-Hub-Signature-256": GH_SIG.removeprefix("sha256=")}, "signature.malformed"),
        ({"X-Hub-Signature-256": "sha1=" + GH_SIG[7:]}, "signature.malformed"),
        ({"X-Hub-Signature": "sha1=0123"}, "signature.missing"),
        ({"X-Hub-Signature-256": GH_SIG[:-2]}, "signature.mismatch"),
        ({"X-Hub-Signature-256": GH_SIG[:-1]}, "signature.malformed"),
        ({"X-Hub-Signature-256": GH_SIG, "X-GitHub-Delivery": "id\r\nX: y"}, "signature.id_malformed"),
    ],
)
def test_github_failures(headers: dict[str, str], code: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("github", GH_SECRET, headers, GH_BODY)
    assert code_of(exc) == code


def test_github_body_change_is_a_mismatch() -> None:
    with pytest.raises(SignatureError) as exc:
        verify("github", GH_SECRET, {"X-Hub-Signature-256": GH_SIG}, b"Hello,  World!")
    assert code_of(exc) == "signature.mismatch"


def test_shopify() -> None:
    secret = "shpss_0123456789abcdef"
    body = b'{"id":820982911946154508,"email":"jon@example.com"}'
    sig = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    headers = {"X-Shopify-Hmac-Sha256": sig, "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"}
    assert verify("shopify", secret, headers, body) == "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    with pytest.raises(SignatureError) as exc:
        verify("shopify", secret, headers, body + b" ")
    assert code_of(exc) == "signature.mismatch"
    with pytest.raises(SignatureError) as exc:
        verify("shopify", secret, {"X-Shopify-Hmac-Sha256": "%%%"}, body)
    assert code_of(exc) == "signature.malformed"


# --- generic HMAC -----------------------------------------------------------------------


def test_generic_hmac_with_timestamp_and_id() -> None:
    secret, body = b"k" * 32, b'{"a":1}'
    content = b"v0:1700000000:evt-9:" + body
    sig = "v0=" + hmac.new(secret, content, hashlib.sha512).hexdigest()
    headers = {"X-Sig": sig, "X-Ts": "1700000000", "X-Id": "evt-9"}
    options = {
        "header": "X-Sig",
        "algorithm": "sha512",
        "prefix": "v0=",
        "timestamp_header": "X-Ts",
        "id_header": "X-Id",
        "signed_content": "v0:{timestamp}:{id}:{body}",
    }
    assert verify_hmac(secret, headers, body, now=NOW, **options) == "evt-9"  # type: ignore[arg-type]
    with pytest.raises(SignatureError) as exc:
        verify_hmac(secret, headers, body, now=NOW + 301, **options)  # type: ignore[arg-type]
    assert code_of(exc) == "signature.timestamp_out_of_range"
    with pytest.raises(SignatureError) as exc:
        verify_hmac(secret, {**headers, "X-Id": "evt-10"}, body, now=NOW, **options)  # type: ignore[arg-type]
    assert code_of(exc) == "signature.mismatch"


def test_generic_hmac_base64url_and_separator() -> None:
    scheme = HmacScheme(header="Signature", encoding="base64url", separator=",")
    secret, body = "s3cret-generic-key", b"payload"
    good = base64.urlsafe_b64encode(hmac.digest(secret.encode(), body, "sha256")).decode().rstrip("=")
    assert scheme.verify(secret, {"signature": f"AAAA,{good}"}, body) is None
    with pytest.raises(SignatureError) as exc:
        scheme.verify(secret, {"signature": ",".join(["AAAA"] * 50)}, body)
    assert code_of(exc) == "signature.too_many"


@pytest.mark.parametrize(
    "options",
    [
        {"header": ""},
        {"header": "X", "algorithm": "md5"},
        {"header": "X", "encoding": "binary"},
        {"header": "X", "signed_content": "{timestamp}"},
        {"header": "X", "signed_content": "{timestamp}.{body}"},
        {"header": "X", "signed_content": "{id}.{body}"},
        {"header": "X", "separator": ""},
    ],
)
def test_generic_hmac_config_errors(options: dict[str, str]) -> None:
    with pytest.raises(SignatureError) as exc:
        HmacScheme(**options)  # type: ignore[arg-type]
    assert code_of(exc) == "signature.config_invalid"


# --- inputs that are not even the right type ---------------------------------------------


@pytest.mark.parametrize("scheme", ["unknown", "GitHub", "", None, ["github"], {"a": 1}])
def test_unknown_scheme(scheme: object) -> None:
    with pytest.raises(SignatureError) as exc:
        verify(scheme, GH_SECRET, {"X-Hub-Signature-256": GH_SIG}, GH_BODY)  # type: ignore[arg-type]
    assert code_of(exc) == "signature.scheme_unknown"


@pytest.mark.parametrize("body", ["Hello, World!", None, 42, ["x"]])
def test_body_must_be_bytes(body: object) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("github", GH_SECRET, {"X-Hub-Signature-256": GH_SIG}, body)  # type: ignore[arg-type]
    assert code_of(exc) == "signature.malformed"


@pytest.mark.parametrize("headers", [None, 42, "X-Hub-Signature-256", [("only-one",)], [1, 2]])
def test_headers_must_be_a_mapping(headers: object) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("github", GH_SECRET, headers, GH_BODY)  # type: ignore[arg-type]
    assert code_of(exc) == "signature.malformed"


@pytest.mark.parametrize(
    ("now", "tolerance"),
    [
        (float("nan"), 300),
        (float("inf"), 300),
        (10**400, 300),
        ("now", 300),
        (SW_TS, -1),
        (SW_TS, float("nan")),
        (True, 300),
    ],
)
def test_clock_arguments_are_validated(now: object, tolerance: object) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", SW_SECRET, sw_headers(), SW_BODY, now=now, tolerance=tolerance)  # type: ignore[arg-type]
    assert code_of(exc) == "signature.config_invalid"
