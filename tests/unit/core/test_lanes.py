"""The engine side of ``settings.workers``: a pool of real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from seamline.core.lanes import LanePool


def _plan(tmp_path: Path, module: str = "seamline.steps.map") -> dict[str, Any]:
    return {"flow": "f", "base_dir": str(tmp_path), "sinks": ["out"], "journal": "hops",
            "steps": [[module, "map", "m", {"expression": "{'n': n * 2}"}]]}


def _request(n: int) -> list[Any]:
    return [1.0, 1, "in.ndjson", None, None, 1 << 20, orjson.dumps({"n": n}) + b"\n"]


def _workers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if "seamline.core.lane_worker" in " ".join(p.cmdline())]


async def _stopped(pool: LanePool) -> None:
    await pool.stop()
    deadline = time.monotonic() + 10
    while _workers() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _workers() == [], "no worker outlives the pool"


def test_workers_answer_batches(tmp_path: Path) -> None:
    async def main() -> None:
        pool = LanePool(2, _plan(tmp_path), flow="f")
        pool.start()
        answers = await asyncio.gather(*(pool.run(_request(i)) for i in range(6)))
        await _stopped(pool)
        assert [a[0] if a else None for a in answers] == ["ok"] * 6
        assert [orjson.loads(a[3]) for a in answers if a] == [{"n": 2 * i} for i in range(6)]

    asyncio.run(main())


def test_a_worker_killed_while_starting_is_replaced(tmp_path: Path) -> None:
    async def main() -> None:
        pool = LanePool(1, _plan(tmp_path), flow="f")
        pool.start()
        deadline = time.monotonic() + 10
        while not _workers() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        first = _workers()
        assert len(first) == 1
        os.kill(first[0].pid, signal.SIGKILL)  # long before it has imported and built its steps
        answer = await asyncio.wait_for(pool.run(_request(21)), 30)
        assert answer is not None and answer[0] == "ok" and orjson.loads(answer[3]) == {"n": 42}
        assert [p.pid for p in _workers()] != [first[0].pid]
        await _stopped(pool)

    asyncio.run(main())


def test_workers_that_cannot_start_leave_the_batches_to_the_engine(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        pool = LanePool(1, _plan(tmp_path, module="seamline.steps.no_such_module"), flow="f")
        pool.start()
        answer = await asyncio.wait_for(pool.run(_request(1)), 60)  # no hang: None, after a few attempts
        assert answer is None
        await _stopped(pool)

    with caplog.at_level("WARNING", logger="seamline.lanes"):
        asyncio.run(main())
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "its batches run in the engine" in errors[0].getMessage()
    assert sum("starting another" in r.getMessage() for r in caplog.records) == 4
