"""Run flows in-process against a temporary store; a sink that collects what it got."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from seamline.config.models import SinkConfig
from seamline.core.component import BuildContext, Sink
from seamline.core.engine import Engine
from seamline.core.errors import FatalError
from seamline.core.flow import ComponentRef, Flow
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.store import open_store
from seamline.store.base import DlqFilter

#: what each collect sink received, by key
COLLECTED: dict[str, list[Message]] = {}


class CollectConfig(SinkConfig):
    """Test sink: keep every message in memory under ``key``."""

    key: str = Field(..., description="Bucket in COLLECTED.")


class CollectSink(Sink):
    def __init__(self, cfg: CollectConfig) -> None:
        self.bucket = COLLECTED.setdefault(cfg.key, [])

    async def write(self, batch: Sequence[Message]) -> None:
        self.bucket.extend(batch)


@register("sink", "test-collect", config=CollectConfig, summary="Test sink that keeps messages in memory.")
def _collect(cfg: CollectConfig, ctx: BuildContext) -> CollectSink:
    return CollectSink(cfg)


def poison_check(body: Any) -> Any:
    """A python step for tests: bodies with ``poison: true`` fail fatally; others pass; non-JSON fails on read."""
    if isinstance(body, dict) and body.get("poison"):
        raise FatalError("poison message", code="test.poison")
    return body


def make_flow(name: str, src: ComponentRef, sinks: list[ComponentRef], *, steps: list[ComponentRef] | None = None,
              batch_size: int = 100, base_dir: Path | None = None, retry: dict[str, Any] | None = None) -> Flow:
    return Flow(
        name,
        source=src,
        sinks=sinks,
        steps=steps or [],
        settings={"batch_size": batch_size, "concurrency": 2, "queue": 2, "drain_timeout": 10},
        on_error={"retry": retry or {"max_attempts": 3, "initial": 0.05, "max": 0.2}},
        base_dir=base_dir or Path.cwd(),
    )


class Running:
    def __init__(self, engine: Engine, task: asyncio.Task[Any], store: Any) -> None:
        self.engine = engine
        self.task = task
        self.store = store

    def _stats(self) -> Any:
        return {r.flow.name: r.stats.as_dict() for r in self.engine.runners}

    async def wait_for(self, predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.task.done():
                self.task.result()
                pytest.fail(f"the engine stopped while waiting for {what}")
            r = predicate()
            if not isinstance(r, bool):
                r = await r
            if r:
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"timed out after {timeout}s waiting for {what}; stats: {self._stats()}")


@contextlib.asynccontextmanager
async def running(flow: Flow, state: Path, *, stop_timeout: float = 30) -> AsyncIterator[Running]:
    """Run ``flow`` until the block ends; then stop it gracefully (bounded)."""
    store = open_store(str(state))
    engine = Engine([flow], store, retry_poll=0.05)
    task = asyncio.create_task(engine.run(install_signals=False, drain_timeout=10))
    r = Running(engine, task, store)
    try:
        yield r
    finally:
        engine.request_stop()
        res = await asyncio.wait_for(task, stop_timeout)
        assert res.ok, res.errors


async def count_dead(run: Running, flow: str, n: int) -> bool:
    """True once at least ``n`` dead letters of ``flow`` are committed to the store."""
    return len(await run.store.list_dead(DlqFilter(flow=flow))) >= n


async def dead_ids(state: Path, flow: str) -> set[str]:
    store = open_store(str(state))
    await store.open()
    try:
        return {d.msg_id for d in await store.list_dead(DlqFilter(flow=flow))}
    finally:
        await store.close()


def dead_ids_sync(state: Path, flow: str) -> set[str]:
    return asyncio.run(dead_ids(state, flow))
