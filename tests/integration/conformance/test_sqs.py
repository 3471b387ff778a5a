"""The conformance suite against SQS (moto's server, started by the fixture).

Channels are standard queues. SQS promises only best-effort order for them;
the suite's order check holds because the flow runs one receiver and sends
one batch request at a time (``receivers: 1``, ``parallel_requests: 1``) and
moto hands messages out in publish order. FIFO queues (per-group order,
deduplication) are covered in ``tests/integration/sqs``; they are not used
here because moto returns at most one message per group per receive, which
makes 1,000-message cases crawl. There is no broker-restart case: moto keeps
its queues in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.integration.brokers.broker_services import TcpProxy
from tests.integration.conformance.harness import (
    Backend,
    Collected,
    ConformanceSuite,
    EngineProcess,
    WireMessage,
    dead_letters,
    eventually,
    make_messages,
    pace_step,
    uid,
)
from tests.integration.services import MotoServer, moto_server  # noqa: F401  (fixture)

from seamline.connectors.wire import CONTENT_TYPE_HEADER, CORRELATION_HEADER, MESSAGE_ID_HEADER

AWS = {"region": "us-east-1", "access_key_id": "test", "secret_access_key": "test"}


def from_sqs(m: dict[str, Any]) -> WireMessage:
    headers: dict[str, str] = {}
    for k, a in (m.get("MessageAttributes") or {}).items():
        if k == "seamline-headers":
            headers.update(orjson.loads(a["StringValue"]))
        elif "StringValue" in a:
            headers[k] = a["StringValue"]
    mid = headers.pop(MESSAGE_ID_HEADER, "")
    corr = headers.pop(CORRELATION_HEADER, None)
    headers.pop(CONTENT_TYPE_HEADER, None)
    return WireMessage(id=mid, body=m["Body"].encode(), headers=headers, correlation_id=corr)


class SqsBackend(Backend):
    name = "sqs"
    order = "total"

    def __init__(self, endpoint: str, engine_endpoint: str | None = None) -> None:
        self.endpoint = endpoint
        self.engine_endpoint = engine_endpoint or endpoint
        self.queues: list[str] = []
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def client(self) -> Any:
        from aiobotocore.session import get_session

        if self._client is None:
            self._client = await self._stack.enter_async_context(get_session().create_client(
                "sqs", region_name="us-east-1", endpoint_url=self.endpoint,
                aws_access_key_id="test", aws_secret_access_key="test",
            ))
        return self._client

    async def new_channel(self, tag: str) -> str:
        c = await self.client()
        name = f"conf-{tag}-{uuid.uuid4().hex[:10]}"
        url = (await c.create_queue(QueueName=name))["QueueUrl"]
        self.queues.append(url)
        return str(url)

    async def publish(self, channel: str, messages: Sequence[WireMessage]) -> None:
        c = await self.client()

        def attrs(m: WireMessage) -> dict[str, Any]:
            a = {MESSAGE_ID_HEADER: m.id, CONTENT_TYPE_HEADER: "application/json", **m.headers}
            if m.correlation_id:
                a[CORRELATION_HEADER] = m.correlation_id
            return {k: {"DataType": "String", "StringValue": v} for k, v in a.items()}

        for i in range(0, len(messages), 10):
            chunk = messages[i : i + 10]
            resp = await c.send_message_batch(QueueUrl=channel, Entries=[
                {"Id": str(j), "MessageBody": m.body.decode(), "MessageAttributes": attrs(m)}
                for j, m in enumerate(chunk)
            ])
            assert not resp.get("Failed"), resp.get("Failed")

    @contextlib.asynccontextmanager
    async def collect(self, channel: str) -> AsyncIterator[Collected]:
        c = await self.client()
        out = Collected()

        async def reader() -> None:
            while True:
                resp = await c.receive_message(QueueUrl=channel, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                               MessageAttributeNames=["All"])
                msgs = resp.get("Messages") or []
                if msgs:
                    out.add([from_sqs(m) for m in msgs])
                    await c.delete_message_batch(QueueUrl=channel, Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])

        task = asyncio.create_task(reader())
        try:
            yield out
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def source_config(self, channel: str, *, group: str) -> dict[str, Any]:
        return {"queue": channel, "endpoint_url": self.engine_endpoint, **AWS, "wait_time": "1s",
                "visibility_timeout": "5s", "receivers": 1}

    def sink_config(self, channel: str) -> dict[str, Any]:
        return {"queue": channel, "endpoint_url": self.engine_endpoint, **AWS, "parallel_requests": 1}

    async def unacked(self, channel: str, group: str) -> int | None:
        c = await self.client()
        a = (await c.get_queue_attributes(QueueUrl=channel, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]))["Attributes"]
        return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])

    @contextlib.asynccontextmanager
    async def behind_proxy(self) -> AsyncIterator[tuple[Backend, Any]]:
        port = int(self.endpoint.rsplit(":", 1)[1])
        proxy = TcpProxy("127.0.0.1", port)
        proxy.start()
        b = SqsBackend(self.endpoint, f"http://127.0.0.1:{proxy.port}")
        try:
            yield b, proxy
        finally:
            await b.aclose()
            proxy.close()

    async def aclose(self) -> None:
        if self._client is not None:
            for q in self.queues:
                with contextlib.suppress(Exception):
                    await self._client.delete_queue(QueueUrl=q)
        self.queues.clear()
        await self._stack.aclose()
        self._client = None


class TestSqsConformance(ConformanceSuite):
    # moto scans the whole queue on every receive (about 0.2 s per call at 400 messages, more with
    # more): fewer messages keep the suite inside its time budget without changing what is checked
    messages = 300
    deadline = 90.0
    # the SQS emulator keeps its queues in memory, so a restart of "the broker" is not a case that
    # says anything about seamline; the restart cases run for RabbitMQ, NATS, Kafka, MQTT and Redis
    test_broker_restart_loses_nothing = None  # type: ignore[assignment]

    @pytest.mark.slow
    async def test_engine_sigkill_loses_nothing(self, backend: Backend, tmp_path: Path) -> None:
        """The harness case with 400 instead of 1,500 messages (see ``messages`` above)."""
        src, dst = await backend.new_channel("kill-in"), await backend.new_channel("kill-out")
        msgs = make_messages(400)
        await backend.publish(src, msgs)
        ids = {m.id for m in msgs}
        flowdir = tmp_path / "flows"
        flowdir.mkdir()
        steps = [pace_step(flowdir, self.pace)]
        self.flow(backend, tmp_path, src=src, dst=dst, group=uid("g"), steps=steps, settings={"batch_size": 50})
        state = tmp_path / "state.db"
        proc = EngineProcess(flowdir, state, tmp_path / "engine.log")
        try:
            async with backend.collect(dst) as out:
                proc.start()
                await out.wait_for(lambda c: len(c.ids() & ids) >= 80, self.deadline, "80 messages",
                                   alive=proc.check)
                proc.kill()
                assert len(out.ids() & ids) < len(ids), "the stream finished before the kill"
                proc.start()
                dead: set[str] = set()

                async def done() -> bool:
                    proc.check()
                    if ids <= out.ids() | dead:
                        return True
                    dead.update(d.msg_id for d in await dead_letters(state))
                    return ids <= out.ids() | dead

                await eventually(done, self.deadline, "every id in the output or the DLQ", every=0.5)
                assert proc.terminate() == 0, proc.tail()
        finally:
            proc.cleanup()
        dl = await dead_letters(state)
        assert not dl, [(d.msg_id, d.error_message) for d in dl]
        assert not ids - out.ids(), f"{len(ids - out.ids())} lost"

    @pytest.fixture
    async def backend(self, moto_server: MotoServer) -> AsyncIterator[SqsBackend]:  # noqa: F811
        b = SqsBackend(moto_server.url)
        yield b
        await b.aclose()
