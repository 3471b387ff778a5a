"""The public API is explicit and pinned: a change here is a deliberate, reviewed change."""

from __future__ import annotations

import subprocess
import sys

import seamline

EXPECTED = {
    "BatchError", "ConfigError", "Delivery", "Engine", "FatalError", "Flow", "Message", "RetryPolicy",
    "RetryableError", "SeamlineError", "Secret", "Sink", "Source", "Step", "__version__", "load_flows",
    "open_store", "register", "sink", "source", "step",
}


def test_all_is_pinned() -> None:
    assert set(seamline.__all__) == EXPECTED


def test_every_exported_name_resolves() -> None:
    for name in seamline.__all__:
        assert getattr(seamline, name) is not None, name


def test_import_and_help_stay_light() -> None:
    code = (
        "import sys, seamline.cli.main\n"
        "heavy = [m for m in ('sqlalchemy', 'aiohttp', 'confluent_kafka', 'aio_pika', 'lxml', 'jsonatapy', 'pydantic')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at startup: {out.stdout.strip()}"
    r = subprocess.run([sys.executable, "-m", "seamline.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "run" in r.stdout and "dlq" in r.stdout
