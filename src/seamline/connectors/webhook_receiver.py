"""Receiver processes of the ``webhook`` source (``receivers: N``).

The engine's process binds the listening socket and starts N children of
``python -m seamline.connectors.webhook_receiver``. Each inherits the socket
(the kernel spreads connections over them), checks and stores deliveries in
the inbox exactly as the in-process server does, and answers. Stored rows are
left unleased; a child tells the engine how many it stored by writing that
many bytes into a shared pipe, and the engine's source takes them from the
inbox. Receiving and processing so run on separate cores.

Life cycle:

- The route settings (secrets included) reach a child on its stdin, as one
  JSON line, never on its command line or in its environment. The child
  answers ``ready`` on its stdout once it serves.
- The engine keeps the child's stdin open. End of file there, SIGTERM or
  SIGINT make a child stop: no new connections, requests in progress are
  answered, then it exits. So a child never outlives the engine, also not a
  SIGKILLed one.
- A child that dies on its own is started again (backoff 0.5 s doubling to
  30 s); what it had stored stays in the inbox, and a request it had not
  answered is retried by the sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from seamline.core.errors import FatalError

__all__ = ["ReceiverPool", "main"]

log = logging.getLogger("seamline.connectors.webhook")

_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0


def _revealed(value: Any) -> Any:
    """A config as plain data with secrets as their values (the serializer would mask them); the
    child validates it again."""
    from pydantic import BaseModel

    from seamline.security.secrets import Secret

    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, BaseModel):
        return {name: _revealed(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {k: _revealed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_revealed(v) for v in value]
    return value


class ReceiverPool:
    """The engine-side half: starts, watches and stops the receiver processes of one source."""

    def __init__(self, src: Any, sock: socket.socket) -> None:
        self.src = src
        self.sock = sock
        path = getattr(src.ctx.store, "path", None)
        if not isinstance(path, str) or path == ":memory:":
            raise FatalError("webhook: receivers need a file store (--state pointing at a file, not :memory:)",
                             code="config.webhook.receivers")
        self.state = path
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * src.cfg.receivers
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._payload = self._make_payload()

    def _make_payload(self) -> bytes:
        src = self.src
        config = _revealed(src.cfg)
        config.pop("receivers")
        return orjson.dumps({
            "config": config, "flow": src.ctx.flow, "base_dir": str(src.ctx.base_dir), "state": self.state,
            "batch_size": src.ctx.batch_size, "socket_fd": self.sock.fileno(), "wake_fd": self._wake_w,
        }, default=str) + b"\n"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._wake_r, self._on_wake)
        try:
            for i in range(len(self.procs)):
                self.procs[i] = await self._spawn(i)
        except BaseException:
            await self.stop()
            raise
        self._watch = asyncio.create_task(self._supervise(), name=f"{self.src.ctx.flow}:webhook-receivers")

    async def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "seamline.connectors.webhook_receiver"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(self.sock.fileno(), self._wake_w),
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(self._payload)
        proc.stdin.flush()
        stdout = proc.stdout
        try:
            line = await asyncio.wait_for(asyncio.to_thread(stdout.readline), _READY_TIMEOUT)
        except TimeoutError:
            line = b""
        except asyncio.CancelledError:  # stopped while this one was starting: it must not stay behind
            await asyncio.shield(asyncio.to_thread(self._end, proc, 5.0))
            raise
        if line.strip() != b"ready":
            await asyncio.to_thread(self._end, proc, 5.0)
            raise FatalError(f"webhook: receiver process {i + 1} did not start (exit code {proc.returncode}); "
                             "its error is in the log above", code="webhook.receiver")
        log.debug("flow %s: webhook receiver %d is pid %d", self.src.ctx.flow, i + 1, proc.pid)
        return proc

    def _on_wake(self) -> None:
        n = 0
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while chunk := os.read(self._wake_r, 65536):
                n += len(chunk)
        if n:
            self.src.announced += n
            self.src.wake()

    async def _supervise(self) -> None:
        delay = 0.5
        while not self._stopping:
            await asyncio.sleep(0.2)
            for i, proc in enumerate(self.procs):
                if self._stopping or proc is None or proc.poll() is None:
                    continue
                log.error("flow %s: webhook receiver %d (pid %d) exited with %s; starting it again",
                          self.src.ctx.flow, i + 1, proc.pid, proc.returncode)
                self._close_pipes(proc)
                self.procs[i] = None
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                try:
                    self.procs[i] = await self._spawn(i)
                    delay = 0.5
                except FatalError as exc:
                    log.error("flow %s: %s", self.src.ctx.flow, exc)
                    delay = min(delay * 2, 30.0)

    @staticmethod
    def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    @classmethod
    def _end(cls, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """End of file on stdin asks the child to stop; it is killed if it does not within ``timeout``."""
        cls._close_pipes(proc)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        procs = [p for p in self.procs if p is not None]
        self.procs = [None] * len(self.procs)
        await asyncio.gather(*(asyncio.to_thread(self._end, p, _STOP_TIMEOUT) for p in procs))
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._wake_r)
        self._on_wake()  # what the last requests stored
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


# -- the child ------------------------------------------------------------------------------------


async def _serve(payload: dict[str, Any]) -> None:
    from seamline.connectors.webhook import WebhookSource, WebhookSourceConfig
    from seamline.core.component import BuildContext
    from seamline.store.sqlite import SqliteStore

    cfg = WebhookSourceConfig.model_validate(payload["config"])
    store = SqliteStore(payload["state"])
    await store.open()
    ctx = BuildContext(flow=payload["flow"], base_dir=Path(payload["base_dir"]), store=store,
                       batch_size=int(payload["batch_size"]))
    src = WebhookSource(cfg, ctx)
    wake_fd = int(payload["wake_fd"])
    os.set_blocking(wake_fd, False)

    def stored(n: int) -> None:
        # a full pipe means the engine has much to take already; it also polls the inbox
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(wake_fd, b"\x01" * min(n, 4096))

    src.on_stored = stored
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    os.set_blocking(0, False)

    def on_stdin() -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the engine closed our stdin or is gone
            loop.remove_reader(0)
            stop.set()

    loop.add_reader(0, on_stdin)
    sock = socket.socket(fileno=int(payload["socket_fd"]))
    try:
        await src.serve(sock)
        sys.stdout.buffer.write(b"ready\n")
        sys.stdout.buffer.flush()
        await stop.wait()
    finally:
        await src.close()
        await store.close()


def main() -> int:
    from seamline.cli.logs import setup_logging

    setup_logging()  # the engine's level (SEAMLINE_LOG_LEVEL), on the inherited stderr
    # SIGINT from a terminal reaches the whole process group: stop like on SIGTERM, no traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    line = sys.stdin.buffer.readline()
    try:
        payload = orjson.loads(line)
    except orjson.JSONDecodeError:
        print("webhook receiver: expected its settings as one JSON line on stdin", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(payload))
    except ValidationError as exc:  # never the inputs: they hold the secrets
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
        log.error("webhook receiver of flow %s: invalid settings: %s", payload.get("flow"), where)
        return 2
    except Exception as exc:  # reported; the engine sees the exit code and starts it again
        log.error("webhook receiver of flow %s failed: %s", payload.get("flow"), exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
