"""The broker examples run end to end: ``examples/kafka-to-postgres`` and ``examples/outbox-to-rabbitmq``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
KAFKA_EXAMPLE = ROOT / "examples" / "kafka-to-postgres"
OUTBOX_EXAMPLE = ROOT / "examples" / "outbox-to-rabbitmq"


def _seamline(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seamline.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


async def test_kafka_to_postgres(kafka_bootstrap: str, postgres_url: str, tmp_path: Path) -> None:
    import asyncpg

    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("DROP TABLE IF EXISTS kafka_example_orders")
        await conn.execute((KAFKA_EXAMPLE / "schema.sql").read_text())
        env = dict(os.environ, KAFKA_BOOTSTRAP=kafka_bootstrap, DATABASE_URL=postgres_url)
        pub = subprocess.run([sys.executable, str(KAFKA_EXAMPLE / "publish.py")], env=env, capture_output=True,
                             text=True, timeout=60, check=False)
        assert pub.returncode == 0, pub.stderr
        state = tmp_path / "orders.db"
        log = (tmp_path / "run.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "seamline.cli", "run", str(KAFKA_EXAMPLE / "flows"), "--state", str(state)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            expected = {"A-1001": ("shipped", 919.0, 2), "A-1002": ("cancelled", 119.7, 1), "A-1003": ("new", 310.0, 1)}
            rows: dict[str, Any] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "run.log").read_text()
                recs = await conn.fetch("SELECT * FROM kafka_example_orders")
                rows = {r["order_id"]: r for r in recs}
                if {k: (r["status"], r["total"], r["line_count"]) for k, r in rows.items()} == expected:
                    break
                await asyncio.sleep(0.3)
            else:
                raise AssertionError(f"rows not as expected: {rows}\n{(tmp_path / 'run.log').read_text()}")
            assert rows["A-1001"]["correlation_id"] == "A-1001"
            assert rows["A-1001"]["updated_at"] == "2026-03-03T07:45:00Z"
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            log.close()
        assert code == 0, (tmp_path / "run.log").read_text()
        trace = _seamline("trace", "A-1001", "--state", str(state), "--json", env=env)
        assert trace.returncode == 0, trace.stderr
        hops = json.loads(trace.stdout)
        text = json.dumps(hops)
        assert "orders-db" in text and "to-canonical" in text
    finally:
        await conn.execute("DROP TABLE IF EXISTS kafka_example_orders")
        await conn.close()


async def test_outbox_to_rabbitmq(rabbitmq: str, tmp_path: Path) -> None:
    import aio_pika

    queue_name = f"outbox-example-{uuid.uuid4().hex[:8]}"
    conn = await aio_pika.connect(rabbitmq, timeout=10)
    try:
        ch = await conn.channel()
        # a private exchange per run, so other publishers on the shared broker cannot interfere
        exchange = f"shop.events.{uuid.uuid4().hex[:8]}"
        ex = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await ch.declare_queue(queue_name, durable=True, arguments={"x-expires": 600_000})
        await queue.bind(ex, "order.#")
        env = dict(os.environ, AMQP_URL=rabbitmq)
        state = tmp_path / "outbox.db"
        example = tmp_path / "example"
        shutil.copytree(OUTBOX_EXAMPLE, example, ignore=shutil.ignore_patterns("out", "__pycache__"))
        subprocess.run([sys.executable, str(example / "prepare.py")], check=True, capture_output=True)
        flow_file = next((example / "flows").glob("*.yaml"))
        flow_file.write_text(flow_file.read_text().replace("exchange: shop.events", f"exchange: {exchange}"))
        run = _seamline("run", str(example / "flows"), "--until-idle", "--state", str(state), "--json",
                        env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        summary = json.loads(run.stdout)["flows"]["outbox-to-rabbitmq"]
        assert summary["delivered"] == 4 and summary["dead_lettered"] == 1, summary

        got: list[Any] = []
        deadline = time.monotonic() + 20
        while len(got) < 4 and time.monotonic() < deadline:
            m = await queue.get(no_ack=True, fail=False)
            if m is None:
                await asyncio.sleep(0.1)
                continue
            got.append(m)
        assert [m.message_id for m in got] == ["evt-0001", "evt-0003", "evt-0004", "evt-0005"]
        assert [m.routing_key for m in got] == ["order.created", "order.paid", "order.created", "order.cancelled"]
        assert [m.correlation_id for m in got] == ["A-1001", "A-1001", "A-1002", "A-1002"]
        first = json.loads(got[0].body)
        assert first == {"type": "order.created", "aggregate": {"type": "order", "id": "A-1001"},
                         "occurred_at": "2026-03-02T09:14:05Z",
                         "data": {"customer_no": "C-17", "total": 919.0, "currency": "EUR"}}
        assert all(str(m.headers.get("traceparent", "")).startswith("00-") for m in got)

        dlq = _seamline("dlq", "list", "--state", str(state), "--json", env=env)
        assert dlq.returncode == 0, dlq.stderr
        assert "evt-0002" in dlq.stdout and "rabbitmq.unroutable" in dlq.stdout

        import sqlite3

        with sqlite3.connect(example / "out" / "shop.db") as db:
            assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0, "relayed rows leave the outbox"
        again = _seamline("run", str(example / "flows"), "--until-idle", "--state", str(state), "--json",
                          env=env)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["flows"]["outbox-to-rabbitmq"]["received"] == 0
        assert await queue.get(no_ack=True, fail=False) is None
        await queue.delete()
        await ex.delete()
    finally:
        await conn.close()
