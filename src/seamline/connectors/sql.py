"""The ``sql`` connector (sink): insert or upsert records into a table, one transaction per batch.

SQLAlchemy Core with async drivers: SQLite (aiosqlite), PostgreSQL
(asyncpg) and MariaDB/MySQL (aiomysql). The table is reflected once on
open; record fields map to columns by name (or through ``columns``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from seamline.config.models import SinkConfig
from seamline.config.types import MaybeSecret
from seamline.core.component import BuildContext, Sink
from seamline.core.errors import FatalError, RetryableError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.security.secrets import Secret

__all__ = ["SqlSink", "SqlSinkConfig", "async_url"]


class SqlSinkConfig(SinkConfig):
    """Write each message as a row."""

    url: MaybeSecret = Field(
        ...,
        description="Database URL: `sqlite:///crm.db` (relative to the flow file), "
        "`postgresql://user@host/db`, `mysql://user@host/db`; may use ${env:NAME}.",
    )
    table: str = Field(..., description="Target table (optionally `schema.table`).")
    mode: Literal["insert", "upsert"] = Field("insert", description="insert, or upsert by `key`.")
    key: list[str] = Field(default_factory=list, description="Key columns for upsert.")
    columns: dict[str, str] | None = Field(
        None, description="Column name to dotted record path; default: record fields with column names."
    )
    correlation_column: str | None = Field(None, description="Also write the correlation id to this column.")

    @model_validator(mode="after")
    def _check(self) -> SqlSinkConfig:
        if self.mode == "upsert" and not self.key:
            raise ValueError("mode 'upsert' needs 'key' (the key columns)")
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


def _get(body: Any, path: str) -> Any:
    cur = body
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


_TRANSIENT = re.compile(r"database is locked|deadlock|connection|timeout|too many connections|server has gone", re.I)


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

    async def open(self) -> None:
        from sqlalchemy import MetaData, Table
        from sqlalchemy.ext.asyncio import create_async_engine

        self._engine = create_async_engine(self._url, pool_pre_ping=True)
        schema, _, name = self.cfg.table.rpartition(".")
        md = MetaData(schema=schema or None)
        try:
            async with self._engine.connect() as conn:
                self._table = await conn.run_sync(lambda c: Table(name, md, autoload_with=c))
        except Exception as exc:
            await self._engine.dispose()
            raise _classify(exc, f"cannot open table {self.cfg.table}") from exc
        self._stmt = self._statement()

    def _statement(self) -> Any:
        t = self._table
        dialect = self._engine.dialect.name
        if self.cfg.mode == "insert":
            return t.insert()
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as ins
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as ins  # type: ignore[assignment]
        elif dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as myins

            stmt = myins(t)
            cols = [c.name for c in t.columns if c.name not in self.cfg.key]
            return stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in cols})
        else:
            raise FatalError(f"upsert is not supported on {dialect}", code="sql.upsert_unsupported")
        stmt = ins(t)
        cols = [c.name for c in t.columns if c.name not in self.cfg.key]
        return stmt.on_conflict_do_update(index_elements=self.cfg.key, set_={c: stmt.excluded[c] for c in cols})

    def _row(self, m: Message) -> dict[str, Any]:
        body = m.body
        if not isinstance(body, dict):
            raise FatalError("the sql sink needs an object body", code="sql.record_type")
        names = [c.name for c in self._table.columns]
        if self.cfg.columns:
            row = {col: _get(body, path) for col, path in self.cfg.columns.items()}
        else:
            row = {k: body[k] for k in names if k in body}
        if self.cfg.correlation_column:
            row[self.cfg.correlation_column] = m.correlation_id
        for k in self.cfg.key:
            if row.get(k) is None:
                raise FatalError(f"key column {k!r} has no value", code="sql.key_missing")
        return row

    async def write(self, batch: Sequence[Message]) -> None:
        rows = [self._row(m) for m in batch]
        # rows with different column sets cannot share one executemany
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(tuple(sorted(r)), []).append(r)
        try:
            async with self._engine.begin() as conn:
                for group in groups.values():
                    await conn.execute(self._stmt, group)
        except Exception as exc:
            raise _classify(exc, f"writing to {self.cfg.table} failed") from exc

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


def _classify(exc: Exception, what: str) -> Exception:
    from sqlalchemy import exc as sa_exc

    text = str(getattr(exc, "orig", exc) or exc).splitlines()[0][:300]
    if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError | sa_exc.ProgrammingError):
        return FatalError(f"{what}: {text}", code="sql.rejected")
    if isinstance(exc, sa_exc.NoSuchTableError):
        return FatalError(f"{what}: no such table", code="sql.no_table")
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | OSError) or _TRANSIENT.search(text):
        if isinstance(exc, sa_exc.OperationalError) and "no such" in text:
            return FatalError(f"{what}: {text}", code="sql.rejected")
        return RetryableError(f"{what}: {text}", code="sql.unavailable")
    return FatalError(f"{what}: {text}", code="sql.error")


@register(
    "sink",
    "sql",
    config=SqlSinkConfig,
    summary="Insert or upsert rows (SQLite, PostgreSQL, MariaDB), one transaction per batch.",
    examples=("sql: {url: 'sqlite:///crm.db', table: orders, mode: upsert, key: [order_id]}",),
)
def _sql_sink(cfg: SqlSinkConfig, ctx: BuildContext) -> SqlSink:
    return SqlSink(cfg, ctx)
