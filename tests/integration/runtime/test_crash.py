"""Kill the engine with SIGKILL mid-stream, restart it, and find nothing lost.

Every input id must end in the sink or the dead-letter queue; duplicates
are allowed only for messages that were in flight at the kill, which is
bounded by the flow's batch size times the batches it may hold at once.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from tests.helpers import cli, read_ndjson, reaped, write_ndjson

N = 20_000
BATCH = 200
QUEUE = 2
CONCURRENCY = 2

FLOW = f"""
flow: crash-test
source:
  file: {{path: in.ndjson, format: ndjson, id_field: id}}
steps:
  - filter: {{condition: "true"}}
  - map:
      label: enrich
      expression: "$merge([$, {{'amount_cents': $round(amount * 100), 'seen': true}}])"
  - python: {{function: "hooks:maybe_poison", label: poison-check}}
sinks:
  - file: {{path: out.ndjson, label: out}}
settings:
  batch_size: {BATCH}
  queue: {QUEUE}
  concurrency: {CONCURRENCY}
"""

HOOKS = '''
from seamline.core.errors import FatalError

def maybe_poison(body):
    if body["id"] % 997 == 0:
        raise FatalError("poison record", code="test.poison")
    return body
'''


def _inflight_bound() -> int:
    # queued batches + batches in workers + one batch being assembled by the source
    return BATCH * (QUEUE + CONCURRENCY + 1)


@pytest.mark.parametrize("compressed", [False, True], ids=["ndjson", "ndjson.gz"])
def test_sigkill_mid_stream_loses_nothing(tmp_path: Path, compressed: bool) -> None:
    (tmp_path / "flow.yaml").write_text(FLOW.replace("path: in.ndjson", "path: in.ndjson.gz") if compressed else FLOW)
    (tmp_path / "hooks.py").write_text(HOOKS)
    write_ndjson(tmp_path / "in.ndjson", [{"id": i, "amount": i / 7} for i in range(N)])
    if compressed:  # read through gzip; the restart resumes at a position in the decompressed data
        (tmp_path / "in.ndjson.gz").write_bytes(gzip.compress((tmp_path / "in.ndjson").read_bytes()))
        (tmp_path / "in.ndjson").unlink()
    state = tmp_path / "state.db"
    out = tmp_path / "out.ndjson"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = (tmp_path / "engine.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamline.cli", "run", "flow.yaml", "--until-idle", "--state", str(state), "-q"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log,
    )
    deadline = time.monotonic() + 120
    killed_at = 0
    try:
        while time.monotonic() < deadline:
            if out.exists() and out.stat().st_size > 0:
                killed_at = len(out.read_bytes().splitlines())
                if killed_at >= N // 4:
                    break
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the engine finished before it could be killed: " + (
            tmp_path / "engine.log").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert 0 < killed_at < N, "the kill must land mid-stream"

    r = cli("run", "flow.yaml", "--until-idle", "--state", str(state), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    delivered = Counter(rec["id"] for rec in read_ndjson(out))
    dl = cli("dlq", "list", "--json", "--state", str(state), cwd=tmp_path)
    assert dl.returncode == 0, dl.stderr
    dead = {int(d["msg_id"]) for d in orjson.loads(dl.stdout)}
    expected_dead = {i for i in range(N) if i % 997 == 0}

    assert dead == expected_dead
    lost = [i for i in range(N) if i not in delivered and i not in dead]
    assert lost == [], f"{len(lost)} messages lost, e.g. {lost[:10]}"
    assert not (set(delivered) & dead), "a message was both delivered and dead-lettered"
    dupes = sum(c - 1 for c in delivered.values() if c > 1)
    print(f"killed after {killed_at} records; {dupes} duplicates; {len(dead)} dead-lettered")
    assert dupes <= _inflight_bound(), f"{dupes} duplicates exceed the in-flight bound {_inflight_bound()}"
    # every delivered record went through the whole pipeline
    sample = read_ndjson(out)[:: N // 50]
    assert all(rec["seen"] is True and rec["amount_cents"] == round(rec["amount"] * 100) for rec in sample)


SLOW_FLOW = """
flow: drain-test
source:
  file: {path: in.ndjson, format: ndjson, id_field: id}
steps:
  - python: {function: "slow:step"}
sinks:
  - file: {path: out.ndjson}
settings: {batch_size: 20, queue: 3, concurrency: 2, drain_timeout: 3s}
"""

SLOW = '''
import asyncio

async def step(body):
    await asyncio.sleep(0.005)
    return body
'''


def test_sigterm_drains_in_flight_work_and_loses_nothing(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(SLOW_FLOW)
    (tmp_path / "slow.py").write_text(SLOW)
    n = 2000
    write_ndjson(tmp_path / "in.ndjson", [{"id": i} for i in range(n)])
    state = tmp_path / "state.db"
    out = tmp_path / "out.ndjson"
    log = (tmp_path / "engine.log").open("wb")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamline.cli", "run", "flow.yaml", "--until-idle", "--state", str(state), "-q"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out.exists() and len(out.read_bytes().splitlines()) >= 100):
            time.sleep(0.01)
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        stopped_after = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert rc == 0, (tmp_path / "engine.log").read_text()
    assert stopped_after < 3 + 5, "the drain timeout bounds the shutdown"
    first = Counter(r["id"] for r in read_ndjson(out))
    assert 0 < len(first) < n
    assert all(c == 1 for c in first.values()), "a graceful stop drains: no duplicates"
    r = cli("run", "flow.yaml", "--until-idle", "--state", str(state), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    final = Counter(r["id"] for r in read_ndjson(out))
    assert set(final) == set(range(n))
    assert all(c == 1 for c in final.values()), "after a graceful stop nothing is delivered twice"


def test_five_sigkills_at_random_moments_lose_nothing(tmp_path: Path) -> None:
    import random

    rnd = random.Random(20261129)
    n = 10_000
    (tmp_path / "flow.yaml").write_text(FLOW)
    (tmp_path / "hooks.py").write_text(HOOKS)
    write_ndjson(tmp_path / "in.ndjson", [{"id": i, "amount": i / 7} for i in range(n)])
    state = tmp_path / "state.db"
    out = tmp_path / "out.ndjson"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    kills = 0
    for _ in range(5):
        before = out.read_bytes().count(b"\n") if out.exists() else 0  # a kill may have torn the last line
        log = (tmp_path / "engine.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "seamline.cli", "run", "flow.yaml", "--until-idle", "--state", str(state), "-q"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
        try:
            # kill at a random moment after the engine made some progress
            target = before + rnd.randint(200, 1500)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if out.exists() and len(out.read_bytes().splitlines()) >= target:
                    break
                time.sleep(0.002)
            if proc.poll() is None:
                time.sleep(rnd.random() * 0.05)
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    assert kills >= 3, "most runs must be killed mid-stream"
    r = cli("run", "flow.yaml", "--until-idle", "--state", str(state), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    delivered = Counter(rec["id"] for rec in read_ndjson(out))
    dead = {int(d["msg_id"]) for d in orjson.loads(cli("dlq", "list", "--json", "--state", str(state)).stdout)}
    assert dead == {i for i in range(n) if i % 997 == 0}
    lost = [i for i in range(n) if i not in delivered and i not in dead]
    assert lost == [], f"{len(lost)} lost after {kills} kills, e.g. {lost[:10]}"
    dupes = sum(c - 1 for c in delivered.values() if c > 1)
    assert dupes <= kills * _inflight_bound(), f"{dupes} duplicates after {kills} kills"


WATCH_FLOW = f"""
flow: inbox
source:
  file: {{path: "inbox/*.ndjson", id_field: id, watch: 0.05s, settle: 0s, after: move, move_to: archive}}
steps:
  - python: {{function: "hooks:maybe_poison", label: poison-check}}
sinks:
  - file: {{path: out.ndjson, label: out}}
settings:
  batch_size: {BATCH}
  queue: {QUEUE}
  concurrency: {CONCURRENCY}
"""


def test_sigkill_while_watching_a_folder_loses_nothing_and_archives_every_file(tmp_path: Path) -> None:
    """A folder of exports, watched, each file moved to the archive once all of it is settled: the
    engine is killed mid-stream; after a restart every record is delivered or dead-lettered, every
    file is in the archive once, and nothing is left in the inbox."""
    files, per_file = 12, 1000
    (tmp_path / "flow.yaml").write_text(WATCH_FLOW)
    (tmp_path / "hooks.py").write_text(HOOKS)
    (tmp_path / "inbox").mkdir()
    for f in range(files):
        write_ndjson(tmp_path / "inbox" / f"export-{f:02d}.ndjson",
                     [{"id": f * per_file + i, "amount": i} for i in range(per_file)])
    n = files * per_file
    state = tmp_path / "state.db"
    out = tmp_path / "out.ndjson"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def start() -> subprocess.Popen[bytes]:
        with (tmp_path / "engine.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "seamline.cli", "run", "flow.yaml", "--state", str(state), "-q"],
                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log,
            )

    def archived() -> list[str]:
        folder = tmp_path / "archive"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    killed_at = 0
    with reaped(start()) as proc:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and (killed_at := out.read_bytes().count(b"\n")) >= n // 3:
                break
            time.sleep(0.005)
        assert proc.poll() is None, (tmp_path / "engine.log").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert 0 < killed_at < n and len(archived()) < files, "the kill must land mid-stream"
    print(f"killed after {killed_at} records with {len(archived())} of {files} files archived")

    with reaped(start()) as proc:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(archived()) < files:
            assert proc.poll() is None, (tmp_path / "engine.log").read_text()[-2000:]
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert archived() == [f"export-{f:02d}.ndjson" for f in range(files)]
    assert list((tmp_path / "inbox").iterdir()) == []

    delivered = Counter(rec["id"] for rec in read_ndjson(out))
    dl = cli("dlq", "list", "--json", "--state", str(state), cwd=tmp_path)
    dead = {int(d["msg_id"]) for d in orjson.loads(dl.stdout)}
    assert dead == {i for i in range(n) if i % 997 == 0}
    lost = [i for i in range(n) if i not in delivered and i not in dead]
    assert lost == [], f"{len(lost)} messages lost, e.g. {lost[:10]}"
    dupes = sum(c - 1 for c in delivered.values() if c > 1)
    assert dupes <= _inflight_bound(), f"{dupes} duplicates exceed the in-flight bound {_inflight_bound()}"
