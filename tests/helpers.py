"""Small helpers shared by tests: run the CLI, write flows, read outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
SEAMLINE = [sys.executable, "-m", "seamline.cli"]


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, input_: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``seamline ARGS`` in a subprocess and return the finished process."""
    e = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*SEAMLINE, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout, input=input_
    )


def read_ndjson(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def write_ndjson(path: Path, rows: list[Any]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
