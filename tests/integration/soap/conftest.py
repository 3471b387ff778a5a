"""A real SOAP service for the soap connector tests: the spyne CRM in ``crm_server.py``, in a subprocess."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
#: the WS-Security password: a sentinel that must never show up in any output
PASSWORD = "pw-SENTINEL-5c1e9a0d77"
USER = "crm-user"


@dataclass
class Crm:
    base: str
    proc: subprocess.Popen[bytes]

    @property
    def wsdl_url(self) -> str:
        return f"{self.base}/soap?wsdl"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            return r.read()

    def state(self) -> dict:
        return json.loads(self._get("/_state"))

    def received(self) -> list[str]:
        return self.state()["received"]

    def reset(self) -> None:
        self._get("/_reset")

    def wsdl_text(self, path: str = "/soap") -> str:
        return self._get(path + "?wsdl").decode()


@pytest.fixture(scope="session")
def crm_server() -> Iterator[Crm]:
    env = {**os.environ, "CRM_PASSWORD": PASSWORD}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "crm_server.py")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 30
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(proc.stdout.fileno(), 256)
            if not chunk:
                break
            line += chunk
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"the test SOAP server did not start (exit code {proc.poll()})")
        yield Crm(f"http://127.0.0.1:{int(line.split()[1])}", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture
def crm(crm_server: Crm, monkeypatch: pytest.MonkeyPatch) -> Crm:
    """The CRM with empty state, and the password in ``$CRM_PASSWORD`` for ``${env:CRM_PASSWORD}`` references."""
    monkeypatch.setenv("CRM_PASSWORD", PASSWORD)
    crm_server.reset()
    return crm_server
