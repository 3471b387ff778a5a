"""The message envelope: lazy body, cached bytes and digest, copies, and the sources' fast constructor."""

from __future__ import annotations

import orjson

from seamline.core.message import Message


def test_body_is_decoded_on_first_access_and_bytes_are_cached() -> None:
    m = Message(raw=b'{"a": 1}')
    assert not m.is_decoded
    assert m.body == {"a": 1}
    assert m.is_decoded
    m.body = {"a": 2}
    assert m.raw == orjson.dumps({"a": 2})
    assert m.raw is m.raw
    assert m.digest == m.digest and len(m.digest) == 16


def test_evolve_keeps_the_id_and_copies_the_headers() -> None:
    m = Message({"a": 1}, id="m1", headers={"x": "1"})
    e = m.evolve({"b": 2})
    e.headers["x"] = "changed"
    assert (e.id, e.correlation_id, e.body) == ("m1", "m1", {"b": 2})
    assert m.headers == {"x": "1"}, "the original's headers stay as they were"


def test_adopt_takes_the_headers_over_and_matches_the_constructor() -> None:
    headers = {"kafka.topic": "orders"}
    a = Message.adopt({"id": 7}, b'{"id":7}', "m7", None, headers, "application/json", 1000.0)
    assert a.headers is headers, "taken over, not copied"
    b = Message({"id": 7}, raw=b'{"id":7}', id="m7", headers={"kafka.topic": "orders"}, created_at=1000.0,
                received_at=1000.0)
    assert a.to_record() == b.to_record()
    assert (a.correlation_id, a.route, a.custody, a.effects, a.attempt) == ("m7", None, None, None, 0)
    assert Message.adopt(None, None, "m8", "c8", {}, "application/json", 1.0).correlation_id == "c8"


def test_an_integer_beyond_64_bits_is_written_with_every_digit() -> None:
    m = Message({"n": 123456789012345678901234567890, "x": [2**64]}, id="wide")
    assert m.raw == b'{"n":123456789012345678901234567890,"x":[18446744073709551616]}'
