"""SIGKILL the engine (a ``seamline run`` subprocess) mid-stream, restart it, count what was lost.

Every input id must end up in the output file or in the dead-letter queue.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from tests.integration.services import engine_env
from tests.integration.services.flows import dead_ids_sync

HOOKS = '''
import time
from seamline.core.errors import FatalError

def slow_poison(body):
    time.sleep(0.002)
    if isinstance(body, dict) and body.get("poison"):
        raise FatalError("poison message", code="test.poison")
    return body
'''

STEPS_AND_SINK = """
steps:
  - python: {function: "hooks:slow_poison", label: poison-check}
sinks:
  - file: {path: out.ndjson, label: out}
settings:
  batch_size: 50
  queue: 2
  concurrency: 2
  drain_timeout: 5s
"""


@dataclass
class CrashResult:
    killed_at: int
    delivered: Counter[str]
    dead: set[str]

    @property
    def duplicates(self) -> int:
        return sum(c - 1 for c in self.delivered.values() if c > 1)


def _lines(path: Path) -> list[bytes]:
    if not path.exists():
        return []
    data = path.read_bytes()
    # a line being written may be incomplete: count only whole lines
    return [ln for ln in data.split(b"\n")[:-1] if ln.strip()]


def _start(tmp: Path, log_name: str) -> tuple[subprocess.Popen[bytes], object]:
    log = (tmp / log_name).open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamline.cli", "run", "flow.yaml", "--state", str(tmp / "state.db"), "-q"],
        cwd=tmp, env=engine_env(), stdout=subprocess.DEVNULL, stderr=log,
    )
    return proc, log


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sigkill_mid_stream(tmp: Path, source_yaml: str, flow_name: str, ids: set[str], poison: set[str],
                       *, timeout: float = 90) -> CrashResult:
    """Run the flow, SIGKILL it once output is flowing, restart, wait until every id is accounted for."""
    (tmp / "flow.yaml").write_text(f"flow: {flow_name}\n{source_yaml}\n{STEPS_AND_SINK}")
    (tmp / "hooks.py").write_text(HOOKS)
    out = tmp / "out.ndjson"
    n = len(ids)
    proc, log = _start(tmp, "engine1.log")
    killed_at = 0
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            killed_at = len(_lines(out))
            if killed_at >= n // 5 or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "engine exited early: " + (tmp / "engine1.log").read_text()[-3000:]
        assert killed_at > 0, "no output before the deadline: " + (tmp / "engine1.log").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _stop(proc, signal.SIGKILL)
        log.close()  # type: ignore[attr-defined]
    assert killed_at < n, "the kill must land mid-stream"

    proc, log = _start(tmp, "engine2.log")
    try:
        deadline = time.monotonic() + timeout
        delivered: Counter[str] = Counter()
        dead: set[str] = set()
        while time.monotonic() < deadline:
            delivered = Counter(str(orjson.loads(ln)["id"]) for ln in _lines(out))
            if set(delivered) | poison >= ids:
                dead = dead_ids_sync(tmp / "state.db", flow_name)
                if dead >= poison:
                    break
            if proc.poll() is not None:
                pytest.fail("engine exited: " + (tmp / "engine2.log").read_text()[-3000:])
            time.sleep(0.2)
    finally:
        _stop(proc, signal.SIGTERM)
        log.close()  # type: ignore[attr-defined]
    delivered = Counter(str(orjson.loads(ln)["id"]) for ln in _lines(out))
    dead = dead_ids_sync(tmp / "state.db", flow_name)
    lost = sorted(ids - set(delivered) - dead, key=lambda x: (len(x), x))
    assert not lost, f"{len(lost)} of {n} lost after SIGKILL at {killed_at}, e.g. {lost[:10]}"
    assert dead == poison, f"dead-lettered {sorted(dead)[:10]}, expected {sorted(poison)[:10]}"
    assert not (set(delivered) & dead), "a message was both delivered and dead-lettered"
    return CrashResult(killed_at, delivered, dead)
