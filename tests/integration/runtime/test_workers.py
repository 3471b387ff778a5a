"""The ``workers`` flow setting: worker processes run the steps, the engine keeps the contract.

A flow with workers must end exactly where the same flow ends without them (same sink output,
same dead letters, same journal), must lose nothing when the engine is SIGKILLed (and its
workers must not outlive it), must survive the death of a worker, and flows that cannot run
their steps in a worker are refused at start with ``config.workers``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.helpers import cli, read_ndjson, write_ndjson

WORKER_MODULE = b"seamline.core.lane_worker"
# a worker forked by the engine before it started any thread runs under the engine's command line
ENGINE_MODULE = b"seamline.cli"


def _worker_command(cmd: bytes) -> bool:
    return WORKER_MODULE in cmd or ENGINE_MODULE in cmd

SCHEMA = {
    "type": "object",
    "required": ["id", "amount"],
    "properties": {"id": {"type": "integer"}, "amount": {"type": "number"}},
}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def _engine(tmp_path: Path, state: Path, log: Any, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "seamline.cli", "run", "flow.yaml", "--until-idle", "--state", str(state), "-q"],
        cwd=tmp_path,
        env=env or _env(),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def _proc_info(pid: int) -> tuple[int, str, bytes, str] | None:
    """(parent pid, state letter, command line, cwd) of a live process, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0], cmd, cwd


def _lane_workers(*, parent: int | None = None, cwd: Path | None = None) -> set[int]:
    """Live (not zombie) worker processes, children of ``parent`` and/or running in ``cwd``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = _proc_info(int(entry))
        if info is None:
            continue
        ppid, st, cmd, wd = info
        if st in ("Z", "X") or not _worker_command(cmd):
            continue
        if parent is not None and ppid != parent:
            continue
        if cwd is not None and wd != str(cwd):
            continue
        found.add(int(entry))
    return found


def _alive_worker(pid: int) -> bool:
    info = _proc_info(pid)
    return info is not None and info[1] not in ("Z", "X") and _worker_command(info[2])


def _waiting_for_work(pid: int) -> bool:
    """The worker sits in a read on its stdin pipe: it answered ``ready`` (the engine writes the
    plan before the worker starts reading) and waits for its next batch."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text().endswith("pipe_read")
    except OSError:
        return False


def _dead_letters(state: Path, cwd: Path) -> list[dict[str, Any]]:
    r = cli("dlq", "list", "--json", "--state", str(state), cwd=cwd)
    assert r.returncode == 0, r.stderr
    rows: list[dict[str, Any]] = orjson.loads(r.stdout)
    return rows


def _trace(msg_id: str, state: Path, cwd: Path) -> list[dict[str, Any]]:
    r = cli("trace", msg_id, "--json", "--state", str(state), cwd=cwd)
    assert r.returncode == 0, r.stderr
    rows: list[dict[str, Any]] = orjson.loads(r.stdout)
    return rows


# -- 1. same result as without workers -----------------------------------------------------------------

SAME_FLOW = """
flow: workers-same
source:
  file: {{path: in.ndjson, format: ndjson, id_field: id}}
steps:
  - filter: {{condition: "kind != 'skip'", label: keep}}
  - validate: {{schema: schema.json, label: check}}
  - map:
      label: enrich
      expression: "id = 4242 ? $error('boom') : $merge([$, {{'amount_cents': $round(amount * 100), 'seen': true}}])"
sinks:
  - file: {{path: out.ndjson, label: out}}
settings:
  batch_size: 200
  workers: {workers}
"""

SAME_N = 5000
SAME_BATCH = 200


def _same_input() -> tuple[bytes, dict[str, tuple[str, str]], set[int]]:
    """The input, the dead letters expected (msg id -> (step, error code prefix)) and the record
    numbers (1-based lines) of the bad records."""
    lines: list[bytes] = []
    expected: dict[str, tuple[str, str]] = {}
    bad: set[int] = set()
    for i in range(SAME_N):
        rec: dict[str, Any] = {"id": i, "amount": i / 7, "kind": "skip" if i % 10 == 3 else "keep"}
        if i == 3001:
            rec["amount"] = "oops"  # violates the schema
            expected["3001"] = ("check", "validate.schema")
        if i == 4242:
            expected["4242"] = ("enrich", "mapping.")  # the map expression raises $error for it
        lines.append(orjson.dumps(rec))
        if i in (3001, 4242):
            bad.add(len(lines))
        if i == 1234:
            lines.append(b'{"id": 900001, "amount": ')  # not JSON
            expected[f"in.ndjson:{len(lines)}"] = ("source", "format.json.syntax")
            bad.add(len(lines))
        if i == 2500:
            lines.append(b'{"id": 900002, "id": 900003, "amount": 1}')  # a duplicate key
            expected[f"in.ndjson:{len(lines)}"] = ("source", "format.json.duplicate_key")
            bad.add(len(lines))
    return b"\n".join(lines) + b"\n", expected, bad


def _run_same(tmp_path: Path, workers: int, data: bytes) -> tuple[Path, str]:
    tmp_path.mkdir()
    (tmp_path / "flow.yaml").write_text(SAME_FLOW.format(workers=workers))
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    (tmp_path / "in.ndjson").write_bytes(data)
    state = tmp_path / "state.db"
    r = cli(
        "run",
        "flow.yaml",
        "--until-idle",
        "--state",
        str(state),
        "-q",
        cwd=tmp_path,
        env={"SEAMLINE_LOG_LEVEL": "DEBUG"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return state, r.stderr


def test_workers_give_the_same_result_as_the_engine_alone(tmp_path: Path) -> None:
    data, expected_dead, bad_records = _same_input()
    w_dir, e_dir = tmp_path / "workers", tmp_path / "engine"
    w_state, w_log = _run_same(w_dir, 2, data)
    e_state, _ = _run_same(e_dir, 0, data)

    # the workers did run the batches: they handed back exactly the batches holding a bad record
    # (and no worker died or failed to start on the way)
    assert not re.search(r"WARNING|ERROR", w_log), w_log[-3000:]
    handed_back = {int(m) for m in re.findall(r"batch from record (\d+) runs in the engine", w_log)}
    assert handed_back == {(r - 1) // SAME_BATCH * SAME_BATCH + 1 for r in bad_records}, w_log[-3000:]

    # same sink output, in the same order
    w_out, e_out = read_ndjson(w_dir / "out.ndjson"), read_ndjson(e_dir / "out.ndjson")
    assert w_out == e_out
    kept = [i for i in range(SAME_N) if i % 10 != 3 and i not in (3001, 4242)]
    assert [r["id"] for r in w_out] == kept
    assert all(r["seen"] is True and r["amount_cents"] == round(r["amount"] * 100) for r in w_out)

    # same dead letters, with the same step, error code and reason
    def dlq_view(state: Path, cwd: Path) -> dict[str, tuple[str, str, str]]:
        rows = _dead_letters(state, cwd)
        view = {d["msg_id"]: (d["step"], d["error_code"], d["reason"]) for d in rows}
        assert len(view) == len(rows), "a message was dead-lettered twice"
        return view

    w_dead, e_dead = dlq_view(w_state, w_dir), dlq_view(e_state, e_dir)
    assert w_dead == e_dead
    assert set(w_dead) == set(expected_dead)
    for msg_id, (step, code_prefix) in expected_dead.items():
        assert w_dead[msg_id][0] == step, (msg_id, w_dead[msg_id])
        assert w_dead[msg_id][1].startswith(code_prefix), (msg_id, w_dead[msg_id])

    # same journal: delivered records from a batch a worker ran (10) and from a batch it handed
    # back (3005, beside 3001), a filtered one (13) and the dead-lettered ones
    def hops(rows: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
        return [(h["step"], h["outcome"], h["digest"]) for h in rows]

    for msg_id in ("10", "3005"):
        w_trace, e_trace = _trace(msg_id, w_state, w_dir), _trace(msg_id, e_state, e_dir)
        assert hops(w_trace) == hops(e_trace), msg_id
        assert [(h["step"], h["outcome"]) for h in w_trace] == [
            ("source", "received"),
            ("keep", "ok"),
            ("check", "ok"),
            ("enrich", "ok"),
            ("out", "delivered"),
        ]
        assert all(h["at"] for h in w_trace), w_trace
        assert {h["msg_id"] for h in w_trace} == {msg_id}
    for msg_id in ("13", "3001", "4242"):
        w_trace, e_trace = _trace(msg_id, w_state, w_dir), _trace(msg_id, e_state, e_dir)
        assert hops(w_trace) == hops(e_trace), msg_id
        assert all(h["at"] for h in w_trace), w_trace
    assert [(h["step"], h["outcome"]) for h in _trace("13", w_state, w_dir)] == [
        ("source", "received"),
        ("keep", "filtered"),
    ]


# -- 2. SIGKILL of the engine --------------------------------------------------------------------------

KILL_N = 20_000
KILL_BATCH = 200
KILL_QUEUE = 2
KILL_CONCURRENCY = 2
KILL_WORKERS = 2

KILL_FLOW = f"""
flow: workers-crash
source:
  file: {{path: in.ndjson, format: ndjson, id_field: id}}
steps:
  - filter: {{condition: "true"}}
  - validate: {{schema: schema.json, label: check}}
  - map:
      label: enrich
      expression: "$merge([$, {{'amount_cents': $round(amount * 100), 'seen': true}}])"
sinks:
  - file: {{path: out.ndjson, label: out}}
settings:
  batch_size: {KILL_BATCH}
  queue: {KILL_QUEUE}
  concurrency: {KILL_CONCURRENCY}
  workers: {KILL_WORKERS}
"""


def test_sigkill_of_the_engine_with_workers_loses_nothing(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(KILL_FLOW)
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    # every id % 997 == 0 has an amount of the wrong type: the schema sends it to the DLQ
    write_ndjson(
        tmp_path / "in.ndjson", [{"id": i, "amount": str(i) if i % 997 == 0 else i / 7} for i in range(KILL_N)]
    )
    state = tmp_path / "state.db"
    out = tmp_path / "out.ndjson"
    log = (tmp_path / "engine.log").open("wb")
    proc = _engine(tmp_path, state, log)
    workers: set[int] = set()
    killed_at = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            workers |= _lane_workers(parent=proc.pid)
            if out.exists() and out.stat().st_size > 0:
                killed_at = len(out.read_bytes().splitlines())
                if killed_at >= KILL_N // 4:
                    break
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        workers |= _lane_workers(parent=proc.pid)
        assert proc.poll() is None, (
            "the engine finished before it could be killed: " + (tmp_path / "engine.log").read_text()[-2000:]
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert 0 < killed_at < KILL_N, "the kill must land mid-stream"
    assert workers, "the engine ran no worker process"

    # the workers do not outlive the engine: they see end of file on their stdin and end
    deadline = time.monotonic() + 10
    left = {p for p in workers if _alive_worker(p)} | _lane_workers(cwd=tmp_path)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {p for p in workers if _alive_worker(p)} | _lane_workers(cwd=tmp_path)
    if left:  # do not leave them behind: report, then clean up the processes this test caused
        for p in left:
            os.kill(p, signal.SIGKILL)
    assert not left, f"worker processes {sorted(left)} outlived the engine"

    r = cli("run", "flow.yaml", "--until-idle", "--state", str(state), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    delivered = Counter(rec["id"] for rec in read_ndjson(out))
    dead_rows = _dead_letters(state, tmp_path)
    dead = {int(d["msg_id"]) for d in dead_rows}
    expected_dead = {i for i in range(KILL_N) if i % 997 == 0}
    assert dead == expected_dead
    assert {d["step"] for d in dead_rows} == {"check"}
    assert {d["error_code"] for d in dead_rows} == {"validate.schema"}
    lost = [i for i in range(KILL_N) if i not in delivered and i not in dead]
    assert lost == [], f"{len(lost)} messages lost, e.g. {lost[:10]}"
    assert not (set(delivered) & dead), "a message was both delivered and dead-lettered"
    dupes = sum(c - 1 for c in delivered.values() if c > 1)
    bound = KILL_BATCH * (KILL_QUEUE + max(KILL_CONCURRENCY, 2 * KILL_WORKERS) + 1)
    print(f"killed after {killed_at} records; {dupes} duplicates; {len(dead)} dead-lettered")
    assert dupes <= bound, f"{dupes} duplicates exceed the in-flight bound {bound}"
    sample = read_ndjson(out)[:: KILL_N // 50]
    assert all(rec["seen"] is True and rec["amount_cents"] == round(rec["amount"] * 100) for rec in sample)


# -- 3. a worker dies mid-run --------------------------------------------------------------------------

DIE_N = 150_000  # long enough, even on a loaded machine, for the replacement to start before the end

DIE_FLOW = """
flow: workers-die
source:
  file: {path: in.ndjson, format: ndjson, id_field: id}
steps:
  - map:
      label: enrich
      expression: "$merge([$, {'twice': n * 2, 'tag': $join($map([1..8], function($k) { $string(n * $k) }), '-')}])"
sinks:
  - file: {path: out.ndjson, label: out}
settings: {batch_size: 500, queue: 2, concurrency: 2, workers: 2}
"""


def test_a_killed_worker_is_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(DIE_FLOW)
    write_ndjson(tmp_path / "in.ndjson", [{"id": i, "n": i % 1000} for i in range(DIE_N)])
    state = tmp_path / "state.db"
    out = tmp_path / "out.ndjson"
    log = (tmp_path / "engine.log").open("wb")
    proc = _engine(tmp_path, state, log)
    seen: set[int] = set()
    victim: int | None = None
    replacements: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        # kill a worker that is up and working (one killed while it starts is not replaced: its
        # start-up counts as failed), once the sink has some of its output
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            current = _lane_workers(parent=proc.pid)
            seen |= current
            ready = sorted(p for p in current if _waiting_for_work(p))
            if ready and out.exists() and out.stat().st_size > 0:
                victim = ready[0]
                os.kill(victim, signal.SIGKILL)
                break
            time.sleep(0.002)
        assert victim is not None, (
            "no worker to kill while the engine ran: " + (tmp_path / "engine.log").read_text()[-2000:]
        )
        # the engine starts another worker in its place
        while not replacements and time.monotonic() < deadline and proc.poll() is None:
            replacements = _lane_workers(parent=proc.pid) - seen
            time.sleep(0.005)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    engine_log = (tmp_path / "engine.log").read_text()
    assert rc == 0, engine_log[-3000:]
    assert replacements, "no worker was started in place of the killed one: " + engine_log[-3000:]
    assert "a worker process stopped" in engine_log  # the engine noticed the death
    # the killed batch never reached the sink from the worker: the engine ran it itself, once
    delivered = Counter(rec["id"] for rec in read_ndjson(out))
    assert set(delivered) == set(range(DIE_N))
    assert [i for i, c in delivered.items() if c > 1] == []
    assert _dead_letters(state, tmp_path) == []
    sample = read_ndjson(out)[:: DIE_N // 50]
    assert all(rec["twice"] == rec["n"] * 2 and rec["tag"].split("-")[-1] == str(rec["n"] * 8) for rec in sample)
    # the engine ended its workers when it stopped
    assert not {p for p in seen | replacements if _alive_worker(p)}


# -- 4. flows that cannot use workers ------------------------------------------------------------------

REFUSED = {
    "python-step": (
        """
flow: refuse-python
source:
  file: {path: in.ndjson, format: ndjson, id_field: id}
steps:
  - filter: {condition: "true"}
  - python: {function: "hooks:touch", label: my-hook}
sinks:
  - file: {path: out.ndjson}
settings: {workers: 2}
""",
        ["step 'my-hook'", "python"],
    ),
    "two-sinks": (
        """
flow: refuse-two-sinks
source:
  file: {path: in.ndjson, format: ndjson, id_field: id}
steps:
  - map: {expression: "$"}
sinks:
  - file: {path: out.ndjson, label: first}
  - file: {path: out2.ndjson, label: second}
settings: {workers: 2}
""",
        ["sink"],
    ),
    "csv-source": (
        """
flow: refuse-csv-source
source:
  file: {path: in.csv, format: csv}
sinks:
  - file: {path: out.ndjson}
settings: {workers: 2}
""",
        ["source"],
    ),
    "csv-sink": (
        """
flow: refuse-csv-sink
source:
  file: {path: in.ndjson, format: ndjson, id_field: id}
sinks:
  - file: {path: out.ndjson, format: csv, label: table}
settings: {workers: 2}
""",
        ["sink 'table'"],
    ),
    "kafka-not-json": (
        """
flow: refuse-kafka-not-json
source:
  kafka: {bootstrap_servers: "127.0.0.1:9", topics: [orders], group: g, content_type: text/plain}
sinks:
  - kafka: {bootstrap_servers: "127.0.0.1:9", topic: copies}
settings: {workers: 2}
""",
        ["source (kafka)", "JSON content type"],
    ),
    "lines-to-kafka": (
        """
flow: refuse-lines-to-kafka
source:
  file: {path: in.ndjson, format: ndjson, id_field: id}
sinks:
  - kafka: {bootstrap_servers: "127.0.0.1:9", topic: orders, label: feed}
settings: {workers: 2}
""",
        ["sink 'feed'", "NDJSON lines"],
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_flow_that_cannot_use_workers_is_refused(tmp_path: Path, case: str) -> None:
    flow, names = REFUSED[case]
    (tmp_path / "flow.yaml").write_text(flow)
    (tmp_path / "hooks.py").write_text("def touch(body):\n    return body\n")
    write_ndjson(tmp_path / "in.ndjson", [{"id": i} for i in range(10)])
    (tmp_path / "in.csv").write_text("id\n1\n2\n")
    r = cli("run", "flow.yaml", "--until-idle", "--state", str(tmp_path / "state.db"), "-q", cwd=tmp_path)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "config.workers" in r.stderr, r.stderr
    for name in names:
        assert name in r.stderr, (name, r.stderr)
    assert read_ndjson(tmp_path / "out.ndjson") == [], "nothing may be delivered by a refused flow"
    assert not _lane_workers(cwd=tmp_path), "a refused flow started worker processes"


GLOB_FLOW = """
flow: many-files
source:
  file: {path: "in/*.ndjson", format: ndjson, id_field: id}
steps:
  - map: {expression: "$merge([$, {'file_no': $floor(id / 1000)}])"}
sinks:
  - file: {path: out/all.ndjson, label: out}
settings: {batch_size: 150, workers: WORKERS}
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_a_glob_of_files_is_read_file_by_file_once(tmp_path: Path, workers: int) -> None:
    (tmp_path / "flow.yaml").write_text(GLOB_FLOW.replace("WORKERS", str(workers)))
    (tmp_path / "in").mkdir()
    for f in range(3):
        write_ndjson(tmp_path / "in" / f"part-{f}.ndjson", [{"id": f * 1000 + i} for i in range(700)])
    state = tmp_path / "state.db"
    r = cli("run", "flow.yaml", "--until-idle", "--state", str(state), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = read_ndjson(tmp_path / "out" / "all.ndjson")
    assert [o["id"] for o in out] == [f * 1000 + i for f in range(3) for i in range(700)]  # file order, line order
    assert all(o["file_no"] == o["id"] // 1000 for o in out)
    # a second run finds every file's checkpoint at its end: nothing is delivered twice
    r = cli("run", "flow.yaml", "--until-idle", "--state", str(state), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(read_ndjson(tmp_path / "out" / "all.ndjson")) == 2100
    # a new file in the folder is picked up on the next run, and only it
    write_ndjson(tmp_path / "in" / "part-3.ndjson", [{"id": 3000 + i} for i in range(10)])
    r = cli("run", "flow.yaml", "--until-idle", "--state", str(state), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ids = [o["id"] for o in read_ndjson(tmp_path / "out" / "all.ndjson")]
    assert len(ids) == 2110 and ids[-10:] == [3000 + i for i in range(10)]
