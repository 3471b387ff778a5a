"""Kafka → steps → Kafka with ``workers``: the records a flow writes, its dead letters and its traces are
the same as without workers, record by record (values, keys, headers), and the batches really ran in
the worker processes."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.integration.conformance.harness import InProcessEngine, dead_letters, eventually, write_flow
from tests.integration.conformance.test_conformance_kafka import PARTITIONS, QUIET, KafkaBackend

from seamline.connectors.wire import TRACEPARENT, is_valid_traceparent, new_traceparent

BATCH = 50
N = 600
POISON = 333  # a record that is not JSON: its batch runs in the engine
FILTERED = {i for i in range(N) if i % 7 == 3}
TRACED = new_traceparent()


def _records(run: str) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes | None]]]]:
    """``(key, value, headers)`` of every input record: keys text, binary or missing; ids from a
    header or from the record's position; correlation ids, custom headers, valid and broken trace
    contexts, a header without a value."""
    out: list[tuple[bytes | None, bytes, list[tuple[str, bytes | None]]]] = []
    for i in range(N):
        key: bytes | None = f"k{i % 6}".encode()
        if i % 50 == 7:
            key = b"\xff\xfe" + bytes([i % 5])  # not UTF-8: travels as kafka.key.b64
        elif i % 50 == 9:
            key = None
        headers: list[tuple[str, bytes | None]] = []
        if i % 10 != 5:  # the others get their id from topic, partition and offset
            headers.append(("message-id", f"{run}-{i}".encode()))
        if i % 4 == 0:
            headers.append(("correlation-id", f"order-{i // 4}".encode()))
        if i % 3 == 0:
            headers.append(("x-tenant", b"acme"))
        if i % 11 == 0:
            headers.append((TRACEPARENT, TRACED.encode()))
        elif i % 11 == 1:
            headers.append((TRACEPARENT, b"00-not-a-trace-context"))
        if i % 13 == 0:
            headers.append(("x-empty", None))
        if i == POISON:
            value = b"{not json"
        else:
            value = orjson.dumps({"n": i, "skip": i in FILTERED, "amount": i * 1.25,
                                  "customer": {"id": f"c{i % 9}", "name": f"Customer {i % 9}"}})
        out.append((key, value, headers))
    return out


def _publish(bootstrap: str, topic: str, records: list[Any]) -> None:
    from confluent_kafka import Producer

    # one partition's worth of order per key; the same records in the same order for both runs
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                  "partitioner": "murmur2", **QUIET})
    for key, value, headers in records:
        p.produce(topic, value=value, key=key, headers=headers)
    assert p.flush(30) == 0


def _read(bootstrap: str, topic: str, n: int) -> list[Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}", "enable.auto.commit": False, **QUIET})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    got: list[Any] = []
    try:
        for _ in range(150):
            got += [m for m in c.consume(500, 0.2) if m.error() is None]
            if len(got) >= n:
                break
    finally:
        c.close()
    return got


def _view(records: list[Any], src: str) -> dict[str, tuple[bytes, bytes | None, list[tuple[str, str]], str]]:
    """message id → (value, key, headers but the trace context, trace context); ids made from the input
    position are named by input offset (the same in both runs)."""
    out = {}
    for m in records:
        headers = [(k, (v or b"").decode()) for k, v in m.headers() or []]
        mid = dict(headers)["message-id"]
        # a default id is <input topic>-<partition>-<offset>
        mid = "pos" + mid[len(src):] if mid.startswith(src) else mid.split("-", 1)[1]
        tp = dict(headers)[TRACEPARENT]
        rest = [(k, v) for k, v in headers if k != TRACEPARENT]
        rest = [(k, "<id>" if k in ("message-id", "correlation-id") and v.startswith(src) else v) for k, v in rest]
        out[mid] = (m.value(), m.key(), rest, tp)
    return out


async def _flow_through(backend: KafkaBackend, tmp: Path, name: str, records: list[Any], *,
                        steps: list[dict[str, Any]], sink: dict[str, Any], batch_size: int, workers: int,
                        delivered: int, dead: int = 0) -> tuple[str, Any, Path]:
    """Publish ``records`` to a new topic and run a flow from it until ``delivered`` records are delivered
    and ``dead`` dead-lettered; every offset is then committed. ``(source topic, the flow's stats,
    its state file)``."""
    src = await backend.new_channel(f"{name}-in")
    await asyncio.to_thread(_publish, backend.bootstrap, src, records)
    group = f"{name}-{uuid.uuid4().hex[:8]}"
    flowdir = tmp / f"flows-{name}"
    write_flow(flowdir, name, source={"kafka": backend.source_config(src, group=group)}, steps=steps,
               sinks=[sink], settings={"batch_size": batch_size, "workers": workers})
    state = tmp / f"state-{name}.db"
    async with InProcessEngine(flowdir, state) as eng:
        async def done() -> bool:
            eng.check()
            st = eng.engine.runners[0].stats if eng.engine.runners else None
            return st is not None and st.delivered >= delivered and st.dead >= dead

        await eventually(done, 60, f"{delivered} record(s) delivered and {dead} dead-lettered")
        result = await eng.stop()
    assert result.ok, result.errors
    assert await backend.unacked(src, group) == 0
    return src, result.stats[name], state


async def _run(backend: KafkaBackend, tmp: Path, workers: int, run: str) -> dict[str, Any]:
    dst = await backend.new_channel(f"same-out-{workers}")
    expected = N - len(FILTERED) - 1
    src, stats, state = await _flow_through(
        backend, tmp, f"same-{workers}", _records(run),
        steps=[
            {"filter": {"label": "keep", "condition": "skip = false"}},
            {"map": {"label": "canonical", "expression":
                     "$merge([$, {'cents': $round(amount * 100), 'who': $uppercase(customer.name)}])"}},
        ],
        sink={"kafka": {**backend.sink_config(dst), "label": "out"}},
        batch_size=BATCH, workers=workers, delivered=expected, dead=1,
    )
    out = await asyncio.to_thread(_read, backend.bootstrap, dst, expected)
    assert len(out) == expected, (len(out), expected)
    dead = [(d.msg_id.replace(src, "<src>"), d.step, d.error_code) for d in await dead_letters(state)]

    from seamline.store import open_store

    store = open_store(str(state))
    await store.open()
    try:
        traces = {}
        for key in (f"{run}-0", f"{run}-3", f"{run}-{POISON}", f"{run}-{POISON + 1}", f"{run}-8"):
            hops = await store.trace(key)
            traces[key.split("-", 1)[1]] = [(h.step, h.outcome) for h in hops]
    finally:
        await store.close()
    return {"records": _view(out, src), "dead": dead, "traces": traces, "filtered": stats.filtered,
            "delivered": stats.delivered}


async def test_workers_write_the_same_records_as_the_engine_alone(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = KafkaBackend(kafka_bootstrap)
    run = uuid.uuid4().hex[:8]
    caplog.set_level(logging.DEBUG, logger="seamline.runtime")
    try:
        alone = await _run(backend, tmp_path, 0, run)
        caplog.clear()
        with_workers = await _run(backend, tmp_path, 2, run)
    finally:
        await backend.aclose()
    in_engine = [r.getMessage() for r in caplog.records if "runs in the engine" in r.getMessage()]
    # only the poison's batch ran in the engine; every other batch ran in a worker
    assert len(in_engine) == 1 and "format.json.syntax" in in_engine[0], in_engine

    assert with_workers["delivered"] == alone["delivered"] == N - len(FILTERED) - 1
    assert with_workers["filtered"] == alone["filtered"] == len(FILTERED)
    assert with_workers["dead"] == alone["dead"], (with_workers["dead"], alone["dead"])
    assert [(step, code) for _, step, code in alone["dead"]] == [("source", "format.json.syntax")]
    assert with_workers["traces"] == alone["traces"]
    assert with_workers["traces"]["0"] == [("source", "received"), ("keep", "ok"), ("canonical", "ok"),
                                           ("out", "delivered")]
    assert with_workers["traces"]["3"][-1] == ("keep", "filtered")

    a, w = alone["records"], with_workers["records"]
    assert set(a) == set(w)
    for mid in a:
        value_a, key_a, headers_a, tp_a = a[mid]
        value_w, key_w, headers_w, tp_w = w[mid]
        assert (value_w, key_w, headers_w) == (value_a, key_a, headers_a), mid
        assert is_valid_traceparent(tp_w) and is_valid_traceparent(tp_a)
    kept = [i for i in range(N) if i not in FILTERED and i != POISON]
    traced = [i for i in kept if i % 11 == 0 and i % 10 != 5]
    assert traced and all(w[str(i)][3] == TRACED for i in traced)
    fresh = [rec[3] for rec in w.values() if rec[3] != TRACED]
    assert len(set(fresh)) == len(fresh), "each record without a trace context got its own"
    sample = w["0"]
    assert orjson.loads(sample[0])["cents"] == 0 and sample[1] == b"k0"
    assert ("x-tenant", "acme") in sample[2] and ("correlation-id", "order-0") in sample[2]
    binary = w["7"]
    assert binary[1] == b"\xff\xfe\x02"


async def test_kafka_records_to_an_ndjson_file_through_workers(kafka_bootstrap: str, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A Kafka source with a file sink: the workers decode and map the records and hand back NDJSON lines."""
    backend = KafkaBackend(kafka_bootstrap)
    caplog.set_level(logging.DEBUG, logger="seamline.runtime")
    records = [(f"k{i % 3}".encode(), orjson.dumps({"n": i}), [("message-id", f"f-{i}".encode())]) for i in range(400)]
    try:
        await _flow_through(
            backend, tmp_path, "to-file", records,
            steps=[{"map": {"label": "square", "expression": "{'n': n, 'sq': n * n}"}}],
            sink={"file": {"path": str(tmp_path / "out.ndjson"), "label": "out"}},
            batch_size=40, workers=2, delivered=400,
        )
    finally:
        await backend.aclose()
    lines = [orjson.loads(x) for x in (tmp_path / "out.ndjson").read_bytes().splitlines()]
    assert sorted(x["n"] for x in lines) == list(range(400))
    assert all(x["sq"] == x["n"] ** 2 for x in lines)
    assert not [r for r in caplog.records if "runs in the engine" in r.getMessage()]


async def test_a_graceful_stop_mid_stream_with_workers_loses_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Stopped while batches are in the workers and in the producer, then started again: the batches in
    work are finished and committed, those not started are given back; every record arrives, once."""
    from tests.integration.conformance.harness import make_messages

    backend = KafkaBackend(kafka_bootstrap)
    try:
        src, dst = await backend.new_channel("stop-in"), await backend.new_channel("stop-out")
        msgs = make_messages(3000)
        await backend.publish(src, msgs)
        ids = {m.id for m in msgs}
        group = f"stop-{uuid.uuid4().hex[:8]}"
        flowdir = tmp_path / "flows"
        write_flow(
            flowdir, "kafka-stop",
            source={"kafka": backend.source_config(src, group=group)},
            # about 2 ms of a worker's time a record: the stream is still in work when it is stopped
            steps=[{"map": {"label": "pace", "expression": "$count([1..120000]) > 0 ? $ : $"}}],
            sinks=[{"kafka": backend.sink_config(dst)}],
            settings={"batch_size": 50, "workers": 2},
        )
        state = tmp_path / "state.db"
        async with backend.collect(dst) as out:
            async with InProcessEngine(flowdir, state) as eng:
                await out.wait_for(lambda c: len(c.ids() & ids) >= 500, 60, "500 records", alive=eng.check)
                result = await eng.stop()
            assert result.ok, result.errors
            first = len(out.ids() & ids)
            assert first < len(ids), "the stream finished before the stop"
            async with InProcessEngine(flowdir, state) as eng:
                await out.wait_ids(ids, 90, alive=eng.check)
                result = await eng.stop()
            assert result.ok, result.errors
        assert await backend.unacked(src, group) == 0
    finally:
        await backend.aclose()
    arrived = [m.id for m in out.messages if m.id in ids]
    assert set(arrived) == ids
    assert len(arrived) == len(ids), f"{len(arrived) - len(ids)} record(s) delivered twice after a graceful stop"


async def test_a_batch_the_sink_refuses_runs_in_the_engine(kafka_bootstrap: str, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A record whose headers make it too big for the sink passes the worker (its value is small): the
    producer refuses it alone. The others of its batch are done as the worker did them; the refused
    one runs again in the engine, which dead-letters it. Every other record arrives once."""
    backend = KafkaBackend(kafka_bootstrap)
    caplog.set_level(logging.INFO, logger="seamline.runtime")
    records = [(b"k", orjson.dumps({"n": i}),
                [("message-id", f"r-{i}".encode())] + ([("x-big", b"x" * 12_000)] if i == 10 else []))
               for i in range(30)]
    try:
        dst = await backend.new_channel("refused-out")
        _, _, state = await _flow_through(
            backend, tmp_path, "refused", records,
            steps=[{"map": {"label": "tag", "expression": "$merge([$, {'tagged': true}])"}}],
            sink={"kafka": {**backend.sink_config(dst), "max_message_bytes": 10_000}},
            batch_size=100, workers=2, delivered=29, dead=1,
        )
        out = await asyncio.to_thread(_read, kafka_bootstrap, dst, 29)
    finally:
        await backend.aclose()
    refused = [r.getMessage() for r in caplog.records if "refused a batch a worker encoded" in r.getMessage()]
    assert refused and "kafka.message_too_large" in refused[0], refused
    dead = await dead_letters(state)
    assert [(d.msg_id, d.step, d.error_code) for d in dead] == [("r-10", "kafka", "kafka.message_too_large")]
    ids = [dict(m.headers())["message-id"].decode() for m in out]
    assert sorted(ids) == sorted(f"r-{i}" for i in range(30) if i != 10), "each record once"
    assert all(orjson.loads(m.value())["tagged"] is True for m in out)


@pytest.mark.parametrize("workers", [0, 2])
async def test_json_a_step_could_misread_is_dead_lettered_at_the_source(kafka_bootstrap: str, tmp_path: Path,
                                                                        workers: int) -> None:
    """A record with a duplicate key (which value counts?) or an integer of more than 4,300 digits is
    refused at the edge with its own code, as the file source refuses it; the records around it go
    through, in one process and with workers."""
    backend = KafkaBackend(kafka_bootstrap)
    records: list[Any] = [(b"k", orjson.dumps({"n": i}), [("message-id", f"ok-{i}".encode())]) for i in range(40)]
    records[10] = (b"k", b'{"n": 10, "n": 11}', [("message-id", b"dup")])
    records[25] = (b"k", b'{"n": ' + b"7" * 4301 + b"}", [("message-id", b"big")])
    # beyond 64 bits but a valid integer: every digit arrives (a worker leaves it to the engine)
    records[30] = (b"k", b'{"n": 123456789012345678901234567890}', [("message-id", b"wide")])
    try:
        dst = await backend.new_channel(f"strict-out-{workers}")
        _src, stats, state = await _flow_through(
            backend, tmp_path, f"strict-{workers}", records, steps=[{"map": {"expression": "{'m': n}"}}],
            sink={"kafka": backend.sink_config(dst)}, batch_size=BATCH, workers=workers, delivered=38, dead=2,
        )
        out = await asyncio.to_thread(_read, backend.bootstrap, dst, 38)
    finally:
        await backend.aclose()
    assert stats.delivered == 38
    got = sorted(json.loads(m.value())["m"] for m in out)  # the standard library keeps big integers exact
    assert got == sorted([*(i for i in range(40) if i not in (10, 25, 30)), 123456789012345678901234567890])
    dead = {d.msg_id: (d.step, d.error_code) for d in await dead_letters(state)}
    assert dead == {"dup": ("source", "format.json.duplicate_key"), "big": ("source", "format.json.big_int")}
