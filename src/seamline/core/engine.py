"""The engine: runs a set of flows against one store until stopped or idle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from seamline.core.clock import SYSTEM_CLOCK, Clock
from seamline.core.flow import Flow
from seamline.core.runtime import FlowRunner, FlowStats
from seamline.store.base import Batch, Store

__all__ = ["Engine", "EngineResult"]

log = logging.getLogger("seamline.engine")


@dataclass
class EngineResult:
    stats: dict[str, FlowStats] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


class Engine:
    """Open the flows, run them, stop them gracefully."""

    def __init__(
        self,
        flows: Sequence[Flow],
        store: Store,
        *,
        clock: Clock = SYSTEM_CLOCK,
        retry_poll: float = 1.0,
    ) -> None:
        self.flows = list(flows)
        self.store = store
        self.clock = clock
        self.retry_poll = retry_poll
        self.runners: list[FlowRunner] = []
        from seamline.resilience.breaker import BreakerRegistry
        from seamline.resilience.ratelimit import RateLimiterRegistry

        self.breakers = BreakerRegistry(clock=clock, listeners=[self._breaker_changed])
        self.limiters = RateLimiterRegistry(clock=clock)
        self._background: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._interrupted = False

    def request_stop(self) -> None:
        """Ask the engine to stop (what SIGTERM and SIGINT do)."""
        self._interrupted = True
        self._stop.set()

    def _breaker_changed(self, t: Any) -> None:
        """Journal every breaker transition and keep its state for ``seamline status``."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._record_breaker(t))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _record_breaker(self, t: Any) -> None:
        name = f"breaker:{t.breaker}"
        row = (t.at, "-", name, name, str(t.breaker), f"breaker-{t.to_state}", 0, None,
               f"{t.from_state} -> {t.to_state}: {t.reason}")
        try:
            await self.store.commit(Batch(journal=[row]))
            await self.store.put_checkpoint(name, self.breakers.get(t.breaker).snapshot())
        except Exception:  # observability must never break delivery
            log.exception("recording breaker state failed")

    async def _all_idle(self, horizon: float) -> None:
        await asyncio.gather(*(r.wait_idle(horizon) for r in self.runners))

    async def run(
        self,
        *,
        until_idle: bool = False,
        idle_horizon: float = 30.0,
        install_signals: bool = True,
        drain_timeout: float | None = None,
    ) -> EngineResult:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.request_stop)
                    installed.append(sig)
        # workers are forked before the store starts its threads (see lanes.prefork)
        forked = {fl.name: _prefork(fl.settings.workers) for fl in self.flows if fl.settings.workers}
        await self.store.open()
        result = EngineResult()
        gc_before = _tune_gc()
        try:
            for fl in self.flows:
                runner = FlowRunner(
                    fl,
                    self.store,
                    clock=self.clock,
                    retry_poll=self.retry_poll,
                    breakers=self.breakers,
                    limiters=self.limiters,
                    forked=forked.pop(fl.name, None),
                )
                self.runners.append(runner)
                await runner.open()
            for r in self.runners:
                r.start()
            waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stop.wait())]
            if until_idle:
                for r in self.runners:
                    if r.source is not None and not r.source.finite:
                        log.warning("flow %s: its source (%s) does not end by itself (a broker, or a source "
                                    "set to keep looking); the run ends when it is stopped", r.flow.name,
                                    r.flow.source.name)
                waiters.append(asyncio.ensure_future(self._all_idle(idle_horizon)))
            _done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            for r in self.runners:
                await r.stop(drain_timeout)
        finally:
            # a run that was cancelled (not drained) still has tasks using the store: end them first
            for r in self.runners:
                await r.abort()
            if self._background:
                await asyncio.gather(*self._background, return_exceptions=True)
            for unused in forked.values():  # flows that never got to open
                for f in unused:
                    f.discard()
            for r in self.runners:
                await r.close()
                result.stats[r.flow.name] = r.stats
                if r.source_error is not None:
                    result.errors[r.flow.name] = str(r.source_error)
            await self.store.close()
            for sig in installed:
                loop.remove_signal_handler(sig)
            gc.set_threshold(*gc_before)
        result.interrupted = self._interrupted
        return result


def _prefork(count: int) -> list[Any]:
    from seamline.core.lanes import prefork

    return prefork(count)


def _tune_gc() -> tuple[int, int, int]:
    """Fewer cyclic-GC passes while messages stream through.

    Messages are acyclic and freed by reference counting; with the default
    thresholds the collector walks every live batch many times a second.
    Everything loaded before the flows start is frozen out of its view.
    """
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    return before
