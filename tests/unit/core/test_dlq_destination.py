"""on_error.dlq: dead letters stay in the store and are also published to a broker-style destination."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seamline import Flow, sink, source, step
from seamline.config.loader import load_flows
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


def _reject_odd(body: Any) -> Any:
    if body["n"] % 2:
        raise FatalError(f"odd order {body['n']}", code="test.odd")
    return body


def _flow() -> Flow:
    return Flow("f", source=source("memory", channel="in"), steps=[step("python", function=_reject_odd, label="odd")],
                sinks=[sink("memory", channel="out")], dlq_sink=sink("memory", channel="dlq", label="dlq"))


async def test_dead_letters_are_published_with_their_reason(tmp_path: Path) -> None:
    for i in range(4):
        channel("in").put({"n": i}, id=f"m{i}", headers={"tenant": "acme"})
    await Engine([_flow()], open_store(str(tmp_path / "s.db"))).run(until_idle=True, idle_horizon=0,
                                                                   install_signals=False)
    assert [m.id for m in channel("out").written] == ["m0", "m2"]
    published = {m.id: m for m in channel("dlq").written}
    assert set(published) == {"m1", "m3"}
    h = published["m1"].headers
    assert h["tenant"] == "acme" and h["seamline-error-code"] == "test.odd" and h["seamline-step"] == "odd"
    assert published["m1"].body == {"n": 1}
    store = open_store(str(tmp_path / "s.db"))
    await store.open()
    assert len(await store.list_dead(DlqFilter())) == 2  # kept in the store for `seamline dlq`
    assert await store.to_forward("f") == []
    await store.close()


async def test_a_failing_destination_is_retried_and_loses_nothing(tmp_path: Path) -> None:
    clock = ManualClock()
    channel("in").put({"n": 1}, id="m1")
    channel("dlq").fail_next(RetryableError("broker down"), times=2)
    eng = Engine([_flow()], open_store(str(tmp_path / "s.db")), clock=clock, retry_poll=0.01)
    await eng.run(until_idle=True, idle_horizon=0, install_signals=False)
    assert channel("dlq").written == []  # the store has it; the next run tries again
    eng = Engine([_flow()], open_store(str(tmp_path / "s.db")), clock=clock, retry_poll=0.01)
    task = asyncio.create_task(eng.run(install_signals=False))
    for _ in range(100):
        await asyncio.sleep(0.01)
        clock.advance(5.0)
        if channel("dlq").written:
            break
    eng.request_stop()
    await asyncio.wait_for(task, 5)
    assert [m.id for m in channel("dlq").written] == ["m1"]


def test_dlq_destination_in_yaml(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(
        "flow: f\nsource: {memory: {channel: in}}\nsinks: [{memory: {channel: out}}]\n"
        "on_error:\n  dlq: {memory: {channel: dead, label: dlq}}\n"
    )
    (fl,) = load_flows(tmp_path / "f.yaml")
    assert fl.dlq_sink is not None and fl.dlq_sink.name == "memory" and fl.dlq_sink.label == "dlq"
    (tmp_path / "g.yaml").write_text(
        "flow: g\nsource: {memory: {channel: in}}\nsinks: [{memory: {channel: out}}]\n"
        "on_error:\n  dlq: {memroy: {channel: dead}}\n"
    )
    from seamline.core.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        load_flows(tmp_path / "g.yaml")
    assert "unknown sink type 'memroy'" in str(exc.value) and "g.yaml:5:" in str(exc.value)
