"""The runtime keeps the delivery contract: ack only after sinks confirmed or the store holds the message."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import run_until_idle_advancing

from seamline import Flow, Message, sink, source, step
from seamline.core.clock import ManualClock
from seamline.core.engine import Engine
from seamline.core.errors import FatalError, RetryableError
from seamline.store import DlqFilter, open_store
from seamline.testing.memory import channel, reset_channels


@pytest.fixture(autouse=True)
def _channels() -> Iterator[None]:
    reset_channels()
    yield
    reset_channels()


def flow(*steps: Any, sinks: list[Any] | None = None, retry: dict[str, Any] | None = None, **settings: Any) -> Flow:
    return Flow(
        "t",
        source=source("memory", channel="in"),
        steps=list(steps),
        sinks=sinks or [sink("memory", channel="out", label="out")],
        on_error={"retry": retry or {"max_attempts": 3, "initial": 1, "max": 1, "jitter": False}},
        settings=settings or None,
    )


async def run(fl: Flow, state: Path, clock: ManualClock | None = None, horizon: float = 0.0) -> Any:
    eng = Engine([fl], open_store(str(state)), clock=clock or ManualClock(), retry_poll=0.01)
    return await eng.run(until_idle=True, idle_horizon=horizon, install_signals=False)


async def test_delivers_and_acks_after_the_sink(tmp_path: Path) -> None:
    for i in range(10):
        channel("in").put({"n": i}, id=f"m{i}")
    res = await run(flow(step("map", expression="{'n': n * 2}")), tmp_path / "s.db")
    assert channel("out").bodies() == [{"n": i * 2} for i in range(10)]
    assert channel("in").acked == [f"m{i}" for i in range(10)]
    assert res.stats["t"].delivered == 10


async def test_fatal_error_dead_letters_at_once_with_original_bytes(tmp_path: Path) -> None:
    raw = b'{"n": 1,   "spaces": "kept"}'
    channel("in").put(Message(raw=raw, id="bad", headers={"x-tenant": "acme"}))
    fl = flow(step("python", function=_explode, label="explode"))
    await run(fl, tmp_path / "s.db")
    store = open_store(str(tmp_path / "s.db"))
    await store.open()
    (d,) = await store.list_dead(DlqFilter())
    await store.close()
    assert d.step == "explode" and d.error_code == "test.bad" and d.attempts == 1 and d.error_class == "fatal"
    assert hashlib.sha256(Message.from_record(d.original).raw).digest() == hashlib.sha256(raw).digest()
    assert Message.from_record(d.original).headers == {"x-tenant": "acme"}
    assert channel("in").acked == ["bad"] and channel("out").written == []


def _explode(body: Any) -> Any:
    raise FatalError("cannot use this record", code="test.bad")


async def test_retryable_sink_error_retries_with_backoff_then_dead_letters(tmp_path: Path) -> None:
    clock = ManualClock()
    channel("in").put({"n": 1}, id="m1")
    channel("out").fail_next(RetryableError("503 from target", code="http.status.503"), times=10)
    eng = Engine([flow()], open_store(str(tmp_path / "s.db")), clock=clock, retry_poll=0.01)
    res = await run_until_idle_advancing(eng, clock, step=0.5, horizon=10.0, ticks=200)
    assert channel("out").calls == 3  # max_attempts
    assert res.stats["t"].dead == 1 and res.stats["t"].retried == 2
    store = open_store(str(tmp_path / "s.db"))
    await store.open()
    (d,) = await store.list_dead(DlqFilter())
    trace = [e.outcome for e in await store.trace("m1")]
    await store.close()
    assert d.attempts == 3 and "retries exhausted" in d.error_message and d.step == "out"
    assert [h["attempt"] for h in d.history] == [1, 2, 3]
    assert trace.count("retry-scheduled") == 2 and trace[-1] == "dead-lettered"


async def test_retry_due_in_two_hours_survives_a_restart_and_runs_once(tmp_path: Path) -> None:
    clock = ManualClock()
    state = tmp_path / "s.db"
    channel("in").put({"n": 1}, id="later")
    channel("out").fail_next(RetryableError("maintenance window", retry_after=7200.0))
    fl = flow(retry={"max_attempts": 5, "initial": 1, "max": 1, "jitter": False})
    res = await run(fl, state, clock, horizon=60.0)  # exits: the retry is not due within the horizon
    assert res.stats["t"].retried == 1 and channel("out").written == []
    assert channel("in").acked == ["later"]  # the store holds it now

    # "restart": a new engine and store connection on the same state file
    clock.advance(3600)
    res = await run(fl, state, clock, horizon=0.0)
    assert channel("out").written == []  # not due yet
    clock.advance(3601)
    res = await run(fl, state, clock, horizon=0.0)
    assert [m.id for m in channel("out").written] == ["later"]
    clock.advance(10_000)
    await run(fl, state, clock, horizon=0.0)
    assert [m.id for m in channel("out").written] == ["later"]  # exactly once
    store = open_store(str(state))
    await store.open()
    assert await store.count_retries() == 0
    await store.close()


async def test_partial_batch_failure_only_retries_the_failed(tmp_path: Path) -> None:
    clock = ManualClock()
    for i in range(6):
        channel("in").put({"n": i}, id=f"m{i}")
    failed_once: set[str] = set()

    def fail_odd(m: Message) -> BaseException | None:
        if m.body["n"] % 2 and m.id not in failed_once:
            failed_once.add(m.id)
            return RetryableError("busy")
        return None

    channel("out").fail_when = fail_odd
    eng = Engine([flow()], open_store(str(tmp_path / "s.db")), clock=clock, retry_poll=0.01)
    await run_until_idle_advancing(eng, clock, step=1.0, horizon=10.0, ticks=100)
    ids = [m.id for m in channel("out").written]
    assert sorted(ids) == [f"m{i}" for i in range(6)] and len(ids) == 6


async def test_route_filter_and_split(tmp_path: Path) -> None:
    for i, country in enumerate(["DE", "FR", "DE", "US"]):
        channel("in").put({"n": i, "country": country, "items": [1, 2]}, id=f"m{i}")
    fl = flow(
        step("filter", condition="country != 'US'"),
        step("python", function=lambda b: [{"n": b["n"], "item": x, "country": b["country"]} for x in b["items"]],
             split=True),
        step("route", routes=[{"when": "country = 'DE'", "to": ["de"]}], default=["rest"]),
        sinks=[sink("memory", channel="de", label="de"), sink("memory", channel="rest", label="rest")],
    )
    res = await run(fl, tmp_path / "s.db")
    assert [(b["n"], b["item"]) for b in channel("de").bodies()] == [(0, 1), (0, 2), (2, 1), (2, 2)]
    assert [(b["n"], b["item"]) for b in channel("rest").bodies()] == [(1, 1), (1, 2)]
    assert res.stats["t"].filtered == 1
    assert sorted(channel("in").acked) == ["m0", "m1", "m2", "m3"]


async def test_one_sink_fails_fatally_the_other_delivers(tmp_path: Path) -> None:
    channel("in").put({"n": 1}, id="m1")
    channel("b").fail_next(FatalError("rejected", code="target.400"))
    fl = flow(sinks=[sink("memory", channel="a", label="a"), sink("memory", channel="b", label="b")])
    await run(fl, tmp_path / "s.db")
    assert [m.id for m in channel("a").written] == ["m1"]
    store = open_store(str(tmp_path / "s.db"))
    await store.open()
    (d,) = await store.list_dead(DlqFilter())
    await store.close()
    assert d.step == "b" and d.pending_sinks == ["b"]


async def test_dlq_replay_from_the_failing_sink_delivers_only_there(tmp_path: Path) -> None:
    channel("in").put({"n": 1}, id="m1")
    channel("b").fail_next(FatalError("rejected", code="target.400"))
    fl = flow(sinks=[sink("memory", channel="a", label="a"), sink("memory", channel="b", label="b")])
    state = tmp_path / "s.db"
    await run(fl, state)
    store = open_store(str(state))
    await store.open()
    (d,) = await store.list_dead(DlqFilter())
    await store.replay_dead([d.dlq_id], now=ManualClock().now() + 1, from_step=True, actor="test")
    await store.close()
    await run(fl, state, ManualClock(start=ManualClock().now() + 5))
    assert [m.id for m in channel("a").written] == ["m1"]
    assert [m.id for m in channel("b").written] == ["m1"]


async def test_shutdown_gives_unfinished_work_back(tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def slow(body: Any) -> Any:
        await gate.wait()
        return body

    for i in range(50):
        channel("in").put({"n": i}, id=f"m{i}")
    fl = flow(step("python", function=slow), batch_size=5, queue=2, concurrency=1)
    eng = Engine([fl], open_store(str(tmp_path / "s.db")), retry_poll=0.01)
    task = asyncio.create_task(eng.run(install_signals=False, drain_timeout=0.2))
    await asyncio.sleep(0.2)
    eng.request_stop()
    res = await asyncio.wait_for(task, 5)
    acked, nacked = set(channel("in").acked), set(channel("in").nacked)
    assert not (acked & nacked)
    handed_over = acked | nacked | {m.id for m in channel("in").pending}
    assert handed_over == {f"m{i}" for i in range(50)}, "every message is acked, nacked or never taken"
    assert len(nacked) > 0 and res.interrupted


def _maybe_unencodable(body: Any) -> Any:
    return {"tags": {1, 2}} if body["n"] == 1 else body


async def test_a_body_that_cannot_be_encoded_is_dead_lettered_alone(tmp_path: Path) -> None:
    for i in range(3):
        channel("in").put({"n": i}, id=f"m{i}")
    await run(flow(step("python", function=_maybe_unencodable, label="tagger")), tmp_path / "s.db")
    assert [m.id for m in channel("out").written] == ["m0", "m2"]
    store = open_store(str(tmp_path / "s.db"))
    await store.open()
    (d,) = await store.list_dead(DlqFilter())
    await store.close()
    assert d.msg_id == "m1" and d.error_code == "encode.body"
    assert sorted(channel("in").acked) == ["m0", "m1", "m2"]


async def test_the_flow_can_override_the_classification_of_errors(tmp_path: Path) -> None:
    from seamline.core.clock import ManualClock as _Clock

    channel("in").put({"n": 1}, id="conflict")
    channel("in").put({"n": 2}, id="outage")
    calls: dict[str, int] = {}

    def fail(m: Message) -> BaseException | None:
        calls[m.id] = calls.get(m.id, 0) + 1
        if m.id == "conflict" and calls[m.id] == 1:
            return FatalError("409 conflict", code="http.status.409")  # retried by the override
        if m.id == "outage":
            return RetryableError("503", code="http.status.503")  # made fatal by the prefix override
        return None

    channel("out").fail_when = fail
    fl = Flow("t", source=source("memory", channel="in"), sinks=[sink("memory", channel="out", label="out")],
              on_error={"retry": {"max_attempts": 3, "initial": 1, "max": 1, "jitter": False},
                        "classify": {"http.status.409": "retryable", "http.status.5*": "fatal"}})
    clock = _Clock()
    eng = Engine([fl], open_store(str(tmp_path / "s.db")), clock=clock, retry_poll=0.01)
    await run_until_idle_advancing(eng, clock, step=1.0, horizon=10, ticks=50)
    assert [m.id for m in channel("out").written] == ["conflict"]
    assert calls == {"conflict": 2, "outage": 1}
    store = open_store(str(tmp_path / "s.db"))
    await store.open()
    (d,) = await store.list_dead(DlqFilter())
    await store.close()
    assert d.msg_id == "outage" and d.error_class == "fatal" and d.attempts == 1
