"""The failure catalog against a real local HTTP target (the fault-injection server).

The engine runs as a subprocess (``seamline run``); the test holds the target,
scripts its answers and checks both ends: the input ids against what the
target received plus the dead-letter queue.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
from tests.helpers import cli, write_ndjson

from seamline.testing.faultserver import FaultServer, Respond, Sequence, Times

BATCH, QUEUE, CONC = 100, 2, 2
FLOW = """
flow: to-crm
source:
  file: {{path: in.ndjson, id_field: id}}
steps:
  - dedupe: {{key: id, window: 1h}}
sinks:
  - http:
      label: crm
      url: {url}
      egress: {{allow_loopback: true}}
      request_timeout: 5s
      max_in_flight: 8
on_error:
  retry: {{max_attempts: 20, initial: 20ms, max: 200ms}}
settings: {{batch_size: {batch}, queue: {queue}, concurrency: {conc}, drain_timeout: {drain}}}
"""


def _flow(tmp: Path, url: str, drain: str = "30s") -> None:
    (tmp / "flow.yaml").write_text(FLOW.format(url=url, batch=BATCH, queue=QUEUE, conc=CONC, drain=drain))


def _start(tmp: Path) -> tuple[subprocess.Popen[bytes], object]:
    log = (tmp / "engine.log").open("ab")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamline.cli", "run", "flow.yaml", "--until-idle", "-q"],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=log,
    )
    return proc, log


def _received_ids(server: FaultServer) -> Counter[int]:
    return Counter(orjson.loads(b)["id"] for b in server.received_bodies("/orders") if b)


def _dead(tmp: Path) -> set[int]:
    r = cli("dlq", "list", "--json", cwd=tmp)
    assert r.returncode == 0, r.stderr
    return {int(d["msg_id"]) for d in orjson.loads(r.stdout)}


def test_five_sigkills_against_a_flaky_target_lose_nothing(tmp_path: Path) -> None:
    n = 10_000
    rnd = random.Random(4711)
    write_ndjson(tmp_path / "in.ndjson", [{"id": i, "total": i % 97} for i in range(n)])
    with FaultServer() as server:
        # the target is flaky: every 7th request fails, as targets do
        from seamline.testing.faultserver import Every

        server.script("/orders", default=Every(7, Respond(503), otherwise=Respond(201)))
        _flow(tmp_path, server.url_for("/orders"))
        kills = 0
        for _ in range(5):
            before = sum(_received_ids(server).values())
            proc, log = _start(tmp_path)
            try:
                target = before + rnd.randint(300, 1500)
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline and proc.poll() is None:
                    if sum(_received_ids(server).values()) >= target:
                        break
                    time.sleep(0.01)
                if proc.poll() is None:
                    time.sleep(rnd.random() * 0.05)
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()  # type: ignore[attr-defined]
        assert kills >= 3
        r = cli("run", "flow.yaml", "--until-idle", "-q", cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr
        got = _received_ids(server)
        accepted = Counter(
            orjson.loads(rec.body)["id"] for rec in server.received("/orders")
            if rec.body and rec.behaviour and "201" in str(rec.behaviour)
        )
    dead = _dead(tmp_path)
    lost = [i for i in range(n) if i not in accepted and i not in dead]
    assert lost == [], f"{len(lost)} lost after {kills} kills, e.g. {lost[:10]}"
    assert dead == set(), "a flaky target is retried, not dead-lettered"
    dupes = sum(c - 1 for c in accepted.values() if c > 1)
    assert dupes <= kills * BATCH * (QUEUE + CONC + 1), f"{dupes} duplicates after {kills} kills"
    assert sum(got.values()) > n  # the 503s were really sent


def test_sigterm_with_in_flight_requests_drains_and_loses_nothing(tmp_path: Path) -> None:
    n = 600
    write_ndjson(tmp_path / "in.ndjson", [{"id": i, "total": 1} for i in range(n)])
    with FaultServer() as server:
        from seamline.testing.faultserver import Latency

        server.script("/orders", default=Latency(0.05, then=Respond(201)))
        _flow(tmp_path, server.url_for("/orders"), drain="5s")
        proc, log = _start(tmp_path)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and server.count("/orders") < 100:
                time.sleep(0.01)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=30)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()  # type: ignore[attr-defined]
        assert rc == 0 and took < 5 + 5
        first = _received_ids(server)
        assert 0 < len(first) < n
        server.set_default(Respond(201))
        server.script("/orders", default=Respond(201), replace=True)
        r = cli("run", "flow.yaml", "--until-idle", "-q", cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr
        final = _received_ids(server)
    assert set(final) == set(range(n)), "every message reached the target"
    assert _dead(tmp_path) == set()


def test_same_key_three_times_concurrently_and_once_after_restart_one_side_effect(tmp_path: Path) -> None:
    rows = [{"id": 1, "copy": c} for c in range(3)] + [{"id": 2, "copy": 0}]
    write_ndjson(tmp_path / "in.ndjson", rows)
    with FaultServer() as server:
        server.script("/orders", default=Respond(201))
        _flow(tmp_path, server.url_for("/orders"))
        text = (tmp_path / "flow.yaml").read_text().replace("id_field: id", "id_field: copy_id")
        (tmp_path / "flow.yaml").write_text(text.replace("batch_size: 100", "batch_size: 1"))
        assert cli("run", "flow.yaml", "--until-idle", "-q", cwd=tmp_path).returncode == 0
        # a restart, and the same key arrives once more
        with (tmp_path / "in.ndjson").open("ab") as f:
            f.write(orjson.dumps({"id": 1, "copy": 3}) + b"\n")
        assert cli("run", "flow.yaml", "--until-idle", "-q", cwd=tmp_path).returncode == 0
        got = _received_ids(server)
    assert got == Counter({1: 1, 2: 1})


def test_poison_goes_to_the_dlq_after_n_attempts_and_400_at_once(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "in.ndjson", [{"id": 1}, {"id": 2}])
    with FaultServer() as server:
        server.script("/orders", Sequence([Respond(400, json={"error": "bad customer"})]),
                      Times(50, Respond(500)), default=Respond(201))
        _flow(tmp_path, server.url_for("/orders"))
        text = (tmp_path / "flow.yaml").read_text().replace("max_attempts: 20", "max_attempts: 3")
        (tmp_path / "flow.yaml").write_text(text.replace("batch_size: 100", "batch_size: 1"))
        r = cli("run", "flow.yaml", "--until-idle", "-q", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        per_id = _received_ids(server)
    dead = {d["msg_id"]: d for d in orjson.loads(cli("dlq", "list", "--json", cwd=tmp_path).stdout)}
    assert dead["1"]["error_code"] == "http.status.400" and dead["1"]["attempts"] == 1 and per_id[1] == 1
    assert dead["2"]["error_code"] == "http.status.500" and dead["2"]["attempts"] == 3 and per_id[2] == 3
    assert "retries exhausted after 3" in dead["2"]["reason"]
