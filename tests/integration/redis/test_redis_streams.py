"""The redis connector (Streams) against a live Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from tests.integration.services import tcp_proxy
from tests.integration.services.crash import sigkill_mid_stream
from tests.integration.services.flows import COLLECTED, make_flow, running
from tests.integration.services.flows import count_dead as _count_dead

from seamline.connectors.redis import RedisSink, RedisSinkConfig, RedisSource, RedisSourceConfig
from seamline.core.component import BuildContext, Delivery
from seamline.core.flow import sink, source, step
from seamline.core.message import Message

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _ctx(tmp: Path, flow: str = "t") -> BuildContext:
    return BuildContext(flow=flow, base_dir=tmp, store=None, batch_size=100)  # type: ignore[arg-type]


async def _produce(url: str, stream: str, msgs: list[Message], **kw: Any) -> None:
    s = RedisSink(RedisSinkConfig(url=url, stream=stream, **kw), _ctx(Path.cwd()))
    await s.open()
    try:
        for i in range(0, len(msgs), 100):
            await s.write(msgs[i : i + 100])
    finally:
        await s.close()


def _msgs(n: int, start: int = 0) -> list[Message]:
    return [Message({"n": i}, id=f"m{i}", correlation_id=f"c{i}") for i in range(start, start + n)]


async def _pending(url: str, stream: str, group: str) -> int:
    r = aioredis.from_url(url)
    try:
        info = await r.xpending(stream, group)
        return int(info["pending"])
    finally:
        await r.aclose()


async def test_send_receive_headers_and_correlation(redis_url: str, stream: str, tmp_path: Path) -> None:
    msgs = _msgs(300)
    msgs[0].headers = {"traceparent": TRACEPARENT, "tenant": "acme"}
    await _produce(redis_url, stream, msgs)
    key = f"rt-{stream}"
    flow = make_flow("redis-rt", source("redis", url=redis_url, stream=stream, group="g1"),
                     [sink("test-collect", key=key)])
    async with running(flow, tmp_path / "state.db") as r:
        await r.wait_for(lambda: len(COLLECTED.get(key, [])) >= 300, 30, "300 messages")
    got = {m.id: m for m in COLLECTED.pop(key)}
    assert set(got) == {m.id for m in msgs}
    first = got["m0"]
    assert first.correlation_id == "c0"
    assert first.headers["traceparent"] == TRACEPARENT
    assert first.headers["tenant"] == "acme"
    assert first.headers["redis.stream"] == stream
    assert first.body == {"n": 0}
    assert got["m299"].correlation_id == "c299"
    assert await _pending(redis_url, stream, "g1") == 0


async def test_sink_maxlen_caps_the_stream(redis_url: str, stream: str) -> None:
    await _produce(redis_url, stream, _msgs(120), maxlen=50, approximate=False)
    r = aioredis.from_url(redis_url)
    try:
        assert await r.xlen(stream) == 50
        last = await r.xrevrange(stream, count=1)
        fields = last[0][1]
        assert fields[b"message-id"] == b"m119"
        assert orjson.loads(fields[b"body"]) == {"n": 119}
    finally:
        await r.aclose()


async def test_at_least_once_through_dropped_connection(redis_url: str, stream: str, tmp_path: Path) -> None:
    await _produce(redis_url, stream, _msgs(200))
    key = f"drop-{stream}"
    with tcp_proxy(redis_url, 6379) as (proxy, via):
        flow = make_flow("redis-drop", source("redis", url=via, stream=stream, group="g", block=0.2),
                         [sink("test-collect", key=key)], batch_size=20)
        async with running(flow, tmp_path / "state.db") as r:
            await r.wait_for(lambda: len(COLLECTED.get(key, [])) >= 40, 30, "first messages")
            assert proxy.drop() > 0
            await _produce(redis_url, stream, _msgs(200, 200))
            await r.wait_for(lambda: len({m.id for m in COLLECTED.get(key, [])}) >= 400, 30, "all 400")
        assert proxy.accepted >= 2, "the source must have reconnected"
    ids = {m.id for m in COLLECTED.pop(key)}
    assert ids == {f"m{i}" for i in range(400)}
    assert await _pending(redis_url, stream, "g") == 0


async def test_nack_redelivers(redis_url: str, stream: str, tmp_path: Path) -> None:
    await _produce(redis_url, stream, _msgs(5))
    src = RedisSource(RedisSourceConfig(url=redis_url, stream=stream, group="g", block=0.1), _ctx(tmp_path))
    seen: list[str] = []
    done = asyncio.Event()

    async def emit(batch: list[Delivery]) -> None:
        for d in batch:
            seen.append(d.message.id)
            if d.message.id == "m2" and seen.count("m2") == 1:
                d.nack(True)
            else:
                d.ack()
        await src.commit_acks()
        if seen.count("m2") == 2:
            done.set()

    await src.open()
    task = asyncio.create_task(src.run(emit))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await src.close()
    assert seen.count("m2") == 2
    assert sorted(set(seen)) == [f"m{i}" for i in range(5)]
    assert await _pending(redis_url, stream, "g") == 0


async def test_poison_goes_to_dlq_and_is_acked(redis_url: str, stream: str, tmp_path: Path) -> None:
    msgs = _msgs(20)
    msgs[3] = Message({"n": 3, "poison": True}, id="m3")
    await _produce(redis_url, stream, msgs)
    r = aioredis.from_url(redis_url)
    try:
        await r.xadd(stream, {"body": b"{not json", "message-id": "bad"})
    finally:
        await r.aclose()
    key = f"poison-{stream}"
    flow = make_flow("redis-poison", source("redis", url=redis_url, stream=stream, group="g"),
                     [sink("test-collect", key=key)],
                     steps=[step("python", function="tests.integration.services.flows:poison_check")])
    async with running(flow, tmp_path / "state.db") as run:
        await run.wait_for(lambda: len(COLLECTED.get(key, [])) >= 19, 30, "good messages")
        await run.wait_for(lambda: _count_dead(run, "redis-poison", 2), 10, "two dead letters")
        from seamline.store.base import DlqFilter

        dead = {d.msg_id: d for d in await run.store.list_dead(DlqFilter(flow="redis-poison"))}
    assert set(dead) == {"m3", "bad"}
    assert dead["m3"].error_code == "test.poison"
    assert dead["bad"].error_code == "format.json.syntax"
    assert {m.id for m in COLLECTED.pop(key)} == {f"m{i}" for i in range(20)} - {"m3"}
    assert await _pending(redis_url, stream, "g") == 0


async def test_stale_pending_entries_are_claimed(redis_url: str, stream: str, tmp_path: Path) -> None:
    await _produce(redis_url, stream, _msgs(10))
    r = aioredis.from_url(redis_url)
    try:
        await r.xgroup_create(stream, "g", id="0")
        # a consumer that read 4 entries and died
        await r.xreadgroup("g", "dead-consumer", {stream: ">"}, count=4)
    finally:
        await r.aclose()
    key = f"claim-{stream}"
    flow = make_flow(
        "redis-claim",
        source("redis", url=redis_url, stream=stream, group="g", claim_min_idle=0.3, claim_interval=0.2,
               block=0.1),
        [sink("test-collect", key=key)],
    )
    async with running(flow, tmp_path / "state.db") as run:
        await run.wait_for(lambda: len({m.id for m in COLLECTED.get(key, [])}) >= 10, 20, "all 10, claimed ones too")
    assert {m.id for m in COLLECTED.pop(key)} == {f"m{i}" for i in range(10)}
    assert await _pending(redis_url, stream, "g") == 0


def test_sigkill_mid_stream_loses_nothing(redis_url: str, stream: str, tmp_path: Path) -> None:
    n = 1500
    msgs = [Message({"id": i, "poison": i % 250 == 7}, id=str(i)) for i in range(n)]
    asyncio.run(_produce(redis_url, stream, msgs))
    src = f"source:\n  redis: {{url: '{redis_url}', stream: {stream}, group: crash, consumer: c1}}"
    res = sigkill_mid_stream(tmp_path, src, "redis-crash", {str(i) for i in range(n)},
                             {str(i) for i in range(n) if i % 250 == 7})
    assert res.duplicates <= 50 * 6
    assert asyncio.run(_pending(redis_url, stream, "crash")) == 0
