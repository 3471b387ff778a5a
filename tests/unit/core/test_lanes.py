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


def _big_request(n: int, count: int = 40_000) -> list[Any]:
    """A batch that keeps a worker busy for a while (tens of thousands of records)."""
    data = b"".join(orjson.dumps({"n": n}) + b"\n" for _ in range(count))
    return [1.0, 1, "in.ndjson", None, None, 1 << 20, data]


async def _holding(pool: LanePool, count: int) -> None:
    """Wait until one worker holds ``count`` requests."""
    deadline = time.monotonic() + 30
    while max((len(w.pending) for w in pool._all), default=0) < count:
        assert time.monotonic() < deadline, "the worker never held the requests"
        await asyncio.sleep(0.001)


def test_a_worker_takes_its_next_request_while_answering_one(tmp_path: Path) -> None:
    """Two requests at once per worker (the second waits in its pipe), a third waits for a slot;
    answers come back to the request they belong to."""
    async def main() -> None:
        pool = LanePool(1, _plan(tmp_path), flow="f")
        pool.start()
        assert (await pool.run(_request(0)) or [None])[0] == "ok"  # the worker is ready
        tasks = [asyncio.create_task(pool.run(_big_request(i, 20_000))) for i in range(3)]
        await _holding(pool, 2)
        assert [len(w.pending) for w in pool._all] == [2]  # never more than two
        answers = await asyncio.gather(*tasks)
        await _stopped(pool)
        for i, a in enumerate(answers):
            assert a is not None and a[0] == "ok" and a[1] == 20_000
            assert {orjson.loads(line)["n"] for line in a[3].splitlines()} == {2 * i}

    asyncio.run(main())


def test_a_worker_killed_holding_two_requests_leaves_both_to_the_engine(tmp_path: Path) -> None:
    async def main() -> None:
        pool = LanePool(1, _plan(tmp_path), flow="f")
        pool.start()
        assert (await pool.run(_request(0)) or [None])[0] == "ok"
        first = _workers()
        tasks = [asyncio.create_task(pool.run(_big_request(i))) for i in range(2)]
        await _holding(pool, 2)
        os.kill(first[0].pid, signal.SIGKILL)
        assert await asyncio.wait_for(asyncio.gather(*tasks), 30) == [None, None]
        answer = await asyncio.wait_for(pool.run(_request(5)), 30)  # a new worker takes the next one
        assert answer is not None and orjson.loads(answer[3]) == {"n": 10}
        assert [p.pid for p in _workers()] != [first[0].pid]
        assert pool.restarts == 1
        await _stopped(pool)

    asyncio.run(main())


def test_a_cancelled_request_leaves_the_worker_in_service(tmp_path: Path) -> None:
    """The caller gave up after its frame was written: the answer is read and dropped; the worker
    goes on with the next request (it is not killed)."""
    async def main() -> None:
        pool = LanePool(1, _plan(tmp_path), flow="f")
        pool.start()
        assert (await pool.run(_request(0)) or [None])[0] == "ok"
        pid = _workers()[0].pid
        task = asyncio.create_task(pool.run(_big_request(1)))
        await _holding(pool, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        answer = await asyncio.wait_for(pool.run(_request(4)), 30)
        assert answer is not None and answer[0] == "ok" and orjson.loads(answer[3]) == {"n": 8}
        assert [p.pid for p in _workers()] == [pid] and pool.restarts == 0
        await _stopped(pool)

    asyncio.run(main())


def test_a_request_that_cannot_be_encoded_takes_no_place_in_the_order(tmp_path: Path) -> None:
    async def main() -> None:
        pool = LanePool(1, _plan(tmp_path), flow="f")
        pool.start()
        assert (await pool.run(_request(0)) or [None])[0] == "ok"
        with pytest.raises(TypeError):
            await pool.run([1.0, 1, "in.ndjson", None, None, 1 << 20, object()])
        answers = await asyncio.wait_for(asyncio.gather(*(pool.run(_request(i)) for i in (1, 2, 3))), 30)
        assert [orjson.loads(a[3]) for a in answers if a] == [{"n": 2}, {"n": 4}, {"n": 6}]
        await _stopped(pool)

    asyncio.run(main())
