"""A small GraphQL "shop" for the graphql connector tests: ariadne (ASGI) on uvicorn, in a thread.

Schema: ``customers(first, after, updatedSince)`` -- a Relay connection ordered by
``(updatedAt, id)``, filtered by ``updatedAt >= updatedSince``, whose cursors
encode that key (stable under appends and updates); ``customer(id)``; and
``recordOrder(input)``, which records the order id (and the request's
``Idempotency-Key``).

Failures on demand: ``riskScore`` errors for customers named ``risky*`` (a
partial answer); ``recordOrder`` errors for a negative total (no data), answers
``userErrors`` for a zero total, errors with ``extensions.code = RATE_LIMITED``
for ids starting ``limited`` and quotes the request's Authorization header in
its error for ids starting ``echo`` (a careless server); ``fail_next(status, n)``
answers the next ``n`` requests with that HTTP status (and ``Retry-After: 1``);
``delay`` slows every request down. Every request needs ``Authorization: Bearer
<token>`` (401 otherwise).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from ariadne import MutationType, ObjectType, QueryType, make_executable_schema
from ariadne.asgi import GraphQL
from graphql import GraphQLError

SDL = """
type Query {
  customers(first: Int!, after: String, updatedSince: String): CustomerConnection!
  customer(id: ID!): Customer
}
type Mutation {
  recordOrder(input: OrderInput!): RecordResult!
}
type CustomerConnection { edges: [CustomerEdge!]!  nodes: [Customer!]!  pageInfo: PageInfo! }
type CustomerEdge { cursor: String!  node: Customer! }
type PageInfo { hasNextPage: Boolean!  endCursor: String }
type Customer { id: ID!  name: String!  email: String!  updatedAt: String!  riskScore: Int }
input OrderInput { id: ID!  customerId: ID  total: Float }
type RecordResult { ok: Boolean!  id: ID!  userErrors: [String!]! }
"""


def _cursor(c: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"{c['updatedAt']}|{c['id']}".encode()).decode()


def _key(cursor: str) -> tuple[str, str]:
    updated, _, cid = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
    return updated, cid


class Shop:
    """Server state, shared between the test thread and the server thread."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.customers: dict[str, dict[str, Any]] = {}
        self.orders: list[str] = []
        self.idempotency_keys: list[str] = []
        self.requests = 0
        self.delay = 0.0
        self._fail: list[tuple[int, int]] = []
        self._clock = 0

    def reset(self) -> None:
        with self.lock:
            self.customers.clear()
            self.orders.clear()
            self.idempotency_keys.clear()
            self.requests = 0
            self.delay = 0.0
            self._fail.clear()

    def tick(self) -> str:
        self._clock += 1
        return f"2024-01-01T00:00:00.{self._clock:06d}"

    def add(self, cid: str, name: str | None = None) -> None:
        with self.lock:
            self.customers[cid] = {"id": cid, "name": name or f"Customer {cid}", "email": f"{cid}@example.com",
                                   "updatedAt": self.tick()}

    def touch(self, cid: str, **changes: Any) -> None:
        with self.lock:
            self.customers[cid].update(changes, updatedAt=self.tick())

    def fail_next(self, status: int, times: int = 1) -> None:
        with self.lock:
            self._fail.append((status, times))

    def _take_failure(self) -> int | None:
        with self.lock:
            self.requests += 1
            if not self._fail:
                return None
            status, times = self._fail[0]
            if times <= 1:
                self._fail.pop(0)
            else:
                self._fail[0] = (status, times - 1)
            return status


def build_app(shop: Shop) -> Callable[..., Awaitable[None]]:
    query, mutation, customer = QueryType(), MutationType(), ObjectType("Customer")

    @query.field("customers")
    def resolve_customers(_: Any, info: Any, first: int, after: str | None = None,
                          updatedSince: str | None = None) -> dict[str, Any]:
        with shop.lock:
            rows = sorted(shop.customers.values(), key=lambda c: (c["updatedAt"], c["id"]))
        if updatedSince is not None:
            rows = [c for c in rows if c["updatedAt"] >= updatedSince]
        if after:
            key = _key(after)
            rows = [c for c in rows if (c["updatedAt"], c["id"]) > key]
        page = [dict(c) for c in rows[:first]]
        return {
            "edges": [{"cursor": _cursor(c), "node": c} for c in page],
            "nodes": page,
            "pageInfo": {"hasNextPage": len(rows) > first, "endCursor": _cursor(page[-1]) if page else after},
        }

    @query.field("customer")
    def resolve_customer(_: Any, info: Any, id: str) -> dict[str, Any] | None:
        with shop.lock:
            found = shop.customers.get(id)
        return dict(found) if found else None

    @customer.field("riskScore")
    def resolve_risk(obj: dict[str, Any], info: Any) -> int:
        if obj["name"].startswith("risky"):
            raise GraphQLError(f"risk service unavailable for {obj['id']}")
        return len(obj["name"])

    @mutation.field("recordOrder")
    def resolve_record(_: Any, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        request = info.context["request"]
        oid = input["id"]
        if oid.startswith("echo"):
            raise GraphQLError(f"refused order {oid}; request headers: {dict(request.headers)}")
        if oid.startswith("limited"):
            raise GraphQLError("slow down", extensions={"code": "RATE_LIMITED"})
        total = input.get("total")
        if total is not None and total < 0:
            raise GraphQLError(f"total must not be negative, got {total}")
        if total == 0:
            return {"ok": False, "id": oid, "userErrors": ["total is zero"]}
        with shop.lock:
            shop.orders.append(oid)
            shop.idempotency_keys.append(request.headers.get("idempotency-key", ""))
        return {"ok": True, "id": oid, "userErrors": []}

    graphql_app = GraphQL(make_executable_schema(SDL, query, mutation, customer))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await graphql_app(scope, receive, send)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if scope["path"] == "/redirect":  # a hostile redirect to the cloud metadata address
            await send({"type": "http.response.start", "status": 307,
                        "headers": [(b"location", b"http://169.254.169.254/latest/meta-data/")]})
            await send({"type": "http.response.body", "body": b""})
            return None
        status = shop._take_failure()
        if shop.delay:
            await asyncio.sleep(shop.delay)
        if status is None and headers.get("authorization") != f"Bearer {shop.token}":
            status = 401
        if status is not None:
            extra = [(b"retry-after", b"1")] if status in (429, 503) else []
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"text/plain"), *extra]})
            await send({"type": "http.response.body", "body": f"HTTP {status}".encode()})
            return None
        return await graphql_app(scope, receive, send)

    return app


class ShopServer:
    """uvicorn serving the shop on a free loopback port, in a daemon thread."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: no Nagle/delayed-ACK stall of ~40 ms per request
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(build_app(shop), log_level="warning", lifespan="off", ws="none",
                                http="h11", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql/"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test GraphQL server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()
