"""The store contract. Parametrized over implementations: add PostgreSQL to STORES when it exists."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from seamline.core.message import Message
from seamline.store import Batch, DeadLetter, DlqFilter, RetryEntry, Store, open_store
from seamline.store.migrations import SQLITE_MIGRATIONS
from seamline.store.sqlite import SqliteStore


def _sqlite(tmp: Path) -> Store:
    return open_store(str(tmp / "state.db"))


STORES: dict[str, Callable[[Path], Store]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = STORES[request.param](tmp_path)
    await s.open()
    yield s
    await s.close()


def dead(i: int, flow: str = "f", step: str = "map", code: str = "mapping.T2001", cls: str = "fatal") -> DeadLetter:
    m = Message({"n": i}, id=f"m{i}")
    return DeadLetter(
        dlq_id=f"d{i}", flow=flow, msg_id=m.id, correlation_id=m.id, step=step, error_code=code, error_class=cls,
        error_message="boom", error_chain=[{"type": "X", "message": "boom"}], attempts=1,
        history=[{"at": 1.0, "attempt": 1}], original=m.to_record(), current=m.to_record(), resume=1,
        pending_sinks=None, first_failed_at=1.0, dead_at=100.0 + i,
    )


def retry(i: int, due: float, flow: str = "f") -> RetryEntry:
    m = Message({"n": i}, id=f"m{i}")
    return RetryEntry(rid=f"r{i}", flow=flow, msg_id=m.id, due_at=due, attempt=1, resume=2, pending_sinks=["s1"],
                      message=m.to_record(), original=m.to_record(), history=[{"at": 0.0}], first_at=0.0)


async def test_schema_is_versioned(store: Store) -> None:
    assert getattr(store, "schema_version")() >= 1  # noqa: B009


async def test_checkpoints_round_trip(store: Store) -> None:
    assert await store.get_checkpoint("file:x") is None
    await store.put_checkpoint("file:x", {"offset": 42, "fingerprint": "ab"})
    assert await store.get_checkpoint("file:x") == {"offset": 42, "fingerprint": "ab"}
    await store.put_checkpoint("file:x", {"offset": 43})
    assert await store.get_checkpoint("file:x") == {"offset": 43}


async def test_batch_commit_is_one_transaction(store: Store) -> None:
    b = Batch(
        journal=[(1.0, "f", "m1", "c1", "source", "received", 0, "d", None)],
        dead=[dead(1)],
        retries=[retry(2, due=50.0)],
        checkpoints={"cp": 7},
    )
    await store.commit(b)
    assert [d.msg_id for d in await store.list_dead(DlqFilter())] == ["m1"]
    assert await store.count_retries("f") == 1
    assert await store.get_checkpoint("cp") == 7
    assert [e.outcome for e in await store.trace("c1")] == ["received"]
    # a failing batch changes nothing
    bad = Batch(dead=[dead(3)], retries=[retry(4, 1.0)], checkpoints={"cp": 8})
    bad.dead.append(dead(3))  # duplicate primary key
    with pytest.raises(Exception):  # noqa: B017 - the driver's integrity error
        await store.commit(bad)
    assert await store.get_checkpoint("cp") == 7
    assert await store.count_retries() == 1


async def test_retries_are_leased_and_released(store: Store) -> None:
    await store.commit(Batch(retries=[retry(1, 10.0), retry(2, 20.0), retry(3, 30.0, flow="other")]))
    assert await store.next_retry_at(["f"]) == 10.0
    assert await store.due_retries(["f"], now=5.0, limit=10, lease=60) == []
    due = await store.due_retries(["f"], now=25.0, limit=10, lease=60)
    assert [r.rid for r in due] == ["r1", "r2"]
    assert due[0].message["id"] == "m1" and due[0].pending_sinks == ["s1"] and due[0].resume == 2
    # leased: not handed out twice
    assert await store.due_retries(["f"], now=26.0, limit=10, lease=60) == []
    # a restart forgets leases
    await getattr(store, "release_leases")(["f"])  # noqa: B009
    assert len(await store.due_retries(["f"], now=26.0, limit=10, lease=60)) == 2
    await store.commit(Batch(retries_done=["r1", "r2"]))
    assert await store.count_retries("f") == 0
    assert await store.count_retries() == 1


async def test_dead_letters_filter(store: Store) -> None:
    await store.commit(Batch(dead=[dead(1), dead(2, step="crm", code="sql.rejected"), dead(3, flow="g"),
                                   dead(4, cls="retryable", code="timeout")]))
    assert len(await store.list_dead(DlqFilter())) == 4
    assert [d.msg_id for d in await store.list_dead(DlqFilter(flow="g"))] == ["m3"]
    assert [d.msg_id for d in await store.list_dead(DlqFilter(step="crm"))] == ["m2"]
    assert [d.msg_id for d in await store.list_dead(DlqFilter(error_class="retryable"))] == ["m4"]
    assert [d.msg_id for d in await store.list_dead(DlqFilter(since=102.5))] == ["m3", "m4"]
    assert [d.msg_id for d in await store.list_dead(DlqFilter(until=101.5))] == ["m1"]
    got = await store.get_dead("d2")
    assert got is not None and got.error_code == "sql.rejected" and got.history == [{"at": 1.0, "attempt": 1}]
    assert (await store.get_dead("m3")) is not None  # by message id too


async def test_replay_and_purge_are_audited(store: Store) -> None:
    await store.commit(Batch(dead=[dead(1), dead(2)]))
    n = await store.replay_dead(["d1"], now=500.0, from_step=False, actor="ana")
    assert n == 1
    d1 = await store.get_dead("d1")
    assert d1 is not None and d1.status == "replayed" and d1.replays == 1
    (r,) = await store.due_retries(["f"], now=500.0, limit=10, lease=60)
    assert r.resume == 0 and r.pending_sinks is None and r.origin == "replay" and r.attempt == 0
    assert Message.from_record(r.message).body == {"n": 1}
    # replaying again is a no-op: it is no longer dead
    assert await store.replay_dead(["d1"], now=501.0, from_step=True, actor="ana") == 0
    assert await store.purge_dead(["d2"], actor="bo") == 1
    assert await store.get_dead("d2") is None
    log = await store.audit_log()
    assert [(e["action"], e["actor"], e["detail"]["dlq_id"]) for e in log] == [
        ("dlq.purge", "bo", "d2"), ("dlq.replay", "ana", "d1")]


async def test_replay_from_the_failing_step_keeps_its_place(store: Store) -> None:
    await store.commit(Batch(dead=[dead(1)]))
    await store.replay_dead(["d1"], now=1.0, from_step=True, actor="x")
    (r,) = await store.due_retries(["f"], now=1.0, limit=10, lease=60)
    assert r.resume == 1


async def test_idempotency_keys_expire(store: Store) -> None:
    await store.remember("dedupe:f", [("k1", 100.0), ("k2", 200.0)])
    assert await store.seen("dedupe:f", ["k1", "k2", "k3"], now=50.0) == {"k1", "k2"}
    assert await store.seen("dedupe:f", ["k1", "k2"], now=150.0) == {"k2"}
    assert await store.seen("other", ["k1"], now=50.0) == set()


async def test_inbox_store_and_forward(store: Store) -> None:
    recs = [Message({"i": i}, id=f"w{i}").to_record() for i in range(3)]
    await store.inbox_put("hook", recs)
    taken = await store.inbox_take("hook", limit=2, now=10.0, lease=30.0)
    assert [r["id"] for _s, r in taken] == ["w0", "w1"]
    assert [r["id"] for _s, r in await store.inbox_take("hook", limit=5, now=11.0, lease=30.0)] == ["w2"]
    await store.inbox_done([taken[0][0]])
    await store.inbox_release([taken[1][0]])
    again = await store.inbox_take("hook", limit=5, now=12.0, lease=30.0)
    assert [r["id"] for _s, r in again] == ["w1"]


async def test_journal_trace_in_order_by_message_or_correlation(store: Store) -> None:
    rows: list[Any] = [
        (1.0, "f", "m1", "order-4711", "source", "received", 0, "aa", None),
        (2.0, "f", "m1", "order-4711", "map", "ok", 12, "bb", None),
        (3.0, "g", "m2", "order-4711", "crm", "delivered", 0, "bb", None),
    ]
    await store.commit(Batch(journal=rows))
    assert [e.step for e in await store.trace("order-4711")] == ["source", "map", "crm"]
    assert [e.step for e in await store.trace("m1")] == ["source", "map"]


@pytest.mark.parametrize(
    "msg_id",
    ["SO-4711", "order 4711 / Ünïcødé", "x" * 300, "a\"b'c", "*", "AND", "so-4711"],
)
async def test_journal_finds_any_id_exactly_among_many(store: Store, msg_id: str) -> None:
    """Ids of every shape (spaces, quotes, query syntax, long, case) are found exactly, not by likeness."""
    rows: list[Any] = []
    for i in range(500):
        rows.append((1.0, "f", f"other-{i}", f"other-{i}", "source", "received", 0, None, None))
    rows.append((1.0, "f", msg_id, msg_id, "source", "received", 0, None, None))
    rows.append((1.0, "f", "SO-4711x", "SO-4711x", "source", "received", 0, None, None))
    await store.commit(Batch(journal=rows))
    await store.commit(Batch(journal=[(2.0, "f", msg_id, msg_id, "crm", "delivered", 0, None, None)]))
    found = await store.trace(msg_id)
    assert [(e.msg_id, e.step) for e in found] == [(msg_id, "source"), (msg_id, "crm")]
    assert await store.trace("never-seen") == []


async def test_journal_prune_drops_old_batches_only(tmp_path: Path) -> None:
    s = _sqlite(tmp_path)
    await s.open()
    try:
        await s.commit(Batch(journal=[(100.0, "f", "old", "old", "source", "received", 0, None, None)]))
        await s.commit(Batch(journal=[(200.0, "f", "new", "new", "source", "received", 0, None, None)]))
        await s.flush_journal()
        assert s.prune_journal_sync(150.0) == 1
        assert await s.trace("old") == []
        assert [e.msg_id for e in await s.trace("new")] == ["new"]
        assert s.journal_summary_sync() == [("f", 1, 200.0)]
    finally:
        await s.close()


async def test_state_survives_reopen(tmp_path: Path) -> None:
    s = _sqlite(tmp_path)
    await s.open()
    await s.commit(Batch(retries=[retry(1, time.time() + 7200)], dead=[dead(1)], checkpoints={"c": 1}))
    await s.close()
    s2 = _sqlite(tmp_path)
    await s2.open()
    try:
        assert await s2.count_retries() == 1
        assert await s2.get_checkpoint("c") == 1
        assert len(await s2.list_dead(DlqFilter())) == 1
    finally:
        await s2.close()


def test_two_processes_opening_a_new_database_at_once_migrate_once(tmp_path: Path) -> None:
    """Several processes open the same new database at the same moment: each waits for the
    others' locks (switching to WAL included) instead of failing with "database is locked"."""
    import subprocess
    import sys

    code = (
        "import asyncio, os, sys, time\n"
        "from seamline.store import open_store\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
        "async def main():\n"
        "    s = open_store(sys.argv[1]); await s.open(); await s.close()\n"
        "asyncio.run(main())\n"
    )
    for round_ in range(8):
        db, go = tmp_path / f"new{round_}.db", tmp_path / f"go{round_}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(db), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(6)
        ]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        go.touch()
        errors = [p.communicate(timeout=60)[1].decode() for p in procs]
        assert all(p.returncode == 0 for p in procs), errors
        store = SqliteStore(str(db))
        store.open_sync()
        try:
            (version,) = store.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            assert int(version) == len(SQLITE_MIGRATIONS)
            assert store.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            store.close_sync()


async def test_inbox_put_with_delivery_ids_is_atomic(store: Store) -> None:
    rec = Message({"i": 1}, id="w1").to_record()
    await store.inbox_put("hook", [rec], [("webhook:hook", "delivery-1", 1e12)])
    assert await store.seen("webhook:hook", ["delivery-1"], now=0.0) == {"delivery-1"}
    assert [r["id"] for _s, r in await store.inbox_take("hook", limit=5, now=1.0, lease=5.0)] == ["w1"]


async def test_inbox_accept_stores_each_delivery_id_once(store: Store) -> None:
    def rec(i: int) -> dict[str, Any]:
        return Message({"i": i}, id=f"w{i}").to_record()

    scope = "webhook:hook"
    first = await store.inbox_accept("hook", [
        (rec(1), scope, "d-1", 100.0), (rec(2), scope, "d-2", 100.0),
        (rec(3), scope, "d-1", 100.0),  # the same delivery twice in one group: stored once
        (rec(4), None, None, 0.0),  # no delivery id: always stored
    ], now=10.0)
    assert [seq is not None for seq in first] == [True, True, False, True]
    again = await store.inbox_accept("hook", [(rec(5), scope, "d-2", 300.0), (rec(6), scope, "d-3", 300.0)],
                                     now=50.0)
    assert [seq is not None for seq in again] == [False, True]
    # once a delivery id expired, the same id is a new delivery
    (late,) = await store.inbox_accept("hook", [(rec(7), scope, "d-1", 400.0)], now=150.0)
    assert late is not None
    # stored already taken (leased) by the caller: nobody else gets it until the lease runs out
    (leased,) = await store.inbox_accept("hook", [(rec(8), None, None, 0.0)], now=150.0, lease_until=1e12)
    taken = await store.inbox_take("hook", limit=10, now=1.0, lease=5.0)
    assert [r["id"] for _s, r in taken] == ["w1", "w2", "w4", "w6", "w7"]
    assert sorted(s for s, _r in taken) == sorted(s for s in (*first, *again, late) if s is not None)
    await getattr(store, "release_leases")(["hook"])  # noqa: B009 - a restart releases every lease
    again_taken = await store.inbox_take("hook", limit=10, now=2.0, lease=5.0)
    assert [r["id"] for _s, r in again_taken] == ["w1", "w2", "w4", "w6", "w7", "w8"]
    assert again_taken[-1][0] == leased


async def test_no_cursor_crosses_threads_under_concurrent_calls(tmp_path: Path) -> None:
    """Store calls return data, never a cursor: a cursor freed on the event loop's thread resets its
    statement while the store thread runs another on the same connection (SQLITE_MISUSE)."""
    import asyncio

    s = _sqlite(tmp_path)
    await s.open()
    try:
        assert await s.inbox_done([]) is None and await s.inbox_release([]) is None
        deadline = time.monotonic() + 3
        n = 0
        while time.monotonic() < deadline:
            await s.inbox_put("f", [{"id": f"m{n}-{i}"} for i in range(20)])
            rows = await s.inbox_take("f", 20, time.time(), 60)
            results = await asyncio.gather(
                s.inbox_done([r[0] for r in rows[:10]]), s.inbox_release([r[0] for r in rows[10:]]),
                s.inbox_done([r[0] for r in rows[10:]]), s.seen("x", ["a"], 0.0), s.mark_forwarded([]))
            assert results[:3] == [None, None, None]
            n += 1
        assert n > 100
    finally:
        await s.close()


def test_an_up_to_date_database_opens_while_another_connection_writes(tmp_path: Path) -> None:
    """The CLI (or a test) opening the store of a running engine must not queue for its write lock."""
    import sqlite3

    from seamline.store.sqlite import SqliteStore

    first = SqliteStore(tmp_path / "state.db")
    first.open_sync()
    writer = sqlite3.connect(first.path, isolation_level=None)
    journal_writer = sqlite3.connect(first.journal_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # an engine in the middle of a commit, on both files
    journal_writer.execute("BEGIN IMMEDIATE")
    second = SqliteStore(tmp_path / "state.db")
    try:
        second.open_sync()  # waiting for a write lock here would fail with "database is locked"
        assert second.schema_version() == first.schema_version()
        assert writer.in_transaction and journal_writer.in_transaction, "opened while the writers held the locks"
    finally:
        writer.execute("COMMIT")
        journal_writer.execute("COMMIT")
        writer.close()
        journal_writer.close()
        second.close_sync()
        first.close_sync()
