"""The webhook-to-rest example runs with one command and ends with the orders in the demo CRM."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT


def test_example_runs_end_to_end() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for name in ("SHOPIFY_WEBHOOK_SECRET", "CRM_CLIENT_SECRET"):
        env.pop(name, None)
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "webhook-to-rest" / "run.py"), "--any-port"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert out.count("HTTP 200 accepted") == 3
    assert "redelivered: HTTP 200 duplicate" in out
    assert "forged order webhook: HTTP 401 signature.mismatch" in out
    assert "the CRM holds 3 order(s) after 3 POST(s) and 1 token request(s)" in out
    assert "#1001  Ana Lima   EUR   59.90  2 line(s)  Idempotency-Key wh-450789469" in out
    assert "demo-crm-client-secret" not in out + r.stderr
    assert "demo-shopify-webhook-secret" not in out + r.stderr
    assert out.rstrip().endswith("ok")
