"""The DLQ command line on a poison message: show, edit with $EDITOR, replay, audit."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import orjson
from tests.helpers import cli

FLOW = """
flow: poison
source:
  file: {path: in.ndjson, id_field: id}
steps:
  - python: {function: "hooks:check", label: check}
sinks:
  - file: {path: out.ndjson}
on_error:
  retry: {max_attempts: 3, initial: 10ms, max: 10ms}
"""

HOOKS = """
from seamline.core.errors import RetryableError

def check(body):
    if body.get("qty", 0) < 0:
        raise RetryableError("inventory service rejects negative quantities for now", code="inventory.busy")
    return body
"""

LINE = b'{"id": "o-1",  "qty": -2, "note": "spaces  kept"}'


def setup_flow(tmp: Path) -> None:
    (tmp / "flow.yaml").write_text(FLOW)
    (tmp / "hooks.py").write_text(HOOKS)
    (tmp / "in.ndjson").write_bytes(LINE + b"\n" + b'{"id": "o-2", "qty": 1}\n')


def test_poison_after_n_attempts_keeps_cause_bytes_and_headers(tmp_path: Path) -> None:
    setup_flow(tmp_path)
    r = cli("run", "flow.yaml", "--until-idle", "--idle-horizon", "5s", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (entry,) = orjson.loads(cli("dlq", "list", "--json", cwd=tmp_path).stdout)
    assert entry["msg_id"] == "o-1" and entry["attempts"] == 3 and entry["error_class"] == "retryable"
    assert "retries exhausted after 3" in entry["reason"] and "negative quantities" in entry["reason"]
    show = orjson.loads(cli("dlq", "show", entry["dlq_id"], "--json", cwd=tmp_path).stdout)
    assert show["original"]["sha256"] == hashlib.sha256(LINE).hexdigest()
    assert show["headers"] == {"file.name": "in.ndjson", "file.record": "1"}
    assert [h["attempt"] for h in show["history"]] == [1, 2, 3]
    assert show["error_chain"][0]["code"] == "inventory.busy"


def test_edit_with_editor_then_replay(tmp_path: Path) -> None:
    setup_flow(tmp_path)
    assert cli("run", "flow.yaml", "--until-idle", "--idle-horizon", "5s", cwd=tmp_path).returncode == 0
    editor = tmp_path / "fix-qty.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/-2/2/' \"$1\"\n")
    editor.chmod(editor.stat().st_mode | stat.S_IEXEC)
    r = cli("dlq", "edit", "o-1", cwd=tmp_path, env={"EDITOR": str(editor), "VISUAL": ""})
    assert r.returncode == 0, r.stderr
    assert cli("run", "flow.yaml", "--until-idle", cwd=tmp_path).returncode == 0
    out = [orjson.loads(x) for x in (tmp_path / "out.ndjson").read_bytes().splitlines()]
    assert sorted((o["id"], o["qty"]) for o in out) == [("o-1", 2), ("o-2", 1)]
    assert orjson.loads(cli("dlq", "list", "--json", cwd=tmp_path).stdout) == []
    all_entries = orjson.loads(cli("dlq", "list", "--json", "--all", cwd=tmp_path).stdout)
    assert [e["status"] for e in all_entries] == ["replayed"]


def test_errors_and_exit_codes(tmp_path: Path) -> None:
    setup_flow(tmp_path)
    assert cli("dlq", "list", cwd=tmp_path).returncode == 1  # no state yet: a clear runtime error
    assert cli("run", "flow.yaml", "--until-idle", "--idle-horizon", "5s", cwd=tmp_path).returncode == 0
    assert cli("dlq", "show", "nope", cwd=tmp_path).returncode == 1
    assert cli("dlq", "replay", cwd=tmp_path).returncode == 2  # nothing selected
    assert cli("dlq", "edit", "o-1", "--set", "novalue", cwd=tmp_path).returncode == 2
    assert cli("dlq", "list", "--since", "yesterday-ish", cwd=tmp_path).returncode == 2
    st = cli("status", "--json", cwd=tmp_path)
    assert st.returncode == 0 and orjson.loads(st.stdout)["dead_letters"][0]["count"] == 1
    assert os.path.exists(tmp_path / ".seamline" / "state.db")


def test_a_state_url_no_store_speaks_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(
        "flow: f\nsource:\n  file: {path: in.ndjson}\nsinks:\n  - file: {path: out.ndjson}\n")
    (tmp_path / "in.ndjson").write_text('{"a": 1}\n')
    for args in (("run", "flow.yaml", "--until-idle"), ("dlq", "list")):
        r = cli(*args, "--state", "postgresql://ops:s3cret@db.internal/seamline", cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert "--state: unsupported state URL" in r.stderr and "Traceback" not in r.stderr
        assert "s3cret" not in r.stderr
    assert not (tmp_path / "out.ndjson").exists()
