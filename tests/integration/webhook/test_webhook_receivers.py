"""``receivers: N``: the webhook is served by child processes of the engine.

Real ``seamline run`` processes, real HTTP, a real target; the receivers are
found as the engine's child processes in ``/proc``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from tests.integration.webhook import signers
from tests.integration.webhook.engines import free_port, inbox_rows, start_engine

from seamline.connectors.webhook import WebhookSource, WebhookSourceConfig
from seamline.core.component import BuildContext
from seamline.core.errors import FatalError
from seamline.store.sqlite import SqliteStore
from seamline.testing.faultserver import FaultServer, Hang, Respond

SECRET = "gh-SENTINEL-receivers-secret-31"

FLOW = """
flow: receiver-hooks
source:
  webhook:
    port: {port}
    receivers: {receivers}
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


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(check, timeout: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start(tmp: Path, port: int, log_name: str) -> subprocess.Popen[bytes]:
    return start_engine(tmp, port, log_name, {"GH_SECRET": SECRET}, timeout=60)


def stop(proc: subprocess.Popen[bytes], tmp: Path, log_name: str) -> None:
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp / log_name).read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def deliver(port: int, n: int, *, secret: str = SECRET, delivery: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    body = f'{{"n": {n}}}'.encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks", data=body, method="POST",
                                 headers=signers.github(secret, body, delivery or f"delivery-{n}"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=20) as resp:
            return int(resp.status), orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def received_keys(server: FaultServer) -> list[str]:
    return [r.header("Idempotency-Key") for r in server.received("/in")]


def test_receivers_store_check_and_answer_and_the_engine_delivers(tmp_path: Path) -> None:
    port = free_port()
    with FaultServer() as server:
        server.set_default(Respond(201))
        (tmp_path / "flow.yaml").write_text(FLOW.format(port=port, receivers=2, target=server.url_for("/in")))
        proc = start(tmp_path, port, "run.log")
        try:
            kids = children(proc.pid)
            assert len(kids) == 2, "two receiver processes serve the route"
            answers: dict[int, tuple[int, dict]] = {}  # type: ignore[type-arg]

            def send(ns: range) -> None:
                for n in ns:
                    answers[n] = deliver(port, n)

            threads = [threading.Thread(target=send, args=(range(i, 60, 6),)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert {a for a, _ in answers.values()} == {200}
            assert all(body["status"] == "accepted" for _, body in answers.values())
            # a delivery sent again is answered 2xx without a second message
            assert deliver(port, 7) == (200, {"status": "duplicate", "id": "delivery-7"})
            # the receivers check signatures like the engine does
            status, body = deliver(port, 99, secret="wrong-secret-wrong-secret")
            assert status == 401 and body["error"]["code"] == "signature.mismatch"
            wait_until(lambda: len(received_keys(server)) >= 60, what="60 deliveries at the target")
            wait_until(lambda: inbox_rows(tmp_path / "state.db") == 0, what="every delivery acknowledged")
        finally:
            stop(proc, tmp_path, "run.log")
        wait_until(lambda: not any(alive(k) for k in kids), timeout=10, what="the receivers to exit")
        keys = received_keys(server)
        assert sorted(keys) == sorted(f"delivery-{n}" for n in range(60)), "each delivery exactly once"
        assert server.received("/in")[0].json()["seen"] is True
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM inbox").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM dlq").fetchone() == (0,)
    assert SECRET not in (tmp_path / "run.log").read_text()


def test_sigkill_of_the_engine_stops_its_receivers_and_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    with FaultServer() as server:
        server.set_default(Hang())  # first run: nothing completes, deliveries pile up in flight and in the inbox
        (tmp_path / "flow.yaml").write_text(FLOW.format(port=port, receivers=1, target=server.url_for("/in")))
        proc = start(tmp_path, port, "run1.log")
        accepted: list[int] = []
        stop_sending = threading.Event()

        def stream() -> None:
            n = 0
            while not stop_sending.is_set():
                try:
                    status, _ = deliver(port, n)
                except OSError:
                    return  # the receivers are gone
                if status == 200:
                    accepted.append(n)
                n += 1

        sender = threading.Thread(target=stream)
        try:
            kids = children(proc.pid)
            assert len(kids) == 1
            sender.start()
            wait_until(lambda: len(accepted) >= 30, what="30 accepted deliveries")
            proc.send_signal(signal.SIGKILL)  # mid-stream
            proc.wait(timeout=10)
            # the receiver sees its stdin close and stops by itself: no orphan keeps answering
            wait_until(lambda: not any(alive(k) for k in kids), timeout=15, what="the orphaned receiver to exit")
        finally:
            stop_sending.set()
            sender.join(timeout=30)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert len(accepted) >= 30

        server.reset()
        server.set_default(Respond(201))
        proc = start(tmp_path, port, "run2.log")
        try:
            want = {f"delivery-{n}" for n in accepted}
            wait_until(lambda: set(received_keys(server)) >= want, timeout=60,
                       what="every accepted delivery at the target")
            wait_until(lambda: inbox_rows(tmp_path / "state.db") == 0, what="every delivery acknowledged")
        finally:
            stop(proc, tmp_path, "run2.log")
    assert set(received_keys(server)) >= want, "every delivery answered 2xx was delivered after the restart"
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM inbox").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM dlq").fetchone() == (0,)


def test_a_receiver_that_dies_is_started_again(tmp_path: Path) -> None:
    port = free_port()
    with FaultServer() as server:
        server.set_default(Respond(201))
        (tmp_path / "flow.yaml").write_text(FLOW.format(port=port, receivers=1, target=server.url_for("/in")))
        proc = start(tmp_path, port, "run.log")
        try:
            assert deliver(port, 1)[0] == 200
            (first,) = children(proc.pid)
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: len(children(proc.pid) - {first}) == 1, what="a new receiver")
            # the engine kept the socket: a connection made meanwhile waits for the new receiver
            assert deliver(port, 2)[0] == 200
            wait_until(lambda: set(received_keys(server)) >= {"delivery-1", "delivery-2"}, what="both deliveries")
            wait_until(lambda: inbox_rows(tmp_path / "state.db") == 0, what="both acknowledged")
        finally:
            stop(proc, tmp_path, "run.log")
        log = (tmp_path / "run.log").read_text()
        assert "exited with -9; starting it again" in log


def test_receivers_need_a_file_store(tmp_path: Path) -> None:
    async def go() -> None:
        store = SqliteStore(":memory:")
        await store.open()
        ctx = BuildContext(flow="hooks", base_dir=tmp_path, store=store)
        cfg = WebhookSourceConfig.model_validate({
            "port": 0, "receivers": 1,
            "routes": [{"path": "/h", "signature": {"scheme": "github", "secret": "x" * 32}}]})
        src = WebhookSource(cfg, ctx)
        try:
            with pytest.raises(FatalError) as err:
                await src.open()
            assert err.value.code == "config.webhook.receivers"
        finally:
            await src.close()
            await store.close()

    asyncio.run(go())


def test_a_receiver_refuses_bad_settings_without_echoing_them(tmp_path: Path) -> None:
    payload = {"config": {"port": "not-a-port", "routes": [
                   {"path": "/h", "signature": {"scheme": "github", "secret": SECRET}}]},
               "flow": "hooks", "base_dir": str(tmp_path), "state": str(tmp_path / "state.db"), "batch_size": 10,
               "socket_fd": 0, "wake_fd": 0}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SEAMLINE_LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-m", "seamline.connectors.webhook_receiver"],
                          input=orjson.dumps(payload) + b"\n", capture_output=True, env=env, timeout=60, check=False)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "invalid settings: port:" in err
    assert SECRET not in err and SECRET not in done.stdout.decode()
