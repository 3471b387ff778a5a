"""Worker processes for a flow's pure steps (the flow setting ``workers``; ADR 0015).

The engine keeps the source, the sinks, the store and the delivery contract. A worker only
turns a raw batch into its output lines and journal entries (see ``lane_worker``); when it
cannot (a record needs the engine's own path) or dies, the engine runs the batch itself, so a
worker's trouble costs time, never a message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import signal
import sys
from typing import Any

import msgspec
import orjson

from seamline.core.lane_worker import FRAME_HEADER

__all__ = ["Forked", "LanePool", "prefork"]

log = logging.getLogger("seamline.lanes")

_START_TIMEOUT = 60.0
_STREAM_LIMIT = 1 << 22
_MAX_FAILED_STARTS = 5
#: requests a worker may have at once: the next one waits in its pipe while it answers the first,
#: so it does not sit idle while the engine's event loop gets round to its answer and to the next
#: request (measured with two workers: idle about a quarter of the time with one at a time)
DEPTH = 2


def _widen(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (Linux): a batch then crosses in a few writes, not dozens."""
    setsz = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsz is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setsz, 1 << 20)


class _Worker:
    """One worker process and the two ends of its pipes, however it was started."""

    __slots__ = ("_reaped", "lost", "pending", "pid", "proc", "reader", "writer")

    def __init__(self, pid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 proc: asyncio.subprocess.Process | None = None) -> None:
        self.pid = pid
        self.reader = reader
        self.writer = writer
        self.proc = proc  # None: forked by ``prefork`` (reaped here, not by asyncio)
        self._reaped: int | None = None
        # the answers this worker owes, in the order the requests were written
        self.pending: collections.deque[asyncio.Future[bytes | None]] = collections.deque()
        self.lost = False

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else self._reaped

    async def wait(self) -> None:
        if self.proc is not None:
            await self.proc.wait()
            return
        if self._reaped is not None:
            return
        try:
            _, status = await asyncio.get_running_loop().run_in_executor(None, os.waitpid, self.pid, 0)
            self._reaped = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped already (by a wait running beside this one)
            self._reaped = -1

    def kill(self) -> None:
        # os.kill, not proc.kill: the latter polls first and may reap the child under asyncio's watcher
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class Forked:
    """A worker forked before the engine had any other thread (see :func:`prefork`), not yet given
    its plan: its pid, and the engine's ends of its stdin and stdout."""

    __slots__ = ("pid", "stdin", "stdout")

    def __init__(self, pid: int, stdin: int, stdout: int) -> None:
        self.pid, self.stdin, self.stdout = pid, stdin, stdout

    def discard(self) -> None:
        """Not needed after all (the flow was refused): end it."""
        for fd in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


def _threads() -> int:
    """How many threads this process has, native ones included (0: unknown)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def prefork(count: int) -> list[Forked]:
    """Fork ``count`` workers now, while this process has a single thread: a forked worker has the
    engine's modules already imported and starts in milliseconds instead of a third of a second.

    Returns no workers when the process has other threads (a fork could inherit a lock one of
    them holds) or cannot fork; the pool then starts fresh interpreters instead.
    """
    if count <= 0 or not hasattr(os, "fork") or _threads() != 1:
        return []
    out: list[Forked] = []
    for _ in range(count):
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        _widen(w_in)
        _widen(r_out)
        try:
            pid = os.fork()
        except OSError:
            for fd in (r_in, w_in, r_out, w_out):
                os.close(fd)
            break
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            _forked_child(r_in, w_out)
        os.close(r_in)
        os.close(w_out)
        os.set_inheritable(w_in, False)
        os.set_inheritable(r_out, False)
        out.append(Forked(pid, w_in, r_out))
    return out


def _forked_child(stdin: int, stdout: int) -> None:  # pragma: no cover - runs in the child
    """The forked worker: never returns into the engine's code (it leaves with ``os._exit``)."""
    code = 70
    try:
        import gc

        gc.freeze()  # the engine's objects are never collected (or finalized) here
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        os.closerange(3, _max_fd())  # above all the other workers' pipes: so each sees the engine's EOF
        from seamline.core.lane_worker import serve

        with open(0, "rb", closefd=False) as i, open(1, "wb", closefd=False) as o:
            code = serve(i, o)
    except BaseException:  # reported, then the process ends whatever happened
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc()
    finally:
        os._exit(code)


def _release(w: _Worker) -> None:
    """``w`` will not answer: its callers run their batches in the engine."""
    while w.pending:
        answer = w.pending.popleft()
        if not answer.done():
            answer.set_result(None)


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 65536


class LanePool:
    """``count`` worker processes, each answering its batches in order, up to ``DEPTH`` at a time."""

    def __init__(self, count: int, plan: dict[str, Any], *, flow: str, forked: list[Forked] | None = None) -> None:
        self.count = count
        self._forked = list(forked or [])[:count]
        self.flow = flow
        self._payload = orjson.dumps(plan) + b"\n"
        self._all: set[_Worker] = set()
        self._starting = 0
        self._stopping = False
        self._draining = False
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        # killed workers nobody has waited for yet (one killed while starting): stop() reaps them
        self._ending: set[_Worker] = set()
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder()
        self.restarts = 0
        self._failed_starts = 0  # in a row: a worker that cannot start at all is not tried forever

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers in the background (the first batches wait for one to be ready: running
        them in the engine meanwhile would only take the processor from the starting workers)."""
        for f in self._forked:
            self._spawn_later(0.0, f)
        for _ in range(self.count - len(self._forked)):
            self._spawn_later(0.0)
        self._forked = []

    def _spawn_later(self, delay: float, forked: Forked | None = None) -> None:
        self._starting += 1
        task = asyncio.get_running_loop().create_task(self._spawn(delay, forked), name=f"{self.flow}:worker-start")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, delay: float, forked: Forked | None = None) -> None:
        w: _Worker | None = None
        try:
            if delay:
                await asyncio.sleep(delay)
            if self._stopping:
                if forked is not None:
                    forked.discard()
                return
            w = await (self._adopt(forked) if forked is not None else self._exec())
            w.writer.write(self._payload)
            await w.writer.drain()
            hello = await asyncio.wait_for(self._read(w.reader), _START_TIMEOUT)
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
                    task = asyncio.get_running_loop().create_task(self._answers(w), name=f"{self.flow}:worker-read")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            self._changed.notify_all()

    def drain(self) -> None:
        """The flow is stopping: workers finish what they have and are not replaced if they die."""
        self._draining = True

    async def _exec(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "seamline.core.lane_worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=_STREAM_LIMIT,
        )
        assert proc.stdin is not None and proc.stdout is not None
        for stream in (proc.stdin.transport, getattr(proc.stdout, "_transport", None)):
            pipe = stream.get_extra_info("pipe") if stream is not None else None
            if pipe is not None:
                _widen(pipe.fileno())
        return _Worker(proc.pid, proc.stdout, proc.stdin, proc)

    @staticmethod
    async def _adopt(f: Forked) -> _Worker:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_STREAM_LIMIT, loop=loop)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                     os.fdopen(f.stdout, "rb", 0))
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop),
            os.fdopen(f.stdin, "wb", 0),
        )
        return _Worker(f.pid, reader, asyncio.StreamWriter(transport, protocol, None, loop))

    async def stop(self) -> None:
        """End every worker: end of file on its stdin, then SIGKILL after a grace period."""
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        workers, self._all = list(self._all), set()
        for w in workers:
            _release(w)
            w.writer.close()
        for w in workers:
            try:
                await asyncio.wait_for(asyncio.shield(w.wait()), 5.0)
            except (TimeoutError, ProcessLookupError):
                w.kill()
                with contextlib.suppress(Exception):
                    await w.wait()
        ending, self._ending = list(self._ending), set()
        for w in ending:  # killed already: only their exit is left to collect
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(w.wait()), 5.0)

    def _end(self, w: _Worker) -> None:
        w.kill()
        if w.returncode is None:
            self._ending.add(w)

    # -- work ---------------------------------------------------------------------------------------
    def _free(self) -> _Worker | None:
        """The worker with the fewest requests in hand, if one can take another."""
        best = None
        for w in self._all:
            if not w.lost and len(w.pending) < DEPTH and (best is None or len(w.pending) < len(best.pending)):
                best = w
        return best

    async def run(self, request: list[Any]) -> list[Any] | None:
        """A worker's answer to ``request``, or None when no worker can take it (every one is gone and
        none is starting) or the worker died before answering: the caller then runs the batch itself."""
        # encoded first: a request that cannot be encoded must not hold a place in a worker's order
        payload = self._enc.encode(request)
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._free() is not None or (not self._all and not self._starting))
            w = self._free()
            if w is None:
                return None
            answer: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            w.pending.append(answer)
        try:
            # both writes reach the pipe's transport together: frames of two requests never interleave
            w.writer.write(FRAME_HEADER.pack(len(payload)))
            w.writer.write(payload)
            await w.writer.drain()
        except (ConnectionError, OSError) as exc:
            await self._lost(w, f"{type(exc).__name__}: {exc}", kill=True)
            return None
        # cancelled while waiting: the answer is read all the same and dropped (the frame was whole)
        data = await answer
        if data is None:
            return None
        result: list[Any] = self._dec.decode(data)
        return result

    async def _answers(self, w: _Worker) -> None:
        """Read ``w``'s answers and hand each to the request it belongs to, in order."""
        try:
            while True:
                data = await self._read(w.reader)
                if not w.pending:
                    raise ConnectionError("an answer nobody asked for")
                answer = w.pending.popleft()
                if not answer.done():
                    answer.set_result(data)
                async with self._changed:
                    self._changed.notify_all()
        except asyncio.CancelledError:
            _release(w)
            raise
        except asyncio.IncompleteReadError:  # end of file: the worker is gone (or was told to end)
            if w in self._all:
                await self._lost(w, "it closed its output", kill=False)
        except (ConnectionError, OSError, ValueError) as exc:
            await self._lost(w, f"{type(exc).__name__}: {exc}", kill=True)

    async def _lost(self, w: _Worker, why: str, *, kill: bool) -> None:
        if w.lost:
            return
        w.lost = True
        _release(w)  # its batches run in the engine
        if kill:
            self._end(w)
        with contextlib.suppress(TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(w.wait()), 5.0)
        if w.returncode is not None:
            self._ending.discard(w)
        async with self._changed:
            self._all.discard(w)
            if not (self._stopping or self._draining):
                rc = w.returncode
                log.warning("flow %s: a worker process stopped (%s%s); starting another", self.flow, why,
                            f", exit code {rc}" if rc is not None else "")
                self.restarts += 1
                self._spawn_later(min(5.0, 0.1 * self.restarts))
            self._changed.notify_all()

    @staticmethod
    async def _read(stream: asyncio.StreamReader) -> bytes:
        head = await stream.readexactly(FRAME_HEADER.size)
        (size,) = FRAME_HEADER.unpack(head)
        return await stream.readexactly(size)
