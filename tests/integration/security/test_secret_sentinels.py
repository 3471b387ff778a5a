"""Plant sentinel secrets, drive the error paths, and find them nowhere: not in the DLQ, the journal,
the state files, logs or CLI output."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import cli, write_ndjson

DSN_PASSWORD = "Sentinel-DSN-pw-7f3a91"
HOOK_SECRET = "whsec_U2VudGluZWwtd2ViaG9vay1zZWNyZXQtOGQ="
HOOK_RAW = "Sentinel-webhook-secret-8d"

FLOW = """
flow: leaky
source:
  file: {path: in.ndjson, id_field: id}
sinks:
  - sql:
      label: crm
      url: ${env:CRM_DSN}
      table: orders
      timeout: 5s
on_error:
  retry: {max_attempts: 2, initial: 10ms, max: 10ms}
"""

BAD_WEBHOOK = """
flow: hooks
source:
  webhook:
    port: 0
    routes:
      - path: /orders
        signature: {scheme: standard-webhooks, secret: "${env:HOOK_SECRET}", tolerance: nonsense}
sinks:
  - file: {path: out.ndjson}
"""


def _everything(tmp: Path, outputs: list[str]) -> str:
    blobs = list(outputs)
    for f in tmp.rglob("*"):
        if f.is_file():
            blobs.append(f.read_bytes().decode("latin-1"))
    return "\n".join(blobs)


def test_a_dsn_password_appears_nowhere_when_the_database_is_down(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(FLOW)
    write_ndjson(tmp_path / "in.ndjson", [{"id": f"o{i}", "total": i} for i in range(3)])
    env = {
        # a closed port: every write fails with a connection error that names the target
        "CRM_DSN": f"postgresql://crm_writer:{DSN_PASSWORD}@127.0.0.1:1/crm",
        "SEAMLINE_LOG_LEVEL": "DEBUG",
    }
    run = cli("run", "flow.yaml", "--until-idle", cwd=tmp_path, env=env)
    outputs = [run.stdout, run.stderr]
    if run.returncode == 0:  # the flow runs; its messages wait as retries with the error recorded
        outputs += [cli("dlq", "list", "--json", cwd=tmp_path).stdout]
        for i in range(3):
            outputs.append(cli("dlq", "show", f"o{i}", "--json", cwd=tmp_path).stdout)
            outputs.append(cli("trace", f"o{i}", "--json", cwd=tmp_path).stdout)
        outputs.append(cli("status", "--json", cwd=tmp_path).stdout)
    text = _everything(tmp_path, outputs)
    assert run.returncode == 0 and "sql.unavailable" in run.stderr, "the error path must have been driven"
    assert "retry-scheduled" in text, "the retries (and their error text) are in what was searched"
    assert DSN_PASSWORD not in text


async def test_a_dsn_password_appears_nowhere_in_dead_letters(tmp_path: Path) -> None:
    import asyncio
    import os
    import uuid

    import asyncpg

    base = os.environ.get("SEAMLINE_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    table = f"sentinel_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(base)
    await conn.execute(f"CREATE TABLE {table} (id TEXT PRIMARY KEY, total INT NOT NULL, note TEXT NOT NULL)")
    try:
        (tmp_path / "flow.yaml").write_text(FLOW.replace("table: orders", f"table: {table}"))
        write_ndjson(tmp_path / "in.ndjson", [{"id": f"o{i}", "total": i} for i in range(3)])
        user, _, rest = base.partition("://")[2].partition("@")
        dsn = f"postgresql://{user}:{DSN_PASSWORD}@{rest}"
        env = {"CRM_DSN": dsn, "SEAMLINE_LOG_LEVEL": "DEBUG"}
        run = await asyncio.to_thread(cli, "run", "flow.yaml", "--until-idle", cwd=tmp_path, env=env)
        assert run.returncode == 0, run.stderr
        outputs = [run.stdout, run.stderr, cli("dlq", "list", "--json", cwd=tmp_path).stdout]
        for i in range(3):
            outputs.append(cli("dlq", "show", f"o{i}", "--json", cwd=tmp_path).stdout)
            outputs.append(cli("dlq", "show", f"o{i}", cwd=tmp_path).stdout)
            outputs.append(cli("trace", f"o{i}", "--json", cwd=tmp_path).stdout)
        text = _everything(tmp_path, outputs)
        assert "sql.rejected" in text and "note" in text, "the rows must have been refused (NOT NULL)"
        assert DSN_PASSWORD not in text
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


def test_a_webhook_secret_appears_nowhere_in_config_errors(tmp_path: Path) -> None:
    (tmp_path / "hooks.yaml").write_text(BAD_WEBHOOK)
    env = {"HOOK_SECRET": HOOK_SECRET, "SEAMLINE_LOG_LEVEL": "DEBUG"}
    v = cli("validate", "hooks.yaml", cwd=tmp_path, env=env)
    r = cli("run", "hooks.yaml", "--until-idle", cwd=tmp_path, env=env)
    assert v.returncode == 2 and r.returncode == 2
    assert "tolerance" in v.stderr
    text = _everything(tmp_path, [v.stdout, v.stderr, r.stdout, r.stderr])
    assert HOOK_SECRET not in text and HOOK_RAW not in text
