"""Outbound auth against real servers: basic, bearer, API key, OAuth2 grants, RFC 7523, mutual TLS;
and sentinel secrets that must never appear in errors, the DLQ, the journal, logs or reprs."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import ssl
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt as pyjwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from tests.helpers import serve_app
from tests.integration.http.util import Running, build, wait_until

from seamline.core.clock import ManualClock
from seamline.core.component import BatchError
from seamline.core.flow import Flow, sink, source
from seamline.core.message import Message
from seamline.store.base import DlqFilter
from seamline.testing.faultserver import FaultServer, Respond
from seamline.testing.memory import channel, reset_channels

LOOPBACK = {"allow_loopback": True}


@pytest.fixture(autouse=True)
def _channels() -> Any:
    reset_channels()
    yield
    reset_channels()


async def send_one(tmp_path: Path, cfg: dict[str, Any], msg: Message | None = None, clock: Any = None) -> None:
    sk = build("sink", "http", cfg, tmp_path, clock)
    await sk.open()
    try:
        await sk.write([msg or Message({"a": 1}, id="m-1")])
    finally:
        await sk.close()


async def test_basic_bearer_and_api_keys(tmp_path: Path) -> None:
    async with FaultServer() as fs:
        base = {"url": fs.url_for("/api"), "egress": LOOPBACK}
        await send_one(tmp_path, {**base, "auth": {"type": "basic", "username": "svc", "password": "p@ss:wörd"}})
        await send_one(tmp_path, {**base, "auth": {"type": "bearer", "token": "tok-123"}})
        await send_one(tmp_path, {**base, "auth": {"type": "api_key", "name": "X-Api-Key", "value": "k-1"}})
        await send_one(tmp_path, {**base, "auth": {"type": "api_key", "name": "apikey", "value": "k-2", "in": "query"}})
        a, b, c, d = fs.received("/api")
    assert a.header("Authorization") == "Basic " + base64.b64encode("svc:p@ss:wörd".encode()).decode()
    assert b.header("Authorization") == "Bearer tok-123"
    assert c.header("X-Api-Key") == "k-1"
    assert d.query == {"apikey": ["k-2"]} and d.header("Authorization") is None


async def test_refresh_token_grant_keeps_the_rotated_token(tmp_path: Path) -> None:
    clock = ManualClock()
    async with FaultServer() as fs:
        fs.script("/token",
                  Respond(200, json={"access_token": "a1", "refresh_token": "r2", "expires_in": 100}),
                  default=Respond(200, json={"access_token": "a2", "refresh_token": "r3", "expires_in": 100}))
        auth = {"type": "oauth2_refresh_token", "token_url": fs.url_for("/token"), "refresh_token": "r1",
                "client_id": "app", "client_auth": "body"}
        sk = build("sink", "http", {"url": fs.url_for("/api"), "egress": LOOPBACK, "auth": auth}, tmp_path, clock)
        await sk.open()
        try:
            await sk.write([Message({}, id="1")])
            clock.advance(95)
            await sk.write([Message({}, id="2")])
        finally:
            await sk.close()
        forms = [parse_qs(r.text) for r in fs.received("/token")]
    assert [f["refresh_token"] for f in forms] == [["r1"], ["r2"]]
    assert all(f["grant_type"] == ["refresh_token"] and f["client_id"] == ["app"] for f in forms)
    assert [r.header("Authorization") for r in fs.received("/api")] == ["Bearer a1", "Bearer a2"]


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_jwt_bearer_assertion_rfc7523(tmp_path: Path, algorithm: str) -> None:
    key: Any = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if algorithm == "RS256"
                else ec.generate_private_key(ec.SECP256R1()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"kpw")).decode()
    (tmp_path / "sa.pem").write_text(pem)
    clock = ManualClock()
    async with FaultServer() as fs:
        fs.script("/token", default=Respond(200, json={"access_token": "jwt-tok", "expires_in": 3600}))
        auth = {"type": "jwt_bearer", "token_url": fs.url_for("/token"), "issuer": "svc@project.test",
                "subject": "robot", "private_key_file": "sa.pem", "private_key_password": "kpw",
                "algorithm": algorithm, "key_id": "key-7", "scope": ["a", "b"], "lifetime": "5m",
                "claims": {"tenant": "t1"}}
        await send_one(tmp_path, {"url": fs.url_for("/api"), "egress": LOOPBACK, "auth": auth}, clock=clock)
        token_url = fs.url_for("/token")
        (tok,) = fs.received("/token")
        (api,) = fs.received("/api")
    form = parse_qs(tok.text)
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert form["scope"] == ["a b"]
    assertion = form["assertion"][0]
    assert pyjwt.get_unverified_header(assertion)["kid"] == "key-7"
    claims = pyjwt.decode(assertion, key.public_key(), algorithms=[algorithm], audience=token_url,
                          options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == "svc@project.test" and claims["sub"] == "robot" and claims["tenant"] == "t1"
    assert claims["exp"] - claims["iat"] == 300 and claims["iat"] == int(clock.now()) and claims["jti"]
    assert api.header("Authorization") == "Bearer jwt-tok"


def test_jwt_bearer_refuses_a_key_that_cannot_sign_the_algorithm(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    with pytest.raises(Exception) as caught:
        build("sink", "http", {"url": "https://api.example.com/x", "auth": {
            "type": "jwt_bearer", "token_url": "https://idp.example.com/token", "issuer": "i", "private_key": pem,
            "algorithm": "RS256"}}, tmp_path)
    assert getattr(caught.value, "code", None) == "auth.jwt_bearer.key_invalid"
    assert "PRIVATE KEY" not in str(caught.value)


# -- TLS -----------------------------------------------------------------------------------------


def _cert(subject: str, key: Any, issuer: tuple[Any, x509.Name] | None, *, ca: bool = False,
          ip: str | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer, issuer_name = issuer if issuer else (key, name)
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return b.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca=True)
    out: dict[str, Path] = {}
    for name, ip in (("server", "127.0.0.1"), ("client", None)):
        k = ec.generate_private_key(ec.SECP256R1())
        c = _cert(name, k, (ca_key, ca.subject), ip=ip)
        (d / f"{name}.crt").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        out[name] = d / f"{name}.crt"
        out[name + "_key"] = d / f"{name}.key"
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["ca"] = d / "ca.crt"
    return out


async def test_mutual_tls_and_verification_on_by_default(tmp_path: Path, pki: dict[str, Path]) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        seen.append(dict(x[0] for x in peer["subject"])["commonName"] if peer else "")
        return web.json_response({"ok": True}, status=201)

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    server_ctx.load_cert_chain(str(pki["server"]), str(pki["server_key"]))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    app = web.Application()
    app.router.add_post("/api", handler)
    async with serve_app(app, ssl_context=server_ctx) as port:
        url = f"https://127.0.0.1:{port}/api"
        mtls = {"type": "mtls", "cert_file": str(pki["client"]), "key_file": str(pki["client_key"])}
        await send_one(tmp_path, {"url": url, "egress": LOOPBACK, "tls": {"ca_file": str(pki["ca"])}, "auth": mtls})
        assert seen == ["client"]
        # the server certificate is not trusted without the CA: refused, fatal, nothing sent
        with pytest.raises(BatchError) as untrusted:
            await send_one(tmp_path, {"url": url, "egress": LOOPBACK, "auth": mtls})
        # trusted server, but no client certificate: the handshake fails
        with pytest.raises(BatchError) as anonymous:
            await send_one(tmp_path, {"url": url, "egress": LOOPBACK, "tls": {"ca_file": str(pki["ca"])}})
    assert untrusted.value.errors[0].code == "http.tls"  # type: ignore[attr-defined]
    assert not untrusted.value.errors[0].retryable  # type: ignore[attr-defined]
    assert anonymous.value.errors[0].code in ("http.tls", "http.disconnected", "http.connect")  # type: ignore
    assert seen == ["client"]


# -- sentinel secrets ----------------------------------------------------------------------------

SENTINELS = {
    "client_secret": "cs-SENTINEL-9f3a71c2",
    "bearer": "bearer-SENTINEL-4be0d1aa",
    "api_key": "apikey-SENTINEL-77e2c9b1",
    "password": "pw-SENTINEL-0c8d5e13",
}


async def test_secrets_never_leak_into_errors_dlq_journal_logs_or_reprs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = ManualClock()
    s = SENTINELS
    async with FaultServer(clock=clock) as fs:
        fs.script("/token", default=Respond(401, json={
            "error": "invalid_client", "error_description": f"client secret {s['client_secret']} is wrong"}))
        fs.script("/bearer", default=Respond(400, body=f"bad request with Authorization: Bearer {s['bearer']}"))
        fs.script("/query", default=Respond(404, body=f"no resource at /query?apikey={s['api_key']}"))
        fs.script("/basic", default=Respond(403, json={"echo": f"password={s['password']}"}))
        auths = {
            "/token-api": {"type": "oauth2_client_credentials", "token_url": fs.url_for("/token"),
                           "client_id": "app", "client_secret": s["client_secret"]},
            "/bearer": {"type": "bearer", "token": s["bearer"]},
            "/query": {"type": "api_key", "name": "apikey", "value": s["api_key"], "in": "query"},
            "/basic": {"type": "basic", "username": "u", "password": s["password"]},
        }
        flows = []
        for i, (path, auth) in enumerate(auths.items()):
            name = f"leak{i}"
            channel(f"{name}-in").put({"n": i}, id=f"{name}-msg")
            flows.append(Flow(name, source=source("memory", channel=f"{name}-in"),
                              sinks=[sink("http", label="api", url=fs.url_for(path), egress=LOOPBACK, auth=auth)]))
        async with Running(flows, tmp_path / "s.db", clock) as run:
            await wait_until(lambda: all(channel(f"leak{i}-in").acked for i in range(4)))
            dead = await run.store.list_dead(DlqFilter())
            journal = [e for i in range(4) for e in await run.store.trace(f"leak{i}-msg")]
            reprs = [repr(r.sinks["api"]) + repr(r.flow.sinks[0].config) + repr(r.sinks["api"].client)
                     for r in run.engine.runners]
            await run.stop()
    assert sorted(d.msg_id for d in dead) == [f"leak{i}-msg" for i in range(4)]
    codes = {d.msg_id: d.error_code for d in dead}
    assert codes == {"leak0-msg": "auth.oauth2.refused", "leak1-msg": "http.status.400",
                     "leak2-msg": "http.status.404", "leak3-msg": "http.status.403"}
    outputs = {
        "dlq": json.dumps([asdict(d) for d in dead], default=str),
        "journal": json.dumps([asdict(e) for e in journal], default=str),
        "logs": caplog.text,
        "reprs": "\n".join(reprs),
    }
    for where, text in outputs.items():
        for what, value in s.items():
            assert value not in text, f"the {what} leaked into the {where}"
    assert "invalid_client" in outputs["dlq"]  # the error itself is still explained
