"""Versioned schema migrations. Append new versions; never edit a released one.

The journal has a database file of its own (see ``sqlite.JOURNAL_SCHEMA``).
"""

from __future__ import annotations

__all__ = ["SQLITE_MIGRATIONS"]

SQLITE_MIGRATIONS: list[list[str]] = [
    # 1: the initial schema
    [
        """CREATE TABLE retries (
            rid TEXT PRIMARY KEY, flow TEXT NOT NULL, msg_id TEXT NOT NULL, due_at REAL NOT NULL,
            attempt INTEGER NOT NULL, resume INTEGER NOT NULL, pending_sinks BLOB, message BLOB NOT NULL,
            original BLOB NOT NULL, history BLOB NOT NULL, first_at REAL NOT NULL, origin TEXT NOT NULL,
            lease_until REAL)""",
        "CREATE INDEX retries_due ON retries(flow, due_at)",
        """CREATE TABLE dlq (
            dlq_id TEXT PRIMARY KEY, flow TEXT NOT NULL, msg_id TEXT NOT NULL, correlation_id TEXT NOT NULL,
            step TEXT NOT NULL, error_code TEXT NOT NULL, error_class TEXT NOT NULL, error_message TEXT NOT NULL,
            error_chain BLOB NOT NULL, attempts INTEGER NOT NULL, history BLOB NOT NULL, original BLOB NOT NULL,
            current BLOB NOT NULL, resume INTEGER NOT NULL, pending_sinks BLOB, first_failed_at REAL NOT NULL,
            dead_at REAL NOT NULL, status TEXT NOT NULL, replays INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX dlq_flow ON dlq(flow, status, dead_at)",
        "CREATE INDEX dlq_msg ON dlq(msg_id)",
        """CREATE TABLE idempotency (
            scope TEXT NOT NULL, key TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (scope, key))""",
        "CREATE TABLE checkpoints (scope TEXT PRIMARY KEY, value BLOB NOT NULL, updated_at REAL NOT NULL)",
        """CREATE TABLE inbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, flow TEXT NOT NULL, msg_id TEXT NOT NULL,
            record BLOB NOT NULL, received_at REAL NOT NULL, lease_until REAL)""",
        "CREATE INDEX inbox_flow ON inbox(flow, seq)",
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, action TEXT NOT NULL,
            actor TEXT NOT NULL, detail BLOB NOT NULL)""",
    ],
    # 2: messages parked by steps (resequence, aggregate)
    [
        """CREATE TABLE parked (
            park_id TEXT PRIMARY KEY, scope TEXT NOT NULL, key TEXT NOT NULL, seq REAL NOT NULL,
            record BLOB NOT NULL, parked_at REAL NOT NULL)""",
        "CREATE INDEX parked_scope ON parked(scope, key, seq)",
    ],
    # 3: dead letters published to a broker DLQ (on_error.dlq)
    [
        "ALTER TABLE dlq ADD COLUMN forwarded INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX dlq_forward ON dlq(flow, forwarded)",
    ],
]
