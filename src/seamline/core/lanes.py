"""Worker processes for a flow's pure steps (the flow setting ``workers``; ADR 0015).

The engine keeps the source, the sinks, the store and the delivery contract. A worker only
turns a raw batch into its output lines and journal entries (see ``lane_worker``); when it
cannot (a record needs the engine's own path) or dies, the engine runs the batch itself, so a
worker's trouble costs time, never a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import struct
import sys
from typing import Any

import msgspec
import orjson

__all__ = ["LanePool"]

log = logging.getLogger("seamline.lanes")

_HEADER = struct.Struct(">I")
_START_TIMEOUT = 60.0
_STREAM_LIMIT = 1 << 22
_MAX_FAILED_STARTS = 5


def _widen_pipes(proc: asyncio.subprocess.Process) -> None:
    """Ask for 1 MiB pipe buffers (Linux): a batch then crosses in a few writes, not dozens."""
    setsz = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsz is None:
        return
    for stream in (proc.stdin, proc.stdout):
        transport = getattr(stream, "transport", None) or getattr(stream, "_transport", None)
        pipe = transport.get_extra_info("pipe") if transport is not None else None
        if pipe is None:
            continue
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), setsz, 1 << 20)


class _Worker:
    __slots__ = ("proc",)

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc


class LanePool:
    """``count`` worker processes, each answering one batch at a time."""

    def __init__(self, count: int, plan: dict[str, Any], *, flow: str) -> None:
        self.count = count
        self.flow = flow
        self._payload = orjson.dumps(plan) + b"\n"
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._starting = 0
        self._stopping = False
        self._draining = False
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder()
        self.restarts = 0
        self._failed_starts = 0  # in a row: a worker that cannot start at all is not tried forever

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers in the background (the first batches wait for one to be ready: running
        them in the engine meanwhile would only take the processor from the starting workers)."""
        for _ in range(self.count):
            self._spawn_later(0.0)

    def _spawn_later(self, delay: float) -> None:
        self._starting += 1
        task = asyncio.get_running_loop().create_task(self._spawn(delay), name=f"{self.flow}:worker-start")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, delay: float) -> None:
        w: _Worker | None = None
        try:
            if delay:
                await asyncio.sleep(delay)
            if self._stopping:
                return
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "seamline.core.lane_worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=_STREAM_LIMIT,
            )
            w = _Worker(proc)
            assert proc.stdin is not None and proc.stdout is not None
            _widen_pipes(proc)
            proc.stdin.write(self._payload)
            await proc.stdin.drain()
            hello = await asyncio.wait_for(self._read(proc.stdout), _START_TIMEOUT)
            if hello != b"ready":
                raise ConnectionError(f"worker answered {hello[:40]!r}")
        except asyncio.CancelledError:
            if w is not None:
                self._end(w)
            raise
        except Exception as exc:
            if w is not None:
                self._end(w)
            w = None
            self._failed_starts += 1
            if self._failed_starts < _MAX_FAILED_STARTS and not (self._stopping or self._draining):
                log.warning("flow %s: a worker process could not start (%s: %s); starting another",
                            self.flow, type(exc).__name__, exc)
                self._spawn_later(min(5.0, 0.2 * self._failed_starts))
            else:
                log.error("flow %s: a worker process could not start (%s: %s); its batches run in the engine",
                          self.flow, type(exc).__name__, exc)
        finally:
            self._starting -= 1
        async with self._changed:
            if w is not None:
                if self._stopping:
                    self._end(w)
                else:
                    self._failed_starts = 0
                    self._all.add(w)
                    self._idle.append(w)
            self._changed.notify_all()

    def drain(self) -> None:
        """The flow is stopping: workers finish what they have and are not replaced if they die."""
        self._draining = True

    async def stop(self) -> None:
        """End every worker: end of file on its stdin, then SIGKILL after a grace period."""
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        workers, self._all, self._idle = list(self._all), set(), []
        for w in workers:
            if w.proc.stdin is not None:
                w.proc.stdin.close()
        for w in workers:
            try:
                await asyncio.wait_for(w.proc.wait(), 5.0)
            except (TimeoutError, ProcessLookupError):
                self._end(w)
                with contextlib.suppress(Exception):
                    await w.proc.wait()

    @staticmethod
    def _end(w: _Worker) -> None:
        # os.kill, not proc.kill: the latter polls first and may reap the child under asyncio's watcher
        if w.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.proc.pid, signal.SIGKILL)

    # -- work ---------------------------------------------------------------------------------------
    async def run(self, request: list[Any]) -> list[Any] | None:
        """A worker's answer to ``request``, or None when no worker can take it (every one is gone and
        none is starting): the caller then runs the batch itself."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._idle) or (not self._all and not self._starting))
            if not self._idle:
                return None
            w = self._idle.pop()
        proc = w.proc
        assert proc.stdin is not None and proc.stdout is not None
        payload = self._enc.encode(request)
        try:
            proc.stdin.write(_HEADER.pack(len(payload)))
            proc.stdin.write(payload)
            await proc.stdin.drain()
            answer = await self._read(proc.stdout)
        except asyncio.CancelledError:
            # the worker may be half-way through the frame: it cannot be trusted with another one
            await self._lost(w, "cancelled mid-batch", kill=True)
            raise
        except asyncio.IncompleteReadError:  # end of file: the worker is gone already
            await self._lost(w, "it closed its output", kill=False)
            return None
        except (ConnectionError, OSError) as exc:
            await self._lost(w, f"{type(exc).__name__}: {exc}", kill=True)
            return None
        async with self._changed:
            if w in self._all:  # not ended by stop() meanwhile
                self._idle.append(w)
            self._changed.notify_all()
        result: list[Any] = self._dec.decode(answer)
        return result

    async def _lost(self, w: _Worker, why: str, *, kill: bool) -> None:
        if kill:
            self._end(w)
        with contextlib.suppress(TimeoutError, Exception):
            await asyncio.wait_for(w.proc.wait(), 5.0)  # reaped by asyncio's watcher, not by a second wait
        async with self._changed:
            self._all.discard(w)
            if not (self._stopping or self._draining):
                rc = w.proc.returncode
                log.warning("flow %s: a worker process stopped (%s%s); starting another", self.flow, why,
                            f", exit code {rc}" if rc is not None else "")
                self.restarts += 1
                self._spawn_later(min(5.0, 0.1 * self.restarts))
            self._changed.notify_all()

    @staticmethod
    async def _read(stream: asyncio.StreamReader) -> bytes:
        head = await stream.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(head)
        return await stream.readexactly(size)
