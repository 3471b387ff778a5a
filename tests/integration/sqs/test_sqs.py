"""The sqs connector against moto's SQS server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.integration.services import MotoServer, tcp_proxy
from tests.integration.services.crash import sigkill_mid_stream
from tests.integration.services.flows import COLLECTED, make_flow, running
from tests.integration.services.flows import count_dead as _count_dead
from tests.integration.sqs.conftest import aws

from seamline.connectors.sqs import SqsSink, SqsSinkConfig, SqsSource, SqsSourceConfig
from seamline.core.component import BuildContext, Delivery
from seamline.core.flow import sink, source, step
from seamline.core.message import Message

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _ctx(tmp: Path, flow: str = "t") -> BuildContext:
    return BuildContext(flow=flow, base_dir=tmp, store=None, batch_size=100)  # type: ignore[arg-type]


def _msgs(n: int, start: int = 0) -> list[Message]:
    return [Message({"n": i}, id=f"m{i}", correlation_id=f"c{i}") for i in range(start, start + n)]


async def _send(endpoint: str, queue: str, msgs: list[Message], **kw: Any) -> None:
    s = SqsSink(SqsSinkConfig(queue=queue, **aws(endpoint), **kw), _ctx(Path.cwd()))
    await s.open()
    try:
        for i in range(0, len(msgs), 100):
            await s.write(msgs[i : i + 100])
    finally:
        await s.close()


async def _left(sqs: Any, queue: str) -> int:
    a = (await sqs.get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    ))["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


async def test_send_receive_headers_and_correlation(moto_server: MotoServer, sqs: Any, queue: str,
                                                   tmp_path: Path) -> None:
    msgs = _msgs(250)
    # more headers than SQS has attributes for, and a binary body
    msgs[0].headers = {"traceparent": TRACEPARENT, **{f"h{i}": f"v{i}" for i in range(12)}}
    msgs[1] = Message(b"\x00\x01binary\xff", id="m1", correlation_id="c1", content_type="application/octet-stream")
    await _send(moto_server.url, queue, msgs)
    key = f"rt-{queue}"
    flow = make_flow("sqs-rt", source("sqs", queue=queue, **aws(moto_server.url), wait_time=1),
                     [sink("test-collect", key=key)])
    async with running(flow, tmp_path / "state.db") as r:
        await r.wait_for(lambda: len({m.id for m in COLLECTED.get(key, [])}) >= 250, 30, "250 messages")
        # every message delivered is deleted (a send the client retried may have put one in twice: the
        # flow takes that too)
        await r.wait_for(lambda: _settled(sqs, queue), 15, "all deleted")
    got = {m.id: m for m in COLLECTED.pop(key)}
    assert set(got) == {m.id for m in msgs}
    first = got["m0"]
    assert first.correlation_id == "c0"
    assert first.headers["traceparent"] == TRACEPARENT
    assert all(first.headers[f"h{i}"] == f"v{i}" for i in range(12))
    assert first.body == {"n": 0}
    assert "sqs.message_id" in first.headers
    assert got["m1"].raw == b"\x00\x01binary\xff"
    assert got["m1"].content_type == "application/octet-stream"
    assert got["m249"].correlation_id == "c249"
    assert await _left(sqs, queue) == 0


async def test_fifo_group_and_deduplication(moto_server: MotoServer, sqs: Any, fifo_queue: str) -> None:
    msgs = [Message({"n": i, "customer": f"c{i % 3}"}, id=f"m{i}") for i in range(12)]
    await _send(moto_server.url, fifo_queue, msgs, message_group_id="{body.customer}")
    # a retried batch: the same ids again are dropped by SQS deduplication
    await _send(moto_server.url, fifo_queue, msgs[:5], message_group_id="{body.customer}")
    seen: list[tuple[str, str]] = []
    for _ in range(10):
        resp = await sqs.receive_message(QueueUrl=fifo_queue, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                         MessageAttributeNames=["All"], MessageSystemAttributeNames=["All"])
        batch = resp.get("Messages") or []
        if not batch:
            break
        for m in batch:
            seen.append((m["Attributes"]["MessageGroupId"], m["MessageAttributes"]["message-id"]["StringValue"]))
        await sqs.delete_message_batch(QueueUrl=fifo_queue, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])
    assert sorted(i for _, i in seen) == sorted(m.id for m in msgs), "duplicates were not deduplicated"
    for g in ("c0", "c1", "c2"):
        ids = [i for grp, i in seen if grp == g]
        assert ids == sorted(ids, key=lambda x: int(x[1:])), f"group {g} out of order: {ids}"


async def test_at_least_once_through_dropped_connection(moto_server: MotoServer, sqs: Any, queue: str,
                                                        tmp_path: Path) -> None:
    await _send(moto_server.url, queue, _msgs(200))
    key = f"drop-{queue}"
    with tcp_proxy(moto_server.url, 80) as (proxy, via):
        flow = make_flow(
            "sqs-drop",
            source("sqs", queue=queue, **aws(via), wait_time=1, visibility_timeout=2, receivers=2),
            [sink("test-collect", key=key)],
            batch_size=20,
        )
        async with running(flow, tmp_path / "state.db") as r:
            await r.wait_for(lambda: len(COLLECTED.get(key, [])) >= 40, 30, "first messages")
            proxy.drop()
            await _send(moto_server.url, queue, _msgs(200, 200))
            await r.wait_for(lambda: len({m.id for m in COLLECTED.get(key, [])}) >= 400, 30, "all 400")
            await r.wait_for(lambda: _settled(sqs, queue), 15, "all deleted")
    assert {m.id for m in COLLECTED.pop(key)} == {f"m{i}" for i in range(400)}


async def _settled(sqs: Any, queue: str) -> bool:
    return await _left(sqs, queue) == 0


async def test_nack_redelivers(moto_server: MotoServer, sqs: Any, queue: str, tmp_path: Path) -> None:
    await _send(moto_server.url, queue, _msgs(5))
    src = SqsSource(SqsSourceConfig(queue=queue, **aws(moto_server.url), wait_time=1), _ctx(tmp_path))
    seen: list[str] = []
    done = asyncio.Event()

    async def emit(batch: list[Delivery]) -> None:
        for d in batch:
            seen.append(d.message.id)
            if d.message.id == "m2" and seen.count("m2") == 1:
                await d.nack(True)  # type: ignore[misc]
            else:
                d.ack()
        await src.commit_acks()
        if seen.count("m2") == 2 and len(set(seen)) == 5:
            done.set()

    await src.open()
    task = asyncio.create_task(src.run(emit))
    try:
        await asyncio.wait_for(done.wait(), 15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await src.close()
    assert seen.count("m2") == 2
    assert await _left(sqs, queue) == 0


async def test_a_receive_cut_short_by_a_stop_hands_its_messages_back(moto_server: MotoServer, sqs: Any, queue: str,
                                                                     tmp_path: Path) -> None:
    """The flow stops while the source fills a batch with more receive calls: the messages the first call
    brought are visible again at once, not after the visibility timeout (they were never handed on)."""
    await _send(moto_server.url, queue, _msgs(30))
    src = SqsSource(SqsSourceConfig(queue=queue, **aws(moto_server.url), wait_time=1, receivers=3), _ctx(tmp_path))
    await src.open()
    real = src._client.receive_message
    extra_started = asyncio.Event()

    async def receive(**kw: Any) -> Any:
        if kw["WaitTimeSeconds"] == 0:  # the calls that fill the batch: slow, so the stop comes first
            extra_started.set()
            await asyncio.sleep(30)
        return await real(**kw)

    src._client.receive_message = receive
    try:
        task = asyncio.create_task(src._receive())
        await asyncio.wait_for(extra_started.wait(), 15)
        assert len(src._inflight) == 10
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert src._inflight == {}
        attrs = (await sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"]))
        assert int(attrs["Attributes"]["ApproximateNumberOfMessages"]) == 30, "all 30 visible again"
    finally:
        src._client.receive_message = real
        await src.close()


async def test_poison_goes_to_dlq_and_is_deleted(moto_server: MotoServer, sqs: Any, queue: str,
                                                 tmp_path: Path) -> None:
    msgs = _msgs(20)
    msgs[3] = Message({"n": 3, "poison": True}, id="m3")
    await _send(moto_server.url, queue, msgs)
    await sqs.send_message(QueueUrl=queue, MessageBody="{not json",
                           MessageAttributes={"message-id": {"DataType": "String", "StringValue": "bad"}})
    key = f"poison-{queue}"
    flow = make_flow("sqs-poison", source("sqs", queue=queue, **aws(moto_server.url), wait_time=1),
                     [sink("test-collect", key=key)],
                     steps=[step("python", function="tests.integration.services.flows:poison_check")])
    async with running(flow, tmp_path / "state.db") as run:
        await run.wait_for(lambda: len(COLLECTED.get(key, [])) >= 19, 30, "good messages")
        await run.wait_for(lambda: _count_dead(run, "sqs-poison", 2), 10, "two dead letters")
        from seamline.store.base import DlqFilter

        dead = {d.msg_id: d for d in await run.store.list_dead(DlqFilter(flow="sqs-poison"))}
        await run.wait_for(lambda: _settled(sqs, queue), 10, "every message deleted")
    assert set(dead) == {"m3", "bad"}
    assert dead["bad"].error_code == "format.json.syntax"
    assert {m.id for m in COLLECTED.pop(key)} == {f"m{i}" for i in range(20)} - {"m3"}


async def test_visibility_is_extended_while_in_flight(moto_server: MotoServer, sqs: Any, queue: str,
                                                      tmp_path: Path) -> None:
    """A message that spends 3.5s in the flow with a 1s visibility timeout is received once."""
    await _send(moto_server.url, queue, [Message({"n": 0, "slow": True}, id="slow")])
    (tmp_path / "slowhook.py").write_text(
        "import asyncio\n\nasync def slow(body):\n    await asyncio.sleep(3.5)\n    return body\n")
    key = f"vis-{queue}"
    flow = make_flow("sqs-vis", source("sqs", queue=queue, **aws(moto_server.url), wait_time=1,
                                       visibility_timeout=1),
                     [sink("test-collect", key=key)], steps=[step("python", function="slowhook:slow")],
                     base_dir=tmp_path)
    async with running(flow, tmp_path / "state.db") as run:
        await run.wait_for(lambda: len(COLLECTED.get(key, [])) >= 1, 20, "the slow message")
        await run.wait_for(lambda: _settled(sqs, queue), 10, "the message deleted")
        assert run.engine.runners[0].stats.received == 1, "the message became visible again while in the flow"
    got = COLLECTED.pop(key)
    assert [m.id for m in got] == ["slow"]
    assert got[0].headers["sqs.receive_count"] == "1"


def test_sigkill_mid_stream_loses_nothing(moto_server: MotoServer, queue: str, tmp_path: Path) -> None:
    n = 400  # moto's SQS is slow per call; enough to kill mid-stream
    msgs = [Message({"id": i, "poison": i % 100 == 7}, id=str(i)) for i in range(n)]
    asyncio.run(_send(moto_server.url, queue, msgs))
    cfg = aws(moto_server.url)
    src = ("source:\n  sqs: {" + f"queue: '{queue}', endpoint_url: '{cfg['endpoint_url']}', region: us-east-1, "
           "access_key_id: test, secret_access_key: test, wait_time: 1s, visibility_timeout: 3s}")
    res = sigkill_mid_stream(tmp_path, src, "sqs-crash", {str(i) for i in range(n)},
                             {str(i) for i in range(n) if i % 100 == 7})
    assert res.duplicates <= 50 * 6 + 40
