"""A real webhook receiver (uvicorn on 127.0.0.1, SQLite store) for each test, and a client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from seamline.connectors.webhook import WebhookSource, WebhookSourceConfig
from seamline.core.clock import ManualClock
from seamline.core.component import BuildContext
from seamline.store.sqlite import SqliteStore

FLOW = "hooks"


@dataclass
class Receiver:
    source: WebhookSource
    store: SqliteStore
    session: aiohttp.ClientSession
    clock: ManualClock

    @property
    def url(self) -> str:
        return self.source.url

    async def post(self, path: str, body: bytes = b"{}", headers: dict[str, str] | None = None,
                   method: str = "POST", **kw: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, data=body, headers=headers or {}, **kw) as r:
            raw = await r.read()
            try:
                return r.status, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return r.status, raw

    async def stored(self) -> list[dict[str, Any]]:
        """Every record in the inbox, whether or not the source has taken it (leased) already."""
        from seamline.store.sqlite import _loads

        store = self.store

        def read() -> list[Any]:
            return store.conn.execute("SELECT record FROM inbox WHERE flow=? ORDER BY seq", (FLOW,)).fetchall()

        return [_loads(r[0]) for r in await store._run(read)]


Make = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Make]:
    made: list[Receiver] = []

    async def make(routes: list[dict[str, Any]], *, clock: ManualClock | None = None, store: Any = None,
                   **options: Any) -> Receiver:
        st = store or SqliteStore(tmp_path / f"state{len(made)}.db")
        await st.open()
        clk = clock or ManualClock(time.time())
        ctx = BuildContext(flow=FLOW, base_dir=tmp_path, store=st, clock=clk, batch_size=100)
        cfg = WebhookSourceConfig.model_validate({"port": 0, "routes": routes, **options})
        src = WebhookSource(cfg, ctx)
        await src.open()
        rec = Receiver(src, st, aiohttp.ClientSession(), clk)
        made.append(rec)
        return rec

    yield make
    for r in made:
        await r.session.close()
        await r.source.close()
        await r.store.close()
