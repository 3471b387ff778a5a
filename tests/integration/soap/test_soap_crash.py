"""SIGKILL the engine while it posts to the SOAP service, restart it, and find nothing lost or leaked.

Every input id must be received by the service or be in the dead-letter queue,
and the WS-Security password must appear in no output: not the engine's logs,
not the DLQ listing, not any file of the state store (the journal included) --
even though some requests make the server echo the password in its fault.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
from tests.helpers import cli, write_ndjson
from tests.integration.soap.conftest import PASSWORD, Crm

N = 1000
BATCH = 25


def _kind(i: int) -> str:
    if i % 97 == 0:
        return "echo"  # Client fault quoting the request, password included: DLQ
    if i % 50 == 0:
        return "bad"  # Client.Validation: DLQ
    if i % 41 == 0:
        return "flaky"  # Server.Busy twice, then created: retried across the restart
    return "ok"


def _row(i: int) -> dict[str, str]:
    kind = _kind(i)
    name = {"echo": "echo", "flaky": "flaky"}.get(kind, f"Customer {i}")
    email = "not-an-email" if kind == "bad" else f"c{i}@example.com"
    return {"id": f"n{i}", "name": name, "email": email}


FLOW = """
flow: soap-crash
source:
  file: {{path: in.ndjson, format: ndjson, id_field: id}}
sinks:
  - soap:
      label: crm
      wsdl: wsdl/crm.wsdl
      address: {address}
      operation: CreateCustomer
      request: "{{'id': id, 'name': name, 'email': email}}"
      wsse: {{username: crm-user, password: "${{env:CRM_PASSWORD}}"}}
      concurrency: 4
      egress: {{allow_loopback: true}}
settings: {{batch_size: {batch}, queue: 2, concurrency: 2, drain_timeout: 5s}}
on_error: {{retry: {{max_attempts: 4, initial: 20ms, max: 100ms}}}}
"""


def _engine(tmp: Path, log: str) -> tuple[subprocess.Popen[bytes], object]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "CRM_PASSWORD": PASSWORD,
           "SEAMLINE_LOG_LEVEL": "INFO"}
    out = (tmp / log).open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamline.cli", "run", "flow.yaml", "--until-idle", "--idle-horizon", "5s",
         "--state", str(tmp / "state.db")],
        cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    return proc, out


def test_sigkill_mid_stream_loses_nothing_and_leaks_no_password(crm: Crm, tmp_path: Path) -> None:
    (tmp_path / "wsdl").mkdir()
    (tmp_path / "wsdl" / "crm.wsdl").write_text(crm.wsdl_text())
    (tmp_path / "flow.yaml").write_text(FLOW.format(address=crm.url("/soap"), batch=BATCH))
    write_ndjson(tmp_path / "in.ndjson", [_row(i) for i in range(N)])
    ids = {f"n{i}" for i in range(N)}
    poison = {f"n{i}" for i in range(N) if _kind(i) in ("echo", "bad")}

    proc, out = _engine(tmp_path, "engine1.log")
    killed_at = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            killed_at = len(crm.received())
            if killed_at >= N // 5:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "ended before the kill: " + (tmp_path / "engine1.log").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()  # type: ignore[attr-defined]
    assert 0 < killed_at < N, f"the kill must land mid-stream (received {killed_at})"

    proc, out = _engine(tmp_path, "engine2.log")
    try:
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()  # type: ignore[attr-defined]
    assert rc == 0, (tmp_path / "engine2.log").read_text()[-3000:]

    received = Counter(crm.received())
    listing = cli("dlq", "list", "--json", "--state", str(tmp_path / "state.db"), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    dead_rows = orjson.loads(listing.stdout)
    dead = {d["msg_id"] for d in dead_rows}
    lost = sorted(ids - set(received) - dead)
    assert not lost, f"{len(lost)} of {N} lost after a SIGKILL at {killed_at}: {lost[:10]}"
    assert dead == poison, f"unexpected dead letters: {sorted(dead ^ poison)[:10]}"
    assert not (set(received) & dead)
    dupes = sum(c - 1 for c in received.values() if c > 1)
    print(f"killed after {killed_at} received; {dupes} duplicates; {len(dead)} dead-lettered")
    assert dupes <= BATCH * 5, f"{dupes} duplicates exceed the in-flight bound"

    echo_dlq = next(d for d in dead_rows if d["msg_id"] == "n0")
    shown = cli("dlq", "show", echo_dlq["dlq_id"], "--json", "--state", str(tmp_path / "state.db"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "rejected request" in shown.stdout, "the server did echo the request"

    # the password is in no output and in no file the engine wrote
    texts = {"dlq list": listing.stdout, "dlq show": shown.stdout, "stderr": listing.stderr + shown.stderr}
    for f in tmp_path.rglob("*"):
        if f.is_file():
            texts[f.name] = f.read_bytes().decode("latin-1")
    leaked = [name for name, text in texts.items() if PASSWORD in text]
    assert not leaked, f"the WS-Security password leaked into {leaked}"
