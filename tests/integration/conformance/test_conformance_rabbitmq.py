"""The conformance suite against RabbitMQ (``SEAMLINE_RABBITMQ``), plus RabbitMQ specifics.

The dropped-connection case cuts the engine's connections with a TCP proxy
(the shared broker keeps running: other tests are unaffected). The restart
case starts a private RabbitMQ node with its own data directory, stops it
mid-stream and starts it again; durable queues and persistent messages
survive like on a real broker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.integration.brokers.broker_services import RabbitNode, TcpProxy, host_port
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

from seamline.connectors.wire import TRACEPARENT

QUEUE_ARGS = {"x-expires": 600_000}  # test queues vanish 10 minutes after their last use


def from_amqp(m: Any) -> WireMessage:
    headers = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in (m.headers or {}).items()}
    return WireMessage(id=m.message_id or "", body=m.body, headers=headers, correlation_id=m.correlation_id)


class RabbitBackend(Backend):
    name = "rabbitmq"
    order = "total"

    def __init__(self, url: str, engine_url: str | None = None) -> None:
        self.url = url
        self.engine_url = engine_url or url
        self.queues: list[str] = []
        self._conn: Any = None

    async def conn(self) -> Any:
        import aio_pika

        if self._conn is None or self._conn.is_closed:
            self._conn = await aio_pika.connect_robust(self.url, timeout=10)
        await self._conn.ready()
        return self._conn

    async def new_channel(self, tag: str) -> str:
        name = f"conf-{tag}-{uuid.uuid4().hex[:10]}"
        async with (await self.conn()).channel() as ch:
            await ch.declare_queue(name, durable=True, arguments=QUEUE_ARGS)
        self.queues.append(name)
        return name

    async def publish(self, channel: str, messages: Sequence[WireMessage]) -> None:
        for attempt in range(20):
            try:
                return await self._publish(channel, messages)
            except Exception:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)

    async def _publish(self, channel: str, messages: Sequence[WireMessage]) -> None:
        import aio_pika

        async with (await self.conn()).channel(publisher_confirms=True) as ch:
            await asyncio.gather(*(
                ch.default_exchange.publish(
                    aio_pika.Message(
                        m.body, message_id=m.id, correlation_id=m.correlation_id, headers=dict(m.headers),
                        content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=channel,
                )
                for m in messages
            ))

    @contextlib.asynccontextmanager
    async def collect(self, channel: str) -> AsyncIterator[Collected]:
        import aio_pika

        out = Collected()
        conn = await aio_pika.connect_robust(self.url, timeout=10)
        try:
            ch = await conn.channel()
            q = await ch.declare_queue(channel, durable=True, arguments=QUEUE_ARGS)

            async def on_message(m: Any) -> None:
                out.add([from_amqp(m)])

            await q.consume(on_message, no_ack=True)
            yield out
        finally:
            await conn.close()

    def source_config(self, channel: str, *, group: str) -> dict[str, Any]:
        return {"url": self.engine_url, "queue": channel, "queue_arguments": QUEUE_ARGS, "batch_wait": "20ms",
                "reconnect_max": "1s"}

    def sink_config(self, channel: str) -> dict[str, Any]:
        return {"url": self.engine_url, "routing_key": channel, "confirm_timeout": "10s"}

    async def unacked(self, channel: str, group: str) -> int | None:
        """Ready messages in the queue (messages held by a live consumer are not counted)."""
        async with (await self.conn()).channel() as ch:
            q = await ch.declare_queue(channel, passive=True)
            return int(q.declaration_result.message_count)

    @contextlib.asynccontextmanager
    async def behind_proxy(self) -> AsyncIterator[tuple[Backend, Any]]:
        host, port = host_port(self.url, 5672)
        proxy = TcpProxy(host, port)
        proxy.start()
        user_part = self.url.split("://", 1)[1].split("@", 1)[0]
        vhost = self.url.split("://", 1)[1].split("/", 1)[1] if "/" in self.url.split("://", 1)[1] else ""
        b = RabbitBackend(self.url, f"amqp://{user_part}@127.0.0.1:{proxy.port}/{vhost}")
        try:
            yield b, proxy
        finally:
            await b.aclose()
            proxy.close()

    @contextlib.asynccontextmanager
    async def private_broker(self, tmp: Path) -> AsyncIterator[tuple[Backend, BrokerControl]]:
        node = RabbitNode(tmp)
        try:
            await asyncio.to_thread(node.start)
            b = RabbitBackend(node.url)
            try:
                yield b, _NodeControl(node)
            finally:
                with contextlib.suppress(Exception):
                    await b.aclose()
        finally:
            await asyncio.to_thread(node.close)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None and self.queues:
            with contextlib.suppress(Exception):
                conn = await (self.conn())
                self._conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with conn.channel() as ch:
                    for q in self.queues:
                        await ch.queue_delete(q)
            await conn.close()
        self.queues.clear()


class _NodeControl(BrokerControl):
    def __init__(self, node: RabbitNode) -> None:
        self.node = node

    def stop(self) -> None:
        self.node.stop()

    def start(self) -> None:
        self.node.start()


@pytest.fixture
async def rabbit_backend(rabbitmq: str) -> AsyncIterator[RabbitBackend]:
    b = RabbitBackend(rabbitmq)
    yield b
    await b.aclose()


class TestRabbitMQConformance(ConformanceSuite):
    @pytest.fixture
    async def backend(self, rabbit_backend: RabbitBackend) -> RabbitBackend:
        return rabbit_backend


# -- RabbitMQ specifics -----------------------------------------------------------------------------------------------


async def test_reject_hands_undecodable_messages_to_the_queues_dead_letter_exchange(
    rabbit_backend: RabbitBackend, tmp_path: Path
) -> None:
    """With ``on_decode_error: reject`` a poison message goes to the queue's own DLX, not seamline's DLQ."""
    import aio_pika

    b = rabbit_backend
    run = uuid.uuid4().hex[:10]
    dlx, dlq = f"conf-dlx-{run}", f"conf-dlq-{run}"
    src, dst = f"conf-rej-in-{run}", await b.new_channel("rej-out")
    args = {**QUEUE_ARGS, "x-dead-letter-exchange": dlx}
    async with (await b.conn()).channel() as ch:
        ex = await ch.declare_exchange(dlx, aio_pika.ExchangeType.FANOUT, auto_delete=True)
        q = await ch.declare_queue(dlq, durable=True, arguments=QUEUE_ARGS)
        await q.bind(ex)
        await ch.declare_queue(src, durable=True, arguments=args)
    b.queues += [src, dlq]
    good = make_messages(5, keys=1)
    poison = WireMessage(id=f"poison-{run}", body=b"<xml/>")
    await b.publish(src, [good[0], poison, *good[1:]])
    cfg = {**b.source_config(src, group=""), "queue_arguments": args, "on_decode_error": "reject"}
    write_flow(tmp_path / "flows", "rej", source={"rabbitmq": cfg}, sinks=[{"rabbitmq": b.sink_config(dst)}])
    state = tmp_path / "state.db"
    async with b.collect(dst) as out, b.collect(dlq) as dead, InProcessEngine(tmp_path / "flows", state) as eng:
        await out.wait_ids({m.id for m in good}, 30, alive=eng.check)
        await dead.wait_ids({poison.id}, 30, alive=eng.check)
        result = await eng.stop()
    assert result.ok, result.errors
    assert await dead_letters(state) == []
    assert await b.unacked(src, "") == 0
    async with (await b.conn()).channel() as ch:
        await ch.exchange_delete(dlx)


async def test_exchange_routing_key_from_body_and_traceparent_property(
    rabbit_backend: RabbitBackend, tmp_path: Path
) -> None:
    """The sink publishes to a topic exchange with the routing key taken from the body; the
    source binds its queue to an exchange it declares."""
    b = rabbit_backend
    run = uuid.uuid4().hex[:10]
    exchange = f"conf-ex-{run}"
    src = f"conf-bind-in-{run}"
    eu, ee = await b.new_channel("eu"), await b.new_channel("ee")
    async with (await b.conn()).channel() as ch:
        import aio_pika

        ex = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        q1 = await ch.declare_queue(eu, durable=True, arguments=QUEUE_ARGS)
        q2 = await ch.declare_queue(ee, durable=True, arguments=QUEUE_ARGS)
        await q1.bind(ex, "order.eu")
        await q2.bind(ex, "order.ee")
        await ch.declare_exchange(f"{exchange}-in", aio_pika.ExchangeType.DIRECT, durable=True)
    b.queues.append(src)
    source = {**b.source_config(src, group=""), "bindings": [
        {"exchange": f"{exchange}-in", "exchange_type": "direct", "routing_key": "new"}]}
    sink = {"url": b.engine_url, "exchange": exchange, "routing_key_field": "route"}
    write_flow(tmp_path / "flows", "route", source={"rabbitmq": source}, sinks=[{"rabbitmq": sink}])
    async with b.collect(eu) as out_eu, b.collect(ee) as out_ee, \
            InProcessEngine(tmp_path / "flows", tmp_path / "state.db") as eng:

        async def bound() -> bool:
            try:
                async with (await b.conn()).channel() as ch:
                    await ch.declare_queue(src, passive=True)
                return True
            except Exception:
                return False

        await eventually(bound, 20, "the source to declare its queue")
        # publish through the bound exchange
        async with (await b.conn()).channel(publisher_confirms=True) as ch:
            import aio_pika

            ex_in = await ch.get_exchange(f"{exchange}-in")
            for i, route in enumerate(["order.eu", "order.ee", "order.eu"]):
                await ex_in.publish(aio_pika.Message(f'{{"i": {i}, "route": "{route}"}}'.encode(),
                                                     message_id=f"r{i}-{run}", content_type="application/json"),
                                    routing_key="new")
        await out_eu.wait_ids({f"r0-{run}", f"r2-{run}"}, 30, alive=eng.check)
        await out_ee.wait_ids({f"r1-{run}"}, 30, alive=eng.check)
        result = await eng.stop()
    assert result.ok, result.errors
    assert all(m.headers.get(TRACEPARENT) for m in out_eu.messages)
    async with (await b.conn()).channel() as ch:
        await ch.exchange_delete(exchange)
        await ch.exchange_delete(f"{exchange}-in")


async def test_unroutable_message_is_dead_lettered(rabbit_backend: RabbitBackend, tmp_path: Path) -> None:
    """``mandatory`` publishing: a message no queue is bound for fails as fatal instead of vanishing."""
    b = rabbit_backend
    src = await b.new_channel("unroutable-in")
    msgs = make_messages(3, keys=1)
    await b.publish(src, msgs)
    sink = {"url": b.engine_url, "routing_key": f"nobody-listens-{uuid.uuid4().hex[:8]}"}
    write_flow(tmp_path / "flows", "unroutable", source={"rabbitmq": b.source_config(src, group="")},
               sinks=[{"rabbitmq": sink}])
    state = tmp_path / "state.db"
    async with InProcessEngine(tmp_path / "flows", state) as eng:

        async def all_dead() -> bool:
            eng.check()
            return len(await dead_letters(state)) == 3

        await eventually(all_dead, 30, "3 dead letters")
        await eng.stop()
    dl = await dead_letters(state)
    assert {d.error_code for d in dl} == {"rabbitmq.unroutable"}


async def test_multiple_ack_never_names_a_given_back_tag(rabbit_backend: RabbitBackend, tmp_path: Path) -> None:
    """Acks go out as one ``basic.ack(multiple)``; when the newest settled message was given back
    (nack), the ack must stop at the last acked tag, or the broker closes the channel."""
    from seamline.core.component import BuildContext, Delivery
    from seamline.core.registry import get_spec
    from seamline.store import open_store

    b = rabbit_backend
    src = await b.new_channel("multi-ack")
    msgs = make_messages(4, keys=1)
    await b.publish(src, msgs)
    spec = get_spec("source", "rabbitmq")
    assert spec is not None
    store = open_store(str(tmp_path / "state.db"))
    await store.open()
    source = spec.factory(spec.config.model_validate(b.source_config(src, group="")),
                          BuildContext(flow="multi-ack", base_dir=tmp_path, store=store, batch_size=10))
    seen: list[str] = []
    done = asyncio.Event()

    async def emit(batch: list[Delivery]) -> None:
        for d in batch:
            seen.append(d.message.id)
            if d.message.id == msgs[-1].id and seen.count(d.message.id) == 1:
                await d.nack(True)  # type: ignore[misc]
            else:
                d.ack()
        await source.commit_acks()
        if seen.count(msgs[-1].id) == 2:
            done.set()

    await source.open()
    first_channel = source._gen
    task = asyncio.create_task(source.run(emit))
    try:
        await asyncio.wait_for(done.wait(), 20)
        assert source._gen is first_channel, "the channel was closed and reopened"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await source.close()
        await store.close()
    assert seen[:4] == [m.id for m in msgs] and seen[4:] == [msgs[-1].id]
    assert await b.unacked(src, "") == 0
