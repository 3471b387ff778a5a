"""The conformance suite against Kafka (a Tansu broker unless ``SEAMLINE_KAFKA`` names one).

Broker restart: Tansu's memory storage is lost when it stops, so the restart
case runs a private Tansu on S3 storage (moto's S3 server): topics, records
and committed offsets survive the restart of the broker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from tests.integration.brokers.broker_services import MotoServer, Tansu, TcpProxy, free_port
from tests.integration.conformance.harness import (
    Backend,
    BrokerControl,
    Collected,
    ConformanceSuite,
    WireMessage,
    eventually,
    make_messages,
)

from seamline.connectors.wire import CONTENT_TYPE_HEADER, CORRELATION_HEADER, MESSAGE_ID_HEADER

PARTITIONS = 3
#: librdkafka's own log lines of the harness clients (not stderr)
QUIET = {"logger": logging.getLogger("tests.kafka.librdkafka")}


def from_record(m: Any) -> WireMessage:
    headers = {k: (v or b"").decode() for k, v in (m.headers() or [])}
    mid = headers.pop(MESSAGE_ID_HEADER, None) or f"{m.topic()}-{m.partition()}-{m.offset()}"
    corr = headers.pop(CORRELATION_HEADER, None)
    headers.pop(CONTENT_TYPE_HEADER, None)
    key = m.key().decode() if m.key() is not None else None
    return WireMessage(id=mid, body=m.value() or b"", key=key, headers=headers, correlation_id=corr)


class KafkaBackend(Backend):
    name = "kafka"
    order = "key"

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka.admin import AdminClient

        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
        self.topics: list[str] = []
        #: channel → (partition, offset) of every record the harness published
        self.published: dict[str, list[tuple[int, int]]] = {}

    async def new_channel(self, tag: str) -> str:
        from confluent_kafka.admin import NewTopic

        topic = f"{tag}-{uuid.uuid4().hex[:10]}"
        futures = self.admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
        await asyncio.to_thread(futures[topic].result, 30)
        self.topics.append(topic)
        return topic

    async def publish(self, channel: str, messages: Sequence[WireMessage]) -> None:
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5,
                      "partitioner": "murmur2_random", **QUIET})
        placed = self.published.setdefault(channel, [])
        errors: list[Any] = []

        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(err)
            else:
                placed.append((msg.partition(), msg.offset()))

        for m in messages:
            headers = [(MESSAGE_ID_HEADER, m.id.encode())]
            if m.correlation_id:
                headers.append((CORRELATION_HEADER, m.correlation_id.encode()))
            headers.extend((k, v.encode()) for k, v in m.headers.items())
            p.produce(channel, value=m.body, key=m.key.encode() if m.key else None, headers=headers,
                      on_delivery=report)
        left = await asyncio.to_thread(p.flush, 30)
        assert left == 0 and not errors, (left, errors[:3])

    @contextlib.asynccontextmanager
    async def collect(self, channel: str) -> AsyncIterator[Collected]:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"collect-{uuid.uuid4().hex[:8]}",
                      "enable.auto.commit": False, "auto.offset.reset": "earliest", **QUIET})
        c.assign([TopicPartition(channel, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        out = Collected()
        stop = False

        async def loop() -> None:
            while not stop:
                msgs = await asyncio.to_thread(c.consume, 500, 0.2)
                out.add(from_record(m) for m in msgs if m.error() is None)

        task = asyncio.create_task(loop())
        try:
            yield out
        finally:
            stop = True
            with contextlib.suppress(Exception):
                await task
            await asyncio.to_thread(c.close)

    def source_config(self, channel: str, *, group: str) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap,
            "topics": [channel],
            "group": group,
            "session_timeout": "6s",
            "heartbeat_interval": "1s",
            "batch_wait": "50ms",
        }

    def sink_config(self, channel: str) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap, "topic": channel, "delivery_timeout": "20s"}

    async def unacked(self, channel: str, group: str) -> int | None:
        """Published records at or after the group's committed offset (Tansu's high watermark is not
        reliable, so the harness counts what it published itself)."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, "enable.auto.commit": False, **QUIET})
        try:
            tps = await asyncio.to_thread(
                c.committed, [TopicPartition(channel, p) for p in range(PARTITIONS)], 10
            )
        finally:
            await asyncio.to_thread(c.close)
        committed = {tp.partition: max(tp.offset, 0) for tp in tps}
        return sum(1 for p, off in self.published.get(channel, []) if off >= committed.get(p, 0))

    @contextlib.asynccontextmanager
    async def behind_proxy(self) -> AsyncIterator[tuple[Backend, Any]]:
        # Kafka clients connect to the address the broker advertises: a private Tansu advertises the
        # proxy, so every connection (bootstrap and data) goes through it.
        port = free_port()
        broker = Tansu(advertise=port)
        proxy = TcpProxy("127.0.0.1", broker.port, port=port)
        broker.start()
        proxy.start()
        b = KafkaBackend(broker.bootstrap)
        try:
            yield b, proxy
        finally:
            await b.aclose()
            proxy.close()
            broker.close()

    @contextlib.asynccontextmanager
    async def private_broker(self, tmp: Path) -> AsyncIterator[tuple[Backend, BrokerControl]]:
        s3 = MotoServer()
        await asyncio.to_thread(s3.start)
        broker: Tansu | None = None
        try:
            bucket = f"tansu-{uuid.uuid4().hex[:8]}"
            await asyncio.to_thread(s3.create_bucket, bucket)
            broker = Tansu(storage=f"s3://{bucket}/", s3_endpoint=s3.endpoint)
            broker.start()
            b = KafkaBackend(broker.bootstrap)
            try:
                yield b, _TansuControl(broker)
            finally:
                await b.aclose()
        finally:
            if broker is not None:
                broker.close()
            s3.close()

    async def aclose(self) -> None:
        if self.topics:
            futures = self.admin.delete_topics(self.topics)
            for f in futures.values():
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(f.result, 10)
            self.topics.clear()


class _TansuControl(BrokerControl):
    def __init__(self, broker: Tansu) -> None:
        self.broker = broker

    def stop(self) -> None:
        self.broker.stop()

    def start(self) -> None:
        self.broker.start()


class TestKafkaConformance(ConformanceSuite):
    @pytest.fixture
    async def backend(self, kafka_bootstrap: str) -> AsyncIterator[KafkaBackend]:
        b = KafkaBackend(kafka_bootstrap)
        yield b
        await b.aclose()


class TestKafkaConformanceWithWorkers(TestKafkaConformance):
    """The same cases with ``workers: 2``: records reach the worker processes as raw batches (values,
    keys, headers) and come back encoded for the sink; offsets move per batch."""

    flow_settings: ClassVar[dict[str, Any]] = {"workers": 2}

    def pace_steps(self, flowdir: Path) -> list[dict[str, Any]]:
        # a worker runs only pure steps, so the pace is work: about 2 ms of a worker's time a message,
        # body unchanged
        return [{"map": {"label": "pace", "expression": "$count([1..120000]) > 0 ? $ : $"}}]


# -- Kafka specifics ---------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _component(role: str, cfg: dict[str, Any], tmp: Path, batch_size: int = 500) -> AsyncIterator[Any]:
    from seamline.core.component import BuildContext
    from seamline.core.registry import get_spec
    from seamline.store import open_store

    spec = get_spec(role, "kafka")  # type: ignore[arg-type]
    assert spec is not None
    store = open_store(str(tmp / f"{role}.db"))
    await store.open()
    comp = spec.factory(spec.config.model_validate(cfg),
                        BuildContext(flow="kafka-specifics", base_dir=tmp, store=store, batch_size=batch_size))
    await comp.open()
    try:
        yield comp
    finally:
        await comp.close()
        await store.close()


async def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False, **QUIET})
    try:
        tps = await asyncio.to_thread(c.committed, [TopicPartition(topic, p) for p in range(partitions)], 10)
    finally:
        await asyncio.to_thread(c.close)
    return {tp.partition: tp.offset for tp in tps}


async def test_offsets_are_committed_in_order_only_past_acked_messages(kafka_bootstrap: str, tmp_path: Path) -> None:
    """An unacknowledged message holds back its partition's commit; acking it lets the commit move on."""
    from confluent_kafka.admin import NewTopic

    b = KafkaBackend(kafka_bootstrap)
    topic = f"order-{uuid.uuid4().hex[:10]}"
    futures = b.admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    await asyncio.to_thread(futures[topic].result, 30)
    b.topics.append(topic)
    try:
        await b.publish(topic, make_messages(30, keys=1))
        group = f"g-{uuid.uuid4().hex[:8]}"
        held: list[Any] = []
        seen: list[str] = []
        all_seen = asyncio.Event()
        cfg = b.source_config(topic, group=group)
        async with _component("source", cfg, tmp_path, batch_size=10) as source:

            async def emit(batch: list[Any]) -> None:
                for d in batch:
                    seen.append(d.message.id)
                    if d.message.headers["kafka.offset"] == "5":
                        held.append(d)
                    else:
                        d.ack()
                await source.commit_acks()
                if len(seen) >= 30:
                    all_seen.set()

            task = asyncio.create_task(source.run(emit))
            try:
                await asyncio.wait_for(all_seen.wait(), 30)
                await eventually(lambda: _is(kafka_bootstrap, group, topic, 5), 10, "the commit held at offset 5")
                held[0].ack()
                await source.commit_acks()
                await eventually(lambda: _is(kafka_bootstrap, group, topic, 30), 10, "the commit moving to 30")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await b.aclose()


async def _read_topic(bootstrap: str, topic: str, n: int) -> list[Any]:
    """Every partition of ``topic`` from the start, until ``n`` records came (at most about 20 s)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}", "enable.auto.commit": False, **QUIET})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    got: list[Any] = []
    try:
        for _ in range(100):
            got += [m for m in await asyncio.to_thread(c.consume, 500, 0.2) if m.error() is None]
            if len(got) >= n:
                break
    finally:
        await asyncio.to_thread(c.close)
    return got


async def _is(bootstrap: str, group: str, topic: str, offset: int) -> bool:
    return (await _committed(bootstrap, group, topic, 1)).get(0) == offset


async def test_keys_partitions_compression_and_oversized_records(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The sink keys records from a body field (same key → same partition), compresses, and reports an
    oversized record as a fatal error of that message alone."""
    from seamline.core.component import BatchError
    from seamline.core.errors import FatalError
    from seamline.core.message import Message

    b = KafkaBackend(kafka_bootstrap)
    try:
        topic = await b.new_channel("keys")
        cfg = {"bootstrap_servers": kafka_bootstrap, "topic": topic, "key_field": "customer.id",
               "compression": "zstd", "max_message_bytes": 20_000}
        batch = [Message({"customer": {"id": f"c{i % 4}"}, "i": i}, id=f"k-{i}") for i in range(40)]
        batch.insert(7, Message({"customer": {"id": "big"}, "pad": "x" * 50_000}, id="too-big"))
        async with _component("sink", cfg, tmp_path) as sink:
            with pytest.raises(BatchError) as info:
                await sink.write(batch)
        assert list(info.value.errors) == [7]
        err = info.value.errors[7]
        assert isinstance(err, FatalError) and err.code == "kafka.message_too_large", err

        got = await _read_topic(kafka_bootstrap, topic, 40)
        assert len(got) == 40
        parts: dict[str, set[int]] = {}
        for m in got:
            parts.setdefault(m.key().decode(), set()).add(m.partition())
        assert set(parts) == {"c0", "c1", "c2", "c3"}
        assert all(len(p) == 1 for p in parts.values()), parts
        order = [json.loads(m.value())["i"] for m in got if m.key() == b"c1"]
        assert order == sorted(order)
    finally:
        await b.aclose()


async def test_batches_handed_over_back_to_back_are_confirmed_each_on_its_own(kafka_bootstrap: str,
                                                                             tmp_path: Path) -> None:
    """The sink is pipelined: a second batch is produced before the first is confirmed; confirming them
    in the other order works, every record arrives once, and per-key order holds across both."""
    from seamline.core.message import Message

    b = KafkaBackend(kafka_bootstrap)
    try:
        topic = await b.new_channel("pipelined")
        cfg = {"bootstrap_servers": kafka_bootstrap, "topic": topic, "key_field": "k"}
        first = [Message({"k": f"k{i % 5}", "i": i}, id=f"p-{i}") for i in range(300)]
        second = [Message({"k": f"k{i % 5}", "i": i}, id=f"p-{i}") for i in range(300, 600)]
        async with _component("sink", cfg, tmp_path) as sink:
            assert type(sink).pipelined
            confirm_first = await sink.submit(first)
            confirm_second = await sink.submit(second)
            # confirmed in the other order
            await asyncio.wait_for(confirm_second(), 30)
            await asyncio.wait_for(confirm_first(), 30)

        got = await _read_topic(kafka_bootstrap, topic, 600)
        assert sorted(json.loads(m.value())["i"] for m in got) == list(range(600))
        for k in range(5):
            order = [json.loads(m.value())["i"] for m in got if m.key() == f"k{k}".encode()]
            assert order == sorted(order) and len(order) == 120, (k, order[:10])
    finally:
        await b.aclose()


async def test_records_without_a_broker_fail_each_by_its_delivery_report(tmp_path: Path) -> None:
    """Nothing listens: every record's delivery report carries the timeout, and each is traced back to
    its own message (a retryable error per record, named by its id)."""
    from seamline.core.component import BatchError
    from seamline.core.errors import RetryableError
    from seamline.core.message import Message

    cfg = {"bootstrap_servers": f"127.0.0.1:{free_port()}", "topic": "nowhere", "delivery_timeout": "1s"}
    batch = [Message({"i": i}, id=f"lost-{i}") for i in range(25)]
    async with _component("sink", cfg, tmp_path) as sink:
        with pytest.raises(BatchError) as info:
            await asyncio.wait_for(sink.write(batch), 30)
    errors = info.value.errors
    assert sorted(errors) == list(range(25))
    for i, err in errors.items():
        assert isinstance(err, RetryableError) and err.code == "kafka.timeout", err
        assert f"message lost-{i} " in str(err) and "_MSG_TIMED_OUT" in str(err), err
