"""Create the quickstart's demo CRM database (idempotent): accounts to look up, orders to fill."""

from __future__ import annotations

import sqlite3
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"

ACCOUNTS = [(f"C{n:04d}", f"ACC-{n * 7 % 9000 + 1000}", f"Customer {n}") for n in range(1001, 1013)]


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with sqlite3.connect(OUT / "crm.db") as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS accounts (customer_no TEXT PRIMARY KEY, account_id TEXT NOT NULL, name TEXT)"
        )
        db.executemany("INSERT OR IGNORE INTO accounts VALUES (?, ?, ?)", ACCOUNTS)
        db.execute(
            "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, account_id TEXT NOT NULL,"
            " status TEXT NOT NULL, ordered_at TEXT NOT NULL, currency TEXT NOT NULL, total REAL NOT NULL)"
        )
    print(f"CRM ready: {OUT / 'crm.db'} ({len(ACCOUNTS)} accounts)")


if __name__ == "__main__":
    main()
