"""Helpers for the http connector tests: run an engine on a manual clock, build components directly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seamline.core.clock import Clock, ManualClock
from seamline.core.component import BuildContext
from seamline.core.engine import Engine, EngineResult
from seamline.core.flow import Flow
from seamline.core.registry import get_spec
from seamline.store.sqlite import SqliteStore


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout:g}s")
        await asyncio.sleep(0.01)


class Running:
    """An engine running in the background of a test."""

    def __init__(self, flows: list[Flow], path: Path, clock: Clock) -> None:
        self.store = SqliteStore(path)
        self.engine = Engine(flows, self.store, clock=clock, retry_poll=1.0)
        self.task: asyncio.Task[EngineResult] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.engine.run(install_signals=False))
        await asyncio.sleep(0)
        return self

    @property
    def delivered(self) -> int:
        """Messages delivered so far by the first flow (0 while the engine is starting)."""
        runners = self.engine.runners
        return runners[0].stats.delivered if runners else 0

    async def stop(self) -> EngineResult:
        assert self.task is not None
        self.engine.request_stop()
        return await asyncio.wait_for(self.task, 30)

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None and not self.task.done():
            await self.stop()


def build(role: str, name: str, cfg: dict[str, Any], tmp_path: Path, clock: Clock | None = None,
          store: Any = None) -> Any:
    """A component built from its config, outside any engine (no breaker/limiter registries)."""
    spec = get_spec(role, name)  # type: ignore[arg-type]
    assert spec is not None
    config = spec.config.model_validate(cfg)
    ctx = BuildContext(flow="t", base_dir=tmp_path, store=store, clock=clock or ManualClock(time.time()),
                       label=name)
    comp = spec.factory(config, ctx)
    comp.label = name
    return comp
