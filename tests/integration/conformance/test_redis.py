"""The conformance suite against Redis Streams (``SEAMLINE_REDIS``).

Channels are streams; the engine reads through a consumer group. The
restart case runs a redis-server of its own with an append-only file, so the
streams, groups and pending entries survive the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.integration.brokers.broker_services import TcpProxy, host_port
from tests.integration.conformance.harness import (
    Backend,
    BrokerControl,
    Collected,
    ConformanceSuite,
    WireMessage,
)
from tests.integration.services import PrivateRedis, require

from seamline.connectors.wire import CONTENT_TYPE_HEADER, CORRELATION_HEADER, MESSAGE_ID_HEADER


def from_fields(fields: dict[bytes, bytes]) -> WireMessage:
    f = {k.decode(): v for k, v in fields.items()}
    body = f.pop("body", b"")
    headers = {k: v.decode() for k, v in f.items()}
    mid = headers.pop(MESSAGE_ID_HEADER, "")
    corr = headers.pop(CORRELATION_HEADER, None)
    headers.pop(CONTENT_TYPE_HEADER, None)
    return WireMessage(id=mid, body=body, headers=headers, correlation_id=corr)


class RedisBackend(Backend):
    name = "redis"
    order = "total"

    def __init__(self, url: str, engine_url: str | None = None) -> None:
        self.url = url
        self.engine_url = engine_url or url
        self.streams: list[str] = []
        self._r: Any = None

    def r(self) -> Any:
        import redis.asyncio as aioredis

        if self._r is None:
            self._r = aioredis.from_url(self.url)
        return self._r

    async def new_channel(self, tag: str) -> str:
        name = f"conf-{tag}-{uuid.uuid4().hex[:10]}"
        self.streams.append(name)
        return name

    async def publish(self, channel: str, messages: Sequence[WireMessage]) -> None:
        for attempt in range(40):
            try:
                pipe = self.r().pipeline(transaction=False)
                for m in messages:
                    fields: dict[str, Any] = {"body": m.body, MESSAGE_ID_HEADER: m.id,
                                              CONTENT_TYPE_HEADER: "application/json", **m.headers}
                    if m.correlation_id:
                        fields[CORRELATION_HEADER] = m.correlation_id
                    pipe.xadd(channel, fields)
                await pipe.execute()
                return
            except Exception:
                if attempt == 39:
                    raise
                await asyncio.sleep(0.25)  # the broker may just be restarting

    @contextlib.asynccontextmanager
    async def collect(self, channel: str) -> AsyncIterator[Collected]:
        import redis.asyncio as aioredis

        out = Collected()

        async def reader() -> None:
            last = "0"
            while True:
                r = aioredis.from_url(self.url)
                try:
                    while True:
                        resp = await r.xread({channel: last}, count=500, block=200)
                        for _stream, entries in (resp.items() if isinstance(resp, dict) else resp or []):
                            entries = entries[0] if entries and isinstance(entries[0], list) else entries
                            for eid, fields in entries:
                                last = eid.decode() if isinstance(eid, bytes) else eid
                                out.add([from_fields(fields)])
                except (OSError, ConnectionError, aioredis.ConnectionError, aioredis.TimeoutError):
                    await asyncio.sleep(0.3)
                finally:
                    await r.aclose()

        task = asyncio.create_task(reader())
        try:
            yield out
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def source_config(self, channel: str, *, group: str) -> dict[str, Any]:
        return {"url": self.engine_url, "stream": channel, "group": group, "consumer": "c1", "block": "200ms"}

    def sink_config(self, channel: str) -> dict[str, Any]:
        return {"url": self.engine_url, "stream": channel}

    async def unacked(self, channel: str, group: str) -> int | None:
        try:
            info = await self.r().xpending(channel, group)
        except Exception:
            return None
        return int(info["pending"])

    @contextlib.asynccontextmanager
    async def behind_proxy(self) -> AsyncIterator[tuple[Backend, Any]]:
        host, port = host_port(self.url, 6379)
        proxy = TcpProxy(host, port)
        proxy.start()
        db = self.url.rsplit("/", 1)[-1] if self.url.count("/") >= 3 else "0"
        b = RedisBackend(self.url, f"redis://127.0.0.1:{proxy.port}/{db}")
        try:
            yield b, proxy
        finally:
            await b.aclose()
            proxy.close()

    @contextlib.asynccontextmanager
    async def private_broker(self, tmp: Path) -> AsyncIterator[tuple[Backend, BrokerControl]]:
        server = PrivateRedis(tmp)
        await asyncio.to_thread(server.start)
        b = RedisBackend(server.url)
        try:
            yield b, _Control(server)
        finally:
            with contextlib.suppress(Exception):
                await b.aclose()
            await asyncio.to_thread(server.stop)

    async def aclose(self) -> None:
        r, self._r = self._r, None
        if r is None and self.streams:
            r = self.r()
            self._r = None
        if r is not None:
            with contextlib.suppress(Exception):
                if self.streams:
                    await r.delete(*self.streams)
            await r.aclose()
        self.streams.clear()


class _Control(BrokerControl):
    def __init__(self, server: PrivateRedis) -> None:
        self.server = server

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


class TestRedisConformance(ConformanceSuite):
    @pytest.fixture
    async def backend(self) -> AsyncIterator[RedisBackend]:
        b = RedisBackend(require("redis"))
        yield b
        await b.aclose()
