"""The order service's side of the outbox: business rows and outbox rows, written in one transaction.

Creates `out/shop.db` (SQLite) with an `orders` table and an `outbox` table and commits a few
business changes, each together with the event that announces it. Run it again to start over.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

HERE = Path(__file__).resolve().parent
DB = HERE / "out" / "shop.db"

CHANGES = [
    # (business statement, parameters, outbox event)
    ("INSERT INTO orders(id, customer_no, total, status) VALUES (?,?,?,?)", ("A-1001", "C-17", 919.0, "created"),
     ("evt-0001", "order", "A-1001", "order.created", "2026-03-02T09:14:05Z",
      {"customer_no": "C-17", "total": 919.0, "currency": "EUR"})),
    ("UPDATE orders SET status = status WHERE 0", (),
     ("evt-0002", "customer", "C-04", "customer.address_changed", "2026-03-02T09:16:30Z",
      {"city": "Graz", "country": "AT"})),
    ("UPDATE orders SET status = 'paid' WHERE id = ?", ("A-1001",),
     ("evt-0003", "order", "A-1001", "order.paid", "2026-03-02T09:31:12Z",
      {"amount": 919.0, "currency": "EUR", "method": "card"})),
    ("INSERT INTO orders(id, customer_no, total, status) VALUES (?,?,?,?)", ("A-1002", "C-04", 42.5, "created"),
     ("evt-0004", "order", "A-1002", "order.created", "2026-03-02T10:02:44Z",
      {"customer_no": "C-04", "total": 42.5, "currency": "EUR"})),
    ("UPDATE orders SET status = 'cancelled' WHERE id = ?", ("A-1002",),
     ("evt-0005", "order", "A-1002", "order.cancelled", "2026-03-02T10:05:00Z", {"reason": "customer request"})),
]


def main() -> None:
    DB.parent.mkdir(exist_ok=True)
    DB.unlink(missing_ok=True)
    with sqlite3.connect(DB) as db:
        db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, customer_no TEXT, total REAL, status TEXT)")
        db.execute(
            "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE NOT NULL,"
            " aggregate_type TEXT NOT NULL, aggregate_id TEXT NOT NULL, event_type TEXT NOT NULL,"
            " created_at TEXT NOT NULL, payload TEXT NOT NULL)"
        )
    for sql, params, (event_id, agg_type, agg_id, event_type, at, payload) in CHANGES:
        with sqlite3.connect(DB) as db:  # one transaction: the change and its event, or neither
            db.execute(sql, params)
            db.execute(
                "INSERT INTO outbox(event_id, aggregate_type, aggregate_id, event_type, created_at, payload)"
                " VALUES (?,?,?,?,?,?)",
                (event_id, agg_type, agg_id, event_type, at, json.dumps(payload)),
            )
    print(f"shop database ready: {DB} ({len(CHANGES)} outbox events)")


if __name__ == "__main__":
    main()
