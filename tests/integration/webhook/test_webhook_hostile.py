"""Hostile input against a real webhook receiver: every request gets a clear 4xx with a stable code,
nothing bad is stored, nothing good is lost, memory stays bounded."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import socket
import time
import tracemalloc
from typing import Any

import jwt as pyjwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.integration.webhook import signers

from seamline.connectors.webhook import decompress_capped

GH_SECRET = "gh-secret-SENTINEL-7a1f"
SHOP_SECRET = "shop-secret-SENTINEL-99c2"
STRIPE_SECRET = "whsec_stripe-SENTINEL-0b4d"
SW_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-key-SENTINEL!!").decode()
API_KEY = "api-key-SENTINEL-3e88"

ROUTES: list[dict[str, Any]] = [
    {"path": "/gh", "signature": {"scheme": "github", "secret": GH_SECRET}},
    {"path": "/shop", "signature": {"scheme": "shopify", "secret": SHOP_SECRET}},
    {"path": "/stripe", "id_path": "id", "signature": {"scheme": "stripe", "secret": STRIPE_SECRET}},
    {"path": "/sw", "signature": {"scheme": "standard-webhooks", "secret": SW_SECRET}},
    {"path": "/keyed", "api_key": {"keys": [API_KEY]}, "id_header": "X-Request-Id"},
    {"path": "/raw", "parse": "raw", "signature": {"scheme": "github", "secret": GH_SECRET}},
]


def body_of(n: int) -> bytes:
    return json.dumps({"order": n, "total": 12.5}).encode()


async def assert_refused(rx: Any, path: str, body: bytes, headers: dict[str, str], status: int, code: str,
                         **kw: Any) -> None:
    got, payload = await rx.post(path, body, headers, **kw)
    assert got == status, (got, payload)
    assert isinstance(payload, dict) and payload["error"]["code"] == code, payload
    text = json.dumps(payload)
    for secret in (GH_SECRET, SHOP_SECRET, STRIPE_SECRET, SW_SECRET, API_KEY):
        assert secret not in text


# -- signatures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "code"),
    [
        ("/gh", {}, "signature.missing"),
        ("/gh", {"X-Hub-Signature-256": "sha256=zz"}, "signature.malformed"),
        ("/gh", {"X-Hub-Signature-256": "md5=0011"}, "signature.malformed"),
        ("/gh", {"X-Hub-Signature-256": "sha256=" + "00" * 32}, "signature.mismatch"),
        ("/gh", {"X-Hub-Signature-256": "sha256=" + "a" * 9000}, "signature.header_too_long"),
        ("/shop", {"X-Shopify-Hmac-Sha256": "not base64 !!"}, "signature.malformed"),
        ("/stripe", {"Stripe-Signature": "garbage"}, "signature.malformed"),
        ("/stripe", {"Stripe-Signature": "v1=abcd"}, "signature.timestamp_missing"),
        ("/stripe", {"Stripe-Signature": "t=1,t=2,v1=00"}, "signature.malformed"),
        ("/sw", {"webhook-id": "m1", "webhook-timestamp": "1", "webhook-signature": "v1,xx"},
         "signature.timestamp_out_of_range"),
        ("/sw", {"webhook-id": "m\u00e91", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,AA=="},
         "signature.id_malformed"),
    ],
)
async def test_malformed_signature_headers_are_401_with_a_code(receiver: Any, path: str, headers: dict[str, str],
                                                                code: str) -> None:
    rx = await receiver(ROUTES)
    await assert_refused(rx, path, body_of(1), headers, 401, code)
    assert await rx.stored() == []


@pytest.mark.parametrize("stamp", ["nan", "NaN", "1e400", "inf", "-inf", "1.5", "17.0", "0x10", "\uff11\uff12"])
async def test_timestamps_that_are_not_numbers_are_refused(receiver: Any, stamp: str) -> None:
    rx = await receiver(ROUTES)
    body = body_of(1)
    sig = hmac.new(STRIPE_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    await assert_refused(rx, "/stripe", body, {"Stripe-Signature": f"t={stamp},v1={sig}"}, 401,
                         "signature.timestamp_malformed")
    sw = signers.standard(SW_SECRET, body, "msg-1")
    sw["webhook-timestamp"] = stamp
    await assert_refused(rx, "/sw", body, sw, 401, "signature.timestamp_malformed")
    assert await rx.stored() == []


@pytest.mark.parametrize("offset", [-301, 301, -10 * 365 * 86400, 10 * 365 * 86400, -(10**15)])
async def test_timestamps_out_of_the_window_are_refused(receiver: Any, offset: int) -> None:
    rx = await receiver(ROUTES)
    now = int(rx.clock.now())
    body = body_of(2)
    await assert_refused(rx, "/stripe", body, signers.stripe(STRIPE_SECRET, body, now + offset), 401,
                         "signature.timestamp_out_of_range")
    await assert_refused(rx, "/sw", body, signers.standard(SW_SECRET, body, "m-2", now + offset), 401,
                         "signature.timestamp_out_of_range")
    # inside the window (the clock is the receiver's) it is fine
    status, _ = await rx.post("/sw", body, signers.standard(SW_SECRET, body, "m-2", now - 299))
    assert status == 200


async def test_replays_within_the_window_are_2xx_without_a_second_message(receiver: Any) -> None:
    rx = await receiver(ROUTES)
    body = body_of(3)
    headers = signers.standard(SW_SECRET, body, "msg-replayed", int(rx.clock.now()))
    answers = await asyncio.gather(*(rx.post("/sw", body, headers) for _ in range(5)))
    answers.append(await rx.post("/sw", body, headers))
    assert all(status == 200 for status, _ in answers)
    assert sorted(p["status"] for _, p in answers) == ["accepted"] + ["duplicate"] * 5
    gh = signers.github(GH_SECRET, body, "gh-delivery-1")
    for _ in range(3):
        assert (await rx.post("/gh", body, gh))[0] == 200
    stored = await rx.stored()
    assert sorted(r["id"] for r in stored) == ["gh-delivery-1", "msg-replayed"]
    # the dedupe window lapses: a very late repeat is a new delivery (its signature is still fresh here)
    rx.clock.advance(8 * 86400)
    late = signers.standard(SW_SECRET, body, "msg-replayed", int(rx.clock.now()))
    assert (await rx.post("/sw", body, late))[1]["status"] == "accepted"


async def test_stripe_duplicates_are_recognised_by_event_id(receiver: Any) -> None:
    rx = await receiver(ROUTES)
    body = json.dumps({"id": "evt_123", "type": "charge.succeeded"}).encode()
    for i in range(3):
        status, payload = await rx.post("/stripe", body, signers.stripe(STRIPE_SECRET, body, int(rx.clock.now()) + i))
        assert status == 200
        assert payload == {"status": "accepted" if i == 0 else "duplicate", "id": "evt_123"}
    assert [r["id"] for r in await rx.stored()] == ["evt_123"]


async def test_a_reserialised_body_does_not_match(receiver: Any) -> None:
    rx = await receiver(ROUTES)
    body = b'{"order": 4, "total": 12.5}'
    headers = signers.shopify(SHOP_SECRET, body, "shop-4")
    for variant in (b'{"order":4,"total":12.5}', b'{"total": 12.5, "order": 4}', body + b"\n",
                    b'{"order": 4, "total": 12.50}'):
        await assert_refused(rx, "/shop", variant, headers, 401, "signature.mismatch")
    assert (await rx.post("/shop", body, headers))[0] == 200
    assert [r["id"] for r in await rx.stored()] == ["shop-4"]


async def test_a_thousand_signatures_in_one_header(receiver: Any) -> None:
    rx = await receiver(ROUTES)
    body = body_of(5)
    good = signers.standard(SW_SECRET, body, "m-5", int(rx.clock.now()))
    many = dict(good)
    many["webhook-signature"] = " ".join(["v1,AAAA"] * 999 + [good["webhook-signature"]])
    await assert_refused(rx, "/sw", body, many, 401, "signature.too_many")
    stripe = signers.stripe(STRIPE_SECRET, body, int(rx.clock.now()))
    stripe["Stripe-Signature"] += ",v1=00" * 1000
    await assert_refused(rx, "/stripe", body, stripe, 401, "signature.too_many")
    assert await rx.stored() == []


async def test_secret_rotation_accepts_either_secret(receiver: Any) -> None:
    rx = await receiver([{"path": "/gh", "signature": {"scheme": "github", "secrets": ["old-secret-1", GH_SECRET]}}])
    body = body_of(6)
    assert (await rx.post("/gh", body, signers.github("old-secret-1", body, "a")))[0] == 200
    assert (await rx.post("/gh", body, signers.github(GH_SECRET, body, "b")))[0] == 200
    await assert_refused(rx, "/gh", body, signers.github("third-secret", body, "c"), 401, "signature.mismatch")


async def test_generic_hmac_route(receiver: Any) -> None:
    route = {"path": "/custom", "signature": {
        "scheme": "hmac", "secret": "custom-secret-value", "header": "X-Signature", "encoding": "base64",
        "prefix": "v1=", "signed_content": "{timestamp}:{body}", "timestamp_header": "X-Timestamp",
        "id_header": "X-Event-Id"}}
    rx = await receiver([route])
    body = body_of(7)
    ts = str(int(rx.clock.now()))
    sig = base64.b64encode(hmac.new(b"custom-secret-value", ts.encode() + b":" + body, hashlib.sha256).digest())
    headers = {"X-Signature": "v1=" + sig.decode(), "X-Timestamp": ts, "X-Event-Id": "evt-7"}
    assert (await rx.post("/custom", body, headers)) == (200, {"status": "accepted", "id": "evt-7"})
    await assert_refused(rx, "/custom", body, {**headers, "X-Timestamp": str(int(ts) - 1000)}, 401,
                         "signature.timestamp_out_of_range")


# -- bodies --------------------------------------------------------------------------------------


async def test_oversized_bodies_are_413(receiver: Any) -> None:
    rx = await receiver(ROUTES, max_body=4096)
    big = b'{"x": "' + b"a" * 10_000 + b'"}'
    await assert_refused(rx, "/gh", big, signers.github(GH_SECRET, big, "big-1"), 413, "webhook.body_too_large")

    async def chunks() -> Any:  # no Content-Length: the limit holds while streaming
        for _ in range(10):
            yield b"a" * 1000

    status, payload = await rx.post("/gh", chunks(), signers.github(GH_SECRET, big, "big-2"))  # type: ignore[arg-type]
    assert status == 413 and payload["error"]["code"] == "webhook.body_too_large"
    assert await rx.stored() == []


async def test_gzip_bodies_and_gzip_bombs(receiver: Any) -> None:
    rx = await receiver(ROUTES, max_body=64 * 1024, max_decompressed=256 * 1024)
    body = body_of(8)
    ok = {**signers.github(GH_SECRET, body, "gz-1"), "Content-Encoding": "gzip"}
    assert (await rx.post("/gh", gzip.compress(body), ok))[0] == 200
    bomb = gzip.compress(b"{" + b" " * (50 * 2**20) + b"}", compresslevel=9)
    assert len(bomb) < 64 * 1024
    await assert_refused(rx, "/gh", bomb, {**ok, "X-GitHub-Delivery": "gz-2"}, 413, "webhook.decompressed_too_large")
    await assert_refused(rx, "/gh", b"\x1f\x8bnot really gzip", ok, 400, "webhook.encoding_invalid")
    await assert_refused(rx, "/gh", gzip.compress(body)[:-6], ok, 400, "webhook.encoding_invalid")
    await assert_refused(rx, "/gh", body, {**ok, "Content-Encoding": "br"}, 415, "webhook.encoding_unsupported")
    assert [r["id"] for r in await rx.stored()] == ["gz-1"]


def test_a_gzip_bomb_is_decoded_in_bounded_memory() -> None:
    cap = 1 << 20
    bomb = gzip.compress(b"\0" * (200 * 2**20), compresslevel=9)
    tracemalloc.start()
    try:
        with pytest.raises(Exception) as caught:
            decompress_capped(bomb, "gzip", cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert getattr(caught.value, "code", None) == "webhook.decompressed_too_large"
    assert peak < 4 * cap, f"peak {peak} bytes while decoding a 200 MiB bomb with a 1 MiB cap"


async def test_invalid_utf8_and_bad_json_are_400(receiver: Any) -> None:
    rx = await receiver(ROUTES)
    for bad, code in ((b'{"name": "\xff\xfe"}', "webhook.body_not_utf8"),
                      (b'{"name": "\xed\xa0\x80"}', "webhook.body_not_utf8"),  # an encoded surrogate
                      (b'{"name": ', "webhook.body_not_json"),
                      # decoded as strictly as every source decodes JSON: refused before acceptance
                      (b"[" * 5000 + b"]" * 5000, "format.json.depth"),
                      (b'{"n": NaN}', "format.json.nan"),
                      (b'{"id": "a", "total": 1, "total": 100}', "format.json.duplicate_key"),
                      (b'{"n": 1' + b"0" * 5000 + b"}", "format.json.big_int")):
        await assert_refused(rx, "/gh", bad, signers.github(GH_SECRET, bad, "x"), 400, code)
    assert await rx.stored() == []
    # a raw route keeps the bytes as they came
    raw = b"\xff\x00binary"
    assert (await rx.post("/raw", raw, {**signers.github(GH_SECRET, raw, "raw-1"),
                                        "Content-Type": "application/octet-stream"}))[0] == 200
    (rec,) = await rx.stored()
    assert rec["raw"] == raw and rec["content_type"] == "application/octet-stream"


# -- headers and query strings -------------------------------------------------------------------


async def test_access_token_in_the_query_string_is_refused(receiver: Any) -> None:
    rx = await receiver(ROUTES)
    body = body_of(9)
    headers = signers.github(GH_SECRET, body, "q-1")
    for query in ("access_token=abc", "x=1&ACCESS_TOKEN=abc", "refresh_token=z", "access_token"):
        await assert_refused(rx, "/gh?" + query, body, headers, 400, "webhook.credential_in_query")
    assert await rx.stored() == []
    assert (await rx.post("/gh?source=shop", body, headers))[0] == 200


async def test_crlf_in_header_values_never_reaches_the_inbox(receiver: Any) -> None:
    rx = await receiver(ROUTES)
    body = body_of(10)
    sig = signers.github(GH_SECRET, body, "crlf-1")
    # on the wire: the HTTP parser refuses the request before the app sees it
    lines = ["POST /gh HTTP/1.1", f"Host: 127.0.0.1:{rx.source.port}", f"Content-Length: {len(body)}",
             f"X-Hub-Signature-256: {sig['X-Hub-Signature-256']}", "X-GitHub-Delivery: crlf-1",
             "X-Note: a\rInjected: yes", "Connection: close"]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    reader, writer = await asyncio.open_connection("127.0.0.1", rx.source.port)
    writer.write(raw)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    # behind a lenient proxy, the app itself refuses it with a code
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/gh", "raw_path": b"/gh", "query_string": b"", "root_path": "",
        "headers": [(b"x-hub-signature-256", sig["X-Hub-Signature-256"].encode()), (b"x-github-delivery", b"crlf-2"),
                    (b"x-note", b"a\r\nInjected: yes")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", rx.source.port),
    }
    await rx.source.app()(scope, receive, send)
    assert sent[0]["status"] == 400
    assert orjson.loads(sent[1]["body"])["error"]["code"] == "webhook.header_invalid"
    assert await rx.stored() == []


async def test_unknown_routes_methods_and_api_keys(receiver: Any) -> None:
    rx = await receiver(ROUTES)
    await assert_refused(rx, "/nope", b"{}", {}, 404, "webhook.route_unknown")
    await assert_refused(rx, "/gh", b"", {}, 405, "webhook.method_not_allowed", method="GET")
    await assert_refused(rx, "/keyed", b"{}", {}, 401, "webhook.api_key_missing")
    await assert_refused(rx, "/keyed", b"{}", {"X-API-Key": "wrong"}, 401, "webhook.api_key_invalid")
    await assert_refused(rx, "/keyed", b"{}", {"X-API-Key": API_KEY + "x"}, 401, "webhook.api_key_invalid")
    ok = {"X-API-Key": API_KEY, "X-Request-Id": "req-1"}
    assert (await rx.post("/keyed", b'{"a": 1}', ok)) == (200, {"status": "accepted", "id": "req-1"})
    await assert_refused(rx, "/keyed", b"{}", {"X-API-Key": API_KEY, "X-Request-Id": "bad id"}, 400,
                         "webhook.id_malformed")
    (rec,) = await rx.stored()
    assert "x-api-key" not in {k.lower() for k in rec["headers"]}


# -- JWT on plain routes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[Any, str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, pem, other


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def _hs_with(key: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return signing + "." + _b64(hmac.new(key, signing.encode(), hashlib.sha256).digest())


async def test_jwt_routes_refuse_every_classic_attack(receiver: Any, rsa_keys: tuple[Any, str, Any]) -> None:
    key, pem, other = rsa_keys
    other_pem = other.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    jwt_cfg = {"algorithms": ["RS256"], "public_keys": {"k1": pem, "k2": other_pem}, "issuer": "https://idp.test",
               "audience": "seamline", "scopes": ["orders:write"]}
    confused = {"algorithms": ["RS256", "HS256"], "public_keys": {"k1": pem}}
    rx = await receiver([{"path": "/api", "jwt": jwt_cfg, "id_header": "X-Request-Id"},
                         {"path": "/confused", "jwt": confused}])
    now = int(rx.clock.now())
    good = {"iss": "https://idp.test", "aud": "seamline", "exp": now + 600, "iat": now, "scope": "orders:write"}

    def rs(claims: dict[str, Any], kid: str = "k1", signer: Any = key) -> str:
        return pyjwt.encode(claims, signer, algorithm="RS256", headers={"kid": kid})

    async def refused(token: str, code: str, path: str = "/api") -> None:
        await assert_refused(rx, path, b"{}", {"Authorization": f"Bearer {token}"}, 401, code)

    for alg in ("none", "None", "NONE", "nOnE", " none"):
        await refused(_unsigned({"alg": alg, "kid": "k1"}, good), "auth.jwt.alg_forbidden")
    # HS256 "signed" with the server's RSA public key: not on the list, and never a key for HS256 anyway
    await refused(_hs_with(pem.encode(), {"alg": "HS256", "kid": "k1"}, good), "auth.jwt.alg_forbidden")
    await refused(_hs_with(pem.encode(), {"alg": "HS256", "kid": "k1"}, good), "auth.jwt.key_mismatch", "/confused")
    for kid in ("../../../../etc/passwd", "' OR '1'='1", "k1' --", "k1\u0000", "*", "http://evil.test/key"):
        await refused(rs(good, kid=kid), "auth.jwt.kid_unknown")
    await refused(rs(good, kid="k1", signer=other), "auth.jwt.signature")
    await refused(rs({k: v for k, v in good.items() if k != "exp"}), "auth.jwt.claim_missing")
    await refused(rs({**good, "exp": now - 3600}), "auth.jwt.expired")
    await refused(rs({**good, "exp": "tomorrow"}), "auth.jwt.claim_invalid")
    await refused(rs({**good, "aud": "someone-else"}), "auth.jwt.audience")
    await refused(rs({k: v for k, v in good.items() if k != "aud"}), "auth.jwt.audience")
    await refused(rs({**good, "iss": "https://evil.test"}), "auth.jwt.issuer")
    await refused(rs({**good, "scope": "orders:read"}), "auth.jwt.scope")
    # a jku header pointing at the attacker's keys is ignored
    evil = pyjwt.encode(good, other, algorithm="RS256", headers={"kid": "evil", "jku": "http://127.0.0.1:9/jwks"})
    await refused(evil, "auth.jwt.kid_unknown")
    await assert_refused(rx, "/api", b"{}", {}, 401, "auth.jwt.missing")
    await assert_refused(rx, "/api", b"{}", {"Authorization": "Basic abc"}, 401, "auth.jwt.missing")
    assert await rx.stored() == []
    status, payload = await rx.post("/api", b'{"ok": true}', {"Authorization": f"Bearer {rs(good)}",
                                                             "X-Request-Id": "r-1"})
    assert (status, payload) == (200, {"status": "accepted", "id": "r-1"})
    (rec,) = await rx.stored()
    assert "authorization" not in rec["headers"]


async def test_a_sender_that_never_sends_its_body_holds_nothing(receiver: Any) -> None:
    rx = await receiver(ROUTES)
    sock = socket.create_connection(("127.0.0.1", rx.source.port))
    try:
        sock.sendall(b"POST /gh HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        body = body_of(11)
        assert (await rx.post("/gh", body, signers.github(GH_SECRET, body, "live-1")))[0] == 200
    finally:
        sock.close()
    assert [r["id"] for r in await rx.stored()] == ["live-1"]


async def test_jwt_route_with_a_jwks_url(receiver: Any, rsa_keys: tuple[Any, str, Any]) -> None:
    from jwt.algorithms import RSAAlgorithm

    from seamline.testing.faultserver import FaultServer, Respond

    key, _pem, other = rsa_keys
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "live-1", "use": "sig"}
    async with FaultServer() as jwks:
        jwks.script("/jwks", default=Respond(200, json={"keys": [jwk]}))
        rx = await receiver([{"path": "/api", "jwt": {
            "algorithms": ["RS256"], "jwks_url": jwks.url_for("/jwks"), "audience": "seamline",
            "jwks_allow_http": True, "jwks_allow_loopback": True}}])
        now = int(rx.clock.now())
        claims = {"aud": "seamline", "exp": now + 60}
        good = pyjwt.encode(claims, key, algorithm="RS256", headers={"kid": "live-1"})
        assert (await rx.post("/api", b"{}", {"Authorization": f"Bearer {good}"}))[0] == 200
        forged = pyjwt.encode(claims, other, algorithm="RS256", headers={"kid": "live-1"})
        await assert_refused(rx, "/api", b"{}", {"Authorization": f"Bearer {forged}"}, 401, "auth.jwt.signature")
        assert jwks.count("/jwks") == 1, "the key set is cached"


async def _asgi(rx: Any, path: str, events: list[dict[str, Any]], headers: list[tuple[bytes, bytes]],
                kind: str = "http") -> list[dict[str, Any]]:
    """Drive the source's ASGI app directly with the given receive events; what it sent."""
    sent: list[dict[str, Any]] = []
    pending = list(events)

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # a client that never sends more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": kind, "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", rx.source.port)}
    await asyncio.wait_for(rx.source.app()(scope, receive, send), 5)
    return sent


async def test_a_client_gone_mid_body_gets_no_answer_and_nothing_is_stored(receiver: Any) -> None:
    rx = await receiver(ROUTES)
    body = body_of(41)
    sig = signers.github(GH_SECRET, body, "gone-1")
    headers = [(b"x-hub-signature-256", sig["X-Hub-Signature-256"].encode()), (b"x-github-delivery", b"gone-1"),
               (b"content-length", str(len(body)).encode())]
    sent = await _asgi(rx, "/gh", [{"type": "http.request", "body": body[:5], "more_body": True},
                                   {"type": "http.disconnect"}], headers)
    assert sent == []
    assert await rx.stored() == []
    # the same delivery, complete and through a trailing-slash path, is taken as usual
    sent = await _asgi(rx, "/gh/", [{"type": "http.request", "body": body[:5], "more_body": True},
                                    {"type": "http.request", "body": body[5:], "more_body": False}], headers)
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()
    assert orjson.loads(sent[1]["body"]) == {"status": "accepted", "id": "gone-1"}
    assert [r["id"] for r in await rx.stored()] == ["gone-1"]


async def test_a_websocket_is_closed_without_a_word(receiver: Any) -> None:
    rx = await receiver(ROUTES)
    assert await _asgi(rx, "/gh", [], [], kind="websocket") == [{"type": "websocket.close", "code": 1008}]
