"""dedupe, resequence, delay and throttle, end to end through the runtime and the store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seamline import Flow, sink, source, step
from seamline.core.clock import ManualClock
from seamline.core.engine import Engine
from seamline.store import open_store
from seamline.testing.memory import channel, reset_channels


@pytest.fixture(autouse=True)
def _channels() -> Iterator[None]:
    reset_channels()
    yield
    reset_channels()


def flow(*steps: Any, **settings: Any) -> Flow:
    return Flow("t", source=source("memory", channel="in"), steps=list(steps),
                sinks=[sink("memory", channel="out", label="out")], settings=settings or None)


async def run_idle(fl: Flow, state: Path, clock: ManualClock, *, steps: int = 50, dt: float = 1.0) -> Any:
    """Run until idle, moving the injected clock forward while it runs."""
    eng = Engine([fl], open_store(str(state)), clock=clock, retry_poll=0.01)
    task = asyncio.create_task(eng.run(until_idle=True, idle_horizon=3600, install_signals=False))
    for _ in range(steps):
        await asyncio.sleep(0.01)
        if task.done():
            break
        clock.advance(dt)
    if not task.done():
        eng.request_stop()
    return await asyncio.wait_for(task, 10)


async def test_dedupe_three_concurrent_copies_and_one_after_restart_give_one_side_effect(tmp_path: Path) -> None:
    clock = ManualClock()
    state = tmp_path / "s.db"
    fl = flow(step("dedupe", key="order_id", window="1h"), batch_size=1, concurrency=3)
    for i in range(3):
        channel("in").put({"order_id": "4711", "copy": i}, id=f"c{i}")
    channel("in").put({"order_id": "4712"}, id="other")
    await run_idle(fl, state, clock)
    assert sorted(b["order_id"] for b in channel("out").bodies()) == ["4711", "4712"]
    assert sorted(channel("in").acked) == ["c0", "c1", "c2", "other"]
    # a restart (new engine, same store): the key is remembered
    channel("in").put({"order_id": "4711", "copy": 3}, id="c3")
    await run_idle(fl, state, clock)
    assert [b["order_id"] for b in channel("out").bodies()].count("4711") == 1
    store = open_store(str(state))
    await store.open()
    outcomes = [e.outcome for e in await store.trace("c3")]
    await store.close()
    assert "dropped" in outcomes
    # after the window the key may pass again
    clock.advance(3601)
    channel("in").put({"order_id": "4711", "copy": 4}, id="c4")
    await run_idle(fl, state, clock)
    assert [b["order_id"] for b in channel("out").bodies()].count("4711") == 2


async def test_dedupe_does_not_remember_a_key_that_was_not_delivered(tmp_path: Path) -> None:
    from seamline.core.errors import FatalError

    clock = ManualClock()
    channel("out").fail_next(FatalError("rejected", code="x"))
    channel("in").put({"order_id": "1"}, id="a")
    await run_idle(flow(step("dedupe", key="order_id")), tmp_path / "s.db", clock)
    channel("in").put({"order_id": "1"}, id="b")
    await run_idle(flow(step("dedupe", key="order_id")), tmp_path / "s.db", clock)
    assert [m.id for m in channel("out").written] == ["b"]


async def test_resequence_versions_3_1_2_are_delivered_1_2_3(tmp_path: Path) -> None:
    clock = ManualClock()
    for v in (3, 1, 2):
        channel("in").put({"order_id": "A", "version": v}, id=f"v{v}")
    fl = flow(step("resequence", key="order_id", sequence="version"), batch_size=1)
    await run_idle(fl, tmp_path / "s.db", clock, steps=5)
    assert [b["version"] for b in channel("out").bodies()] == [1, 2, 3]
    assert sorted(channel("in").acked) == ["v1", "v2", "v3"]


async def test_resequence_survives_restart_drops_stale_and_skips_gaps_after_timeout(tmp_path: Path) -> None:
    clock = ManualClock()
    state = tmp_path / "s.db"
    fl = flow(step("resequence", key="k", sequence="n", timeout="30s"), batch_size=1)
    channel("in").put({"k": "A", "n": 1}, id="a1")
    channel("in").put({"k": "A", "n": 3}, id="a3")  # 2 is missing: 3 is parked
    await run_idle(fl, state, clock, steps=3, dt=0.1)
    assert [b["n"] for b in channel("out").bodies()] == [1]
    # restart: 3 is still parked in the store, 2 arrives, then a stale 1 again
    channel("in").put({"k": "A", "n": 2}, id="a2")
    channel("in").put({"k": "A", "n": 1}, id="a1-again")
    await run_idle(fl, state, clock, steps=3, dt=0.1)
    assert [b["n"] for b in channel("out").bodies()] == [1, 2, 3]
    # a gap that never closes: after the timeout the waiting message is released
    channel("in").put({"k": "B", "n": 2}, id="b2")
    await run_idle(fl, state, clock, steps=60, dt=1.0)
    assert [b["n"] for b in channel("out").bodies() if b["k"] == "B"] == [2]
    store = open_store(str(state))
    await store.open()
    assert await store.parked("reseq:t/resequence") == []
    await store.close()


async def test_delay_is_durable_and_resumes_after_the_step(tmp_path: Path) -> None:
    clock = ManualClock()
    state = tmp_path / "s.db"
    fl = flow(step("delay", **{"for": "2h"}), step("map", expression="$merge([$, {'after': true}])"))
    channel("in").put({"n": 1}, id="later")
    eng = Engine([fl], open_store(str(state)), clock=clock, retry_poll=0.01)
    await eng.run(until_idle=True, idle_horizon=60, install_signals=False)
    assert channel("out").written == [] and channel("in").acked == ["later"]
    clock.advance(7201)
    eng = Engine([fl], open_store(str(state)), clock=clock, retry_poll=0.01)
    await eng.run(until_idle=True, idle_horizon=0, install_signals=False)
    assert channel("out").bodies() == [{"n": 1, "after": True}]


async def test_throttle_lets_the_rate_through(tmp_path: Path) -> None:
    clock = ManualClock()
    for i in range(6):
        channel("in").put({"n": i}, id=f"m{i}")
    fl = flow(step("throttle", rate="2/s", burst=2))
    eng = Engine([fl], open_store(str(tmp_path / "s.db")), clock=clock, retry_poll=0.01)
    task = asyncio.create_task(eng.run(until_idle=True, idle_horizon=0, install_signals=False))
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert channel("out").written == []  # the batch waits for tokens; nothing passes early
    advanced = 0
    while not task.done() and advanced < 30:
        clock.advance(1.0)
        advanced += 1
        await asyncio.sleep(0.02)
    await asyncio.wait_for(task, 5)
    assert len(channel("out").written) == 6
    assert advanced >= 2, "four messages beyond the burst need at least two seconds of tokens"
