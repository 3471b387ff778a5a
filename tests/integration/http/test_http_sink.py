"""The http sink against the fault server, on a manual clock: what the server received vs inputs and DLQ."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from tests.helpers import serve_app
from tests.integration.http.util import Running, build, wait_until

from seamline.core.clock import ManualClock
from seamline.core.component import BatchError
from seamline.core.flow import Flow, sink, source
from seamline.store.base import DlqFilter
from seamline.testing.faultserver import FaultServer, HalfWritten, Hang, Latency, Reset, Respond
from seamline.testing.memory import channel, reset_channels

LOOPBACK = {"allow_loopback": True}


@pytest.fixture(autouse=True)
def _channels() -> Any:
    reset_channels()
    yield
    reset_channels()


def flow(name: str, sink_cfg: dict[str, Any], *, retry: dict[str, Any] | None = None, batch: int = 100) -> Flow:
    return Flow(
        name,
        source=source("memory", channel=f"{name}-in"),
        sinks=[sink("http", label="api", **sink_cfg)],
        on_error={"retry": retry or {"max_attempts": 5, "initial": 0.1}},
        settings={"batch_size": batch},
    )


def feed(name: str, n: int) -> list[str]:
    ch = channel(f"{name}-in")
    return [ch.put({"n": i, "name": f"item {i}"}, id=f"m-{i}").id for i in range(n)]


async def test_503_with_retry_after_waits_that_long(tmp_path: Path) -> None:
    clock = ManualClock()
    async with FaultServer(clock=clock) as fs:
        fs.script("/orders", Respond(503, headers={"Retry-After": "7"}), default=Respond(201))
        ids = feed("ra", 1)
        async with Running([flow("ra", {"url": fs.url_for("/orders"), "egress": LOOPBACK})],
                           tmp_path / "s.db", clock) as run:
            await fs.wait_for(1, "/orders")
            await wait_until(lambda: channel("ra-in").acked == ids, what="the retry to be scheduled")
            assert await run.store.count_retries("ra") == 1
            clock.advance(6.9)
            await asyncio.sleep(0.3)
            assert fs.count("/orders") == 1, "retried before Retry-After elapsed"
            clock.advance(0.2)
            await fs.wait_for(2, "/orders")
            await wait_until(lambda: run.delivered == 1)
            result = await run.stop()
        first, second = fs.received("/orders")
        assert second.timestamp - first.timestamp >= 7.0
        assert first.header("Idempotency-Key") == second.header("Idempotency-Key") == "m-0"
        assert result.stats["ra"].retried == 1 and result.stats["ra"].dead == 0


async def test_400_goes_to_the_dlq_at_once(tmp_path: Path) -> None:
    clock = ManualClock()
    async with FaultServer(clock=clock) as fs:
        fs.script("/items/2", default=Respond(400, json={"error": "name too long"}))
        fs.script(None, default=Respond(201))
        ids = feed("bad", 5)
        cfg = {"url": fs.url_for("/items/{body.n}"), "egress": LOOPBACK}
        async with Running([flow("bad", cfg)], tmp_path / "s.db", clock) as run:
            await wait_until(lambda: sorted(channel("bad-in").acked) == sorted(ids))
            dead = await run.store.list_dead(DlqFilter(flow="bad"))
            retries = await run.store.count_retries("bad")
            await run.stop()
        assert fs.count("/items/2") == 1
        assert sorted(r.path for r in fs.received()) == [f"/items/{i}" for i in range(5)]
        assert retries == 0
        assert [(d.msg_id, d.error_code, d.attempts, d.error_class) for d in dead] == [
            ("m-2", "http.status.400", 1, "fatal")]
        assert "name too long" in dead[0].error_message


async def test_breaker_opens_waits_probes_and_drops_nothing(tmp_path: Path) -> None:
    clock = ManualClock()
    async with FaultServer(clock=clock) as fs:
        fs.set_default(Respond(503))
        ids = feed("brk", 8)
        cfg = {"url": fs.url_for("/api"), "egress": LOOPBACK, "max_in_flight": 1,
               "breaker": {"failure_threshold": 3, "cool_down": "30s"}}
        async with Running([flow("brk", cfg, retry={"max_attempts": 10, "initial": 1.0})],
                           tmp_path / "s.db", clock) as run:
            await fs.wait_for(3, "/api")
            await asyncio.sleep(0.3)
            assert fs.count("/api") == 3, "calls went out while the breaker was open"
            clock.advance(30)
            await fs.wait_for(4, "/api")
            await asyncio.sleep(0.3)
            assert fs.count("/api") == 4, "more than one probe while half-open"
            fs.set_default(Respond(201))
            clock.advance(30)
            await fs.wait_for(8, "/api")  # the probe succeeds, the rest follow
            await wait_until(lambda: sorted(channel("brk-in").acked) == sorted(ids))
            for _ in range(20):  # the four failed ones are retried
                if run.delivered == 8:
                    break
                clock.advance(1.0)
                await asyncio.sleep(0.05)
            await wait_until(lambda: run.delivered == 8)
            dead = await run.store.list_dead(DlqFilter(flow="brk"))
            await run.stop()
        ok = Counter(r.header("Idempotency-Key") for r in fs.received("/api") if r.behaviour == Respond(201))
        assert sorted(ok) == sorted(ids) and set(ok.values()) == {1}
        assert dead == []


def token_json(value: str, lifetime: int = 3600) -> Respond:
    return Respond(200, json={"access_token": value, "token_type": "Bearer", "expires_in": lifetime})


def oauth(fs: FaultServer, secret: str = "cs-SENTINEL-1234") -> dict[str, Any]:
    return {"type": "oauth2_client_credentials", "token_url": fs.url_for("/token"), "client_id": "seamline",
            "client_secret": secret, "scope": "orders:write"}


async def test_oauth2_concurrent_calls_share_one_token_request(tmp_path: Path) -> None:
    clock = ManualClock()
    async with FaultServer(clock=clock) as fs:
        fs.script("/token", default=Latency(0.2, token_json("tok-A")))
        fs.script("/api", default=Respond(201))
        ids = feed("oa", 20)
        cfg = {"url": fs.url_for("/api"), "egress": LOOPBACK, "max_in_flight": 20, "auth": oauth(fs)}
        async with Running([flow("oa", cfg)], tmp_path / "s.db", clock) as run:
            await wait_until(lambda: run.delivered == 20)
            await run.stop()
        assert fs.count("/token") == 1
        (tok,) = fs.received("/token")
        form = parse_qs(tok.text)
        assert form["grant_type"] == ["client_credentials"] and form["scope"] == ["orders:write"]
        assert tok.header("Authorization") == "Basic " + base64.b64encode(b"seamline:cs-SENTINEL-1234").decode()
        api = fs.received("/api")
        assert sorted(r.header("Idempotency-Key") for r in api) == sorted(ids)
        assert {r.header("Authorization") for r in api} == {"Bearer tok-A"}


async def test_oauth2_401_refreshes_once_then_is_fatal(tmp_path: Path) -> None:
    clock = ManualClock()
    async with FaultServer(clock=clock) as fs:
        fs.script("/token", token_json("tok-1"), default=token_json("tok-2"))
        fs.script("/api", default=Respond(401, json={"error": "invalid_token"}))
        ids = feed("o401", 5)
        cfg = {"url": fs.url_for("/api"), "egress": LOOPBACK, "max_in_flight": 5, "auth": oauth(fs)}
        async with Running([flow("o401", cfg)], tmp_path / "s.db", clock) as run:
            await wait_until(lambda: sorted(channel("o401-in").acked) == sorted(ids))
            dead = await run.store.list_dead(DlqFilter(flow="o401"))
            await run.stop()
        assert fs.count("/token") == 2, "one token, then exactly one refresh"
        per_message = Counter(r.header("Idempotency-Key") for r in fs.received("/api"))
        assert per_message == dict.fromkeys(ids, 2), "each message: one try, one retry with the new token"
        assert {r.header("Authorization") for r in fs.received("/api")} == {"Bearer tok-1", "Bearer tok-2"}
        assert sorted(d.msg_id for d in dead) == sorted(ids)
        assert {(d.error_code, d.attempts) for d in dead} == {("http.status.401", 1)}


async def test_oauth2_401_with_a_revoked_token_recovers_with_the_new_one(tmp_path: Path) -> None:
    async with FaultServer() as fs:
        fs.script("/token", token_json("old"), default=token_json("new"))
        fs.script("/api", Respond(401), default=Respond(201))
        sk = build("sink", "http", {"url": fs.url_for("/api"), "egress": LOOPBACK, "auth": oauth(fs)}, tmp_path)
        await sk.open()
        try:
            from seamline.core.message import Message

            await sk.write([Message({"a": 1}, id="x-1")])
            await sk.write([Message({"a": 2}, id="x-2")])
        finally:
            await sk.close()
        assert [r.header("Authorization") for r in fs.received("/api")] == ["Bearer old", "Bearer new", "Bearer new"]
        assert fs.count("/token") == 2


async def test_tokens_are_refreshed_before_they_expire(tmp_path: Path) -> None:
    from seamline.core.message import Message

    clock = ManualClock()
    async with FaultServer(clock=clock) as fs:
        fs.script("/token", token_json("t1", 120), token_json("t2", 120), default=Respond(503))
        fs.script("/api", default=Respond(201))
        auth = {**oauth(fs), "refresh_before": "60s"}
        sk = build("sink", "http", {"url": fs.url_for("/api"), "egress": LOOPBACK, "auth": auth}, tmp_path, clock)
        await sk.open()
        try:
            await sk.write([Message({}, id="a")])
            clock.advance(59)
            await sk.write([Message({}, id="b")])
            clock.advance(2)  # 61 s: inside the refresh window
            await sk.write([Message({}, id="c")])
            clock.advance(61)  # the token endpoint is down now, but t2 is still valid: keep using it
            await sk.write([Message({}, id="d")])
            clock.advance(60)  # t2 expired and no new token: retryable
            with pytest.raises(BatchError) as caught:
                await sk.write([Message({}, id="e")])
        finally:
            await sk.close()
        assert [r.header("Authorization") for r in fs.received("/api")] == [
            "Bearer t1", "Bearer t1", "Bearer t2", "Bearer t2"]
        err = caught.value.errors[0]
        assert err.code == "auth.oauth2.unavailable" and err.retryable  # type: ignore[attr-defined]


# -- transport failures, limits and the egress guard ---------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [(Hang(), "http.timeout"), (Reset(), "http.disconnected"), (HalfWritten(201), "http.disconnected"),
     (Respond(429), "http.status.429"), (Respond(502), "http.status.502")],
)
async def test_transport_failures_are_retryable(tmp_path: Path, behaviour: Any, code: str) -> None:
    from seamline.core.message import Message

    async with FaultServer() as fs:
        fs.script("/api", default=behaviour)
        sk = build("sink", "http", {"url": fs.url_for("/api"), "egress": LOOPBACK, "request_timeout": "0.5s"},
                   tmp_path)
        await sk.open()
        try:
            with pytest.raises(BatchError) as caught:
                await sk.write([Message({"x": 1}, id="t-1")])
        finally:
            await sk.close()
    err = caught.value.errors[0]
    assert err.code == code and err.retryable, err  # type: ignore[attr-defined]


async def test_size_limits_and_templated_requests(tmp_path: Path) -> None:
    from seamline.core.message import Message

    async with FaultServer() as fs:
        fs.script(None, default=Respond(201, body=b"x" * 100_000))
        cfg = {"url": fs.url_for("/customers/{body.customer.id}?src={headers.origin}"), "egress": LOOPBACK,
               "method": "PUT", "max_request_bytes": 200, "headers": {"X-Tenant": "{body.tenant}"},
               "body": "{'name': body.customer.name, 'tenant': body.tenant}", "params": {"v": "2"}}
        sk = build("sink", "http", cfg, tmp_path)
        await sk.open()
        try:
            ok = Message({"customer": {"id": "a/b c", "name": "Ana"}, "tenant": "t1"}, id="c-1",
                         headers={"origin": "shop&x=1"})
            await sk.write([ok])
            big = Message({"customer": {"id": 1, "name": "x" * 500}, "tenant": "t1"}, id="c-2")
            crlf = Message({"customer": {"id": 2, "name": "n"}, "tenant": "t1\r\nX-Evil: 1"}, id="c-3")
            with pytest.raises(BatchError) as caught:
                await sk.write([big, crlf])
        finally:
            await sk.close()
        (req,) = fs.received()
        assert req.method == "PUT" and req.path == "/customers/a/b c"
        assert req.query == {"src": ["shop&x=1"], "v": ["2"]}
        assert req.header("X-Tenant") == "t1" and req.json() == {"name": "Ana", "tenant": "t1"}
        assert req.header("Idempotency-Key") == "c-1"
    codes = {i: e.code for i, e in caught.value.errors.items()}  # type: ignore[attr-defined]
    assert codes == {0: "http.request_too_large", 1: "http.header_invalid"}


async def test_egress_guard_blocks_loopback_and_metadata_by_default(tmp_path: Path) -> None:
    from seamline.core.message import Message

    async with FaultServer() as fs:
        fs.script("/hop", default=Respond(302, headers={"Location": "http://169.254.169.254/latest/meta-data"}))
        closed = build("sink", "http", {"url": fs.url_for("/api")}, tmp_path)
        hop = build("step", "http", {"url": fs.url_for("/hop"), "egress": LOOPBACK}, tmp_path)
        for comp in (closed, hop):
            await comp.open()
        try:
            with pytest.raises(BatchError) as caught:
                await closed.write([Message({}, id="e-1")])
            with pytest.raises(Exception) as redirected:
                await hop.process_async(Message({}, id="e-2"))
        finally:
            for comp in (closed, hop):
                await comp.close()
        assert fs.count("/api") == 0
        assert fs.count("/hop") == 1
    assert caught.value.errors[0].code == "egress.blocked"  # type: ignore[attr-defined]
    assert getattr(redirected.value, "code", None) == "egress.blocked"


async def test_batches_overlap_but_the_in_flight_limit_holds_across_them(tmp_path: Path) -> None:
    """Parallel requests keep no order, so the runtime lets batches overlap in the sink; the sink's
    own in-flight limit still bounds all of them together."""
    from aiohttp import web

    from seamline.core.engine import Engine
    from seamline.store import open_store

    now = peak = 0
    seen: list[int] = []

    async def slow(request: web.Request) -> web.Response:
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        try:
            seen.append((await request.json())["n"])
            await asyncio.sleep(0.01)
        finally:
            now -= 1
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/api", slow)
    async with serve_app(app) as port:
        fl = Flow("overlap", source=source("memory", channel="overlap-in"),
                  sinks=[sink("http", label="api", url=f"http://127.0.0.1:{port}/api", egress=LOOPBACK,
                              max_in_flight=4)],
                  settings={"batch_size": 3, "concurrency": 3})
        ids = feed("overlap", 60)
        result = await Engine([fl], open_store(str(tmp_path / "s.db"))).run(
            until_idle=True, idle_horizon=0, install_signals=False)
        assert result.stats["overlap"].delivered == 60
        assert sorted(seen) == list(range(60)) and sorted(channel("overlap-in").acked) == sorted(ids)
        assert peak == 4, f"{peak} requests in flight at most: batches of 3 overlap, the sink's limit is 4"
