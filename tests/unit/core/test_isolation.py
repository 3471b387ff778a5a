"""Circuit breaker, rate limit and timeout around sinks, driven by an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seamline import Flow, Message, sink, source
from seamline.core.clock import ManualClock
from seamline.core.engine import Engine
from seamline.core.errors import RetryableError
from seamline.store import DlqFilter, open_store
from seamline.testing.memory import channel, reset_channels


@pytest.fixture(autouse=True)
def _channels() -> Iterator[None]:
    reset_channels()
    yield
    reset_channels()


async def settle(cond: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


async def test_breaker_opens_waits_probes_once_and_drops_nothing(tmp_path: Path) -> None:
    clock = ManualClock()
    for i in range(5):
        channel("in").put({"n": i}, id=f"m{i}")
    out = channel("out")
    out.fail_next(RetryableError("503", code="http.status.503"), times=1000)
    fl = Flow(
        "t",
        source=source("memory", channel="in"),
        sinks=[sink("memory", channel="out", label="out",
                    breaker={"failure_threshold": 3, "cool_down": 30})],
        on_error={"retry": {"max_attempts": 50, "initial": 0.5, "max": 0.5, "jitter": False}},
        settings={"batch_size": 1, "concurrency": 1},
    )
    eng = Engine([fl], open_store(str(tmp_path / "s.db")), clock=clock, retry_poll=0.01)
    task = asyncio.create_task(eng.run(install_signals=False))
    await settle(lambda: out.calls == 3)
    # open: time passes, retries fall due, but no call reaches the endpoint
    for _ in range(20):
        clock.advance(1.0)
        await asyncio.sleep(0.01)
    assert out.calls == 3
    breaker = eng.breakers.get("t/out")
    assert str(breaker.state) == "open"
    # cool-down over: exactly one probe; it fails and the breaker opens again
    clock.advance(11.0)
    await settle(lambda: out.calls == 4)
    for _ in range(10):
        await asyncio.sleep(0.01)
    assert out.calls == 4 and str(breaker.state) == "open"
    # the endpoint recovers: the next probe closes the breaker and everything is delivered
    out._failures.clear()
    for _ in range(80):
        clock.advance(1.0)
        await asyncio.sleep(0.01)
        if len(out.written) == 5:
            break
    assert sorted(m.id for m in out.written) == [f"m{i}" for i in range(5)]
    eng.request_stop()
    await asyncio.wait_for(task, 5)
    store = open_store(str(tmp_path / "s.db"))
    await store.open()
    assert await store.list_dead(DlqFilter()) == []
    outcomes = [e.outcome for e in await store.trace("breaker:t/out")]
    await store.close()
    assert outcomes[:3] == ["breaker-open", "breaker-half_open", "breaker-open"]
    assert outcomes[-1] == "breaker-closed"
    import orjson
    from tests.helpers import cli

    st = cli("status", "--json", "--state", str(tmp_path / "s.db"))
    assert st.returncode == 0, st.stderr
    (row,) = orjson.loads(st.stdout)["breakers"]
    assert row["endpoint"] == "t/out" and row["state"] == "closed"


async def test_a_hung_sink_times_out_and_does_not_stall_the_other_sink(tmp_path: Path) -> None:
    for i in range(3):
        channel("in").put({"n": i}, id=f"m{i}")
    channel("hung").hang = True
    fl = Flow(
        "t",
        source=source("memory", channel="in"),
        sinks=[sink("memory", channel="fast", label="fast"),
               sink("memory", channel="hung", label="hung", timeout=0.2)],
        on_error={"retry": {"max_attempts": 1}},
    )
    eng = Engine([fl], open_store(str(tmp_path / "s.db")), retry_poll=0.01)
    await asyncio.wait_for(eng.run(until_idle=True, idle_horizon=0, install_signals=False), 10)
    assert [m.id for m in channel("fast").written] == ["m0", "m1", "m2"]
    store = open_store(str(tmp_path / "s.db"))
    await store.open()
    dead = await store.list_dead(DlqFilter())
    await store.close()
    assert sorted(d.msg_id for d in dead) == ["m0", "m1", "m2"]
    assert {d.error_code for d in dead} == {"sink.timeout"} and {d.step for d in dead} == {"hung"}
    assert all(d.pending_sinks == ["hung"] for d in dead)


async def test_rate_limit_spaces_writes_on_the_clock(tmp_path: Path) -> None:
    clock = ManualClock()
    for i in range(10):
        channel("in").put(Message({"n": i}, id=f"m{i}"))
    fl = Flow(
        "t",
        source=source("memory", channel="in"),
        sinks=[sink("memory", channel="out", label="out", rate_limit={"rate": "2/s", "burst": 2})],
    )
    eng = Engine([fl], open_store(str(tmp_path / "s.db")), clock=clock, retry_poll=0.01)
    task = asyncio.create_task(eng.run(until_idle=True, idle_horizon=0, install_signals=False))
    await settle(lambda: len(channel("out").written) == 2)
    for _ in range(10):
        await asyncio.sleep(0.01)
    assert len(channel("out").written) == 2  # burst spent, no time has passed
    clock.advance(1.0)
    await settle(lambda: len(channel("out").written) == 4)
    for expected in (6, 8, 10):
        clock.advance(1.0)
        await settle(lambda n=expected: len(channel("out").written) == n)
    await asyncio.wait_for(task, 5)
