"""`seamline trace` and `seamline journal prune` on a real run's journal."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from tests.helpers import cli

from seamline.store import open_store
from seamline.store.base import Batch

FLOW = """
flow: orders
source:
  file: {path: in.ndjson, id_field: id, correlation_field: order}
sinks:
  - file: {path: out.ndjson, label: erp}
"""


def test_trace_then_prune_the_old_part_of_the_journal(tmp_path: Path) -> None:
    import asyncio

    (tmp_path / "flow.yaml").write_text(FLOW)
    (tmp_path / "in.ndjson").write_bytes(b'{"id": "m-1", "order": "4711"}\n{"id": "m-2", "order": "4712"}\n')
    assert cli("run", "flow.yaml", "--until-idle", cwd=tmp_path).returncode == 0
    hops = orjson.loads(cli("trace", "4711", "--json", cwd=tmp_path).stdout)
    assert [(h["msg_id"], h["step"], h["outcome"]) for h in hops] == [
        ("m-1", "source", "received"), ("m-1", "erp", "delivered")]

    async def old_record() -> None:  # a record from ten days ago, next to today's run
        s = open_store(str(tmp_path / ".seamline" / "state.db"))
        await s.open()
        ten_days = time.time() - 10 * 86400
        await s.commit(Batch(journal=[(ten_days, "orders", "m-0", "4710", "source", "received", 0, None, None)]))
        await s.close()

    asyncio.run(old_record())
    assert cli("trace", "4710", "--json", cwd=tmp_path).returncode == 0
    r = cli("journal", "prune", "--older-than", "7d", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["removed_batches"] == 1
    assert cli("trace", "4710", cwd=tmp_path).returncode == 1  # gone
    assert len(orjson.loads(cli("trace", "m-2", "--json", cwd=tmp_path).stdout)) == 2  # kept
    bad = cli("journal", "prune", "--older-than", "soon", cwd=tmp_path)
    assert bad.returncode == 2 and "--older-than" in bad.stderr


def test_the_human_trace_shows_the_day_of_each_hop(tmp_path: Path) -> None:
    """A trace whose hops fall on one day names it in the title; one over several days (a retry the
    next morning) shows each hop's date."""
    import asyncio
    import datetime as dt

    async def hops(entries: list[tuple[float, str, str]]) -> None:
        s = open_store(str(tmp_path / "state.db"))
        await s.open()
        await s.commit(Batch(journal=[(ts, "orders", "m-9", "4799", step, outcome, 0, None, None)
                                      for ts, step, outcome in entries]))
        await s.close()

    evening = dt.datetime(2026, 3, 31, 23, 10, tzinfo=dt.UTC).timestamp()
    asyncio.run(hops([(evening, "source", "received"), (evening + 0.5, "erp", "retry")]))
    one_day = cli("trace", "4799", "--state", str(tmp_path / "state.db"), cwd=tmp_path)
    assert one_day.returncode == 0, one_day.stderr
    assert "2 hop(s) in orders on 2026-03-31" in one_day.stdout and "23:10:00.500" in one_day.stdout
    asyncio.run(hops([(evening + 8 * 3600, "erp", "delivered")]))
    two_days = cli("trace", "4799", "--state", str(tmp_path / "state.db"), cwd=tmp_path)
    assert "from 2026-03-31 to 2026-04-01" in two_days.stdout
    assert "2026-03-31 23:10:00.000" in two_days.stdout and "2026-04-01 07:10:00.000" in two_days.stdout
