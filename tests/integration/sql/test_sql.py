"""The sql connector against SQLite, PostgreSQL and MariaDB: sink modes, watermark source, outbox source."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.integration.services import require
from tests.integration.services.crash import sigkill_mid_stream
from tests.integration.services.flows import COLLECTED, make_flow

from seamline.connectors.sql import SqlSink, SqlSinkConfig
from seamline.core.component import BatchError, BuildContext
from seamline.core.engine import Engine
from seamline.core.errors import FatalError
from seamline.core.flow import sink, source
from seamline.core.message import Message
from seamline.store import open_store
from seamline.store.base import DlqFilter

BASE = dt.datetime(2026, 3, 1, 12, 0, 0)


def _ts(dialect: str) -> str:
    return {"postgresql": "TIMESTAMP", "mysql": "DATETIME(6)", "mariadb": "DATETIME(6)"}.get(dialect, "DATETIME")


def _ctx(tmp: Path) -> BuildContext:
    return BuildContext(flow="t", base_dir=tmp, store=None, batch_size=100)  # type: ignore[arg-type]


async def _sink(db: Any, tmp: Path, **kw: Any) -> SqlSink:
    s = SqlSink(SqlSinkConfig(url=db.url_plain, **kw), _ctx(tmp))
    await s.open()
    return s


async def test_sink_upsert_merge_and_correlation(db: Any, tmp_path: Path) -> None:
    t = await db.table(lambda n, d: f"CREATE TABLE {n} (order_id VARCHAR(64) PRIMARY KEY, status VARCHAR(32), "
                                    f"total NUMERIC(10,2), ordered_at {_ts(d)}, note VARCHAR(64), corr VARCHAR(64))",
                       "orders")
    up = await _sink(db, tmp_path, table=t, mode="upsert", key=["order_id"], correlation_column="corr")
    merge = await _sink(db, tmp_path, table=t, mode="merge", key=["order_id"])
    try:
        await up.write([
            Message({"order_id": f"o{i}", "status": "new", "total": "10.50", "ordered_at": "2026-03-01T10:00:00",
                     "note": "first"}, correlation_id=f"c{i}")
            for i in range(50)
        ])
        # upsert replaces the other columns: `note` is not in these records, so it becomes NULL
        await up.write([
            *(Message({"order_id": f"o{i}", "status": "paid", "total": 11.25, "ordered_at": "2026-03-02T10:00:00"},
                      correlation_id=f"u{i}") for i in range(0, 50, 2)),
            *(Message({"order_id": f"o{i}", "status": "new", "total": 1}, correlation_id=f"c{i}")
              for i in range(50, 60)),
        ])
        # merge updates only the columns the record carries
        await merge.write([Message({"order_id": "o1", "status": "shipped"}),
                           Message({"order_id": "o99", "status": "new", "total": 2})])
    finally:
        await up.close()
        await merge.close()
    rows = {r[0]: r for r in await db.rows(f"SELECT order_id, status, total, note, corr, ordered_at FROM {t}")}
    assert len(rows) == 61
    assert rows["o0"][1:5] == ("paid", decimal.Decimal("11.25") if db.dialect.name != "sqlite" else 11.25, None,
                               "u0")
    assert rows["o1"][1] == "shipped" and rows["o1"][3] == "first" and rows["o1"][4] == "c1"
    assert float(rows["o1"][2]) == 10.5
    assert rows["o55"][1] == "new" and rows["o99"][4] is None
    assert str(rows["o2"][5]).startswith("2026-03-02")


async def test_sink_batch_is_one_transaction(db: Any, tmp_path: Path) -> None:
    t = await db.table(lambda n, d: f"CREATE TABLE {n} (id INTEGER PRIMARY KEY, name VARCHAR(20))", "tx")
    s = await _sink(db, tmp_path, table=t)
    try:
        with pytest.raises(FatalError) as err:
            await s.write([Message({"id": 1, "name": "a"}), Message({"id": 2, "name": "b"}),
                           Message({"id": 1, "name": "duplicate"})])
        assert err.value.code == "sql.rejected"
        assert await db.rows(f"SELECT id FROM {t}") == [], "a failed batch must write nothing"
        # records that cannot become rows fail alone; the others are written
        with pytest.raises(BatchError) as be:
            await s.write([Message({"id": 3, "name": "c"}), Message(["not", "an", "object"])])
        assert list(be.value.errors) == [1]
        assert [r[0] for r in await db.rows(f"SELECT id FROM {t}")] == [3]
    finally:
        await s.close()


async def _run_until_idle(flow: Any, state: Path) -> Any:
    engine = Engine([flow], open_store(str(state)), retry_poll=0.05)
    res = await asyncio.wait_for(engine.run(until_idle=True, idle_horizon=1, install_signals=False), 60)
    assert res.ok, res.errors
    return res


async def test_source_watermark_with_ties_survives_restart(db: Any, tmp_path: Path) -> None:
    from sqlalchemy import MetaData, Table

    t = await db.table(lambda n, d: f"CREATE TABLE {n} (id INTEGER PRIMARY KEY, updated_at {_ts(d)} NOT NULL, "
                                    "name VARCHAR(40))", "events")
    async with db.connect() as conn:
        table = await conn.run_sync(lambda c: Table(t, MetaData(), autoload_with=c))

    async def insert(rows: list[dict[str, Any]]) -> None:
        async with db.begin() as conn:
            await conn.execute(table.insert(), rows)

    # three rows share each timestamp; a page of 7 rows ends in the middle of a tie
    await insert([{"id": i, "updated_at": BASE + dt.timedelta(seconds=i // 3), "name": f"n{i}"}
                  for i in range(1, 31)])
    key = f"wm-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state.db"

    def flow() -> Any:
        return make_flow("sql-wm", source("sql", url=db.url_plain, table=t, watermark="updated_at", key="id",
                                          limit=7, stop_when_idle=True, interval=0.05),
                         [sink("test-collect", key=key)])

    await _run_until_idle(flow(), state)
    first = COLLECTED.pop(key)
    assert sorted(m.body["id"] for m in first) == list(range(1, 31))
    assert first[0].id == f"{t}:1" and first[0].headers["sql.table"] == t
    last = BASE + dt.timedelta(seconds=30 // 3)
    # new rows tie with the last watermark delivered; later rows; and an old row that changed
    await insert([{"id": i, "updated_at": last, "name": f"tie{i}"} for i in range(31, 36)])
    await insert([{"id": i, "updated_at": last + dt.timedelta(seconds=5), "name": f"n{i}"} for i in range(36, 41)])
    async with db.begin() as conn:
        await conn.execute(table.update().where(table.c.id == 5).values(updated_at=last + dt.timedelta(seconds=9)))
    await _run_until_idle(flow(), state)
    second = COLLECTED.pop(key)
    assert sorted(m.body["id"] for m in second) == [5, *range(31, 41)]
    # a third run has nothing new
    await _run_until_idle(flow(), state)
    assert COLLECTED.pop(key, []) == []


@pytest.mark.parametrize("on_delivery", ["delete", "mark"])
async def test_outbox_rows_go_once_delivered(db: Any, tmp_path: Path, on_delivery: str) -> None:
    t = await db.table(lambda n, d: f"CREATE TABLE {n} (seq INTEGER PRIMARY KEY, payload TEXT NOT NULL, "
                                    f"corr VARCHAR(40), sent_at {_ts(d)} NULL)", "outbox")
    rows = [{"seq": i, "payload": f'{{"order": {i}}}', "corr": f"c{i}"} for i in range(1, 26)]
    rows[9]["payload"] = "{not json"
    for r in rows:
        await db.run(f"INSERT INTO {t} (seq, payload, corr) VALUES (:seq, :payload, :corr)", r)
    key = f"ob-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state.db"
    flow = make_flow("sql-outbox", source("sql", url=db.url_plain, table=t, mode="outbox", key="seq",
                                          payload_column="payload", correlation_column="corr", id_column="seq",
                                          on_delivery=on_delivery, mark_column="sent_at", stop_when_idle=True,
                                          limit=10, interval=0.05),
                     [sink("test-collect", key=key)])
    await _run_until_idle(flow, state)
    got = COLLECTED.pop(key)
    assert sorted(m.body["order"] for m in got) == [i for i in range(1, 26) if i != 10]
    assert {m.correlation_id for m in got if m.id == "1"} == {"c1"}
    store = open_store(str(state))
    await store.open()
    try:
        dead = await store.list_dead(DlqFilter(flow="sql-outbox"))
    finally:
        await store.close()
    assert [(d.msg_id, d.error_code) for d in dead] == [("10", "format.json.syntax")]
    if on_delivery == "delete":
        assert await db.rows(f"SELECT seq FROM {t}") == []
    else:
        assert await db.rows(f"SELECT seq FROM {t} WHERE sent_at IS NULL") == []
        assert len(await db.rows(f"SELECT seq FROM {t}")) == 25


def test_sigkill_mid_stream_loses_nothing(pg_url: str, tmp_path: Path) -> None:
    import asyncpg

    n = 1500
    table = f"crash_{uuid.uuid4().hex[:10]}"

    async def setup() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, updated_at TIMESTAMPTZ NOT NULL, "
                               "poison BOOLEAN NOT NULL)")
            now = dt.datetime.now(dt.UTC)
            await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2, $3)",
                                   [(i, now + dt.timedelta(milliseconds=i // 4), i % 250 == 7) for i in range(n)])
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        finally:
            await conn.close()

    asyncio.run(setup())
    try:
        src = (f"source:\n  sql: {{url: '{pg_url}', table: {table}, watermark: updated_at, key: id, "
               "id_column: id, interval: 100ms}")
        res = sigkill_mid_stream(tmp_path, src, "sql-crash", {str(i) for i in range(n)},
                                 {str(i) for i in range(n) if i % 250 == 7})
        assert res.duplicates <= 50 * 6
    finally:
        asyncio.run(drop())


async def test_postgres_types_and_a_killed_connection(pg_url: str, tmp_path: Path) -> None:
    """JSON-ish record values reach jsonb/timestamptz/uuid/boolean columns; a connection killed by the
    server fails one batch as retryable and the next batch gets a fresh connection."""
    import asyncpg

    from seamline.core.errors import RetryableError

    table = f"types_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f"CREATE TABLE {table} (id UUID PRIMARY KEY, doc JSONB, at TIMESTAMPTZ, ok BOOLEAN, "
                        "n BIGINT, amount NUMERIC(12,2), day DATE)")
    s = SqlSink(SqlSinkConfig(url=pg_url, table=table, mode="upsert", key=["id"]), _ctx(tmp_path))
    await s.open()
    try:
        u1, u2 = str(uuid.uuid4()), str(uuid.uuid4())
        await s.write([
            Message({"id": u1, "doc": {"a": [1, 2], "s": "x"}, "at": "2026-03-01T10:00:00Z", "ok": "true",
                     "n": "42", "amount": 19.99, "day": "2026-03-01"}),
            Message({"id": u2, "doc": "just a string", "at": "2026-03-01T10:00:00+02:00", "ok": False, "n": 7,
                     "amount": "0.10", "day": "2026-03-02T00:00:00"}),
        ])
        rows = {str(r["id"]): r for r in await admin.fetch(f"SELECT * FROM {table}")}
        assert rows[u1]["doc"] == '{"a": [1, 2], "s": "x"}' and rows[u2]["doc"] == '"just a string"'
        assert rows[u1]["at"] == dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)
        assert rows[u2]["at"] == dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC)
        assert rows[u1]["ok"] is True and rows[u1]["n"] == 42 and rows[u1]["amount"] == decimal.Decimal("19.99")
        assert rows[u2]["day"] == dt.date(2026, 3, 2)
        with pytest.raises(BatchError) as bad:
            await s.write([Message({"id": "not-a-uuid"})])
        assert bad.value.errors[0].code == "sql.value"  # type: ignore[attr-defined]
        # the server drops the sink's pooled connection
        async with s._engine.connect() as conn:
            pid = (await conn.get_raw_connection()).driver_connection.get_server_pid()
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        u3 = str(uuid.uuid4())
        with pytest.raises(RetryableError) as lost:
            await s.write([Message({"id": u3, "n": 1})])
        assert lost.value.code == "sql.unavailable"
        await s.write([Message({"id": u3, "n": 1})])  # what the runtime's retry does
        assert await admin.fetchval(f"SELECT n FROM {table} WHERE id = $1", uuid.UUID(u3)) == 1
    finally:
        await s.close()
        await admin.execute(f"DROP TABLE {table}")
        await admin.close()


async def test_source_nack_redelivers_poll_and_outbox(db: Any, tmp_path: Path) -> None:
    from seamline.connectors.sql import SqlSource, SqlSourceConfig
    from seamline.core.component import Delivery

    t = await db.table(lambda n, d: f"CREATE TABLE {n} (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, "
                                    f"sent_at {_ts(d)} NULL)", "nack")
    for i in range(1, 8):
        await db.run(f"INSERT INTO {t} (id, v) VALUES (:i, :i)", {"i": i})
    store = open_store(str(tmp_path / "state.db"))
    await store.open()
    try:
        for mode in ("poll", "outbox"):
            ctx = BuildContext(flow=f"nack-{mode}", base_dir=tmp_path, store=store, batch_size=3)
            extra = {"watermark": "v", "key": "id"} if mode == "poll" else {"key": "id", "on_delivery": "mark",
                                                                             "mark_column": "sent_at"}
            src = SqlSource(SqlSourceConfig(url=db.url_plain, table=t, mode=mode, interval=0.02, **extra), ctx)
            seen: list[int] = []
            done = asyncio.Event()

            async def emit(batch: list[Delivery], src: Any = src, seen: list[int] = seen,
                           done: asyncio.Event = done) -> None:
                for d in batch:
                    n = d.message.body["id"]
                    seen.append(n)
                    if n == 4 and seen.count(4) == 1:
                        d.nack(True)
                    else:
                        d.ack()
                await src.commit_acks()
                if seen.count(4) == 2 and set(seen) == set(range(1, 8)):
                    done.set()

            await src.open()
            task = asyncio.create_task(src.run(emit))
            try:
                await asyncio.wait_for(done.wait(), 15)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await src.close()
            assert seen.count(4) == 2, (mode, seen)
        assert await db.rows(f"SELECT id FROM {t} WHERE sent_at IS NULL") == []
    finally:
        await store.close()


def test_source_and_sink_through_dropped_connections(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL → PostgreSQL through a TCP proxy that cuts every connection twice mid-stream."""
    import asyncpg
    from tests.integration.services import tcp_proxy, wait_until

    n = 2000
    src_t, dst_t = f"drop_src_{uuid.uuid4().hex[:8]}", f"drop_dst_{uuid.uuid4().hex[:8]}"

    async def sql(stmt: str, *args: Any) -> Any:
        conn = await asyncpg.connect(pg_url)
        try:
            return await conn.fetchval(stmt, *args)
        finally:
            await conn.close()

    async def setup() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(f"CREATE TABLE {src_t} (id INTEGER PRIMARY KEY, v TEXT)")
            await conn.execute(f"CREATE TABLE {dst_t} (id INTEGER PRIMARY KEY, v TEXT)")
            await conn.executemany(f"INSERT INTO {src_t} VALUES ($1, $2)", [(i, f"v{i}") for i in range(n)])
        finally:
            await conn.close()

    asyncio.run(setup())
    try:
        with tcp_proxy(pg_url, 5432) as (proxy, via):
            (tmp_path / "slow.py").write_text(
                "import asyncio\n\nasync def slow(body):\n    await asyncio.sleep(0.001)\n    return body\n")
            (tmp_path / "flow.yaml").write_text(
                f"flow: sql-drop\nsource:\n  sql: {{url: '{via}', table: {src_t}, watermark: id, interval: 50ms}}\n"
                "steps:\n  - python: {function: 'slow:slow'}\n"
                f"sinks:\n  - sql: {{url: '{via}', table: {dst_t}, mode: upsert, key: [id]}}\n"
                "settings: {batch_size: 50}\n"
                "on_error: {retry: {max_attempts: 30, initial: 50ms, max: 500ms}}\n")
            import signal
            import subprocess
            import sys

            from tests.integration.services import engine_env

            proc = subprocess.Popen(
                [sys.executable, "-m", "seamline.cli", "run", "flow.yaml", "--state", "state.db", "-q"],
                cwd=tmp_path, env=engine_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                for share in (0.2, 0.5):
                    wait_until(lambda s=share: asyncio.run(sql(f"SELECT count(*) FROM {dst_t}")) >= n * s, 60,
                               f"{share:.0%} of the rows")
                    assert proxy.drop() > 0
                wait_until(lambda: asyncio.run(sql(f"SELECT count(*) FROM {dst_t}")) == n, 60, "every row")
                assert proxy.accepted > 2, "the connectors must have reconnected"
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        assert asyncio.run(sql(f"SELECT count(*) FROM {dst_t} d JOIN {src_t} s USING (id, v)")) == n
    finally:
        asyncio.run(sql(f"DROP TABLE IF EXISTS {src_t}, {dst_t}"))


@pytest.mark.parametrize("server", ["postgres", "mariadb"])
async def test_a_database_down_at_start_up_delays_delivery_but_loses_nothing(server: str, tmp_path: Path) -> None:
    """The target database refuses connections when the flow starts: the flow runs anyway, its
    messages wait as scheduled retries, and they are written once the database is reachable."""
    from tests.integration.services import tcp_proxy

    from seamline.testing.memory import channel, reset_channels

    from .conftest import Db

    db = Db(require(server))
    try:
        await _late_database(db, tmp_path, channel, reset_channels, tcp_proxy)
    finally:
        await db.aclose()


async def _late_database(db: Any, tmp_path: Path, channel: Any, reset_channels: Any, tcp_proxy: Any) -> None:
    t = await db.table(lambda n, d: f"CREATE TABLE {n} (id VARCHAR(32) PRIMARY KEY, v INTEGER)", "late")
    default_port = 5432 if db.dialect.name == "postgresql" else 3306
    reset_channels()
    with tcp_proxy(db.url_plain, default_port) as (proxy, url):
        proxy.pause()
        fl = make_flow(
            "late-db",
            source("memory", channel="in"),
            [sink("sql", label="crm", url=url, table=t, mode="upsert", key=["id"])],
            retry={"max_attempts": 100, "initial": 0.05, "max": 0.2, "jitter": False},
        )
        for i in range(20):
            channel("in").put({"id": f"r{i}", "v": i}, id=f"r{i}")
        eng = Engine([fl], open_store(str(tmp_path / "s.db")), retry_poll=0.02)
        task = asyncio.create_task(eng.run(until_idle=True, idle_horizon=30, install_signals=False))
        deadline = asyncio.get_running_loop().time() + 20
        while not eng.runners or eng.runners[0].stats.retried < 20:
            assert not task.done(), "the flow must not stop because the database is down"
            assert asyncio.get_running_loop().time() < deadline, "the messages were not scheduled as retries"
            await asyncio.sleep(0.05)
        assert await db.rows(f"SELECT id FROM {t}") == []
        assert sorted(channel("in").acked) == sorted(f"r{i}" for i in range(20)), "acked once safe in the store"
        proxy.resume()
        await asyncio.wait_for(task, 30)
    rows = await db.rows(f"SELECT id, v FROM {t} ORDER BY v")
    assert [(r[0], r[1]) for r in rows] == [(f"r{i}", i) for i in range(20)]
    store = open_store(str(tmp_path / "s.db"))
    await store.open()
    try:
        assert await store.count_retries() == 0
        assert await store.list_dead(DlqFilter()) == []
    finally:
        await store.close()
    reset_channels()
