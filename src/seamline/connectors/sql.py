"""The ``sql`` connector: SQLite, PostgreSQL and MariaDB/MySQL through SQLAlchemy Core (async drivers).

Sink: insert, upsert or merge records into a table, one transaction per
batch. The table is reflected once on open; record fields map to columns by
name (or through ``columns``). ``upsert`` replaces the non-key columns of an
existing row (columns missing from the record become NULL/default);
``merge`` updates only the columns the record carries.

Source, two modes:

* ``poll`` reads a table by a *watermark* column (``updated_at``, an
  increasing id) in ``(watermark, key)`` order, so rows that share a
  watermark value are neither skipped nor read twice. The position of the
  last *acknowledged* row is a checkpoint in the store: a restart continues
  after it and re-reads only what was in flight. Rows must get their
  watermark in commit order (a transaction that commits late with an older
  watermark would be missed) — when that cannot be promised, use an outbox.
* ``outbox`` reads a transactional-outbox table (rows written in the same
  transaction as the business change) and deletes each row, or sets its
  ``mark_column``, once it was delivered.

Drivers: SQLite (aiosqlite), PostgreSQL (asyncpg), MariaDB/MySQL (aiomysql).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import decimal
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from seamline.config.models import SinkConfig, SourceConfig
from seamline.config.types import Duration, MaybeSecret
from seamline.connectors.offsets import OffsetTracker
from seamline.connectors.wire import field_at
from seamline.core.component import BatchError, BuildContext, Delivery, Emit, Sink, Source
from seamline.core.errors import FatalError, RetryableError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.security.secrets import Secret

__all__ = ["SqlSink", "SqlSinkConfig", "SqlSource", "SqlSourceConfig", "async_url"]

log = logging.getLogger("seamline.connectors.sql")

_URL_DESCRIPTION = (
    "Database URL: `sqlite:///crm.db` (relative to the flow file), "
    "`postgresql://user@host/db`, `mysql://user@host/db`; may use ${env:NAME}."
)


class SqlSinkConfig(SinkConfig):
    """Write each message as a row."""

    url: MaybeSecret = Field(..., description=_URL_DESCRIPTION)
    table: str = Field(..., description="Target table (optionally `schema.table`).")
    mode: Literal["insert", "upsert", "merge"] = Field(
        "insert",
        description="insert; upsert by `key` (replaces the other columns); merge by `key` (updates only the "
        "columns the record carries).",
    )
    key: list[str] = Field(default_factory=list, description="Key columns for upsert and merge.")
    columns: dict[str, str] | None = Field(
        None, description="Column name to dotted record path; default: record fields with column names."
    )
    correlation_column: str | None = Field(None, description="Also write the correlation id to this column.")

    @model_validator(mode="after")
    def _check(self) -> SqlSinkConfig:
        if self.mode in ("upsert", "merge") and not self.key:
            raise ValueError(f"mode {self.mode!r} needs 'key' (the key columns)")
        return self


class SqlSourceConfig(SourceConfig):
    """Read rows from a table: by watermark (poll) or from a transactional outbox."""

    url: MaybeSecret = Field(..., description=_URL_DESCRIPTION)
    table: str = Field(..., description="Table to read (optionally `schema.table`).")
    mode: Literal["poll", "outbox"] = Field(
        "poll", description="poll: new and changed rows by watermark; outbox: rows removed/marked once delivered."
    )
    watermark: str | None = Field(
        None, description="poll: column that grows with every insert/update (`updated_at`, an increasing id)."
    )
    key: str | None = Field(
        None,
        description="Unique column: the tie-breaker of rows sharing a watermark (poll) and the row identity "
        "(outbox). Default for poll: none (the watermark itself must be unique).",
    )
    where: str | None = Field(
        None, description="Extra SQL condition, ANDed into every query (e.g. `status <> 'draft'`)."
    )
    select: list[str] | None = Field(None, description="Columns to read (default: all).")
    start: str | int | float | None = Field(
        None, description="poll: read only rows after this watermark value when there is no checkpoint yet."
    )
    on_delivery: Literal["delete", "mark"] = Field(
        "delete", description="outbox: delete a delivered row, or set its `mark_column` to the current time."
    )
    mark_column: str | None = Field(
        None, description="outbox with on_delivery mark: timestamp column, NULL while the row is pending."
    )
    payload_column: str | None = Field(
        None, description="The message body is this column (JSON text is decoded) instead of the whole row."
    )
    id_column: str | None = Field(None, description="Column used as message id (default: `<table>:<key>`).")
    correlation_column: str | None = Field(None, description="Column holding the correlation id.")
    interval: Duration = Field(1.0, description="Pause between polls when there was nothing new.")
    limit: int | None = Field(None, ge=1, le=100_000, description="Rows per query (default: the flow's batch size).")
    stop_when_idle: bool = Field(
        False, description="End the source once nothing is left (for `seamline run --until-idle` batch jobs)."
    )

    @model_validator(mode="after")
    def _check(self) -> SqlSourceConfig:
        if self.mode == "poll" and not self.watermark:
            raise ValueError("mode 'poll' needs 'watermark' (the column that grows with every change)")
        if self.mode == "outbox":
            if not self.key:
                raise ValueError("mode 'outbox' needs 'key' (the row's unique id, in insertion order)")
            if self.on_delivery == "mark" and not self.mark_column:
                raise ValueError("on_delivery 'mark' needs 'mark_column'")
        return self


_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
}


def async_url(url: str, ctx: BuildContext | None = None) -> str:
    """Pick the async driver for a plain URL; resolve relative SQLite paths against the flow file."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise FatalError(f"not a database URL: {url!r}", code="sql.url")
    base = scheme.split("+")[0]
    driver = scheme if "+" in scheme else _DRIVERS.get(base, scheme)
    if base == "sqlite" and ctx is not None and rest.startswith("/") and not rest.startswith("//"):
        path = rest[1:]
        if path and path != ":memory:":
            rest = "/" + str(ctx.resolve_path(path))
    return f"{driver}://{rest}"



_TRANSIENT = re.compile(r"database is locked|deadlock|connection|timeout|too many connections|server has gone", re.I)


async def _reflect(engine: Any, table: str) -> Any:
    from sqlalchemy import MetaData, Table

    schema, _, name = table.rpartition(".")
    md = MetaData(schema=schema or None)
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: Table(name, md, autoload_with=c))


def _engine(url: str, *, pre_ping: bool = True) -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(url, pool_pre_ping=pre_ping)


# -- value conversion -----------------------------------------------------------------------------------------


def _to_datetime(v: Any) -> Any:
    if isinstance(v, str):
        s = v.strip()
        if s.endswith("Z"):
            s = s[:-1] + "+00:00"
        return dt.datetime.fromisoformat(s)
    if isinstance(v, int | float) and not isinstance(v, bool):
        return dt.datetime.fromtimestamp(v, tz=dt.UTC)
    return v


def _to_date(v: Any) -> Any:
    return dt.date.fromisoformat(v[:10]) if isinstance(v, str) else v


def _to_time(v: Any) -> Any:
    return dt.time.fromisoformat(v) if isinstance(v, str) else v


def _to_decimal(v: Any) -> Any:
    return decimal.Decimal(v) if isinstance(v, str) else (decimal.Decimal(str(v)) if isinstance(v, float) else v)


def _to_int(v: Any) -> Any:
    return int(v) if isinstance(v, str) else v


def _to_bool(v: Any) -> Any:
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("true", "t", "1", "yes", "y"):
            return True
        if low in ("false", "f", "0", "no", "n"):
            return False
    return v


def _to_uuid(v: Any) -> Any:
    return uuid.UUID(v) if isinstance(v, str) else v


def _converter(col: Any, dialect: str) -> Callable[[Any], Any] | None:
    """A function turning JSON-ish record values into what the driver expects for ``col`` (None: as is)."""
    from sqlalchemy import types as t

    typ = col.type
    if isinstance(typ, t.DateTime):
        return _to_datetime
    if isinstance(typ, t.Date):
        return _to_date
    if isinstance(typ, t.Time):
        return _to_time
    if dialect == "sqlite":
        return None  # SQLite stores text and numbers as given
    if isinstance(typ, t.Numeric) and not isinstance(typ, t.Float):
        return _to_decimal
    if isinstance(typ, t.Integer):
        return _to_int
    if isinstance(typ, t.Boolean):
        return _to_bool
    if isinstance(typ, t.Uuid) or type(typ).__name__ == "UUID":
        return _to_uuid
    return None


def _is_json(col: Any) -> bool:
    from sqlalchemy import types as t

    return isinstance(col.type, t.JSON)


def _to_json_text(v: Any) -> Any:
    import orjson

    return orjson.dumps(v).decode()


def _jsonable(v: Any) -> Any:
    """Row values as JSON: timestamps as ISO 8601, decimals as strings (lossless), bytes as base64."""
    if v is None or isinstance(v, str | int | float | bool):
        return v
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return str(v)


def _pos_out(v: Any) -> Any:
    """A watermark value for the checkpoint (JSON), keeping its type."""
    if isinstance(v, dt.datetime):
        return {"datetime": v.isoformat()}
    if isinstance(v, dt.date):
        return {"date": v.isoformat()}
    if isinstance(v, decimal.Decimal):
        return {"decimal": str(v)}
    if isinstance(v, uuid.UUID):
        return str(v)
    return v


def _pos_in(v: Any) -> Any:
    if isinstance(v, dict):
        if "datetime" in v:
            return dt.datetime.fromisoformat(v["datetime"])
        if "date" in v:
            return dt.date.fromisoformat(v["date"])
        if "decimal" in v:
            return decimal.Decimal(v["decimal"])
    return v


# -- sink -----------------------------------------------------------------------------------------------------


class SqlSink(Sink):
    atomic_batches = True

    def __init__(self, cfg: SqlSinkConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        raw = cfg.url.reveal() if isinstance(cfg.url, Secret) else cfg.url
        self._url = async_url(raw, ctx)
        self._engine: Any = None
        self._table: Any = None
        self._stmt: Any = None
        self._names: list[str] = []
        self._convert: dict[str, Callable[[Any], Any]] = {}
        self._merge_stmts: dict[tuple[str, ...], Any] = {}
        self._sql_cache: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {}
        self._plan: list[tuple[str, Callable[[Any], Any] | None]] = []
        self._driver_path = False

    async def open(self) -> None:
        # no ping per checkout (a round trip per batch): a connection that went stale fails the batch
        # with a retryable error, SQLAlchemy drops it, and the retry gets a fresh one
        self._engine = _engine(self._url, pre_ping=False)
        try:
            self._table = await _reflect(self._engine, self.cfg.table)
        except Exception as exc:
            await self._engine.dispose()
            self._engine = None
            raise _classify(exc, f"cannot open table {self.cfg.table}") from exc
        dialect = self._engine.dialect.name
        self._names = [c.name for c in self._table.columns]
        missing = [k for k in self.cfg.key if k not in self._names]
        if missing:
            await self.close()
            raise FatalError(f"key column(s) {missing} not in table {self.cfg.table}", code="sql.no_column")
        # PostgreSQL: statements are compiled once per column set and run with the driver's own
        # executemany (SQLAlchemy's per-row parameter processing costs a third of the throughput);
        # values are converted to driver types here, JSON columns to JSON text
        self._driver_path = dialect == "postgresql"
        for c in self._table.columns:
            fn = _converter(c, dialect)
            if fn is None and self._driver_path and _is_json(c):
                fn = _to_json_text
            if fn is not None:
                self._convert[c.name] = fn
        self._plan = [(n, self._convert.get(n)) for n in self._names]
        self._stmt = self._statement(None)

    def _statement(self, update: Sequence[str] | None) -> Any:
        """The insert statement; for upsert all non-key columns are updated, for merge only ``update``."""
        t = self._table
        dialect = self._engine.dialect.name
        if self.cfg.mode == "insert":
            return t.insert()
        cols = [c for c in (update if update is not None else self._names) if c not in self.cfg.key]
        if dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as myins

            stmt = myins(t)
            if not cols:  # nothing to update: keep the existing row
                k = self.cfg.key[0]
                return stmt.on_duplicate_key_update({k: stmt.inserted[k]})
            return stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in cols})
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as ins
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as ins  # type: ignore[assignment]
        else:
            raise FatalError(f"{self.cfg.mode} is not supported on {dialect}", code="sql.upsert_unsupported")
        stmt = ins(t)
        if not cols:
            return stmt.on_conflict_do_nothing(index_elements=self.cfg.key)
        return stmt.on_conflict_do_update(index_elements=self.cfg.key, set_={c: stmt.excluded[c] for c in cols})

    def _row(self, m: Message) -> dict[str, Any]:
        body = m.body
        if not isinstance(body, dict):
            raise FatalError("the sql sink needs an object body", code="sql.record_type")
        conv = self._convert
        if self.cfg.columns:
            row = {col: field_at(body, path) for col, path in self.cfg.columns.items()}
            if self.cfg.correlation_column:
                row[self.cfg.correlation_column] = m.correlation_id
            items = [(k, v, conv.get(k)) for k, v in row.items()]
        else:
            row = {}
            items = []
            for name, fn in self._plan:
                if name in body:
                    row[name] = body[name]
                    if fn is not None:
                        items.append((name, body[name], fn))
            if self.cfg.correlation_column:
                row[self.cfg.correlation_column] = m.correlation_id
        for k in self.cfg.key:
            if row.get(k) is None:
                raise FatalError(f"key column {k!r} has no value", code="sql.key_missing")
        for k, v, fn in items:
            if fn is not None and v is not None:
                try:
                    row[k] = fn(v)
                except (ValueError, TypeError, ArithmeticError) as exc:
                    raise FatalError(f"column {k!r}: cannot use {v!r}: {exc}", code="sql.value") from None
        return row

    def _stmt_for(self, cols: tuple[str, ...]) -> Any:
        if self.cfg.mode != "merge":
            return self._stmt
        stmt = self._merge_stmts.get(cols)
        if stmt is None:
            stmt = self._merge_stmts[cols] = self._statement(cols)
        return stmt

    def _compiled(self, cols: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        """Driver SQL and parameter order for rows with these columns (PostgreSQL)."""
        hit = self._sql_cache.get(cols)
        if hit is None:
            from sqlalchemy import bindparam

            stmt = self._stmt_for(cols).values({c: bindparam(c) for c in cols})
            compiled = stmt.compile(dialect=self._engine.dialect)
            order = tuple(compiled.positiontup or ())
            hit = self._sql_cache[cols] = (compiled.string, order)
        return hit

    async def write(self, batch: Sequence[Message]) -> None:
        errors: dict[int, BaseException] = {}
        # rows with different column sets cannot share one executemany
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for i, m in enumerate(batch):
            try:
                r = self._row(m)
            except FatalError as exc:
                errors[i] = exc
                continue
            groups.setdefault(tuple(sorted(r)), []).append(r)
        if groups:
            try:
                if self._driver_path:
                    await self._write_asyncpg(groups)
                else:
                    async with self._engine.begin() as conn:
                        for cols, group in groups.items():
                            await conn.execute(self._stmt_for(cols), group)
            except Exception as exc:
                raise _classify(exc, f"writing to {self.cfg.table} failed") from exc
        if errors:
            raise BatchError(errors)

    async def _write_asyncpg(self, groups: dict[tuple[str, ...], list[dict[str, Any]]]) -> None:
        """One transaction on a pooled connection, straight through asyncpg's executemany."""
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            try:
                async with driver.transaction():
                    for cols, group in groups.items():
                        sql, order = self._compiled(cols)
                        await driver.executemany(sql, [tuple(r[k] for k in order) for r in group])
            except BaseException as exc:
                if driver.is_closed() or not _is_pg_data_error(exc):
                    # the connection may be broken: never hand it out again
                    with contextlib.suppress(Exception):
                        await conn.invalidate()
                raise

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


def _is_pg_data_error(exc: BaseException) -> bool:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(
        exc, asyncpg.exceptions.PostgresConnectionError | asyncpg.exceptions.InternalServerError
    )


def _classify(exc: Exception, what: str) -> Exception:
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, FatalError | RetryableError):
        return exc
    text = (str(getattr(exc, "orig", exc) or exc).splitlines() or [type(exc).__name__])[0][:300]
    pg = _classify_asyncpg(exc, what, text)
    if pg is not None:
        return pg
    if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError | sa_exc.ProgrammingError):
        return FatalError(f"{what}: {text}", code="sql.rejected")
    if isinstance(exc, sa_exc.NoSuchTableError):
        return FatalError(f"{what}: no such table", code="sql.no_table")
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | OSError | TimeoutError) or _TRANSIENT.search(
        text
    ):
        if isinstance(exc, sa_exc.OperationalError) and "no such" in text:
            return FatalError(f"{what}: {text}", code="sql.rejected")
        return RetryableError(f"{what}: {text}", code="sql.unavailable")
    return FatalError(f"{what}: {text}", code="sql.error")


# -- source ---------------------------------------------------------------------------------------------------


class SqlSource(Source):
    def __init__(self, cfg: SqlSourceConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.finite = cfg.stop_when_idle  # type: ignore[misc]
        raw = cfg.url.reveal() if isinstance(cfg.url, Secret) else cfg.url
        self._url = async_url(raw, ctx)
        self.limit = cfg.limit or ctx.batch_size
        self.scope = f"sql:{ctx.flow}:{cfg.table}"
        self._engine: Any = None
        self._table: Any = None
        self._cols: list[Any] = []
        # poll
        self._tracker: OffsetTracker | None = None
        self._pos: Any = None  # (watermark, key) of the last row read
        self._rewind = False
        self._lock = asyncio.Lock()
        # outbox
        self._inflight: set[Any] = set()
        self._done: list[Any] = []

    async def open(self) -> None:
        self._engine = _engine(self._url)
        try:
            self._table = await _reflect(self._engine, self.cfg.table)
        except Exception as exc:
            await self._engine.dispose()
            self._engine = None
            raise _classify(exc, f"cannot open table {self.cfg.table}") from exc
        names = {c.name for c in self._table.columns}
        wanted = [self.cfg.watermark, self.cfg.key, self.cfg.mark_column, self.cfg.payload_column,
                  self.cfg.id_column, self.cfg.correlation_column]
        missing = [c for c in wanted if c and c not in names]
        missing += [c for c in self.cfg.select or [] if c not in names]
        if missing:
            await self.close()
            raise FatalError(f"column(s) {sorted(set(missing))} not in table {self.cfg.table}", code="sql.no_column")
        cols = self.cfg.select or [c.name for c in self._table.columns]
        for extra in (self.cfg.watermark, self.cfg.key, self.cfg.id_column, self.cfg.correlation_column,
                      self.cfg.payload_column):
            if extra and extra not in cols:
                cols = [*cols, extra]
        self._cols = [self._table.c[c] for c in cols]
        if self.cfg.mode == "poll":
            cp = await self.ctx.store.get_checkpoint(self.scope)
            if isinstance(cp, dict) and "watermark" in cp:
                start = (_pos_in(cp["watermark"]), _pos_in(cp.get("key")))
            elif self.cfg.start is not None:
                conv = _converter(self._table.c[self.cfg.watermark], self._engine.dialect.name)
                start = ((conv or (lambda v: v))(self.cfg.start), None)
            else:
                start = None
            self._pos = start
            self._tracker = OffsetTracker(start)

    # -- queries ---------------------------------------------------------------------------------------------
    def _poll_query(self) -> Any:
        from sqlalchemy import and_, or_, select, text

        wm = self._table.c[self.cfg.watermark]
        key = self._table.c[self.cfg.key] if self.cfg.key else None
        q = select(*self._cols)
        if self.cfg.where:
            q = q.where(text(f"({self.cfg.where})"))
        if self._pos is not None:
            w, k = self._pos
            after = or_(wm > w, and_(wm == w, key > k)) if key is not None and k is not None else wm > w
            q = q.where(after)
        order = [wm, key] if key is not None else [wm]
        return q.order_by(*order).limit(self.limit)

    def _outbox_query(self, skip: int) -> Any:
        from sqlalchemy import select, text

        key = self._table.c[self.cfg.key]
        q = select(*self._cols)
        if self.cfg.where:
            q = q.where(text(f"({self.cfg.where})"))
        if self.cfg.on_delivery == "mark":
            q = q.where(self._table.c[self.cfg.mark_column].is_(None))
        return q.order_by(key).limit(self.limit + skip)

    async def _fetch(self, q: Any) -> list[Any]:
        async with self._engine.connect() as conn:
            res = await conn.execute(q)
            return list(res.mappings().all())

    # -- messages --------------------------------------------------------------------------------------------
    def _message(self, row: Any) -> Message:
        cfg = self.cfg
        data = {str(k): _jsonable(v) for k, v in row.items()}  # str(): column names may be str subclasses
        if cfg.id_column:
            mid = str(row[cfg.id_column])
        elif cfg.key:
            mid = f"{cfg.table}:{row[cfg.key]}"
        else:
            mid = f"{cfg.table}:{_jsonable(row[cfg.watermark])}"
        corr = row[cfg.correlation_column] if cfg.correlation_column else None
        headers = {"sql.table": cfg.table}
        if cfg.payload_column:
            payload = row[cfg.payload_column]
            if isinstance(payload, bytes | bytearray):
                payload = bytes(payload).decode("utf-8", "replace")
            if isinstance(payload, str):
                return Message(raw=payload.encode(), id=mid, correlation_id=str(corr) if corr else None,
                               headers=headers)
            return Message(_jsonable(payload), id=mid, correlation_id=str(corr) if corr else None, headers=headers)
        return Message(data, id=mid, correlation_id=str(corr) if corr else None, headers=headers)

    def _decoded(self, msg: Message) -> BaseException | None:
        if msg.is_decoded:
            return None
        try:
            _ = msg.body
        except ValueError as exc:
            raw = msg.raw.decode("utf-8", "replace")[:4096]
            msg.body = {"$raw": raw}
            return FatalError(f"row {msg.id}: payload is not valid JSON: {exc}", code="format.json.syntax")
        return None

    # -- run ---------------------------------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        backoff = 0.2
        while True:
            try:
                n = await (self._poll_once(emit) if self.cfg.mode == "poll" else self._outbox_once(emit))
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                err = _classify(exc, f"reading {self.cfg.table} failed")
                if not isinstance(err, RetryableError):
                    raise err from exc
                log.warning("sql source %s: %s; retrying in %.1fs", self.cfg.table, err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if n == 0:
                if self.cfg.stop_when_idle and not self._busy():
                    return
                await asyncio.sleep(self.cfg.interval)

    def _busy(self) -> bool:
        if self.cfg.mode == "poll":
            return self._tracker is not None and self._tracker.in_flight > 0
        return bool(self._inflight)

    async def _poll_once(self, emit: Emit) -> int:
        if self._rewind:
            # a nack: read again from the last acknowledged row (what was in flight comes again)
            self._rewind = False
            assert self._tracker is not None
            self._pos = self._tracker.committed
            self._tracker = OffsetTracker(self._pos)
        rows = await self._fetch(self._poll_query())
        if not rows:
            return 0
        tracker = self._tracker
        assert tracker is not None
        wm_col, key_col = self.cfg.watermark, self.cfg.key
        batch: list[Delivery] = []
        for row in rows:
            pos = (row[wm_col], row[key_col] if key_col else None)
            msg = self._message(row)
            err = self._decoded(msg)
            ticket = tracker.track(pos)
            batch.append(Delivery(msg, _Acker(tracker, ticket), self._nack_poll, err))
            self._pos = pos
        await emit(batch)
        return len(rows)

    def _nack_poll(self, requeue: bool) -> None:
        if requeue:
            self._rewind = True

    async def _outbox_once(self, emit: Emit) -> int:
        await self._flush_outbox()
        key_col = self.cfg.key
        assert key_col is not None
        # read and claim under the lock that marking delivered rows takes too: a read that started
        # before rows were marked must not see them as new once they left the in-flight set
        async with self._lock:
            rows = await self._fetch(self._outbox_query(len(self._inflight)))
            fresh = [r for r in rows if r[key_col] not in self._inflight][: self.limit]
            for row in fresh:
                self._inflight.add(row[key_col])
        if not fresh:
            return 0
        batch: list[Delivery] = []
        for row in fresh:
            k = row[key_col]
            msg = self._message(row)
            err = self._decoded(msg)
            batch.append(Delivery(msg, _OutboxAck(self, k), _OutboxNack(self, k), err))
        await emit(batch)
        return len(batch)

    async def _flush_outbox(self) -> None:
        if not self._done:
            return
        from sqlalchemy import func

        async with self._lock:
            keys, self._done = self._done, []
            if not keys:
                return
            t = self._table
            kc = t.c[self.cfg.key]
            try:
                async with self._engine.begin() as conn:
                    for i in range(0, len(keys), 500):
                        chunk = keys[i : i + 500]
                        if self.cfg.on_delivery == "delete":
                            await conn.execute(t.delete().where(kc.in_(chunk)))
                        else:
                            mark = t.c[self.cfg.mark_column]
                            await conn.execute(t.update().where(kc.in_(chunk)).values({mark: func.current_timestamp()}))
            except BaseException:
                self._done[:0] = keys
                raise
            for k in keys:
                self._inflight.discard(k)

    async def commit_acks(self) -> None:
        if self.cfg.mode == "outbox":
            try:
                await self._flush_outbox()
            except Exception as exc:
                log.warning("sql source %s: marking delivered rows failed (%s); retrying later", self.cfg.table, exc)
            return
        t = self._tracker
        if t is not None and t.dirty:
            async with self._lock:
                if t.dirty:
                    t.dirty = False
                    w, k = t.committed
                    await self.ctx.store.put_checkpoint(self.scope, {"watermark": _pos_out(w), "key": _pos_out(k)})

    async def close(self) -> None:
        if self._engine is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.commit_acks(), 10)
        await self._engine.dispose()
        self._engine = None


class _Acker:
    __slots__ = ("ticket", "tracker")

    def __init__(self, tracker: OffsetTracker, ticket: int) -> None:
        self.tracker = tracker
        self.ticket = ticket

    def __call__(self) -> None:
        self.tracker.ack(self.ticket)


class _OutboxAck:
    __slots__ = ("key", "src")

    def __init__(self, src: SqlSource, key: Any) -> None:
        self.src = src
        self.key = key

    def __call__(self) -> None:
        self.src._done.append(self.key)


class _OutboxNack:
    __slots__ = ("key", "src")

    def __init__(self, src: SqlSource, key: Any) -> None:
        self.src = src
        self.key = key

    def __call__(self, requeue: bool) -> None:
        # the row stays in the outbox: it is read again
        self.src._inflight.discard(self.key)


def _classify_asyncpg(exc: BaseException, what: str, text: str) -> Exception | None:
    """Errors of asyncpg used directly (the PostgreSQL sink path)."""
    mod = type(exc).__module__
    if not mod.startswith("asyncpg"):
        return None
    import asyncpg

    # InternalClientError: the client's protocol state broke (e.g. the server dropped the connection
    # mid-operation); the connection is invalidated and a retry gets a fresh one
    if isinstance(
        exc,
        asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions._base.InternalClientError,
    ):
        return RetryableError(f"{what}: {text}", code="sql.unavailable")
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    # 40: transaction rollback (serialization failure, deadlock); 53: insufficient resources;
    # 57: operator intervention (shutdown); 08: connection exception
    if sqlstate[:2] in ("40", "53", "57", "08") or _TRANSIENT.search(text):
        return RetryableError(f"{what}: {text}", code="sql.unavailable")
    return FatalError(f"{what}: {text}", code="sql.rejected")


@register(
    "sink",
    "sql",
    config=SqlSinkConfig,
    summary="Insert, upsert or merge rows (SQLite, PostgreSQL, MariaDB), one transaction per batch.",
    examples=("sql: {url: 'sqlite:///crm.db', table: orders, mode: upsert, key: [order_id]}",),
)
def _sql_sink(cfg: SqlSinkConfig, ctx: BuildContext) -> SqlSink:
    return SqlSink(cfg, ctx)


@register(
    "source",
    "sql",
    config=SqlSourceConfig,
    summary="Read new rows by watermark (checkpointed) or drain a transactional-outbox table.",
    examples=(
        "sql: {url: 'postgresql://app@db/shop', table: orders, watermark: updated_at, key: id}",
        "sql: {url: 'postgresql://app@db/shop', table: outbox, mode: outbox, key: seq, payload_column: payload}",
    ),
)
def _sql_source(cfg: SqlSourceConfig, ctx: BuildContext) -> SqlSource:
    return SqlSource(cfg, ctx)
