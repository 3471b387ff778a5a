"""Run a flow's ``tests:`` offline (``seamline test``).

Each test runs the flow's own steps, in the flow's own runtime, with the source replaced by the
test's inputs and every sink by an in-memory one of the same label; steps named in ``mocks`` are
replaced by what the mock says (a body, or an error). The store is a fresh SQLite file and the
clock a manual one that runs ahead whenever the flow waits, so retries with backoff, delays and
resequencing timeouts take no wall time. Nothing else is replaced: a step that calls an endpoint
and is not mocked calls it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from seamline.config.models import ExpectDead, FlowTest, StepMock
from seamline.core.clock import ManualClock
from seamline.core.engine import Engine
from seamline.core.errors import FatalError, RetryableError
from seamline.core.flow import ComponentRef, Flow, sink, source, step
from seamline.core.message import Message
from seamline.store import DlqFilter, open_store
from seamline.store.base import DeadLetter
from seamline.testing.memory import channel

__all__ = ["FlowTestResult", "run_flow_tests", "run_test"]

#: how far the manual clock moves each time the flow is looked at (every ``_LOOK_EVERY`` s): far when
#: nothing is in work (only retries and timers are left), a little while something is (a breaker's
#: cool-down, a delay step's hold), so that no step in work sees much time pass
_STEP_IDLE = 30.0
_STEP_BUSY = 1.0
_LOOK_EVERY = 0.002
#: wall time one test may take before it counts as hung
_WALL_LIMIT = 60.0


@dataclass
class FlowTestResult:
    """What one test found: ``problems`` is empty when it passed."""

    flow: str
    name: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems


def _mock(label: str, mock: StepMock) -> ComponentRef:
    def mocked(_body: Any) -> Any:
        if mock.raises is not None:
            kind = RetryableError if mock.retryable else FatalError
            raise kind(mock.raises, code=mock.code)
        return mock.returns

    return step("python", label=label, function=mocked)


def _with_lookups(ref: ComponentRef, rows: dict[str, dict[str, Any]]) -> ComponentRef:
    """A map step whose lookup tables named in ``rows`` are those rows (inline), misses handled as before."""
    tables = getattr(ref.config, "lookups", None)
    if ref.name != "map" or not tables or not set(tables) & set(rows):
        return ref
    changed = {name: (cfg.model_copy(update={"inline": rows[name], "csv": None, "sql": None, "http": None})
                      if name in rows else cfg) for name, cfg in tables.items()}
    return dataclasses.replace(ref, config=ref.config.model_copy(update={"lookups": changed}))


def _test_flow(flow: Flow, test: FlowTest, tag: str) -> Flow:
    steps = [_mock(ref.label, test.mocks[ref.label]) if ref.label in test.mocks
             else _with_lookups(ref, test.lookups) for ref in flow.steps]
    sinks = [sink("memory", label=s.label, channel=f"{tag}:{s.label}") for s in flow.sinks]
    return Flow(
        flow.name,
        source=source("memory", channel=f"{tag}:in"),
        steps=steps,
        sinks=sinks,
        # dead letters stay in the test's own store; the flow's steps run in this process
        on_error=flow.on_error.model_copy(update={"dlq": "store"}),
        settings=flow.settings.model_copy(update={"workers": 0}),
        description=flow.description,
        file=flow.file,
        base_dir=flow.base_dir,
    )


async def run_test(flow: Flow, test: FlowTest) -> FlowTestResult:
    """Run one test of ``flow``."""
    started = time.monotonic()
    result = FlowTestResult(flow.name, test.name)
    tag = f"test-{uuid.uuid4().hex}"
    try:
        fl = _test_flow(flow, test, tag)
    except Exception as exc:  # a mock or the flow cannot be built: the test fails, with why
        result.problems.append(f"cannot set up the test: {exc}")
        return result
    inbox = channel(f"{tag}:in")
    for i, body in enumerate(test.bodies(), 1):
        inbox.put(Message(body, id=f"input-{i}", headers=dict(test.headers)))
    with tempfile.TemporaryDirectory(prefix="seamline-test-") as tmp:
        store = open_store(str(Path(tmp) / "state.db"))
        clock = ManualClock(start=time.time())
        engine = Engine([fl], store, clock=clock, retry_poll=0.01)
        run = asyncio.create_task(engine.run(until_idle=True, idle_horizon=float("inf"), install_signals=False))
        deadline = time.monotonic() + _WALL_LIMIT
        while not run.done():
            if time.monotonic() > deadline:
                engine.request_stop()
                result.problems.append(f"did not finish within {_WALL_LIMIT:.0f} s")
                break
            await asyncio.sleep(_LOOK_EVERY)
            if any(r.busy() for r in engine.runners):
                clock.advance(_STEP_BUSY)
            else:  # only retries and timers are left: straight to the next one
                due = await _next_due(engine, store)
                clock.advance(_STEP_IDLE if due is None else max(_STEP_IDLE, due - clock.now()))
        outcome = await run
        for name, error in outcome.errors.items():
            result.problems.append(f"the flow stopped: {name}: {error}")
        await store.open()
        try:
            dead = await store.list_dead(DlqFilter(flow=flow.name))
        finally:
            await store.close()
    written = {s.label: [m.body for m in channel(f"{tag}:{s.label}").written] for s in fl.sinks}
    result.problems += _compare_outputs(test, written)
    result.problems += _compare_dead(test.expect.dead, dead)
    result.seconds = time.monotonic() - started
    return result


async def _next_due(engine: Engine, store: Any) -> float | None:
    """When the next retry or step timer (a held message, a resequencing gap) of the engine's flows is due."""
    try:
        due = await store.next_retry_at([r.flow.name for r in engine.runners])
    except Exception:  # the store is not open yet, or closing: look again later
        return None
    for runner in engine.runners:
        for st in runner.steps:
            at = st.next_due()
            if at is not None and (due is None or at < due):
                due = at
    return float(due) if due is not None else None


async def run_flow_tests(flows: list[Flow], *, only: Callable[[Flow, FlowTest], bool] | None = None,
                         ) -> list[FlowTestResult]:
    """Every test of every flow, one after the other."""
    results = []
    for fl in flows:
        for test in fl.tests:
            if only is None or only(fl, test):
                results.append(await run_test(fl, test))
    return results


# -- comparing ------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A body as a test writes it: bytes (an encoded body) as text."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _show(value: Any) -> str:
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 300 else text[:297] + "..."


def _compare_outputs(test: FlowTest, written: dict[str, list[Any]]) -> list[str]:
    expect = test.expect
    if expect.sinks is not None:
        wanted = {label: expect.sinks.get(label, []) for label in written}
    else:
        wanted = {label: list(expect.output or []) for label in written}
    problems = []
    for label, bodies in written.items():
        got = [_plain(b) for b in bodies]
        want = wanted[label]
        if got == want:
            continue
        if len(got) != len(want):
            problems.append(f"sink '{label}': expected {len(want)} message(s), got {len(got)}: {_show(got)}")
            continue
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            if g != w:
                problems.append(f"sink '{label}', message {i + 1}: expected {_show(w)}, got {_show(g)}"
                                + _where_differs(w, g))
                break
    return problems


def _where_differs(want: Any, got: Any, path: str = "") -> str:
    """`` (at customer.id)``: the first place two documents differ, when both are objects."""
    if isinstance(want, dict) and isinstance(got, dict):
        for key in [*want, *(k for k in got if k not in want)]:
            if key not in got:
                return f" (missing {path}{key})"
            if key not in want:
                return f" (unexpected {path}{key})"
            if want[key] != got[key]:
                return _where_differs(want[key], got[key], f"{path}{key}.") or f" (at {path}{key})"
    return ""


def _matches(exp: ExpectDead, d: DeadLetter) -> bool:
    return ((exp.step is None or exp.step == d.step) and (exp.code is None or exp.code == d.error_code)
            and (exp.reason is None or exp.reason in d.error_message)
            and (exp.attempts is None or exp.attempts == d.attempts))


def _compare_dead(expected: list[ExpectDead], dead: list[DeadLetter]) -> list[str]:
    left = list(dead)
    problems = []
    for exp in expected:
        hit = next((d for d in left if _matches(exp, d)), None)
        if hit is None:
            want = ", ".join(f"{k} {v!r}" for k, v in exp.model_dump(exclude_none=True).items()) or "any"
            problems.append(f"expected a dead letter ({want}), found none" + (
                "" if not left else f"; dead letters: {_dead_list(left)}"))
        else:
            left.remove(hit)
    if left:
        problems.append(f"unexpected dead letter(s): {_dead_list(left)}")
    return problems


def _dead_list(dead: list[DeadLetter]) -> str:
    return "; ".join(f"{d.msg_id} at '{d.step}' after {d.attempts} attempt(s): {d.error_code}: "
                     f"{d.error_message[:160]}" for d in dead)
