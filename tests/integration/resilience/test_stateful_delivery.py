"""A Hypothesis state machine: publish, crash, target 5xx, restart, heal — and nothing is ever lost.

Every published message must end delivered or (only if it is poison) in the
dead-letter queue, never both. Crashes cancel the engine wherever it is; the
memory channel behaves like a broker and redelivers what was not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from seamline import Flow, sink, source, step
from seamline.core.clock import ManualClock
from seamline.core.engine import Engine
from seamline.core.errors import FatalError, RetryableError
from seamline.store import DlqFilter, open_store
from seamline.testing.memory import channel, reset_channels


def _poison_check(body: Any) -> Any:
    if body.get("poison"):
        raise FatalError("poison message", code="test.poison")
    return body


def _flow() -> Flow:
    return Flow(
        "stateful",
        source=source("memory", channel="in"),
        steps=[step("python", function=_poison_check, label="check")],
        sinks=[sink("memory", channel="out", label="target")],
        on_error={"retry": {"max_attempts": 1000, "initial": 1, "max": 5, "jitter": True}},
        settings={"batch_size": 3, "concurrency": 2, "queue": 2},
    )


class DeliveryMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        reset_channels()
        self.dir = Path(tempfile.mkdtemp(prefix="seamline-stateful-"))
        self.state = self.dir / "state.db"
        self.clock = ManualClock()
        self.published: set[str] = set()
        self.poison: set[str] = set()
        self.n = 0
        self.target_down = False

    def teardown(self) -> None:
        try:
            if getattr(self, "published", None):
                self.heal_and_check_nothing_lost()
        finally:
            reset_channels()
            shutil.rmtree(getattr(self, "dir", ""), ignore_errors=True)

    async def _run(self, *, iterations: int, crash: bool) -> None:
        eng = Engine([_flow()], open_store(str(self.state)), clock=self.clock, retry_poll=0.01)
        task = asyncio.create_task(eng.run(until_idle=not crash, idle_horizon=10, install_signals=False))
        for _ in range(iterations):
            await asyncio.sleep(0.005)
            self.clock.advance(2.0)
            if task.done():
                break
        if not task.done():
            if crash:
                task.cancel()
            else:
                eng.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)

    @rule(count=st.integers(1, 8), poison=st.booleans())
    def publish(self, count: int, poison: bool) -> None:
        for i in range(count):
            self.n += 1
            mid = f"m{self.n}"
            bad = poison and i == 0
            channel("in").put({"n": self.n, "poison": bad}, id=mid)
            self.published.add(mid)
            if bad:
                self.poison.add(mid)

    @rule()
    def target_fails(self) -> None:
        self.target_down = True
        channel("out").fail_next(RetryableError("503", code="http.status.503"), times=10**6)

    @rule()
    def target_recovers(self) -> None:
        self.target_down = False
        channel("out")._failures.clear()

    @rule(iterations=st.integers(0, 6))
    def run_then_crash(self, iterations: int) -> None:
        asyncio.run(self._run(iterations=iterations, crash=True))

    @rule()
    def run_until_idle(self) -> None:
        asyncio.run(self._run(iterations=30, crash=False))

    @invariant()
    def never_delivered_and_dead(self) -> None:
        if not hasattr(self, "state") or not self.state.exists():
            return
        dead = self._dead()
        delivered = {m.id for m in channel("out").written}
        assert not (dead & delivered)
        assert dead <= self.poison

    def _dead(self) -> set[str]:
        async def q() -> set[str]:
            s = open_store(str(self.state))
            await s.open()
            try:
                return {d.msg_id for d in await s.list_dead(DlqFilter())}
            finally:
                await s.close()

        return asyncio.run(q())

    @precondition(lambda self: bool(getattr(self, "published", None)))
    @rule()
    def heal_and_check_nothing_lost(self) -> None:
        self.target_recovers()
        for _ in range(6):
            asyncio.run(self._run(iterations=40, crash=False))
            delivered = {m.id for m in channel("out").written}
            if self.published <= delivered | self._dead():
                break
        delivered = {m.id for m in channel("out").written}
        dead = self._dead()
        lost = self.published - delivered - dead
        assert not lost, f"lost: {sorted(lost)}"
        assert dead == self.poison & (delivered | dead)
        assert self.poison <= dead


TestDeliveryMachine = DeliveryMachine.TestCase
TestDeliveryMachine.settings = settings(
    max_examples=25, stateful_step_count=10, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
