"""The embedded store: one SQLite database in WAL mode, one writer thread.

All SQL runs on a dedicated thread so the event loop never blocks on disk;
the hot path commits a whole batch (journal, retries, dead letters,
checkpoints) in one transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from seamline.store.base import (
    Batch,
    DeadLetter,
    DlqFilter,
    InboxItem,
    JournalEntry,
    PackedJournal,
    RetryEntry,
    key_token,
)
from seamline.store.migrations import SQLITE_MIGRATIONS

__all__ = ["SqliteStore"]

_BUSY_TIMEOUT = 30.0


def _connect_wal(path: str) -> sqlite3.Connection:
    """A connection in WAL mode that waits up to ``_BUSY_TIMEOUT`` for other processes' locks.

    Switching a new database to WAL needs its exclusive lock, and SQLite answers "database is
    locked" at once, without calling the busy handler, when two connections both hold a shared
    lock and want it (it would deadlock otherwise). Processes that open a new database together
    therefore retry the switch until the deadline instead of failing."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT)
    deadline = time.monotonic() + _BUSY_TIMEOUT
    pause = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                conn.close()
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT * 1000)}")
    return conn


# One row holds every hop of every message of one batch of one flow, packed; ``journal_key`` (a
# full-text index, one document per batch row) maps each message id and correlation id to the
# batches that mention it, and ``trace`` expands the matching entries into one record per hop.
# The full-text index is appended to in segments, so a batch costs one row and one document
# whatever its ids look like (a B-tree of random ids rewrites pages all over the file per commit).
JOURNAL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS journal_batch (
        seq INTEGER PRIMARY KEY,
        ts REAL NOT NULL, flow TEXT NOT NULL, messages INTEGER NOT NULL, entries BLOB NOT NULL, done_at REAL)""",
    "CREATE VIRTUAL TABLE IF NOT EXISTS journal_key USING fts5(keys, detail=none, columnsize=0)",
    "CREATE INDEX IF NOT EXISTS journal_batch_ts ON journal_batch(ts)",
)
_JOURNAL_INSERT = "INSERT INTO journal_batch(ts, flow, messages, entries, done_at) VALUES (?,?,?,?,?)"
_JOURNAL_KEY = "INSERT INTO journal_key(rowid, keys) VALUES (?,?)"


def _pack_journal(rows: list[Any]) -> list[PackedJournal]:
    """Group hop rows by flow and message, keeping their order: one packed row per flow, with the
    index document of its ids."""
    flows: dict[str, dict[tuple[str, str], list[Any]]] = {}
    for ts, flow, msg_id, corr, step, outcome, dur, digest, detail in rows:
        groups = flows.get(flow)
        if groups is None:
            groups = flows[flow] = {}
        key = (msg_id, corr)
        hops = groups.get(key)
        if hops is None:
            groups[key] = [(ts, step, outcome, dur, digest, detail)]
        else:
            hops.append((ts, step, outcome, dur, digest, detail))
    enc = _enc.encode
    out = []
    for flow, groups in flows.items():
        entries = []
        keys: set[str] = set()
        first = None
        for (msg_id, corr), hops in groups.items():
            if first is None:
                first = hops[0][0]
            keys.add(msg_id)
            if corr and corr != msg_id:
                keys.add(corr)
                entries.append((msg_id, corr, hops))
            else:
                entries.append((msg_id, None, hops))
        out.append((first or 0.0, flow, len(entries), enc(entries), " ".join(map(key_token, keys)), None))
    return out


T = TypeVar("T")

#: remember an idempotency key (a later expiry wins)
_REMEMBER_KEY = (
    "INSERT INTO idempotency(scope, key, expires_at) VALUES (?,?,?)"
    " ON CONFLICT(scope, key) DO UPDATE SET expires_at=excluded.expires_at"
)


def _known_keys(c: sqlite3.Connection, scope: str, keys: Sequence[str], now: float) -> set[str]:
    """Which of ``keys`` are remembered in ``scope`` and not expired at ``now``."""
    out: set[str] = set()
    keys = list(keys)
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        rows = c.execute(
            f"SELECT key FROM idempotency WHERE scope=? AND expires_at>? AND key IN ({','.join('?' * len(chunk))})",
            (scope, now, *chunk),
        ).fetchall()
        out.update(r[0] for r in rows)
    return out


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


def _dumps(v: Any) -> bytes:
    return _enc.encode(v)


def _loads(v: Any) -> Any:
    return _dec.decode(v) if v is not None else None


class SqliteStore:
    """SQLite-backed store. ``path`` may be ``:memory:`` for tests of one process."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        self._conn: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # the journal lives in a database file of its own, written by its own thread, so that
        # observability never sits on the delivery path (see docs/adr/0001-runtime-and-store.md)
        self.journal_path = self.path if self.path == ":memory:" else str(Path(self.path).with_suffix(".journal.db"))
        self._jconn: sqlite3.Connection | None = None
        self._jpool: ThreadPoolExecutor | None = None
        self._jpending: list[asyncio.Future[None]] = []
        self._closing = False
        self.journal_backlog = 8
        self._jlock = threading.Lock()

    # -- plumbing -------------------------------------------------------------
    def open_sync(self) -> None:
        if self._conn is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = _connect_wal(self.path)
        conn.execute("PRAGMA foreign_keys=ON")
        self._conn = conn
        self._migrate()
        if self.path == ":memory:":
            self._jconn = conn
        else:
            self._jconn = _connect_wal(self.journal_path)
        (made,) = self._jconn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('journal_batch', 'journal_key', 'journal_batch_ts')"
        ).fetchone()
        if made < 3:  # an existing journal is opened without asking for its write lock
            for stmt in JOURNAL_SCHEMA:
                self._jconn.execute(stmt)
        cols = {r[1] for r in self._jconn.execute("PRAGMA table_info(journal_batch)")}
        if "done_at" not in cols:  # a journal written before the workers setting existed
            self._jconn.execute("ALTER TABLE journal_batch ADD COLUMN done_at REAL")

    def close_sync(self) -> None:
        if self._jconn is not None and self._jconn is not self._conn:
            self._jconn.close()
        self._jconn = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def open(self) -> None:
        self._closing = False
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seamline-store")
        await self._run(self.open_sync)

    async def close(self) -> None:
        self._closing = True
        await self.flush_journal()
        if self._jpool is not None:
            self._jpool.shutdown(wait=True)
            self._jpool = None
        if self._pool is not None:
            await self._run(self.close_sync)
            self._pool.shutdown(wait=True)
            self._pool = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seamline-store")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self.open_sync()
        assert self._conn is not None
        return self._conn

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                out = fn(c)
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
            if isinstance(out, sqlite3.Cursor):
                # never hand a cursor to another thread: freeing it there resets its statement
                # while this thread may be running another one on the same connection (SQLITE_MISUSE)
                out.close()
                return None  # type: ignore[return-value]
            return out

    def _migrate(self) -> None:
        """Apply missing migrations; the version is read under the write lock, so two
        processes opening a new database at once never apply the same step twice.

        A database that is up to date is recognised by a plain read first: opening it (the CLI
        or a second engine beside a running one) never waits for the write lock."""
        c = self.conn
        try:
            row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError:  # a new database: no meta table yet
            row = None
        if row is not None and int(row[0]) >= len(SQLITE_MIGRATIONS):
            return
        c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for target, script in enumerate(SQLITE_MIGRATIONS, start=1):
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if (int(row[0]) if row else 0) >= target:
                    c.execute("COMMIT")
                    continue
                for stmt in script:
                    c.execute(stmt)
                c.execute(
                    "INSERT INTO meta(key, value) VALUES('schema_version', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (str(target),),
                )
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def schema_version(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    # -- hot path ---------------------------------------------------------------
    def write_journal_sync(self, rows: list[Any]) -> None:
        self._write_packed_sync(_pack_journal(rows))

    def _write_packed_sync(self, packed: list[PackedJournal]) -> None:
        c = self._jconn if self._jconn is not None else self.conn
        lock = self._lock if c is self._conn else self._jlock
        with lock:
            c.execute("BEGIN IMMEDIATE")
            try:
                for ts, flow, n, blob, keys, done_at in packed:
                    seq = c.execute(_JOURNAL_INSERT, (ts, flow, n, blob, done_at)).lastrowid
                    c.execute(_JOURNAL_KEY, (seq, keys))
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    async def write_journal(self, rows: list[Any]) -> None:
        """Queue journal rows; written in order by the journal thread (bounded backlog)."""
        if rows:
            await self._queue_packed(_pack_journal(rows))

    async def _queue_packed(self, packed: list[PackedJournal]) -> None:
        if self._closing:
            raise RuntimeError("the store is closing")
        if self.path == ":memory:":
            await self._run(self._write_packed_sync, packed)
            return
        if self._jpool is None:
            self._jpool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seamline-journal")
        loop = asyncio.get_running_loop()
        self._jpending = [f for f in self._jpending if not f.done()]
        while len(self._jpending) >= self.journal_backlog:
            await asyncio.wait(self._jpending[:1])
            self._jpending = [f for f in self._jpending if not f.done()]
        self._jpending.append(loop.run_in_executor(self._jpool, self._write_packed_sync, packed))

    async def flush_journal(self) -> None:
        pending, self._jpending = self._jpending, []
        for f in pending:
            try:
                await f
            except Exception:  # pragma: no cover - reported, never blocks delivery
                import logging

                logging.getLogger("seamline.store").exception("journal write failed")

    def commit_sync(self, b: Batch) -> None:
        def tx(c: sqlite3.Connection) -> None:
            if b.retries_done:
                c.executemany("DELETE FROM retries WHERE rid=?", [(r,) for r in b.retries_done])
            if b.retries:
                c.executemany(
                    "INSERT INTO retries(rid, flow, msg_id, due_at, attempt, resume, pending_sinks, message,"
                    " original, history, first_at, origin, lease_until) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,NULL)"
                    " ON CONFLICT(rid) DO UPDATE SET due_at=excluded.due_at, attempt=excluded.attempt,"
                    " resume=excluded.resume, pending_sinks=excluded.pending_sinks, message=excluded.message,"
                    " history=excluded.history, lease_until=NULL",
                    [
                        (
                            r.rid, r.flow, r.msg_id, r.due_at, r.attempt, r.resume,
                            _dumps(r.pending_sinks), _dumps(r.message), _dumps(r.original),
                            _dumps(r.history), r.first_at, r.origin,
                        )
                        for r in b.retries
                    ],
                )
            if b.dead:
                c.executemany(
                    "INSERT INTO dlq(dlq_id, flow, msg_id, correlation_id, step, error_code, error_class,"
                    " error_message, error_chain, attempts, history, original, current, resume, pending_sinks,"
                    " first_failed_at, dead_at, status, replays) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            d.dlq_id, d.flow, d.msg_id, d.correlation_id, d.step, d.error_code, d.error_class,
                            d.error_message, _dumps(d.error_chain), d.attempts, _dumps(d.history),
                            _dumps(d.original), _dumps(d.current), d.resume, _dumps(d.pending_sinks),
                            d.first_failed_at, d.dead_at, d.status, d.replays,
                        )
                        for d in b.dead
                    ],
                )
            for scope, value in b.checkpoints.items():
                c.execute(
                    "INSERT INTO checkpoints(scope, value, updated_at) VALUES (?,?,?)"
                    " ON CONFLICT(scope) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                    (scope, _dumps(value), time.time()),
                )
            if b.unpark:
                c.executemany("DELETE FROM parked WHERE park_id=?", [(p,) for p in b.unpark])
            if b.idempotency:
                c.executemany(
                    _REMEMBER_KEY,
                    b.idempotency,
                )

        self._tx(tx)

    async def commit(self, batch: Batch) -> None:
        if batch.journal:
            rows, batch.journal = batch.journal, []
            await self.write_journal(rows)
        if batch.journal_packed:
            packed, batch.journal_packed = batch.journal_packed, []
            await self._queue_packed(packed)
        if not batch.empty():
            await self._run(self.commit_sync, batch)

    # -- checkpoints --------------------------------------------------------------
    def get_checkpoint_sync(self, scope: str) -> Any:
        row = self.conn.execute("SELECT value FROM checkpoints WHERE scope=?", (scope,)).fetchone()
        return _loads(row[0]) if row else None

    async def get_checkpoint(self, scope: str) -> Any:
        return await self._run(self.get_checkpoint_sync, scope)

    async def put_checkpoint(self, scope: str, value: Any) -> None:
        await self.commit(Batch(checkpoints={scope: value}))

    # -- retries ------------------------------------------------------------------
    def _retry_from_row(self, r: sqlite3.Row | tuple[Any, ...]) -> RetryEntry:
        return RetryEntry(
            rid=r[0], flow=r[1], msg_id=r[2], due_at=r[3], attempt=r[4], resume=r[5],
            pending_sinks=_loads(r[6]), message=_loads(r[7]), original=_loads(r[8]),
            history=_loads(r[9]) or [], first_at=r[10], origin=r[11],
        )

    _RETRY_COLS = (
        "rid, flow, msg_id, due_at, attempt, resume, pending_sinks, message, original, history, first_at, origin"
    )

    def due_retries_sync(self, flows: Sequence[str], now: float, limit: int, lease: float) -> list[RetryEntry]:
        marks = ",".join("?" * len(flows))

        def tx(c: sqlite3.Connection) -> list[RetryEntry]:
            rows = c.execute(
                f"SELECT {self._RETRY_COLS} FROM retries WHERE flow IN ({marks}) AND due_at <= ?"
                " AND (lease_until IS NULL OR lease_until <= ?) ORDER BY due_at LIMIT ?",
                (*flows, now, now, limit),
            ).fetchall()
            if rows:
                c.executemany(
                    "UPDATE retries SET lease_until=? WHERE rid=?", [(now + lease, r[0]) for r in rows]
                )
            return [self._retry_from_row(r) for r in rows]

        return self._tx(tx)

    async def due_retries(self, flows: Sequence[str], now: float, limit: int, lease: float) -> list[RetryEntry]:
        if not flows:
            return []
        return await self._run(self.due_retries_sync, flows, now, limit, lease)

    def next_retry_at_sync(self, flows: Sequence[str]) -> float | None:
        marks = ",".join("?" * len(flows))
        row = self.conn.execute(
            f"SELECT MIN(CASE WHEN lease_until IS NOT NULL AND lease_until > due_at THEN lease_until ELSE due_at END)"
            f" FROM retries WHERE flow IN ({marks})",
            tuple(flows),
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    async def next_retry_at(self, flows: Sequence[str]) -> float | None:
        if not flows:
            return None
        return await self._run(self.next_retry_at_sync, flows)

    def count_retries_sync(self, flow: str | None = None) -> int:
        if flow is None:
            return int(self.conn.execute("SELECT COUNT(*) FROM retries").fetchone()[0])
        return int(self.conn.execute("SELECT COUNT(*) FROM retries WHERE flow=?", (flow,)).fetchone()[0])

    async def count_retries(self, flow: str | None = None) -> int:
        return await self._run(self.count_retries_sync, flow)

    def list_retries_sync(self, flow: str | None = None) -> list[RetryEntry]:
        q = f"SELECT {self._RETRY_COLS} FROM retries"
        args: tuple[Any, ...] = ()
        if flow:
            q += " WHERE flow=?"
            args = (flow,)
        return [self._retry_from_row(r) for r in self.conn.execute(q + " ORDER BY due_at", args).fetchall()]

    def release_leases_sync(self, flows: Sequence[str]) -> None:
        marks = ",".join("?" * len(flows))
        self._tx(lambda c: c.execute(f"UPDATE retries SET lease_until=NULL WHERE flow IN ({marks})", tuple(flows)))
        self._tx(lambda c: c.execute(f"UPDATE inbox SET lease_until=NULL WHERE flow IN ({marks})", tuple(flows)))

    async def release_leases(self, flows: Sequence[str]) -> None:
        """Forget leases of a previous run of these flows (it crashed or stopped)."""
        if flows:
            await self._run(self.release_leases_sync, flows)

    # -- dead letters ----------------------------------------------------------------
    _DLQ_COLS = (
        "dlq_id, flow, msg_id, correlation_id, step, error_code, error_class, error_message, error_chain,"
        " attempts, history, original, current, resume, pending_sinks, first_failed_at, dead_at, status, replays"
    )

    def _dead_from_row(self, r: tuple[Any, ...]) -> DeadLetter:
        return DeadLetter(
            dlq_id=r[0], flow=r[1], msg_id=r[2], correlation_id=r[3], step=r[4], error_code=r[5],
            error_class=r[6], error_message=r[7], error_chain=_loads(r[8]) or [], attempts=r[9],
            history=_loads(r[10]) or [], original=_loads(r[11]), current=_loads(r[12]), resume=r[13],
            pending_sinks=_loads(r[14]), first_failed_at=r[15], dead_at=r[16], status=r[17], replays=r[18],
        )

    def list_dead_sync(self, flt: DlqFilter) -> list[DeadLetter]:
        where: list[str] = []
        args: list[Any] = []
        for col, val in (
            ("flow", flt.flow), ("step", flt.step), ("error_class", flt.error_class),
            ("error_code", flt.error_code), ("status", flt.status),
        ):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        if flt.since is not None:
            where.append("dead_at>=?")
            args.append(flt.since)
        if flt.until is not None:
            where.append("dead_at<=?")
            args.append(flt.until)
        if flt.ids is not None:
            ids = list(flt.ids)
            if not ids:
                return []
            where.append(f"(dlq_id IN ({','.join('?' * len(ids))}) OR msg_id IN ({','.join('?' * len(ids))}))")
            args.extend(ids)
            args.extend(ids)
        q = f"SELECT {self._DLQ_COLS} FROM dlq"
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY dead_at, dlq_id"
        if flt.limit:
            q += f" LIMIT {int(flt.limit)}"
        return [self._dead_from_row(r) for r in self.conn.execute(q, args).fetchall()]

    async def list_dead(self, flt: DlqFilter) -> list[DeadLetter]:
        return await self._run(self.list_dead_sync, flt)

    def get_dead_sync(self, dlq_id: str) -> DeadLetter | None:
        row = self.conn.execute(
            f"SELECT {self._DLQ_COLS} FROM dlq WHERE dlq_id=? OR msg_id=? ORDER BY dead_at DESC LIMIT 1",
            (dlq_id, dlq_id),
        ).fetchone()
        if row is None:
            rows = self.conn.execute(
                f"SELECT {self._DLQ_COLS} FROM dlq WHERE dlq_id LIKE ? LIMIT 2", (dlq_id + "%",)
            ).fetchall()
            row = rows[0] if len(rows) == 1 else None
        return self._dead_from_row(row) if row else None

    async def get_dead(self, dlq_id: str) -> DeadLetter | None:
        return await self._run(self.get_dead_sync, dlq_id)

    def replay_dead_sync(
        self,
        dlq_ids: Sequence[str],
        now: float,
        from_step: bool,
        actor: str,
        edited: dict[str, dict[str, Any]] | None = None,
    ) -> int:
        def tx(c: sqlite3.Connection) -> int:
            n = 0
            for dlq_id in dlq_ids:
                row = c.execute(f"SELECT {self._DLQ_COLS} FROM dlq WHERE dlq_id=?", (dlq_id,)).fetchone()
                if row is None:
                    continue
                d = self._dead_from_row(row)
                if d.status != "dead":
                    continue
                message = d.current if from_step else d.original
                if edited and dlq_id in edited:
                    message = edited[dlq_id]
                entry = RetryEntry(
                    rid=f"replay-{uuid.uuid4().hex}", flow=d.flow, msg_id=d.msg_id, due_at=now, attempt=0,
                    resume=d.resume if from_step else 0,
                    pending_sinks=d.pending_sinks if from_step else None,
                    message=message, original=d.original,
                    history=[*d.history, {"at": now, "event": "replay", "from": "step" if from_step else "start",
                                          "by": actor}],
                    first_at=now, origin="replay",
                )
                c.execute(
                    "INSERT INTO retries(rid, flow, msg_id, due_at, attempt, resume, pending_sinks, message,"
                    " original, history, first_at, origin) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        entry.rid, entry.flow, entry.msg_id, entry.due_at, entry.attempt, entry.resume,
                        _dumps(entry.pending_sinks), _dumps(entry.message), _dumps(entry.original),
                        _dumps(entry.history), entry.first_at, entry.origin,
                    ),
                )
                c.execute(
                    "UPDATE dlq SET status='replayed', replays=replays+1 WHERE dlq_id=?", (dlq_id,)
                )
                self._audit(c, "dlq.replay", actor, {
                    "dlq_id": dlq_id, "msg_id": d.msg_id, "flow": d.flow,
                    "from": "step" if from_step else "start", "edited": bool(edited and dlq_id in edited),
                })
                n += 1
            return n

        return self._tx(tx)

    async def replay_dead(
        self,
        dlq_ids: Sequence[str],
        *,
        now: float,
        from_step: bool,
        actor: str,
        edited: dict[str, dict[str, Any]] | None = None,
    ) -> int:
        return await self._run(self.replay_dead_sync, dlq_ids, now, from_step, actor, edited)

    def purge_dead_sync(self, dlq_ids: Sequence[str], actor: str) -> int:
        def tx(c: sqlite3.Connection) -> int:
            n = 0
            for dlq_id in dlq_ids:
                row = c.execute("SELECT msg_id, flow FROM dlq WHERE dlq_id=?", (dlq_id,)).fetchone()
                if row is None:
                    continue
                c.execute("DELETE FROM dlq WHERE dlq_id=?", (dlq_id,))
                self._audit(c, "dlq.purge", actor, {"dlq_id": dlq_id, "msg_id": row[0], "flow": row[1]})
                n += 1
            return n

        return self._tx(tx)

    def to_forward_sync(self, flow: str, limit: int) -> list[DeadLetter]:
        rows = self.conn.execute(
            f"SELECT {self._DLQ_COLS} FROM dlq WHERE flow=? AND forwarded=0 ORDER BY dead_at LIMIT ?", (flow, limit)
        ).fetchall()
        return [self._dead_from_row(r) for r in rows]

    async def to_forward(self, flow: str, limit: int = 500) -> list[DeadLetter]:
        """Dead letters not yet published to the flow's DLQ destination."""
        return await self._run(self.to_forward_sync, flow, limit)

    async def mark_forwarded(self, dlq_ids: Sequence[str]) -> None:
        await self._run(
            self._tx, lambda c: c.executemany("UPDATE dlq SET forwarded=1 WHERE dlq_id=?", [(i,) for i in dlq_ids])
        )

    async def purge_dead(self, dlq_ids: Sequence[str], *, actor: str) -> int:
        return await self._run(self.purge_dead_sync, dlq_ids, actor)

    def update_dead_message_sync(
        self, dlq_id: str, original: dict[str, Any], current: dict[str, Any], actor: str
    ) -> None:
        def tx(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE dlq SET original=?, current=? WHERE dlq_id=?", (_dumps(original), _dumps(current), dlq_id)
            )
            self._audit(c, "dlq.edit", actor, {"dlq_id": dlq_id})

        self._tx(tx)

    async def update_dead_message(
        self, dlq_id: str, original: dict[str, Any], current: dict[str, Any], *, actor: str
    ) -> None:
        await self._run(self.update_dead_message_sync, dlq_id, original, current, actor)

    # -- idempotency -------------------------------------------------------------------
    def seen_sync(self, scope: str, keys: Sequence[str], now: float) -> set[str]:
        return _known_keys(self.conn, scope, keys, now)

    async def seen(self, scope: str, keys: Sequence[str], now: float) -> set[str]:
        return await self._run(self.seen_sync, scope, keys, now)

    async def remember(self, scope: str, keys: Sequence[tuple[str, float]]) -> None:
        await self.commit(Batch(idempotency=[(scope, k, exp) for k, exp in keys]))

    # -- parked messages --------------------------------------------------------------------------
    def park_sync(self, scope: str, rows: Sequence[tuple[str, str, float, dict[str, Any]]]) -> None:
        now = time.time()
        self._tx(
            lambda c: c.executemany(
                "INSERT OR IGNORE INTO parked(park_id, scope, key, seq, record, parked_at) VALUES (?,?,?,?,?,?)",
                [(pid, scope, key, seq, _dumps(rec), now) for pid, key, seq, rec in rows],
            )
        )

    async def park(self, scope: str, rows: Sequence[tuple[str, str, float, dict[str, Any]]]) -> None:
        """Keep messages for a step, durably, until a batch commit lists their ids in ``unpark``."""
        await self._run(self.park_sync, scope, rows)

    def parked_sync(self, scope: str) -> list[tuple[str, str, float, dict[str, Any]]]:
        rows = self.conn.execute(
            "SELECT park_id, key, seq, record FROM parked WHERE scope=? ORDER BY key, seq", (scope,)
        ).fetchall()
        return [(r[0], r[1], float(r[2]), _loads(r[3])) for r in rows]

    async def parked(self, scope: str) -> list[tuple[str, str, float, dict[str, Any]]]:
        return await self._run(self.parked_sync, scope)

    # -- inbox ---------------------------------------------------------------------------
    def inbox_put_sync(
        self, flow: str, records: Sequence[dict[str, Any]], idempotency: Sequence[tuple[str, str, float]] = ()
    ) -> None:
        now = time.time()

        def tx(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT INTO inbox(flow, msg_id, record, received_at, lease_until) VALUES (?,?,?,?,NULL)",
                [(flow, r["id"], _dumps(r), now) for r in records],
            )
            if idempotency:
                c.executemany(
                    _REMEMBER_KEY,
                    list(idempotency),
                )

        self._tx(tx)

    async def inbox_put(
        self, flow: str, records: Sequence[dict[str, Any]], idempotency: Sequence[tuple[str, str, float]] = ()
    ) -> None:
        """Store pushed messages and the delivery ids that must not be accepted twice, in one transaction."""
        await self._run(self.inbox_put_sync, flow, records, idempotency)

    def inbox_accept_sync(
        self,
        flow: str,
        items: Sequence[InboxItem],
        now: float,
        lease_until: float | None = None,
    ) -> list[int | None]:
        stamp = time.time()

        def tx(c: sqlite3.Connection) -> list[int | None]:
            keyed: dict[str, list[str]] = {}
            for _rec, scope, key, _exp in items:
                if scope is not None and key is not None:
                    keyed.setdefault(scope, []).append(key)
            seen: set[tuple[str, str]] = set()
            for scope, keys in keyed.items():
                seen.update((scope, k) for k in _known_keys(c, scope, list(dict.fromkeys(keys)), now))
            stored: list[int | None] = []
            remember: list[tuple[str, str, float]] = []
            insert = "INSERT INTO inbox(flow, msg_id, record, received_at, lease_until) VALUES (?,?,?,?,?)"
            for rec, scope, key, exp in items:
                if scope is not None and key is not None:
                    if (scope, key) in seen:
                        stored.append(None)
                        continue
                    seen.add((scope, key))
                    remember.append((scope, key, exp))
                cur = c.execute(insert, (flow, rec["id"], _dumps(rec), stamp, lease_until))
                stored.append(cur.lastrowid)
                cur.close()
            if remember:
                c.executemany(
                    _REMEMBER_KEY, remember)
            return stored

        return self._tx(tx)

    async def inbox_accept(
        self,
        flow: str,
        items: Sequence[InboxItem],
        now: float,
        lease_until: float | None = None,
    ) -> list[int | None]:
        return await self._run(self.inbox_accept_sync, flow, items, now, lease_until)

    def inbox_take_sync(self, flow: str, limit: int, now: float, lease: float) -> list[tuple[int, dict[str, Any]]]:
        def tx(c: sqlite3.Connection) -> list[tuple[int, dict[str, Any]]]:
            rows = c.execute(
                "SELECT seq, record FROM inbox WHERE flow=? AND (lease_until IS NULL OR lease_until<=?)"
                " ORDER BY seq LIMIT ?",
                (flow, now, limit),
            ).fetchall()
            if rows:
                c.executemany("UPDATE inbox SET lease_until=? WHERE seq=?", [(now + lease, r[0]) for r in rows])
            return [(int(r[0]), _loads(r[1])) for r in rows]

        return self._tx(tx)

    async def inbox_take(self, flow: str, limit: int, now: float, lease: float) -> list[tuple[int, dict[str, Any]]]:
        return await self._run(self.inbox_take_sync, flow, limit, now, lease)

    async def inbox_done(self, seqs: Sequence[int]) -> None:
        await self._run(
            self._tx, lambda c: c.executemany("DELETE FROM inbox WHERE seq=?", [(s,) for s in seqs])
        )

    async def inbox_release(self, seqs: Sequence[int]) -> None:
        await self._run(
            self._tx,
            lambda c: c.executemany("UPDATE inbox SET lease_until=NULL WHERE seq=?", [(s,) for s in seqs]),
        )

    # -- journal and audit ------------------------------------------------------------------
    def trace_sync(self, any_id: str) -> list[JournalEntry]:
        c = self._jconn if self._jconn is not None else self.conn
        rows = c.execute(
            "SELECT flow, entries, done_at FROM journal_batch WHERE seq IN"
            " (SELECT rowid FROM journal_key WHERE journal_key MATCH ?) ORDER BY seq",
            (f'"{key_token(any_id)}"',),
        ).fetchall()
        out: list[JournalEntry] = []
        n = 0
        for flow, blob, done_at in rows:
            for msg_id, corr, hops in _loads(blob):
                if msg_id != any_id and corr != any_id:
                    continue
                for ts, step, outcome, dur, digest, detail in hops:
                    if ts is None:
                        ts = done_at
                    n += 1
                    out.append(JournalEntry(n, ts, flow, msg_id, corr or msg_id, step, outcome, dur, digest, detail))
        return out

    def journal_summary_sync(self) -> list[tuple[str, int, float]]:
        """Per flow: how many message records the journal holds and when the last was written."""
        c = self._jconn if self._jconn is not None else self.conn
        return [
            (f, int(n), float(t))
            for f, n, t in c.execute(
                "SELECT flow, SUM(messages), MAX(ts) FROM journal_batch WHERE flow != '-' GROUP BY flow"
            ).fetchall()
        ]

    def prune_journal_sync(self, before: float) -> int:
        """Delete journal batches written before ``before`` (Unix seconds); returns how many."""
        c = self._jconn if self._jconn is not None else self.conn
        lock = self._lock if c is self._conn else self._jlock
        with lock:
            c.execute("BEGIN IMMEDIATE")
            try:
                seqs = [(r[0],) for r in c.execute("SELECT seq FROM journal_batch WHERE ts < ?", (before,))]
                c.executemany("DELETE FROM journal_batch WHERE seq=?", seqs)
                c.executemany("DELETE FROM journal_key WHERE rowid=?", seqs)
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
            n = len(seqs)
            return int(n)

    async def trace(self, any_id: str) -> list[JournalEntry]:
        await self.flush_journal()
        return await self._run(self.trace_sync, any_id)

    @staticmethod
    def _audit(c: sqlite3.Connection, action: str, actor: str, detail: dict[str, Any]) -> None:
        c.execute(
            "INSERT INTO audit(ts, action, actor, detail) VALUES (?,?,?,?)",
            (time.time(), action, actor, _dumps(detail)),
        )

    async def audit(self, action: str, actor: str, detail: dict[str, Any]) -> None:
        await self._run(self._tx, lambda c: self._audit(c, action, actor, detail))

    def audit_log_sync(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT seq, ts, action, actor, detail FROM audit ORDER BY seq DESC LIMIT ?", (limit,)
        ).fetchall()
        return [{"seq": r[0], "ts": r[1], "action": r[2], "actor": r[3], "detail": _loads(r[4])} for r in rows]

    async def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._run(self.audit_log_sync, limit)
