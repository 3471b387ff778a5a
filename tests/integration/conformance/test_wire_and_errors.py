"""Offline checks of the broker connectors: wire metadata, error classification, config specs, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from seamline.connectors import wire
from seamline.core.errors import FatalError, RetryableError, classify
from seamline.core.message import Message


def test_traceparent_format_and_validation() -> None:
    tp = wire.new_traceparent()
    assert wire.is_valid_traceparent(tp)
    version, trace, span, flags = tp.split("-")
    assert (version, flags, len(trace), len(span)) == ("00", "01", 32, 16)
    assert wire.new_traceparent() != tp
    for bad in (None, "", "00-abc-def-01", "ff-" + "a" * 32 + "-" + "b" * 16 + "-01",
                "00-" + "0" * 32 + "-" + "b" * 16 + "-01", "00-" + "A" * 32 + "-" + "b" * 16 + "-01",
                "00-" + "a" * 32 + "-" + "0" * 16 + "-01", tp + "\n" + tp, tp[:-1] + "g", tp + "-x", " " + tp[1:]):
        assert not wire.is_valid_traceparent(bad), bad
    assert wire.is_valid_traceparent(f"  {tp}\n"), "surrounding whitespace is tolerated"


def test_traceparents_are_unique_across_many_and_across_forked_processes() -> None:
    """Workers are forked from the engine: each draws its own trace and span ids instead of
    repeating the engine's (and every other worker's) one for one. (A fresh single-threaded
    interpreter forks, as the engine does before it starts its threads.)"""
    code = "\n".join([
        "import os",
        "from seamline.connectors import wire",
        "made = [wire.new_traceparent() for _ in range(300)]",
        "for _ in range(2):",
        "    r, w = os.pipe()",
        "    pid = os.fork()",
        "    if pid == 0:",
        "        os.write(w, ' '.join(wire.new_traceparent() for _ in range(20)).encode())",
        "        os._exit(0)",
        "    os.close(w)",
        "    with os.fdopen(r, 'rb') as f:",
        "        print('child', f.read().decode())",
        "    os.waitpid(pid, 0)",
        "print('parent', ' '.join(made + [wire.new_traceparent() for _ in range(20)]))",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    ids: dict[str, list[str]] = {"child": [], "parent": []}
    for line in out.splitlines():
        who, _, tps = line.partition(" ")
        ids[who].extend(tps.split())
    assert len(ids["child"]) == 40 and len(ids["parent"]) == 320, out
    every = ids["child"] + ids["parent"]
    assert all(map(wire.is_valid_traceparent, every))
    assert len(set(every)) == len(every), "a trace context was drawn twice"


def test_ensure_traceparent_checks_what_it_did_not_make_or_read() -> None:
    m = Message({}, headers={"traceparent": "00-" + "a" * 32 + "-" + "0" * 16 + "-01"})
    tp = wire.ensure_traceparent(m)
    assert wire.is_valid_traceparent(tp) and m.headers["traceparent"] == tp, "an invalid one is replaced"
    _, _, _, rest = wire.incoming({"traceparent": f" {tp} "})
    assert rest["traceparent"] == tp
    m2 = Message({}, headers=rest)
    assert wire.ensure_traceparent(m2) == tp, "a valid one read on the way in is kept on the way out"
    m2.headers["traceparent"] = "ff" + tp[2:]  # a step changed it: checked again
    assert wire.ensure_traceparent(m2) != "ff" + tp[2:]


def test_incoming_reads_aliases_and_keeps_or_creates_traceparent() -> None:
    tp = wire.new_traceparent()
    mid, corr, ctype, rest = wire.incoming(
        {"X-Correlation-ID": "c-1", "Message_Id": "m-1", "Content-Type": "text/plain", "TraceParent": tp, "a": "b"}
    )
    assert (mid, corr, ctype) == ("m-1", "c-1", "text/plain")
    assert rest == {"a": "b", "traceparent": tp}
    # native values win over headers; an invalid traceparent is replaced
    mid, corr, _, rest = wire.incoming({"message-id": "h", "traceparent": "garbage"}, message_id="native")
    assert mid == "native" and corr is None
    assert wire.is_valid_traceparent(rest["traceparent"]) and rest["traceparent"] != "garbage"


def test_outgoing_headers_drop_transport_metadata() -> None:
    m = Message({"a": 1}, id="m1", correlation_id="c1",
                headers={"kafka.offset": "7", "amqp.routing_key": "x", "nats.sequence": "3", "tenant": "acme",
                         "correlation-id": "stale"})
    h = wire.outgoing_headers(m)
    assert h["message-id"] == "m1" and h["correlation-id"] == "c1" and h["tenant"] == "acme"
    assert h["content-type"] == "application/json"
    assert not any(k.startswith(("kafka.", "amqp.", "nats.")) for k in h)
    assert wire.is_valid_traceparent(h["traceparent"])
    assert m.headers["traceparent"] == h["traceparent"], "the generated traceparent stays with the message"
    assert wire.outgoing_headers(m)["traceparent"] == h["traceparent"]
    native = wire.outgoing_headers(m, message_id=False, correlation_id=False, content_type=False)
    assert "message-id" not in native and "correlation-id" not in native and "content-type" not in native


def test_decode_message() -> None:
    ok, err = wire.decode_message(b'{"x": 1}', {"correlation-id": "c"}, default_id="t-0-1",
                                  default_content_type="application/json", transport={"kafka.offset": "1"})
    assert err is None and ok.body == {"x": 1} and ok.id == "t-0-1" and ok.correlation_id == "c"
    assert ok.headers["kafka.offset"] == "1" and "traceparent" in ok.headers
    bad, err = wire.decode_message(b"{nope", {}, default_id="t-0-2", default_content_type="application/json",
                                   transport={})
    assert isinstance(err, FatalError) and err.code == "format.json.syntax" and bad.body == {"$raw": "{nope"}
    _big, err = wire.decode_message(b"x" * 11, {}, default_id="b", default_content_type="text/plain", transport={},
                                   max_bytes=10, connector="nats")
    assert isinstance(err, FatalError) and err.code == "nats.message_too_large"
    text, err = wire.decode_message(b"plain", {"content-type": "text/plain; charset=utf-8"}, default_id="p",
                                    default_content_type="application/json", transport={})
    assert err is None and text.content_type == "text/plain" and text.raw == b"plain"


def test_safe_url() -> None:
    assert wire.safe_url("amqp://guest:s3cret@host:5672/vh") == "amqp://guest:***@host:5672/vh"
    assert wire.safe_url("nats://host:4222") == "nats://host:4222"


def test_kafka_errors_are_classified() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from seamline.connectors.kafka import _error

    assert isinstance(_error(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), "w"), FatalError)
    assert _error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), "w").code == "kafka.unauthorized"
    timeout = _error(KafkaError(KafkaError._MSG_TIMED_OUT), "w")
    assert isinstance(timeout, RetryableError) and classify(timeout)
    assert _error(KafkaException(KafkaError(KafkaError._TRANSPORT)), "w").code == "kafka.unavailable"


def test_rabbitmq_errors_are_classified() -> None:
    from types import SimpleNamespace

    import aiormq.exceptions as e
    from pamqp.commands import Basic

    from seamline.connectors.rabbitmq import _error

    returned = Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="", routing_key="nowhere")

    assert _error(e.ProbableAuthenticationError("no"), "c").code == "rabbitmq.unauthorized"
    assert _error(e.ChannelNotFoundEntity("no queue"), "c").code == "rabbitmq.not_found"
    assert _error(e.ChannelPreconditionFailed("args"), "c").code == "rabbitmq.precondition_failed"
    assert _error(e.PublishError(SimpleNamespace(delivery=returned), returned), "p").code == "rabbitmq.unroutable"
    assert classify(_error(e.DeliveryError(None, Basic.Nack(delivery_tag=1)), "p"))
    assert classify(_error(e.AMQPConnectionError("reset"), "p"))
    assert classify(_error(ConnectionResetError(), "p"))
    assert classify(_error(TimeoutError(), "p"))


def test_nats_errors_are_classified() -> None:
    import nats.errors as ne
    import nats.js.errors as je

    from seamline.connectors.nats import _error

    assert _error(ne.MaxPayloadError(), "p").code == "nats.message_too_large"
    assert classify(_error(je.NoStreamResponseError(), "p"))
    assert classify(_error(ne.TimeoutError(), "p"))
    assert classify(_error(ne.ConnectionClosedError(), "p"))
    assert not classify(_error(je.APIError(code=400, err_code=10060, description="expected stream"), "p"))
    assert classify(_error(je.APIError(code=503, description="unavailable"), "p"))


@pytest.mark.parametrize("name", ["kafka", "rabbitmq", "nats"])
def test_specs_are_documented_and_secrets_never_print(name: str) -> None:
    from seamline.core.registry import get_spec

    for role in ("source", "sink"):
        spec = get_spec(role, name)  # type: ignore[arg-type]
        assert spec is not None, f"{name} is not registered as a {role}"
        assert spec.summary and spec.examples
        for field_name, f in spec.config.model_fields.items():
            assert f.description, f"{name} {role}: field {field_name!r} has no description"
    secret = "hunter2-very-secret"
    cfgs = {
        "kafka": {"bootstrap_servers": "b:9092", "topics": "t", "group": "g", "username": "u", "password": secret},
        "rabbitmq": {"url": f"amqp://u:{secret}@h/", "queue": "q"},
        "nats": {"servers": "nats://h:4222", "stream": "S", "durable": "d", "password": secret},
    }
    spec = get_spec("source", name)
    assert spec is not None
    cfg = spec.config.model_validate(cfgs[name])
    assert secret not in repr(cfg) and secret not in str(cfg)


def test_drivers_are_imported_lazily() -> None:
    code = (
        "import sys\n"
        "import seamline.connectors.kafka, seamline.connectors.rabbitmq, seamline.connectors.nats\n"
        "heavy = {'confluent_kafka', 'aio_pika', 'aiormq', 'nats'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_decode_message_decodes_json_strictly() -> None:
    """Broker bodies are decoded as the file source decodes lines: what a step could misread is refused."""
    dup, err = wire.decode_message(b'{"a": 1, "a": 2}', {}, default_id="d", default_content_type="application/json",
                                   transport={})
    assert isinstance(err, FatalError) and err.code == "format.json.duplicate_key", err
    assert dup.body == {"$raw": '{"a": 1, "a": 2}'}
    # an integer orjson alone would turn into a float keeps every digit
    big, err = wire.decode_message(b'{"n": 123456789012345678901234567890}', {}, default_id="b",
                                   default_content_type="application/json", transport={})
    assert err is None and big.body == {"n": 123456789012345678901234567890}
    # what a batch decoded already is taken as it is, refusal included
    pre, err = wire.decode_message(b'{"x": 1}', {}, default_id="p", default_content_type="application/json",
                                   transport={}, parsed={"x": 1})
    assert err is None and pre.body == {"x": 1}


def test_decode_each_keeps_a_verdict_per_document() -> None:
    from seamline.formats.errors import JsonError
    from seamline.formats.json import decode_each

    docs = [b'{"i": 0}', b'{"i": 1, "i": 1}', b"{nope", b'{"i": 3}', b"[" * 70 + b"]" * 70]
    out = decode_each(docs)
    assert out[0] == {"i": 0} and out[3] == {"i": 3}
    assert [o.code for o in out if isinstance(o, JsonError)] == [
        "format.json.duplicate_key", "format.json.syntax", "format.json.depth"]
    assert decode_each([b'{"a": 1}', b"[2]"]) == [{"a": 1}, [2]]
