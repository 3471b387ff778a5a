"""The Kafka connector's part of the ``workers`` path, without a broker: a worker's decoding and encoding
of raw record batches, and the per-batch offset tickets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from seamline.connectors.kafka import KEY_HEADER, _BatchAcks, _record_key, _record_message
from seamline.connectors.offsets import OffsetTracker
from seamline.connectors.wire import is_valid_traceparent, new_traceparent, outgoing_headers
from seamline.core import lane_worker

TP = new_traceparent()


def _plan(tmp_path: Path, *, key_field: str | None = None, sink_max: int = 1_000_000,
          source_max: int = 1 << 20, key_header: str | None = KEY_HEADER) -> lane_worker.LanePlan:
    spec = {
        "flow": "k", "base_dir": str(tmp_path), "sinks": ["out"], "journal": "hops",
        "steps": [
            ["seamline.steps.filter", "filter", "keep", {"condition": "n != 3"}],
            ["seamline.steps.map", "map", "double", {"expression": "$merge([$, {'twice': n * 2}])"}],
        ],
        "decode": ["seamline.connectors.kafka", "lane_decode",
                   {"content_type": "application/json", "max_bytes": source_max}],
        "encode": ["seamline.connectors.kafka", "lane_encode",
                   {"key_field": key_field, "key_header": key_header, "max_bytes": sink_max}],
    }
    # the plan reaches a worker as JSON
    return lane_worker.build_functions(orjson.loads(orjson.dumps(spec)))


def _payload(records: list[tuple[bytes | None, bytes, list[tuple[str, bytes | None]]]]) -> list[Any]:
    return [("orders", "2", 100 + i, key, (1, 1_700_000_000_000 + i), headers, value)
            for i, (key, value, headers) in enumerate(records)]


def _ask(plan: lane_worker.LanePlan, payload: list[Any], now: float) -> list[Any]:
    # through msgpack both ways, as on the pipes
    request = msgspec.msgpack.decode(msgspec.msgpack.encode(["records", now, payload]))
    return msgspec.msgpack.decode(msgspec.msgpack.encode(lane_worker.process_batch(plan, request)))


RECORDS: list[tuple[bytes | None, bytes, list[tuple[str, bytes | None]]]] = [
    (b"c1", b'{"n": 1}', [("message-id", b"m-1"), ("correlation-id", b"order-1"), ("x-tenant", b"acme")]),
    (b"\xff\x00", b'{"n": 2}', [("message-id", b"m-2"), ("traceparent", TP.encode())]),
    (None, b'{"n": 3}', [("message-id", b"m-3")]),  # filtered
    (b"c4", b'{"n": 4}', [("x-empty", None), ("traceparent", b"broken")]),  # id from the position
]


def test_a_worker_encodes_each_record_as_the_sink_would(tmp_path: Path) -> None:
    now = time.time()
    answer = _ask(_plan(tmp_path), _payload(RECORDS), now)
    assert answer[0] == "ok", answer
    _, records, n_out, (values, keys, headers), journal, index, filtered, sources = answer
    assert (records, n_out, filtered) == (4, 3, 1)
    assert sources == [0, 1, 3]  # the input of each output record
    assert [orjson.loads(v) for v in values] == [{"n": 1, "twice": 2}, {"n": 2, "twice": 4}, {"n": 4, "twice": 8}]
    assert keys == [b"c1", b"\xff\x00", b"c4"]
    # what the engine's own path writes for the same records: the source's message, then the sink's headers
    for i, out in zip((0, 1, 3), headers, strict=True):
        key, value, hdrs = RECORDS[i]
        msg, err = _record_message("orders", "2", 100 + i, key, 1, 1_700_000_000_000 + i, hdrs, value,
                                   "application/json", 1 << 20, now)
        assert err is None
        expected = outgoing_headers(msg)
        assert {k: v for k, v in out.items() if k != "traceparent"} == {
            k: v for k, v in expected.items() if k != "traceparent"}
        assert list(out) == list(expected)
    assert headers[0]["correlation-id"] == "order-1" and headers[0]["x-tenant"] == "acme"
    assert headers[1]["traceparent"] == TP
    assert headers[2]["message-id"] == "orders-2-103" and headers[2]["x-empty"] == ""
    assert is_valid_traceparent(headers[2]["traceparent"]) and headers[2]["traceparent"] != "broken"
    entries = msgspec.msgpack.decode(journal)
    assert [e[0] for e in entries] == ["m-1", "m-2", "m-3", "orders-2-103"]
    assert [h[2] for h in entries[2][2]] == ["received", "filtered"]
    assert [h[1:3] for h in entries[0][2]] == [["source", "received"], ["keep", "ok"], ["double", "ok"],
                                                ["out", "delivered"]]
    assert len(index.split()) == 5  # four ids and one correlation id


ODD: list[tuple[bytes | None, bytes, list[tuple[str, bytes | None]]]] = [
    # no record key, but a header of that name from some other producer
    (None, b'{"n": 10}', [("kafka.key", b"from-a-header"), ("x-tenant", b"t1")]),
    (None, b'{"n": 11}', [("kafka.key.b64", b"AAE="), ("x-tenant", b"t2")]),
    # content type with parameters, aliases of the id and correlation headers, twice
    (b"k12", b'{"n": 12}', [("Content-Type", b"application/json; charset=utf-8"), ("Message-ID", b"first"),
                            ("message_id", b"second"), ("X-Correlation-ID", b"corr-12"), ("x-tenant", b"t3")]),
    # headers that look like another connector's transport headers, a repeated name, an invalid trace
    (b"k13", b'{"n": 13}', [("kafka.topic", b"elsewhere"), ("file.name", b"x.csv"), ("x-dup", b"1"),
                            ("x-dup", b"2"), ("traceparent", b"00-" + b"0" * 32 + b"-" + b"1" * 16 + b"-01")]),
    (b"\xc3\x28", b'{"n": 14}', [("x-tenant", None)]),  # a key that is not UTF-8
    # the id twice, a valid trace context and then an invalid one: the last value of a name counts
    (b"k15", b'{"n": 15}', [("message-id", b"one"), ("traceparent", TP.encode()), ("message-id", b"two"),
                            ("traceparent", b"not-a-trace")]),
]


@pytest.mark.parametrize("key_header", [KEY_HEADER, "x-tenant", None])
def test_odd_records_get_the_keys_and_headers_the_engine_would_give_them(tmp_path: Path,
                                                                           key_header: str | None) -> None:
    now = time.time()
    answer = _ask(_plan(tmp_path, key_header=key_header), _payload(ODD), now)
    assert answer[0] == "ok", answer
    _, _, n_out, (values, keys, headers), journal, _, _, _ = answer
    assert n_out == len(ODD)
    assert [orjson.loads(v) for v in values] == [{"n": n, "twice": 2 * n} for n in range(10, 16)]
    entries = msgspec.msgpack.decode(journal)
    for i, (key, value, hdrs) in enumerate(ODD):
        msg, err = _record_message("orders", "2", 100 + i, key, 1, 1_700_000_000_000 + i, hdrs, value,
                                   "application/json", 1 << 20, now)
        assert err is None
        expected = outgoing_headers(msg)
        if not is_valid_traceparent(dict(hdrs).get("traceparent", b"").decode()):
            # a fresh trace context on each path: only its form can be compared
            assert is_valid_traceparent(headers[i]["traceparent"])
            expected["traceparent"] = headers[i]["traceparent"]
        assert list(headers[i].items()) == list(expected.items()), i
        assert keys[i] == _record_key(None, key_header, msg.body, msg.headers), (i, key_header)
        assert (entries[i][0], entries[i][1]) == (msg.id, None if msg.correlation_id == msg.id
                                                  else msg.correlation_id)
    if key_header == KEY_HEADER:
        assert keys[:2] == [b"from-a-header", b"\x00\x01"] and keys[4] == b"\xc3\x28"
    assert headers[2]["message-id"] == "first" and headers[2]["correlation-id"] == "corr-12"
    assert headers[2]["content-type"] == "application/json"
    assert "kafka.topic" not in headers[3] and "file.name" not in headers[3] and headers[3]["x-dup"] == "2"
    assert headers[5]["message-id"] == "two" and headers[5]["traceparent"] != TP


def test_the_key_can_come_from_the_output_body(tmp_path: Path) -> None:
    answer = _ask(_plan(tmp_path, key_field="twice"), _payload(RECORDS), time.time())
    assert answer[0] == "ok"
    assert answer[3][1] == [b"2", b"4", b"8"]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ((b"k", b"{not json", []), "format.json.syntax"),
        ((b"k", b"plain text", [("content-type", b"text/plain")]), "content type text/plain"),
        ((b"k", b'{"n": 1, "pad": "' + b"x" * 300 + b'"}', []), "kafka.message_too_large"),
    ],
)
def test_a_record_the_worker_cannot_take_sends_the_batch_back(tmp_path: Path, record: Any, reason: str) -> None:
    answer = _ask(_plan(tmp_path, source_max=200), _payload([RECORDS[0], record]), time.time())
    assert answer[0] == "fallback" and reason in answer[1], answer


def test_an_output_too_big_for_the_sink_sends_the_batch_back(tmp_path: Path) -> None:
    answer = _ask(_plan(tmp_path, sink_max=100), _payload(RECORDS[:1]), time.time())
    assert answer[0] == "fallback" and "max_message_bytes" in answer[1], answer


def test_a_batch_acknowledges_its_partitions_once_all_of_it_is_done() -> None:
    p0, p1 = OffsetTracker(10), OffsetTracker(50)
    first = _BatchAcks([(p0, p0.track(13)), (p1, p1.track(52))], count=5)
    second = _BatchAcks([(p0, p0.track(15))], count=2)
    second.ack_all()
    assert (p0.committed, p1.committed) == (10, 50)  # the first batch holds partition 0 back
    for _ in range(4):
        first.ack_one()
    assert (p0.committed, p1.committed) == (10, 50)
    first.ack_one()
    assert (p0.committed, p1.committed) == (15, 52)
    first.ack_all()  # once only
    assert (p0.committed, p1.committed) == (15, 52)
