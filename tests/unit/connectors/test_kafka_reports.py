"""The Kafka sink's delivery reports of one batch: one callback serves every record, and a failed
report is traced back to its record by the message-id header (real ``confluent_kafka`` report objects,
no broker)."""

from __future__ import annotations

from confluent_kafka import KafkaError, Message

from seamline.connectors.kafka import _Sent
from seamline.connectors.wire import MESSAGE_ID_HEADER


def _report(mid: str | None, value: bytes = b"{}") -> Message:
    headers = [("traceparent", b"00-x"), *([(MESSAGE_ID_HEADER, mid.encode())] if mid is not None else [])]
    return Message(topic="out", value=value, headers=headers)


TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT)


def test_reports_count_down_and_failures_name_their_record() -> None:
    sent = _Sent(4, ["a", "b", "c", "d"])
    sent.report(None, _report("a"))
    sent.report(TIMED_OUT, _report("c"))
    assert sent.left == 2
    sent.report(None, _report("b"))
    sent.report(None, _report("d"))
    assert sent.left == 0
    assert sent.failed_indices() == [([2], TIMED_OUT)]


def test_a_record_never_handed_over_gets_no_report_and_is_not_blamed_for_others() -> None:
    err = RuntimeError("refused")
    sent = _Sent(3, ["a", None, "c"])
    sent.refuse(1, err)  # e.g. too big: the producer refused it, no report will come
    sent.report(TIMED_OUT, _report("a"))
    sent.report(None, _report("c"))
    assert sent.left == 0
    assert sent.refused == {1: err}
    # a report without a message id stands for every record handed over, never the refused one
    sent.failed.append((TIMED_OUT, _report(None)))
    assert sent.failed_indices() == [([0], TIMED_OUT), ([0, 2], TIMED_OUT)]


def test_a_failed_report_for_a_shared_id_fails_every_record_with_that_id() -> None:
    """Two records with one id cannot be told apart: both are sent again (a duplicate, never a loss)."""
    sent = _Sent(3, ["dup", "x", "dup"])
    sent.report(None, _report("dup"))
    sent.report(None, _report("x"))
    sent.report(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), _report("dup"))
    [(indices, err)] = sent.failed_indices()
    assert indices == [0, 2] and err.name() == "MSG_SIZE_TOO_LARGE"


def test_an_unknown_id_fails_every_record_handed_over() -> None:
    sent = _Sent(2, ["a", "b"])
    sent.report(TIMED_OUT, _report("zzz"))
    assert sent.failed_indices() == [([0, 1], TIMED_OUT)]
