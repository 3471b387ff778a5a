"""SIGKILL the engine while it pages through a GraphQL connection and posts mutations; restart; nothing lost.

The flow reads customers with the polling source (one round, Relay pagination,
checkpointed cursor) and records an order per customer with the sink. Every
customer id must be recorded by the server or be in the dead-letter queue, and
the bearer token must appear in no output -- even though some orders make the
server quote the request's Authorization header in its error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
from tests.helpers import cli
from tests.integration.graphql.conftest import TOKEN
from tests.integration.graphql.shop_server import ShopServer

N = 1000
BATCH = 25
PAGE = 50

FLOW = """
flow: graphql-crash
source:
  graphql:
    url: {url}
    bearer_token: "${{env:SHOP_TOKEN}}"
    egress: {{allow_loopback: true}}
    connection: customers
    mode: once
    page_size: {page}
    query: >-
      query Customers($first: Int!, $after: String) {{ customers(first: $first, after: $after)
      {{ edges {{ cursor node {{ id name }} }} pageInfo {{ hasNextPage endCursor }} }} }}
sinks:
  - graphql:
      label: orders
      url: {url}
      bearer_token: "${{env:SHOP_TOKEN}}"
      egress: {{allow_loopback: true}}
      query: "mutation Record($input: OrderInput!) {{ recordOrder(input: $input) {{ ok id userErrors }} }}"
      variables:
        input: "{{'id': id, 'customerId': id, 'total': $contains(name, 'negative') ? -1 : 10}}"
      reject_when: recordOrder.userErrors
      concurrency: 4
settings: {{batch_size: {batch}, queue: 2, concurrency: 2, drain_timeout: 5s}}
on_error: {{retry: {{max_attempts: 4, initial: 20ms, max: 100ms}}}}
"""


def _customer(i: int) -> tuple[str, str]:
    if i % 89 == 0:
        return f"echo-{i:04d}", f"Customer {i}"  # the server quotes the Authorization header: DLQ
    if i % 60 == 0:
        return f"c{i:04d}", "negative total"  # errors[] without data: DLQ
    return f"c{i:04d}", f"Customer {i}"


def _engine(tmp: Path, log: str) -> tuple[subprocess.Popen[bytes], object]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SHOP_TOKEN": TOKEN,
           "SEAMLINE_LOG_LEVEL": "DEBUG"}
    out = (tmp / log).open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamline.cli", "run", "flow.yaml", "--until-idle", "--idle-horizon", "5s",
         "--state", str(tmp / "state.db")],
        cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    return proc, out


def test_sigkill_mid_stream_loses_nothing_and_leaks_no_token(shop: ShopServer, tmp_path: Path) -> None:
    ids: set[str] = set()
    poison: set[str] = set()
    for i in range(N):
        cid, name = _customer(i)
        shop.shop.add(cid, name)
        ids.add(cid)
        if cid.startswith("echo") or name.startswith("negative"):
            poison.add(cid)
    (tmp_path / "flow.yaml").write_text(FLOW.format(url=shop.url, page=PAGE, batch=BATCH))

    proc, out = _engine(tmp_path, "engine1.log")
    killed_at = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            killed_at = len(shop.shop.orders)
            if killed_at >= N // 5:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "ended before the kill: " + (tmp_path / "engine1.log").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()  # type: ignore[attr-defined]
    assert 0 < killed_at < N, f"the kill must land mid-stream (recorded {killed_at})"

    proc, out = _engine(tmp_path, "engine2.log")
    try:
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()  # type: ignore[attr-defined]
    assert rc == 0, (tmp_path / "engine2.log").read_text()[-3000:]

    recorded = Counter(shop.shop.orders)
    listing = cli("dlq", "list", "--json", "--state", str(tmp_path / "state.db"), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    rows = orjson.loads(listing.stdout)
    dead = {d["msg_id"] for d in rows}
    lost = sorted(ids - set(recorded) - dead)
    assert not lost, f"{len(lost)} of {N} lost after a SIGKILL at {killed_at}: {lost[:10]}"
    assert dead == poison, f"unexpected dead letters: {sorted(dead ^ poison)[:10]}"
    dupes = sum(c - 1 for c in recorded.values() if c > 1)
    print(f"killed after {killed_at} recorded; {dupes} duplicates; {len(dead)} dead-lettered")
    # in flight at the kill: batches queued and in work, plus the page the source was emitting
    assert dupes <= BATCH * 5 + PAGE, f"{dupes} duplicates exceed the in-flight bound"

    echo = next(d for d in rows if d["msg_id"] == "echo-0000")
    shown = cli("dlq", "show", echo["dlq_id"], "--json", "--state", str(tmp_path / "state.db"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "request headers" in shown.stdout and "authorization" in shown.stdout, "the server did quote them"

    texts = {"dlq list": listing.stdout, "dlq show": shown.stdout, "stderr": listing.stderr + shown.stderr}
    for f in tmp_path.rglob("*"):
        if f.is_file():
            texts[f.name] = f.read_bytes().decode("latin-1")
    leaked = [name for name, text in texts.items() if TOKEN in text]
    assert not leaked, f"the bearer token leaked into {leaked}"
