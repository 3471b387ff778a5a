from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from tests.integration.services import require

DATABASES = ["sqlite", "postgres", "mariadb"]


@pytest.fixture
def pg_url() -> str:
    return require("postgres")


@pytest.fixture
def maria_url() -> str:
    return require("mariadb")


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for each of the three dialects (SQLite in a temporary file)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return require(request.param)


class Db:
    """An async SQLAlchemy engine plus helpers; tables made with ``table()`` are dropped afterwards."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        from seamline.connectors.sql import async_url

        self.url_plain = url
        self.engine = create_async_engine(async_url(url))
        self.dialect = self.engine.dialect
        self.made: list[str] = []

    def connect(self) -> Any:
        return self.engine.connect()

    def begin(self) -> Any:
        return self.engine.begin()

    async def table(self, make: Callable[[str, str], str], prefix: str = "t") -> str:
        from sqlalchemy import text

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        async with self.engine.begin() as conn:
            await conn.execute(text(make(name, self.dialect.name)))
        self.made.append(name)
        return name

    async def rows(self, sql: str) -> list[Any]:
        from sqlalchemy import text

        async with self.engine.connect() as conn:
            return list((await conn.execute(text(sql))).all())

    async def run(self, sql: str, params: Any = None) -> None:
        from sqlalchemy import text

        async with self.engine.begin() as conn:
            await conn.execute(text(sql), params or {})

    async def aclose(self) -> None:
        from sqlalchemy import text

        async with self.engine.begin() as conn:
            for name in self.made:
                await conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        await self.engine.dispose()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Db]:
    d = Db(db_url)
    try:
        yield d
    finally:
        await d.aclose()
