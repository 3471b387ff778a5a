"""Signed Shopify-style order webhooks -> canonical order -> a REST CRM behind OAuth2, in one command.

    python examples/webhook-to-rest/run.py            # ports 18787 (webhook) and 18788 (CRM)
    python examples/webhook-to-rest/run.py --any-port  # free ports instead

Starts a small demo CRM with its OAuth2 token endpoint, runs the flow in
``flows/orders.yaml`` in-process, sends a few signed order webhooks (one of
them twice, one forged), waits until the CRM has the orders, prints what
happened and stops. Exit status 0 when the CRM holds exactly the expected
orders.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# demo credentials, used only when the environment does not provide them
DEMO_ENV = {
    "SHOPIFY_WEBHOOK_SECRET": "demo-shopify-webhook-secret",
    "CRM_CLIENT_SECRET": "demo-crm-client-secret",
}
CLIENT_ID = "seamline-demo"

ORDERS = [
    {"id": 450789469, "name": "#1001", "email": "ana.lima@example.com", "currency": "EUR",
     "total_price": "59.90", "created_at": "2026-03-27T12:44:00+01:00",
     "customer": {"first_name": "Ana", "last_name": "Lima"},
     "line_items": [{"sku": "MUG-01", "quantity": 2, "price": "14.95"}, {"sku": "TEE-M", "quantity": 1,
                                                                         "price": "30.00"}]},
    {"id": 450789470, "name": "#1002", "email": "jon.berg@example.com", "currency": "EUR",
     "total_price": "24.00", "created_at": "2026-03-27T12:51:10+01:00",
     "customer": {"first_name": "Jon", "last_name": "Berg"},
     "line_items": [{"sku": "CAP-01", "quantity": 1, "price": "24.00"}]},
    {"id": 450789471, "name": "#1003", "email": "mei.chen@example.com", "currency": "EUR",
     "total_price": "112.50", "created_at": "2026-03-27T13:02:45+01:00",
     "customer": {"first_name": "Mei", "last_name": "Chen"},
     "line_items": [{"sku": "HOODIE-L", "quantity": 2, "price": "56.25"}]},
]


# -- the demo CRM ---------------------------------------------------------------------------------


class DemoCrm:
    """A REST CRM: ``POST /oauth/token`` (client credentials), ``POST /api/orders`` (Bearer, idempotent)."""

    def __init__(self, client_secret: str) -> None:
        self.client_secret = client_secret
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.orders: dict[str, dict[str, Any]] = {}
        self.posts = 0

    async def token(self, request: Any) -> Any:
        from aiohttp import web

        self.token_requests += 1
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{self.client_secret}".encode()).decode()
        form = await request.post()
        if request.headers.get("Authorization") != expected or form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "invalid_client"}, status=401)
        token = base64.urlsafe_b64encode(os.urandom(24)).decode()
        self.tokens.add(token)
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": 300})

    async def create_order(self, request: Any) -> Any:
        from aiohttp import web

        self.posts += 1
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return web.json_response({"error": "invalid_token"}, status=401)
        key = request.headers.get("Idempotency-Key")
        order = await request.json()
        if key in self.orders:  # a retried request: already done
            return web.json_response(self.orders[key], status=200)
        self.orders[key or order["order_id"]] = order
        return web.json_response(order, status=201)

    async def start(self, port: int) -> Any:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        app.router.add_post("/api/orders", self.create_order)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner


# -- sending webhooks -----------------------------------------------------------------------------


def shopify_headers(secret: str, body: bytes, delivery: str) -> dict[str, str]:
    sig = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create",
            "X-Shopify-Hmac-Sha256": sig, "X-Shopify-Webhook-Id": delivery,
            "X-Shopify-Shop-Domain": "demo-shop.myshopify.com"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(args: argparse.Namespace) -> int:
    import aiohttp

    for name, value in DEMO_ENV.items():
        os.environ.setdefault(name, value)
    from seamline.config.loader import load_flows
    from seamline.core.engine import Engine
    from seamline.store.sqlite import SqliteStore

    (flow,) = load_flows(HERE / "flows" / "orders.yaml")
    hook_port, crm_port = (free_port(), free_port()) if args.any_port else (18787, 18788)
    src, crm_sink = flow.source.config, flow.sinks[0].config
    src.port = hook_port  # type: ignore[attr-defined]
    crm_sink.url = f"http://127.0.0.1:{crm_port}/api/orders"  # type: ignore[attr-defined]
    crm_sink.auth.token_url = f"http://127.0.0.1:{crm_port}/oauth/token"  # type: ignore[attr-defined]

    crm = DemoCrm(os.environ["CRM_CLIENT_SECRET"])
    crm_runner = await crm.start(crm_port)
    print(f"demo CRM with OAuth2 token endpoint on http://127.0.0.1:{crm_port}")
    state = Path(args.state) if args.state else Path(tempfile.mkdtemp(prefix="seamline-example-")) / "state.db"
    engine = Engine([flow], SqliteStore(state))
    running = asyncio.create_task(engine.run(install_signals=False))
    url = f"http://127.0.0.1:{hook_port}/webhooks/shopify/orders"
    secret = os.environ["SHOPIFY_WEBHOOK_SECRET"]
    ok = False
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 10
            while True:  # until the receiver listens
                try:
                    async with http.get(url.replace("/webhooks/shopify/orders", "/")):
                        break
                except aiohttp.ClientConnectionError:
                    if time.monotonic() > deadline or running.done():
                        await running
                        raise
                    await asyncio.sleep(0.05)
            print(f"flow '{flow.name}' receives webhooks on {url}\n")

            async def send(order: dict[str, Any], delivery: str, *, forged: bool = False) -> tuple[int, Any]:
                body = json.dumps(order).encode()
                headers = shopify_headers("not-the-secret" if forged else secret, body, delivery)
                async with http.post(url, data=body, headers=headers) as r:
                    return r.status, await r.json()

            for order in ORDERS:
                status, answer = await send(order, f"wh-{order['id']}")
                print(f"  order {order['name']}: HTTP {status} {answer['status']} (delivery {answer['id']})")
            status, answer = await send(ORDERS[0], f"wh-{ORDERS[0]['id']}")
            print(f"  order {ORDERS[0]['name']} redelivered: HTTP {status} {answer['status']}")
            status, answer = await send({**ORDERS[1], "total_price": "0.01"}, "wh-forged", forged=True)
            print(f"  forged order webhook: HTTP {status} {answer['error']['code']}")

        deadline = time.monotonic() + 20
        while len(crm.orders) < len(ORDERS) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
    finally:
        engine.request_stop()
        result = await running
        await crm_runner.cleanup()

    print(f"\nthe CRM holds {len(crm.orders)} order(s) after {crm.posts} POST(s) "
          f"and {crm.token_requests} token request(s):")
    for key, o in sorted(crm.orders.items(), key=lambda kv: kv[1]["number"]):
        print(f"  {o['number']}  {o['customer']['name']:<10} {o['currency']} {o['total']:>7.2f}  "
              f"{len(o['lines'])} line(s)  Idempotency-Key {key}")
    stats = result.stats[flow.name].as_dict()
    print(f"\nflow stats: received {stats['received']}, delivered {stats['delivered']}, "
          f"dead-lettered {stats['dead_lettered']}; state in {state}")
    expected = {str(o["id"]) for o in ORDERS}
    ok = result.ok and {o["order_id"] for o in crm.orders.values()} == expected and len(crm.orders) == len(ORDERS)
    print("ok" if ok else "UNEXPECTED RESULT")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--any-port", action="store_true", help="use free ports instead of 18787/18788")
    parser.add_argument("--state", help="state database (default: a new temporary one)")
    sys.exit(asyncio.run(main(parser.parse_args())))
