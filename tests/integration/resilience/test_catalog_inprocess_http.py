"""Catalog cases that need an injected clock, against the real local HTTP target in process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from seamline import Flow, sink, source, step
from seamline.core.clock import ManualClock
from seamline.core.engine import Engine
from seamline.store import open_store
from seamline.testing.faultserver import FaultServer, Respond
from seamline.testing.memory import channel, reset_channels


@pytest.fixture(autouse=True)
def _channels() -> Iterator[None]:
    reset_channels()
    yield
    reset_channels()


def _flow(url: str, *steps: Any, retry: dict[str, Any] | None = None, **settings: Any) -> Flow:
    return Flow(
        "catalog",
        source=source("memory", channel="in"),
        steps=list(steps),
        sinks=[sink("http", label="target", url=url, egress={"allow_loopback": True}, max_in_flight=1)],
        on_error={"retry": retry or {"max_attempts": 5, "initial": 1, "max": 1, "jitter": False}},
        settings=settings or None,
    )


async def _run(fl: Flow, state: Path, clock: ManualClock, horizon: float = 0.0, steps: int = 0) -> None:
    eng = Engine([fl], open_store(str(state)), clock=clock, retry_poll=0.01)
    task = asyncio.create_task(eng.run(until_idle=True, idle_horizon=horizon, install_signals=False))
    for _ in range(steps):
        await asyncio.sleep(0.01)
        if task.done():
            break
        clock.advance(1.0)
    await asyncio.wait_for(task, 20)


async def test_a_retry_due_in_two_hours_survives_a_restart_and_runs_exactly_once(tmp_path: Path) -> None:
    clock = ManualClock()
    state = tmp_path / "s.db"
    async with FaultServer(clock=clock) as server:
        server.script("/crm", Respond(503, headers={"Retry-After": "7200"}), default=Respond(201))
        fl = _flow(server.url_for("/crm"))
        channel("in").put({"order": 4711}, id="o-4711")
        await _run(fl, state, clock, horizon=60.0)
        assert server.count("/crm") == 1 and channel("in").acked == ["o-4711"]
        clock.advance(3600)  # a restart an hour later: not due yet
        await _run(fl, state, clock)
        assert server.count("/crm") == 1
        clock.advance(3601)  # another restart after it fell due
        await _run(fl, state, clock)
        assert server.count("/crm") == 2
        clock.advance(86_400)
        await _run(fl, state, clock)
        assert server.count("/crm") == 2, "exactly once"
        assert [orjson.loads(b) for b in server.received_bodies("/crm")] == [{"order": 4711}] * 2
    store = open_store(str(state))
    await store.open()
    assert await store.count_retries() == 0
    await store.close()


async def test_out_of_order_versions_reach_the_target_in_order(tmp_path: Path) -> None:
    clock = ManualClock()
    async with FaultServer(clock=clock) as server:
        server.script("/crm", default=Respond(201))
        for v in (3, 1, 2):
            channel("in").put({"order": "A", "version": v}, id=f"A-v{v}")
        fl = _flow(server.url_for("/crm"), step("resequence", key="order", sequence="version"), batch_size=1)
        await _run(fl, tmp_path / "s.db", clock, steps=5)
        assert [orjson.loads(b)["version"] for b in server.received_bodies("/crm")] == [1, 2, 3]


async def test_a_call_step_has_its_own_retry_policy(tmp_path: Path) -> None:
    clock = ManualClock()
    async with FaultServer(clock=clock) as server:
        server.script("/customers", default=Respond(503))
        server.script("/crm", default=Respond(201))
        enrich = step("http", label="lookup", url=server.url_for("/customers"), egress={"allow_loopback": True},
                      retry={"max_attempts": 2, "initial": 1, "max": 1, "jitter": False})
        channel("in").put({"order": 1}, id="o-1")
        # the horizon keeps the engine up while the step's retry is pending, so the
        # outcome does not depend on whether the clock moved before the idle check
        await _run(_flow(server.url_for("/crm"), enrich), tmp_path / "s.db", clock, horizon=60.0, steps=200)
        assert server.count("/customers") == 2, "the step's policy (2 attempts), not the flow's (5)"
        assert server.count("/crm") == 0
    store = open_store(str(tmp_path / "s.db"))
    await store.open()
    from seamline.store import DlqFilter

    (d,) = await store.list_dead(DlqFilter())
    await store.close()
    assert d.step == "lookup" and d.attempts == 2
