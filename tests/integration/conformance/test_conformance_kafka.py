"""The conformance suite against Kafka (a Tansu broker unless ``SEAMLINE_KAFKA`` names one).

Broker restart: Tansu's memory storage is lost when it stops, so the restart
case runs a private Tansu on S3 storage (moto's S3 server): topics, records
and committed offsets survive the restart of the broker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.integration.brokers.broker_services import MotoServer, Tansu, TcpProxy, free_port
from tests.integration.conformance.harness import Backend, BrokerControl, Collected, ConformanceSuite, WireMessage

from seamline.connectors.wire import CONTENT_TYPE_HEADER, CORRELATION_HEADER, MESSAGE_ID_HEADER

PARTITIONS = 3


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
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
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
                      "partitioner": "murmur2_random"})
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
                      "enable.auto.commit": False, "auto.offset.reset": "earliest"})
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

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, "enable.auto.commit": False})
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
