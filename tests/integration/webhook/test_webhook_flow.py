"""The webhook source inside the engine: stored before answered, emitted from the inbox, nothing twice."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.integration.webhook import signers

from seamline.core.clock import ManualClock
from seamline.core.engine import Engine
from seamline.core.flow import Flow, sink, source, step
from seamline.store.base import DlqFilter
from seamline.store.sqlite import SqliteStore
from seamline.testing.memory import channel, reset_channels

SECRET = "shpss_SENTINEL-webhook-secret-51f0"


def flow(port: int = 0, out: str = "orders-out") -> Flow:
    return Flow(
        "shop-orders",
        source=source("webhook", port=port, routes=[
            {"path": "/hooks/orders", "signature": {"scheme": "shopify", "secret": SECRET}}]),
        steps=[step("map", label="canonical", expression="{'order_id': $string(id), 'total': $number(total_price)}")],
        sinks=[sink("memory", channel=out)],
    )


async def started(engine: Engine) -> tuple[asyncio.Task[Any], str]:
    task = asyncio.create_task(engine.run(install_signals=False))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if engine.runners and engine.runners[0].source is not None and getattr(engine.runners[0].source, "port", None):
            return task, engine.runners[0].source.url  # type: ignore[attr-defined]
        if task.done():
            await task
        await asyncio.sleep(0.01)
    raise TimeoutError("the engine did not start")


async def wait_until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


def order(n: int) -> bytes:
    return json.dumps({"id": 1000 + n, "total_price": f"{n}.50", "email": "buyer@example.com"}).encode()


@pytest.fixture(autouse=True)
def _channels() -> Any:
    reset_channels()
    yield
    reset_channels()


async def test_deliveries_flow_through_once_each(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    engine = Engine([flow()], store)
    task, url = await started(engine)
    try:
        async with aiohttp.ClientSession() as s:
            async def send(n: int, delivery: str) -> int:
                async with s.post(url + "/hooks/orders", data=order(n),
                                  headers=signers.shopify(SECRET, order(n), delivery)) as r:
                    return r.status

            statuses = await asyncio.gather(*(send(n, f"d-{n}") for n in range(20)))
            statuses += await asyncio.gather(*(send(n, f"d-{n}") for n in range(0, 20, 2)))  # redeliveries
            async with s.post(url + "/hooks/orders", data=order(99), headers={"X-Shopify-Hmac-Sha256": "AAAA"}) as r:
                assert r.status == 401
        assert statuses == [200] * 30
        out = channel("orders-out")
        await wait_until(lambda: len(out.written) >= 20)
        await asyncio.sleep(0.2)
        assert sorted(m.id for m in out.written) == sorted(f"d-{n}" for n in range(20))
        assert sorted(m.body["order_id"] for m in out.written) == sorted(str(1000 + n) for n in range(20))
        m0 = next(m for m in out.written if m.id == "d-3")
        assert m0.body == {"order_id": "1003", "total": 3.5}
        assert m0.headers["x-shopify-topic"] == "orders/create"
        assert m0.headers["webhook.route"] == "/hooks/orders"
        assert not any("hmac" in k.lower() for k in m0.headers)
    finally:
        engine.request_stop()
        result = await task
    assert result.ok and result.stats["shop-orders"].delivered == 20
    check = SqliteStore(tmp_path / "state.db")
    await check.open()
    try:
        assert await check.inbox_take("shop-orders", 100, time.time(), 0.0) == []
        assert await check.list_dead(DlqFilter(flow="shop-orders")) == []
    finally:
        await check.close()


class GatedStore(SqliteStore):
    """A store whose inbox writes wait for a gate, or fail while ``broken``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.gate.set()
        self.broken = False
        self.puts = 0

    async def inbox_accept(
        self, flow: str, items: Sequence[tuple[dict[str, Any], str | None, str | None, float]], now: float,
        lease_until: float | None = None,
    ) -> list[int | None]:
        await self.gate.wait()
        if self.broken:
            raise OSError("disk full")
        self.puts += 1
        return await super().inbox_accept(flow, items, now, lease_until)


async def test_the_2xx_waits_for_the_inbox_and_a_store_failure_is_503(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "state.db")
    engine = Engine([flow()], store, clock=ManualClock(time.time()))
    task, url = await started(engine)
    out = channel("orders-out")
    try:
        async with aiohttp.ClientSession() as s:
            store.gate.clear()
            pending = asyncio.ensure_future(s.post(url + "/hooks/orders", data=order(1),
                                                   headers=signers.shopify(SECRET, order(1), "gated-1")))
            await asyncio.sleep(0.3)
            assert not pending.done(), "answered before the delivery was stored"
            assert out.written == []
            store.gate.set()
            resp = await asyncio.wait_for(pending, 5)
            assert resp.status == 200
            resp.release()
            await wait_until(lambda: len(out.written) == 1)

            store.broken = True
            async with s.post(url + "/hooks/orders", data=order(2),
                              headers=signers.shopify(SECRET, order(2), "broken-2")) as r:
                assert r.status == 503
                assert (await r.json())["error"]["code"] == "webhook.store_unavailable"
                assert r.headers["Retry-After"]
            store.broken = False
            # the sender retries: nothing was remembered, so it is a new delivery, not a duplicate
            async with s.post(url + "/hooks/orders", data=order(2),
                              headers=signers.shopify(SECRET, order(2), "broken-2")) as r:
                assert r.status == 200 and (await r.json())["status"] == "accepted"
            await wait_until(lambda: len(out.written) == 2)
    finally:
        engine.request_stop()
        await task
    assert [m.id for m in out.written] == ["gated-1", "broken-2"]
