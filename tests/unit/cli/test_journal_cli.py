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
