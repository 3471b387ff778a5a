"""A pipelined sink takes batches in order and confirms them while later batches are handed over;
the runtime acknowledges a batch only once its own confirmation came."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field
from tests.helpers import run_until_idle_advancing

from seamline import Flow, sink, source
from seamline.config.models import SinkConfig
from seamline.core.clock import ManualClock
from seamline.core.component import BatchError, BuildContext, Sink
from seamline.core.engine import Engine
from seamline.core.errors import FatalError, RetryableError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.store import DlqFilter, open_store
from seamline.testing.memory import channel, reset_channels


class _Log:
    """What the pipelined test sink saw: batches handed over, and the gates of their confirmations."""

    def __init__(self) -> None:
        self.submitted: list[list[str]] = []
        self.confirmed: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.hold = True
        #: per message id: the error its confirmation reports (popped: once)
        self.fail: dict[str, BaseException] = {}
        #: batches (by their first id) whose confirmation never comes on the first attempt
        self.hang_once: set[str] = set()


LOGS: dict[str, _Log] = {}


class PipelinedConfig(SinkConfig):
    """Test sink: hands batches over in order, confirms each when its gate opens."""

    key: str = Field(..., description="Bucket in LOGS.")


class PipelinedSink(Sink):
    pipelined = True

    def __init__(self, cfg: PipelinedConfig) -> None:
        self.log = LOGS[cfg.key]

    async def write(self, batch: Sequence[Message]) -> None:
        await (await self.submit(batch))()

    async def submit(self, batch: Sequence[Message]) -> Callable[[], Awaitable[None]]:
        log = self.log
        ids = [m.id for m in batch]
        log.submitted.append(ids)
        gate = asyncio.Event()
        if not log.hold:
            gate.set()
        log.gates.append(gate)

        async def confirm() -> None:
            if ids[0] in log.hang_once:
                log.hang_once.discard(ids[0])
                await asyncio.Event().wait()
            await gate.wait()
            errors = {i: log.fail.pop(mid) for i, mid in enumerate(ids) if mid in log.fail}
            log.confirmed.append([mid for i, mid in enumerate(ids) if i not in errors])
            if errors:
                raise BatchError(errors)

        return confirm


@register("sink", "test-pipelined", config=PipelinedConfig, summary="Test sink with two-phase writes.")
def _pipelined(cfg: PipelinedConfig, ctx: BuildContext) -> PipelinedSink:
    return PipelinedSink(cfg)


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    reset_channels()
    LOGS.clear()
    yield
    reset_channels()
    LOGS.clear()


def _flow(key: str, *, timeout: float | None = None, **settings: Any) -> Flow:
    opts: dict[str, Any] = {"key": key, "label": "out"}
    if timeout is not None:
        opts["timeout"] = timeout
    return Flow(
        "p",
        source=source("memory", channel="in"),
        steps=[],
        sinks=[sink("test-pipelined", **opts)],
        on_error={"retry": {"max_attempts": 3, "initial": 1, "max": 1, "jitter": False}},
        settings=settings,
    )


async def _run_with_retries(fl: Flow, tmp_path: Path) -> Any:
    """Run ``fl`` until idle while the clock moves on half a second every 10 ms (retries come due)."""
    clock = ManualClock()
    eng = Engine([fl], open_store(str(tmp_path / "s.db")), clock=clock, retry_poll=0.01)
    return await run_until_idle_advancing(eng, clock, step=0.5, horizon=5.0, ticks=300)


async def _wait(pred: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_later_batches_are_handed_over_before_earlier_ones_are_confirmed(tmp_path: Path) -> None:
    log = LOGS["a"] = _Log()
    for i in range(40):
        channel("in").put({"n": i}, id=f"m{i}")
    eng = Engine([_flow("a", batch_size=10, concurrency=4)], open_store(str(tmp_path / "s.db")),
                 clock=ManualClock(), retry_poll=0.01)
    task = asyncio.create_task(eng.run(until_idle=True, install_signals=False))
    try:
        await _wait(lambda: len(log.submitted) == 4, "four batches handed over")
        # all four are with the sink, in batch order, and none is confirmed: nothing is acknowledged
        assert [mid for b in log.submitted for mid in b] == [f"m{i}" for i in range(40)]
        assert log.confirmed == [] and channel("in").acked == []
        # the third batch is confirmed first: only its messages are acknowledged
        log.gates[2].set()
        await _wait(lambda: len(channel("in").acked) == 10, "the third batch's acknowledgements")
        assert channel("in").acked == [f"m{i}" for i in range(20, 30)]
        for g in log.gates:
            g.set()
        res = await asyncio.wait_for(task, 10)
    finally:
        for g in log.gates:
            g.set()
    assert sorted(channel("in").acked) == sorted(f"m{i}" for i in range(40))
    assert res.stats["p"].delivered == 40 and res.stats["p"].dead == 0


async def test_failures_reported_by_the_confirmation_are_retried_or_dead_lettered(tmp_path: Path) -> None:
    log = LOGS["b"] = _Log()
    log.hold = False
    log.fail = {"m3": FatalError("record refused", code="test.refused"),
                "m5": RetryableError("broker busy", code="test.busy")}
    for i in range(8):
        channel("in").put({"n": i}, id=f"m{i}")
    res = await _run_with_retries(_flow("b", batch_size=4), tmp_path)
    confirmed = [mid for b in log.confirmed for mid in b]
    assert sorted(confirmed) == sorted(f"m{i}" for i in range(8) if i != 3)
    assert confirmed.count("m5") == 1 and confirmed[-1] == "m5"  # on its retry
    assert res.stats["p"].dead == 1 and res.stats["p"].retried == 1
    store = open_store(str(tmp_path / "s.db"))
    await store.open()
    try:
        (d,) = await store.list_dead(DlqFilter())
    finally:
        await store.close()
    assert (d.msg_id, d.step, d.error_code) == ("m3", "out", "test.refused")
    assert sorted(channel("in").acked) == sorted(f"m{i}" for i in range(8))


async def test_the_sink_timeout_bounds_the_wait_for_a_confirmation(tmp_path: Path) -> None:
    log = LOGS["c"] = _Log()
    log.hold = False
    log.hang_once = {"m0"}
    for i in range(4):
        channel("in").put({"n": i}, id=f"m{i}")
    res = await _run_with_retries(_flow("c", timeout=0.2, batch_size=4), tmp_path)
    # the first confirmation never came: the batch timed out (retryable) and went through on its retry
    assert log.submitted[0] == [f"m{i}" for i in range(4)]
    assert sorted(mid for b in log.submitted[1:] for mid in b) == [f"m{i}" for i in range(4)]
    assert sorted(mid for b in log.confirmed for mid in b) == [f"m{i}" for i in range(4)]
    assert res.stats["p"].retried == 4 and res.stats["p"].dead == 0
