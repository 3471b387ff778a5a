"""SIGKILL the engine right after the webhook answered 2xx; after a restart every delivery is processed."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.integration.webhook import signers
from tests.integration.webhook.engines import free_port, inbox_rows, start_engine

from seamline.testing.faultserver import FaultServer, Hang, Respond

SECRET = "gh-SENTINEL-crash-secret-77"

FLOW = """
flow: crash-hooks
source:
  webhook:
    port: {port}
    routes:
      - path: /hooks
        signature: {{scheme: github, secret: "${{env:GH_SECRET}}"}}
steps:
  - map: {{expression: "$merge([$, {{'seen': true}}])"}}
sinks:
  - http:
      url: {target}
      egress: {{allow_loopback: true}}
      request_timeout: 30s
"""


def start(tmp: Path, port: int, log_name: str) -> subprocess.Popen[bytes]:
    return start_engine(tmp, port, log_name, {"GH_SECRET": SECRET})


def deliver(port: int, n: int) -> int:
    body = f'{{"n": {n}}}'.encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks", data=body, method="POST",
                                 headers=signers.github(SECRET, body, f"delivery-{n}"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as resp:
        return int(resp.status)


def test_sigkill_right_after_the_2xx_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    with FaultServer() as server:
        server.set_default(Hang())  # first run: the target never answers, so nothing completes
        (tmp_path / "flow.yaml").write_text(FLOW.format(port=port, target=server.url_for("/in")))
        proc = start(tmp_path, port, "run1.log")
        try:
            assert [deliver(port, n) for n in range(3)] == [200, 200, 200]
            server.wait_for_sync(1, "/in", timeout=10)  # the engine took them from the inbox ...
            assert deliver(port, 3) == 200  # ... and one more, killed right after its 2xx
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with sqlite3.connect(tmp_path / "state.db") as db:
            (left,) = db.execute("SELECT COUNT(*) FROM inbox").fetchone()
        assert left == 4, "every accepted delivery is still in the inbox after the kill"

        server.reset()
        server.set_default(Respond(201))
        proc = start(tmp_path, port, "run2.log")
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                keys = {r.header("Idempotency-Key") for r in server.received("/in")}
                if keys >= {f"delivery-{n}" for n in range(4)}:
                    break
                time.sleep(0.05)
            wait_acked = time.monotonic() + 30
            while inbox_rows(tmp_path / "state.db") and time.monotonic() < wait_acked:
                time.sleep(0.05)  # the acknowledgements land: every row leaves the inbox
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, (tmp_path / "run2.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        got = {r.header("Idempotency-Key"): r.json() for r in server.received("/in")}
    assert set(got) == {f"delivery-{n}" for n in range(4)}
    assert got["delivery-2"] == {"n": 2, "seen": True}
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM inbox").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM dlq").fetchone() == (0,)
    for log_name in ("run1.log", "run2.log"):
        assert SECRET not in (tmp_path / log_name).read_text()
