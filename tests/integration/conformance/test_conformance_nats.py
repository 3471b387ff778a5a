"""The conformance suite against NATS JetStream (``SEAMLINE_NATS``), plus NATS specifics.

The restart case runs a private ``nats-server -js`` with a file store in a
temporary directory: streams, messages and durable consumers survive the
restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.integration.brokers.broker_services import NatsServer, TcpProxy, host_port
from tests.integration.conformance.harness import (
    Backend,
    BrokerControl,
    Collected,
    ConformanceSuite,
    InProcessEngine,
    WireMessage,
    dead_letters,
    eventually,
    make_messages,
    write_flow,
)

from seamline.connectors.wire import CONTENT_TYPE_HEADER, CORRELATION_HEADER


def from_nats(m: Any) -> WireMessage:
    headers = dict(m.headers or {})
    mid = headers.pop("Nats-Msg-Id", "")
    corr = headers.pop(CORRELATION_HEADER, None)
    headers.pop(CONTENT_TYPE_HEADER, None)
    headers = {k: v for k, v in headers.items() if not k.startswith("Nats-")}
    return WireMessage(id=mid, body=m.data, headers=headers, correlation_id=corr)


class NatsBackend(Backend):
    name = "nats"
    order = "total"

    def __init__(self, url: str, engine_url: str | None = None) -> None:
        self.url = url
        self.engine_url = engine_url or url
        self.streams: list[str] = []
        self._nc: Any = None

    async def nc(self) -> Any:
        import nats

        if self._nc is None or self._nc.is_closed:
            self._nc = await nats.connect(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                          error_cb=_ignore)
        return self._nc

    async def new_channel(self, tag: str) -> str:
        name = f"conf_{tag.replace('-', '_')}_{uuid.uuid4().hex[:10]}"
        js = (await self.nc()).jetstream()
        await js.add_stream(name=name, subjects=[f"{name}.>"], max_age=600)
        self.streams.append(name)
        return name

    async def publish(self, channel: str, messages: Sequence[WireMessage]) -> None:
        js = (await self.nc()).jetstream()
        for attempt in range(40):
            try:
                futs = []
                for m in messages:
                    headers = {"Nats-Msg-Id": m.id, **m.headers}
                    if m.correlation_id:
                        headers[CORRELATION_HEADER] = m.correlation_id
                    futs.append(await js.publish_async(f"{channel}.in", m.body, headers=headers))
                await asyncio.wait_for(asyncio.gather(*futs), 30)
                return
            except Exception:
                if attempt == 39:
                    raise
                await asyncio.sleep(0.5)

    @contextlib.asynccontextmanager
    async def collect(self, channel: str) -> AsyncIterator[Collected]:
        import nats

        out = Collected()
        nc = await nats.connect(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=_ignore)
        try:
            js = nc.jetstream()
            durable = f"collect_{uuid.uuid4().hex[:8]}"
            sub = await js.pull_subscribe(f"{channel}.>", durable=durable, stream=channel)
            stop = False

            async def loop() -> None:
                while not stop:
                    try:
                        msgs = await sub.fetch(500, timeout=0.5)
                    except Exception:
                        await asyncio.sleep(0.05)
                        continue
                    for m in msgs:
                        await m.ack()
                    out.add(from_nats(m) for m in msgs)

            task = asyncio.create_task(loop())
            try:
                yield out
            finally:
                stop = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            await nc.close()

    def source_config(self, channel: str, *, group: str) -> dict[str, Any]:
        return {"servers": self.engine_url, "stream": channel, "durable": group, "ack_wait": "5s",
                "fetch_timeout": "1s"}

    def sink_config(self, channel: str) -> dict[str, Any]:
        return {"servers": self.engine_url, "subject": f"{channel}.out", "publish_timeout": "5s"}

    async def unacked(self, channel: str, group: str) -> int | None:
        js = (await self.nc()).jetstream()
        info = await js.consumer_info(channel, group)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    @contextlib.asynccontextmanager
    async def behind_proxy(self) -> AsyncIterator[tuple[Backend, Any]]:
        host, port = host_port(self.url, 4222)
        proxy = TcpProxy(host, port)
        proxy.start()
        b = NatsBackend(self.url, f"nats://127.0.0.1:{proxy.port}")
        try:
            yield b, proxy
        finally:
            await b.aclose()
            proxy.close()

    @contextlib.asynccontextmanager
    async def private_broker(self, tmp: Path) -> AsyncIterator[tuple[Backend, BrokerControl]]:
        tmp.mkdir(parents=True, exist_ok=True)
        server = NatsServer(tmp)
        await asyncio.to_thread(server.start)
        b = NatsBackend(server.url)
        try:
            yield b, _ServerControl(server)
        finally:
            with contextlib.suppress(Exception):
                await b.aclose()
            server.close()

    async def aclose(self) -> None:
        nc, self._nc = self._nc, None
        if nc is None:
            return
        js = nc.jetstream()
        for s in self.streams:
            with contextlib.suppress(Exception):
                await js.delete_stream(s)
        self.streams.clear()
        await nc.close()


async def _ignore(exc: Exception) -> None:
    return None


class _ServerControl(BrokerControl):
    def __init__(self, server: NatsServer) -> None:
        self.server = server

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


@pytest.fixture
async def nats_backend(nats_server: str) -> AsyncIterator[NatsBackend]:
    b = NatsBackend(nats_server)
    yield b
    await b.aclose()


class TestNatsConformance(ConformanceSuite):
    @pytest.fixture
    async def backend(self, nats_backend: NatsBackend) -> NatsBackend:
        return nats_backend


# -- NATS specifics --------------------------------------------------------------------------------------------------


async def test_msg_id_dedupes_a_message_written_twice(nats_backend: NatsBackend, tmp_path: Path) -> None:
    """The sink sets ``Nats-Msg-Id`` to the message id: the same message written twice is stored once."""
    from seamline.core.component import BuildContext
    from seamline.core.message import Message
    from seamline.core.registry import get_spec
    from seamline.store import open_store

    b = nats_backend
    dst = await b.new_channel("dedupe")
    spec = get_spec("sink", "nats")
    assert spec is not None
    store = open_store(str(tmp_path / "state.db"))
    await store.open()
    sink = spec.factory(spec.config.model_validate(b.sink_config(dst)),
                        BuildContext(flow="dedupe", base_dir=tmp_path, store=store))
    await sink.open()
    try:
        batch = [Message({"n": i}, id=f"dup-{i}") for i in range(3)]
        await sink.write(batch)
        await sink.write(batch)  # a retry after an unclear outcome
    finally:
        await sink.close()
        await store.close()
    js = (await b.nc()).jetstream()
    info = await js.stream_info(dst)
    assert info.state.messages == 3


async def test_term_instead_of_dlq(nats_backend: NatsBackend, tmp_path: Path) -> None:
    """With ``on_decode_error: term`` a poison message is terminated in JetStream (not redelivered, not in
    seamline's DLQ)."""
    b = nats_backend
    src, dst = await b.new_channel("term-in"), await b.new_channel("term-out")
    good = make_messages(5, keys=1)
    poison = WireMessage(id=f"poison-{uuid.uuid4().hex[:8]}", body=b"\x00\x01 not json")
    await b.publish(src, [*good[:2], poison, *good[2:]])
    group = f"g_{uuid.uuid4().hex[:8]}"
    cfg = {**b.source_config(src, group=group), "on_decode_error": "term"}
    write_flow(tmp_path / "flows", "term", source={"nats": cfg}, sinks=[{"nats": b.sink_config(dst)}])
    state = tmp_path / "state.db"
    async with b.collect(dst) as out, InProcessEngine(tmp_path / "flows", state) as eng:
        await out.wait_ids({m.id for m in good}, 30, alive=eng.check)

        async def settled() -> bool:
            return await b.unacked(src, group) == 0

        await eventually(settled, 20, "nothing pending")
        result = await eng.stop()
    assert result.ok, result.errors
    assert await dead_letters(state) == []
    assert poison.id not in out.ids()
