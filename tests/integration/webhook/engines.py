"""``seamline run`` as a child process for the webhook tests that kill or stop the engine."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_engine(
    tmp: Path, port: int, log_name: str, env: dict[str, str], timeout: float = 30
) -> subprocess.Popen[bytes]:
    """Run ``flow.yaml`` in ``tmp`` with ``tmp/state.db``; return once something listens on ``port``."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
    log = (tmp / log_name).open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamline.cli", "run", "flow.yaml", "--state", str(tmp / "state.db"), "-q"],
        cwd=tmp, env=full_env, stdout=subprocess.DEVNULL, stderr=log,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp / log_name).read_text()[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError("the engine did not start listening")


def inbox_rows(state: Path) -> int:
    """Rows in the inbox of the store at ``state`` (a delivery leaves it once acknowledged)."""
    with sqlite3.connect(state) as db:
        (n,) = db.execute("SELECT COUNT(*) FROM inbox").fetchone()
    return int(n)
