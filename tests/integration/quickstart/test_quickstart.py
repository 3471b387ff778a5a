"""The quickstart as a newcomer runs it: valid rows in the CRM, 3 bad rows in the DLQ, nothing twice."""

from __future__ import annotations

import csv
import shutil
import sqlite3
import sys
from pathlib import Path

import orjson
import pytest
from tests.helpers import ROOT, cli, read_ndjson

QS = ROOT / "examples" / "quickstart"


@pytest.fixture()
def qs(tmp_path: Path) -> Path:
    dst = tmp_path / "quickstart"
    shutil.copytree(QS, dst, ignore=shutil.ignore_patterns("out", "__pycache__"))
    import subprocess

    subprocess.run([sys.executable, str(dst / "prepare.py")], check=True, capture_output=True)
    return dst


def crm_rows(qs: Path) -> list[tuple[str, ...]]:
    with sqlite3.connect(qs / "out" / "crm.db") as db:
        q = "SELECT order_id, account_id, status, ordered_at, total FROM orders ORDER BY order_id"
        return db.execute(q).fetchall()


def test_quickstart_end_to_end(qs: Path) -> None:
    r = cli("run", "flows", "--until-idle", cwd=qs)
    assert r.returncode == 0, r.stderr
    assert "seamline dlq list" in r.stdout and "seamline dlq replay" in r.stdout

    with (qs / "data" / "orders.csv").open() as f:
        rows = list(csv.DictReader(f))
    bad = {"SO-4711", "SO-4727", "SO-4742"}
    valid = sorted(r["order_id"] for r in rows if r["order_id"] not in bad)
    assert len(rows) == 50
    crm = crm_rows(qs)
    assert [c[0] for c in crm] == valid
    so4701 = next(c for c in crm if c[0] == "SO-4701")
    assert so4701[2] == "delivered" and so4701[3] == "2026-03-27T12:44:00+01:00" and so4701[4] == 437.06
    erp = read_ndjson(qs / "out" / "erp-feed.ndjson")
    assert sorted(e["order_id"] for e in erp) == valid

    dl = cli("dlq", "list", "--json", cwd=qs)
    assert dl.returncode == 0, dl.stderr
    dead = {d["msg_id"]: d for d in orjson.loads(dl.stdout)}
    assert set(dead) == bad
    assert dead["SO-4711"]["step"] == "to-canonical" and "C9999" in dead["SO-4711"]["reason"]
    assert dead["SO-4727"]["step"] == "to-canonical" and "'Q'" in dead["SO-4727"]["reason"]
    assert dead["SO-4742"]["step"] == "check-export-row" and "/ordered_at" in dead["SO-4742"]["reason"]

    # a second run delivers nothing twice
    again = cli("run", "flows", "--until-idle", "--json", cwd=qs)
    assert again.returncode == 0, again.stderr
    assert orjson.loads(again.stdout)["flows"]["shop-orders"]["received"] == 0
    assert crm_rows(qs) == crm
    assert len(read_ndjson(qs / "out" / "erp-feed.ndjson")) == len(valid)
    assert len(orjson.loads(cli("dlq", "list", "--json", cwd=qs).stdout)) == 3

    # where did order 4711 go?
    tr = cli("trace", "SO-4711", "--json", cwd=qs)
    hops = orjson.loads(tr.stdout)
    assert [h["step"] for h in hops] == ["source", "check-export-row", "to-canonical"]
    assert hops[-1]["outcome"] == "dead-lettered"


def test_dlq_tooling_on_the_quickstart(qs: Path) -> None:
    assert cli("run", "flows", "--until-idle", "-q", cwd=qs).returncode == 0
    dead = {d["msg_id"]: d for d in orjson.loads(cli("dlq", "list", "--json", cwd=qs).stdout)}

    # filters
    by_step = orjson.loads(cli("dlq", "list", "--json", "--step", "to-canonical", cwd=qs).stdout)
    assert sorted(d["msg_id"] for d in by_step) == ["SO-4711", "SO-4727"]
    assert orjson.loads(cli("dlq", "list", "--json", "--error-class", "retryable", cwd=qs).stdout) == []
    assert len(orjson.loads(cli("dlq", "list", "--json", "--since", "1h", cwd=qs).stdout)) == 3

    # show: payload, headers, error chain, attempts
    show = orjson.loads(cli("dlq", "show", dead["SO-4742"]["dlq_id"], "--json", cwd=qs).stdout)
    assert show["original"]["body"]["ordered_at"] == "31/03/2026 25:61"
    assert show["headers"]["file.name"] == "orders.csv"
    assert show["error_chain"][0]["code"] == "validate.schema"
    assert show["history"][0]["attempt"] == 1
    human = cli("dlq", "show", "SO-4742", cwd=qs)
    assert human.returncode == 0 and "error chain" in human.stdout

    # fix the date by editing the payload; it is replayed from the start and delivered
    ed = cli("dlq", "edit", dead["SO-4742"]["dlq_id"], "--set", "ordered_at=2026-03-31T23:10:00Z", cwd=qs)
    assert ed.returncode == 0, ed.stderr
    # the unknown customer gets an account in the CRM, then the entry is replayed
    with sqlite3.connect(qs / "out" / "crm.db") as db:
        db.execute("INSERT INTO accounts VALUES ('C9999', 'ACC-9999', 'New customer')")
    assert cli("dlq", "replay", "SO-4711", cwd=qs).returncode == 0
    r = cli("run", "flows", "--until-idle", "--json", cwd=qs)
    assert r.returncode == 0, r.stderr
    ids = [c[0] for c in crm_rows(qs)]
    assert "SO-4742" in ids and "SO-4711" in ids and "SO-4727" not in ids
    assert next(c for c in crm_rows(qs) if c[0] == "SO-4742")[3] == "2026-04-01T01:10:00+02:00"

    remaining = orjson.loads(cli("dlq", "list", "--json", cwd=qs).stdout)
    assert [d["msg_id"] for d in remaining] == ["SO-4727"]

    # purge asks first; --yes skips the question; both go to the audit log
    no = cli("dlq", "purge", "--all", cwd=qs, input_="n\n")
    assert no.returncode != 0
    assert len(orjson.loads(cli("dlq", "list", "--json", cwd=qs).stdout)) == 1
    yes = cli("dlq", "purge", "--all", "--yes", cwd=qs)
    assert yes.returncode == 0 and "purged 1" in yes.stdout
    assert orjson.loads(cli("dlq", "list", "--json", cwd=qs).stdout) == []
    with sqlite3.connect(qs / ".seamline" / "state.db") as db:
        actions = [a for (a,) in db.execute("SELECT action FROM audit ORDER BY seq")]
    assert actions == ["dlq.edit", "dlq.replay", "dlq.replay", "dlq.purge"]


def test_docs_mapping_renders_the_quickstart_specification(qs: Path, tmp_path: Path) -> None:
    out = tmp_path / "spec"
    r = cli("docs", "mapping", str(qs / "flows"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    md = (out / "shop-orders-mapping.md").read_text()
    for needle in ("customer.account_id", "$xref", "accounts", "order_status", "$toTimezone", "customer_no"):
        assert needle in md
    assert "<table" in (out / "shop-orders-mapping.html").read_text()
