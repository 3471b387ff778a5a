"""Benchmark: the SQL sink's upserts into PostgreSQL next to a raw asyncpg ``executemany``, same run.

Both sides take the same JSON records (as a flow would hand them over),
turn them into column values, and upsert them by key in one transaction per
batch: a first pass inserts every row, a second pass updates every row. The
runs alternate (raw, seamline, raw, seamline, ...) and the best round of each
counts. Prints msgs/s of each and the ratio (goal: seamline >= 0.7x raw).

    python bench/sql_sink.py [--url postgresql://postgres@127.0.0.1:5432/test] [--n 20000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import decimal
import os
import time
import uuid
from pathlib import Path
from typing import Any

COLUMNS = ("order_id", "customer", "status", "total", "ordered_at", "items")
DDL = (
    "CREATE TABLE {t} (order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, status TEXT NOT NULL, "
    "total NUMERIC(12,2) NOT NULL, ordered_at TIMESTAMPTZ NOT NULL, items INTEGER NOT NULL)"
)
UPSERT = (
    "INSERT INTO {t} (order_id, customer, status, total, ordered_at, items) VALUES ($1, $2, $3, $4, $5, $6) "
    "ON CONFLICT (order_id) DO UPDATE SET customer = excluded.customer, status = excluded.status, "
    "total = excluded.total, ordered_at = excluded.ordered_at, items = excluded.items"
)


def records(n: int, status: str) -> list[dict[str, Any]]:
    return [
        {
            "order_id": f"SO-{i}",
            "customer": f"C{i % 5000:05d}",
            "status": status,
            "total": f"{(i * 37) % 100000 / 100:.2f}",
            "ordered_at": f"2026-03-{1 + i % 28:02d}T{i % 24:02d}:00:00+00:00",
            "items": 1 + i % 7,
        }
        for i in range(n)
    ]


async def raw_asyncpg(url: str, table: str, passes: list[list[dict[str, Any]]], batch: int) -> float:
    import asyncpg

    conn = await asyncpg.connect(url)
    sql = UPSERT.format(t=table)
    try:
        t0 = time.perf_counter()
        for rows in passes:
            for i in range(0, len(rows), batch):
                args = [
                    (r["order_id"], r["customer"], r["status"], decimal.Decimal(r["total"]),
                     dt.datetime.fromisoformat(r["ordered_at"]), int(r["items"]))
                    for r in rows[i : i + batch]
                ]
                async with conn.transaction():
                    await conn.executemany(sql, args)
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def seamline_sink(url: str, table: str, passes: list[list[dict[str, Any]]], batch: int) -> float:
    from seamline.connectors.sql import SqlSink, SqlSinkConfig
    from seamline.core.component import BuildContext
    from seamline.core.message import Message

    ctx = BuildContext(flow="bench", base_dir=Path.cwd(), store=None)  # type: ignore[arg-type]
    sink = SqlSink(SqlSinkConfig(url=url, table=table, mode="upsert", key=["order_id"]), ctx)
    await sink.open()
    try:
        msgs = [[Message(r, id=r["order_id"]) for r in rows] for rows in passes]
        t0 = time.perf_counter()
        for ms in msgs:
            for i in range(0, len(ms), batch):
                await sink.write(ms[i : i + batch])
        return time.perf_counter() - t0
    finally:
        await sink.close()


async def bench_sql_sink(url: str, n: int = 20_000, batch: int = 500, rounds: int = 3) -> dict[str, float]:
    """Upsert ``n`` records twice (insert, then update) both ways; returns msgs/s of each and the ratio."""
    import asyncpg

    passes = [records(n, "new"), records(n, "paid")]
    total = sum(len(p) for p in passes)
    admin = await asyncpg.connect(url)
    best = {"raw": float("inf"), "seamline": float("inf")}
    try:
        for _ in range(rounds):
            for name, fn in (("raw", raw_asyncpg), ("seamline", seamline_sink)):
                table = f"bench_{name}_{uuid.uuid4().hex[:8]}"
                await admin.execute(DDL.format(t=table))
                try:
                    secs = await fn(url, table, passes, batch)
                    count = await admin.fetchval(f"SELECT count(*) FROM {table} WHERE status = 'paid'")
                    assert count == n, f"{name}: {count} rows updated, expected {n}"
                finally:
                    await admin.execute(f"DROP TABLE {table}")
                best[name] = min(best[name], secs)
    finally:
        await admin.close()
    raw, ours = total / best["raw"], total / best["seamline"]
    return {"raw_msgs_per_s": raw, "seamline_msgs_per_s": ours, "ratio": ours / raw}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("SEAMLINE_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--n", type=int, default=20_000, help="records per pass (two passes: insert, update)")
    ap.add_argument("--batch", type=int, default=500, help="records per transaction")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    r = asyncio.run(bench_sql_sink(args.url, args.n, args.batch, args.rounds))
    print(f"SQL sink upsert into PostgreSQL, {2 * args.n} upserts in batches of {args.batch}:")
    print(f"  raw asyncpg executemany  {r['raw_msgs_per_s']:>10,.0f} msgs/s")
    print(f"  seamline sql sink        {r['seamline_msgs_per_s']:>10,.0f} msgs/s")
    print(f"  ratio                    {r['ratio']:>10.2f}x  (goal >= 0.7x)")


if __name__ == "__main__":
    main()
