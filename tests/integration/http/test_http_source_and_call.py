"""The polling source (every pagination style, watermark in the store) and the enrichment call step,
against a real local API."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from tests.helpers import serve_app
from tests.integration.http.util import build

from seamline.core.component import Delivery
from seamline.core.engine import Engine
from seamline.core.flow import Flow, sink, source, step
from seamline.core.message import Message
from seamline.store.sqlite import SqliteStore
from seamline.testing.memory import channel, reset_channels

LOOPBACK = {"allow_loopback": True}


def rec(i: int) -> dict[str, Any]:
    # two records per timestamp: ties at the watermark are the interesting case
    return {"id": f"r-{i:02d}", "updated_at": f"2026-01-01T00:00:{i // 2:02d}Z", "value": i}


class Api:
    """A small REST API paginating one dataset in five ways; ``updated_since`` filters (inclusive)."""

    def __init__(self) -> None:
        self.records = [rec(i) for i in range(25)]
        self.requests: list[str] = []
        self.url = ""

    def _rows(self, request: web.Request) -> list[dict[str, Any]]:
        self.requests.append(request.path_qs)
        since = request.query.get("updated_since")
        return [r for r in self.records if since is None or r["updated_at"] >= since]

    async def page(self, request: web.Request) -> web.Response:
        rows = self._rows(request)
        page, size = int(request.query.get("page", "1")), int(request.query.get("size", "10"))
        return web.json_response({"data": rows[(page - 1) * size : page * size]})

    async def offset(self, request: web.Request) -> web.Response:
        rows = self._rows(request)
        off, lim = int(request.query["offset"]), int(request.query["limit"])
        return web.json_response(rows[off : off + lim])

    async def cursor(self, request: web.Request) -> web.Response:
        rows = self._rows(request)
        start = int(request.query.get("cursor", "0"))
        nxt = start + 7 if start + 7 < len(rows) else None
        return web.json_response({"items": rows[start : start + 7], "meta": {"next": str(nxt) if nxt else None}})

    async def link(self, request: web.Request) -> web.Response:
        rows = self._rows(request)
        p = int(request.query.get("p", "0"))
        headers = {}
        if (p + 1) * 6 < len(rows):
            since = request.query.get("updated_since")
            q = f"p={p + 1}" + (f"&updated_since={since}" if since else "")
            headers["Link"] = f'<{self.url}/link?{q}>; rel="next", <{self.url}/link?p=0>; rel="first"'
        return web.json_response(rows[p * 6 : (p + 1) * 6], headers=headers)

    async def next_url(self, request: web.Request) -> web.Response:
        rows = self._rows(request)
        p = int(request.query.get("p", "0"))
        nxt = f"/next?p={p + 1}" if (p + 1) * 9 < len(rows) else None
        return web.json_response({"results": rows[p * 9 : (p + 1) * 9], "next": nxt})

    async def customer(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        if cid == "missing":
            return web.json_response({"error": "not found"}, status=404)
        if cid == "huge":
            return web.Response(body=gzip.compress(b'{"x": "' + b"a" * (5 * 2**20) + b'"}'),
                                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        return web.json_response({"id": cid, "name": f"Customer {cid}", "tier": "gold"})


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    a = Api()
    app = web.Application()
    app.router.add_get("/page", a.page)
    app.router.add_get("/offset", a.offset)
    app.router.add_get("/cursor", a.cursor)
    app.router.add_get("/link", a.link)
    app.router.add_get("/next", a.next_url)
    app.router.add_get("/customers/{cid}", a.customer)
    async with serve_app(app) as port:
        a.url = f"http://127.0.0.1:{port}"
        reset_channels()
        yield a
        reset_channels()


async def run_once(src: dict[str, Any], state: Path, out: str = "polled") -> list[Message]:
    fl = Flow("poll", source=source("http", **src), sinks=[sink("memory", channel=out)], settings={"batch_size": 4})
    engine = Engine([fl], SqliteStore(state))
    result = await engine.run(until_idle=True, idle_horizon=0, install_signals=False)
    assert result.ok, result.errors
    written = list(channel(out).written)
    channel(out).written.clear()
    return written


PAGINATIONS = {
    "page": ({"url": "/page", "records": "data", "pagination": {"type": "page", "size_param": "size", "size": 10}},
             3),
    "offset": ({"url": "/offset", "pagination": {"type": "offset", "limit": 10}}, 3),
    "cursor": ({"url": "/cursor", "records": "items", "pagination": {"type": "cursor", "cursor_path": "meta.next"}},
               4),
    "link": ({"url": "/link", "pagination": {"type": "link"}}, 5),
    "next_url": ({"url": "/next", "records": "results", "pagination": {"type": "next_url", "next_url_path": "next"}},
                 3),
}


@pytest.mark.parametrize("style", sorted(PAGINATIONS))
async def test_every_pagination_style_reads_everything_once(api: Api, tmp_path: Path, style: str) -> None:
    cfg, pages = PAGINATIONS[style]
    got = await run_once({**cfg, "url": api.url + cfg["url"], "id": "id", "egress": LOOPBACK}, tmp_path / "s.db")
    assert [m.id for m in got] == [r["id"] for r in api.records]
    assert got[3].body == rec(3)
    assert len(api.requests) == pages, api.requests


async def test_watermark_polls_incrementally_and_survives_restarts(api: Api, tmp_path: Path) -> None:
    cfg = {"url": api.url + "/cursor", "records": "items", "id": "id", "egress": LOOPBACK,
           "pagination": {"type": "cursor", "cursor_path": "meta.next"},
           "watermark": {"field": "updated_at", "param": "updated_since", "initial": "2026-01-01T00:00:00Z"}}
    state = tmp_path / "s.db"
    first = await run_once(cfg, state)
    assert len(first) == 25
    api.requests.clear()
    assert await run_once(cfg, state) == []  # nothing new: the ties at the watermark are not delivered again
    assert all("updated_since=2026-01-01T00%3A00%3A12Z" in q or "updated_since=2026-01-01T00:00:12Z" in q
               for q in api.requests)
    api.records += [{"id": "r-late-tie", "updated_at": "2026-01-01T00:00:12Z", "value": 100},
                    {"id": "r-new-1", "updated_at": "2026-01-01T00:01:00Z", "value": 101},
                    {"id": "r-new-2", "updated_at": "2026-01-01T00:01:00Z", "value": 102}]
    third = await run_once(cfg, state)
    assert sorted(m.id for m in third) == ["r-late-tie", "r-new-1", "r-new-2"]
    store = SqliteStore(state)
    await store.open()
    try:
        cp = await store.get_checkpoint("http-source:poll")
    finally:
        await store.close()
    assert cp == {"watermark": "2026-01-01T00:01:00Z", "ids_at": ["r-new-1", "r-new-2"]}


async def test_the_watermark_moves_only_past_acknowledged_records(api: Api, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    src = build("source", "http", {"url": api.url + "/offset", "id": "id", "egress": LOOPBACK,
                                   "pagination": {"type": "offset", "limit": 10},
                                   "watermark": {"field": "updated_at"}}, tmp_path, store=store)
    got: list[Delivery] = []

    async def emit(batch: list[Delivery]) -> None:
        got.extend(batch)

    await src.open()
    try:
        await src.run(emit)
        assert len(got) == 25
        await src.commit_acks()
        assert await store.get_checkpoint(src.scope) is None, "committed before any acknowledgement"
        for d in got[5:]:
            d.ack()  # out of order: everything but the first five
        await src.commit_acks()
        assert await store.get_checkpoint(src.scope) is None
        for d in got[:5]:
            d.ack()
        await src.commit_acks()
        assert await store.get_checkpoint(src.scope) == {"watermark": "2026-01-01T00:00:12Z", "ids_at": ["r-24"]}
    finally:
        await src.close()
        await store.close()


async def test_cross_origin_next_links_are_refused(api: Api, tmp_path: Path) -> None:
    async def evil(request: web.Request) -> web.Response:
        return web.json_response({"results": [rec(1)], "next": "https://evil.example.com/steal"})

    app = web.Application()
    app.router.add_get("/evil", evil)
    async with serve_app(app) as port:
        src = {"url": f"http://127.0.0.1:{port}/evil", "records": "results", "egress": LOOPBACK,
               "auth": {"type": "bearer", "token": "secret-token-value"},
               "pagination": {"type": "next_url", "next_url_path": "next"}}
        fl = Flow("evil", source=source("http", **src), sinks=[sink("memory", channel="evil-out")])
        result = await Engine([fl], SqliteStore(tmp_path / "s.db")).run(until_idle=True, idle_horizon=0,
                                                                        install_signals=False)
    assert "leaves http://127.0.0.1" in result.errors["evil"]
    assert len(channel("evil-out").written) == 1


# -- the call step ---------------------------------------------------------------------------------


async def test_enrichment_merges_the_response(api: Api, tmp_path: Path) -> None:
    ch = channel("orders")
    for cid in ("c-1", "missing", "c-2"):
        ch.put({"order": f"o-{cid}", "customer_id": cid}, id=f"o-{cid}")
    fl = Flow(
        "enrich",
        source=source("memory", channel="orders"),
        steps=[step("http", label="crm", url=api.url + "/customers/{body.customer_id}", egress=LOOPBACK,
                    status={"404": "ok"},
                    merge="$merge([body, {'customer': response.status = 200 ? response.body.name : null, "
                          "'status': response.status}])")],
        sinks=[sink("memory", channel="enriched")],
    )
    result = await Engine([fl], SqliteStore(tmp_path / "s.db")).run(until_idle=True, idle_horizon=0,
                                                                    install_signals=False)
    assert result.ok
    out = {m.id: m.body for m in channel("enriched").written}
    assert out["o-c-1"] == {"order": "o-c-1", "customer_id": "c-1", "customer": "Customer c-1", "status": 200}
    assert out["o-missing"]["customer"] is None and out["o-missing"]["status"] == 404


async def test_call_step_limits_the_response_size(api: Api, tmp_path: Path) -> None:
    st = build("step", "http", {"url": api.url + "/customers/{body.id}", "egress": LOOPBACK,
                                "max_response_bytes": "1MiB"}, tmp_path)
    await st.open()
    try:
        small = await st.process_async(Message({"id": "c-9"}))
        with pytest.raises(Exception) as caught:
            await st.process_async(Message({"id": "huge"}))
        with pytest.raises(Exception) as missing:
            await st.process_async(Message({"id": "missing"}))
    finally:
        await st.close()
    assert small.body == {"id": "c-9", "name": "Customer c-9", "tier": "gold"}
    assert getattr(caught.value, "code", None) == "http.response_too_large"
    assert getattr(missing.value, "code", None) == "http.status.404"


@pytest.mark.parametrize("max_in_flight", [1, 4])
async def test_call_step_calls_in_parallel_up_to_its_limit_and_keeps_the_batch_order(
    tmp_path: Path, max_in_flight: int
) -> None:
    # earlier messages answer later: with calls in parallel they complete in reverse order
    in_flight = peak = 0
    served: list[int] = []

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        n = int(request.match_info["n"])
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.02 * (10 - n))
        finally:
            in_flight -= 1
        served.append(n)
        return web.json_response({"n": n, "square": n * n})

    app = web.Application()
    app.router.add_get("/slow/{n}", slow)
    reset_channels()
    try:
        async with serve_app(app) as port:
            url = f"http://127.0.0.1:{port}"
            ch = channel("numbers")
            for n in range(10):
                ch.put({"n": n}, id=f"n-{n}")
            fl = Flow(
                "parallel-calls",
                source=source("memory", channel="numbers"),
                steps=[step("http", label="square", url=url + "/slow/{body.n}", egress=LOOPBACK,
                            max_in_flight=max_in_flight, merge="$merge([body, {'square': response.body.square}])")],
                sinks=[sink("memory", channel="squared")],
                settings={"batch_size": 10, "concurrency": 1},
            )
            result = await Engine([fl], SqliteStore(tmp_path / "s.db")).run(until_idle=True, idle_horizon=0,
                                                                            install_signals=False)
            assert result.ok, result.errors
            written = channel("squared").written
            assert [m.id for m in written] == [f"n-{n}" for n in range(10)]
            assert [m.body for m in written] == [{"n": n, "square": n * n} for n in range(10)]
            assert peak == max_in_flight
            if max_in_flight == 1:
                assert served == list(range(10))
            else:
                assert served != list(range(10))  # the answers came back out of order, the sink saw them in order
    finally:
        reset_channels()
