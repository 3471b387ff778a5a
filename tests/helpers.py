"""Small helpers shared by tests: run the CLI, write flows, read outputs, serve a local HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
SEAMLINE = [sys.executable, "-m", "seamline.cli"]


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, input_: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``seamline ARGS`` in a subprocess and return the finished process."""
    e = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*SEAMLINE, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout, input=input_
    )


def read_ndjson(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def write_ndjson(path: Path, rows: list[Any]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Serve an aiohttp app on a free loopback port for the block; yields the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def run_until_idle_advancing(engine: Any, clock: Any, *, step: float, horizon: float, ticks: int) -> Any:
    """Run ``engine`` until idle while ``clock`` moves on ``step`` seconds every 10 ms (retries and
    timers come due), at most ``ticks`` times; the engine's result."""
    task = asyncio.create_task(engine.run(until_idle=True, idle_horizon=horizon, install_signals=False))
    for _ in range(ticks):
        await asyncio.sleep(0.01)
        clock.advance(step)
        if task.done():
            break
    return await asyncio.wait_for(task, 5)


async def dead_letters(state: Path) -> list[Any]:
    """Every dead letter in the SQLite state store at ``state``."""
    from seamline.store import DlqFilter, open_store

    store = open_store(str(state))
    await store.open()
    try:
        return await store.list_dead(DlqFilter())
    finally:
        await store.close()


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[bytes]) -> Any:
    """``proc``, killed and waited for on the way out if it is still running (a failed test leaves none)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
