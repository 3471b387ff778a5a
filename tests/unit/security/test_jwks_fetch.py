"""JwtVerifier.verify_async against a real JWKS endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import jwt as pyjwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from tests.helpers import serve_app

from seamline.core.clock import ManualClock
from seamline.core.errors import classify
from seamline.security.egress import EgressPolicy
from seamline.security.errors import AuthError, AuthUnavailableError, EgressError
from seamline.security.jwt import JwtVerifier

T0 = 1_700_000_000.0


class Idp:
    """A tiny identity provider: serves a JWKS document, counts every request."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.extra: list[dict[str, Any]] = []
        self.status = 200
        self.raw: bytes | None = None
        self.hits: dict[str, int] = {}
        self.port = 0
        self.delay = 0.0

    def add_key(self, kid: str) -> rsa.RSAPrivateKey:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self.keys[kid]

    def document(self) -> bytes:
        if self.raw is not None:
            return self.raw
        keys = [{**RSAAlgorithm.to_jwk(k.public_key(), as_dict=True), "kid": kid} for kid, k in self.keys.items()]
        return json.dumps({"keys": keys + self.extra}).encode()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    def token(self, kid: str, now: float = T0, **headers: Any) -> str:
        claims = {"sub": "svc", "exp": int(now) + 600, "iat": int(now)}
        return pyjwt.encode(claims, self.keys[kid], algorithm="RS256", headers={"kid": kid, **headers})


@pytest.fixture(scope="module")
def shared_keys() -> dict[str, rsa.RSAPrivateKey]:
    return {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("k1", "k2")}


@pytest.fixture
async def idp(shared_keys: dict[str, rsa.RSAPrivateKey]) -> AsyncIterator[Idp]:
    state = Idp()
    state.keys["k1"] = shared_keys["k1"]

    async def handle(request: web.Request) -> web.Response:
        state.hits[request.path] = state.hits.get(request.path, 0) + 1
        if state.delay:
            await asyncio.sleep(state.delay)
        if request.path != "/jwks":
            return web.Response(status=404)
        return web.Response(status=state.status, body=state.document(), content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    async with serve_app(app) as state.port:
        yield state


def make(idp: Idp, clock: ManualClock, **kwargs: Any) -> JwtVerifier:
    return JwtVerifier(jwks_url=idp.url, algorithms=["RS256"], require_https=False, clock=clock, **kwargs)


async def test_fetched_once_then_cached(idp: Idp) -> None:
    clock = ManualClock(T0)
    verifier = make(idp, clock)
    for _ in range(3):
        assert (await verifier.verify_async(idp.token("k1")))["sub"] == "svc"
    assert verifier.jwks_fetches == 1 and idp.hits == {"/jwks": 1}
    assert verifier.verify(idp.token("k1"))["sub"] == "svc"  # sync path uses the cached copy


async def test_sync_verify_before_any_fetch_is_unavailable(idp: Idp) -> None:
    with pytest.raises(AuthUnavailableError):
        make(idp, ManualClock(T0)).verify(idp.token("k1"))
    assert idp.hits == {}


async def test_unknown_kid_refetches_once_and_is_rate_limited(idp: Idp, shared_keys: dict) -> None:
    clock = ManualClock(T0)
    verifier = make(idp, clock, jwks_min_interval=30)
    await verifier.verify_async(idp.token("k1"))
    idp.keys["k2"] = shared_keys["k2"]  # rotation at the IdP
    foreign = pyjwt.encode({"sub": "x", "exp": int(T0) + 600}, shared_keys["k2"], "RS256", headers={"kid": "nope"})
    clock.advance(5)
    for _ in range(5):  # an attacker sprays unknown kids: no fetch storm
        with pytest.raises(AuthError) as exc:
            await verifier.verify_async(foreign)
        assert exc.value.code == "auth.jwt.kid_unknown"
    assert verifier.jwks_fetches == 1
    clock.advance(30)
    assert (await verifier.verify_async(idp.token("k2", now=clock.now())))["sub"] == "svc"  # one refetch
    assert verifier.jwks_fetches == 2


async def test_ttl_expiry_refetches(idp: Idp) -> None:
    clock = ManualClock(T0)
    verifier = make(idp, clock, jwks_ttl=300)
    await verifier.verify_async(idp.token("k1"))
    clock.advance(301)
    await verifier.verify_async(idp.token("k1", now=clock.now()))
    assert verifier.jwks_fetches == 2


async def test_unreachable_without_cache_is_retryable(idp: Idp) -> None:
    idp.status = 503
    verifier = make(idp, ManualClock(T0))
    with pytest.raises(AuthUnavailableError) as exc:
        await verifier.verify_async(idp.token("k1"))
    assert exc.value.code == "auth.jwks.unavailable" and classify(exc.value)
    with pytest.raises(AuthUnavailableError):  # rate limited, still no keys: still retryable
        await verifier.verify_async(idp.token("k1"))
    assert verifier.jwks_fetches == 1


async def test_stale_copy_is_used_when_refresh_fails(idp: Idp) -> None:
    clock = ManualClock(T0)
    verifier = make(idp, clock, jwks_ttl=60)
    await verifier.verify_async(idp.token("k1"))
    idp.status = 500
    clock.advance(120)
    assert (await verifier.verify_async(idp.token("k1", now=clock.now())))["sub"] == "svc"
    assert verifier.jwks_fetches == 2


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"keys": "x"}', json.dumps({"keys": [], "pad": "x" * 300_000}).encode()]
)
async def test_bad_documents_are_unavailable(idp: Idp, raw: bytes) -> None:
    idp.raw = raw
    with pytest.raises(AuthUnavailableError):
        await make(idp, ManualClock(T0)).verify_async(idp.token("k1"))


async def test_symmetric_keys_in_a_fetched_set_are_ignored(idp: Idp) -> None:
    secret = b"s" * 32
    idp.extra = [{"kty": "oct", "k": base64.urlsafe_b64encode(secret).decode().rstrip("="), "kid": "hs"}]
    verifier = JwtVerifier(jwks_url=idp.url, algorithms=["RS256", "HS256"], require_https=False, clock=ManualClock(T0))
    token = pyjwt.encode({"sub": "x", "exp": int(T0) + 60}, secret, "HS256", headers={"kid": "hs"})
    with pytest.raises(AuthError) as exc:
        await verifier.verify_async(token)
    assert exc.value.code == "auth.jwt.kid_unknown"


async def test_concurrent_verifications_share_one_fetch(idp: Idp) -> None:
    idp.delay = 0.05
    verifier = make(idp, ManualClock(T0))
    results = await asyncio.gather(*(verifier.verify_async(idp.token("k1")) for _ in range(20)))
    assert len(results) == 20 and verifier.jwks_fetches == 1 and idp.hits == {"/jwks": 1}


async def test_key_urls_in_the_token_are_never_fetched(idp: Idp) -> None:
    attacker = idp.add_key("evil")
    del idp.keys["evil"]  # the attacker's key is not in the JWKS
    evil_url = f"http://127.0.0.1:{idp.port}/attacker-jwks"
    headers = {
        "jku": evil_url,
        "x5u": evil_url + "/cert",
        "kid": "evil",
        "jwk": RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True),
    }
    token = pyjwt.encode({"sub": "x", "exp": int(T0) + 60}, attacker, "RS256", headers=headers)
    with pytest.raises(AuthError) as exc:
        await make(idp, ManualClock(T0)).verify_async(token)
    assert exc.value.code == "auth.jwt.kid_unknown"
    assert set(idp.hits) == {"/jwks"}


async def test_jwks_fetch_goes_through_the_egress_policy(idp: Idp) -> None:
    with pytest.raises(EgressError) as exc:
        await make(idp, ManualClock(T0), egress=EgressPolicy()).verify_async(idp.token("k1"))
    assert exc.value.code == "egress.blocked" and idp.hits == {}
    opened = make(idp, ManualClock(T0), egress=EgressPolicy(allow_loopback=True))
    assert (await opened.verify_async(idp.token("k1")))["sub"] == "svc"


async def test_static_pem_key_does_not_shadow_jwks_kids(idp: Idp) -> None:
    from cryptography.hazmat.primitives import serialization

    local = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = local.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    verifier = make(idp, ManualClock(T0), keys=pem)
    # a token naming a JWKS kid is checked with that key, not with the lone static PEM key
    assert (await verifier.verify_async(idp.token("k1")))["sub"] == "svc"
    assert verifier.jwks_fetches == 1
    local_token = pyjwt.encode({"sub": "local", "exp": int(T0) + 60}, local, "RS256")
    with pytest.raises(AuthError) as exc:  # no kid and two candidate keys: no guessing
        await verifier.verify_async(local_token)
    assert exc.value.code == "auth.jwt.kid_unknown"
