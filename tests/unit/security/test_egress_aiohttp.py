"""EgressPolicy wired into aiohttp, against a real server on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tests.helpers import serve_app

from seamline.security.egress import EgressPolicy, GuardedResolver
from seamline.security.errors import EgressError


class Server:
    def __init__(self) -> None:
        self.hits: list[str] = []
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()

    async def ok(request: web.Request) -> web.Response:
        state.hits.append(request.path)
        return web.Response(text="ok")

    def redirect_to(target: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            state.hits.append(request.path)
            raise web.HTTPFound(target.format(port=state.port))

        return handler

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/to-ok", redirect_to("/ok"))
    app.router.add_get("/to-metadata", redirect_to("http://169.254.169.254/latest/meta-data/"))
    app.router.add_get("/to-decimal", redirect_to("http://2852039166/latest/meta-data/"))
    app.router.add_get("/to-other-loopback", redirect_to("http://127.0.0.2:{port}/ok"))
    app.router.add_get("/to-mapped", redirect_to("http://[::ffff:127.0.0.1]:{port}/ok"))
    app.router.add_get("/to-localhost", redirect_to("http://localhost:{port}/ok"))
    async with serve_app(app) as state.port:
        yield state


class FakeDns:
    """An inner resolver that answers from a table (no network)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.closed = False

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[dict]:
        return [
            {
                "hostname": host,
                "host": ip,
                "port": port,
                "family": socket.AF_INET6 if ":" in ip else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for ip in self.table[host]
        ]

    async def close(self) -> None:
        self.closed = True


async def fetch(policy: EgressPolicy, url: str, **session_kwargs: Any) -> tuple[int, str]:
    async with policy.client_session(**session_kwargs) as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def test_loopback_blocked_by_default(server: Server) -> None:
    with pytest.raises(EgressError) as exc:
        await fetch(EgressPolicy(), f"{server.base}/ok")
    assert exc.value.code == "egress.blocked"
    assert server.hits == []


async def test_loopback_allowed_when_opted_in(server: Server) -> None:
    assert await fetch(EgressPolicy(allow_loopback=True), f"{server.base}/ok") == (200, "ok")
    assert server.hits == ["/ok"]


async def test_allowed_redirect_is_followed(server: Server) -> None:
    assert await fetch(EgressPolicy(allow_loopback=True), f"{server.base}/to-ok") == (200, "ok")
    assert server.hits == ["/to-ok", "/ok"]


@pytest.mark.parametrize(
    ("path", "policy", "code"),
    [
        ("/to-metadata", EgressPolicy(allow_loopback=True), "egress.blocked"),
        ("/to-other-loopback", EgressPolicy(allow_networks=["127.0.0.1/32"]), "egress.blocked"),
        ("/to-localhost", EgressPolicy(allow_networks=["127.0.0.1/32"]), "egress.blocked"),
        ("/to-decimal", EgressPolicy(allow_networks=["127.0.0.1/32"]), "egress.blocked"),
        ("/to-localhost", EgressPolicy(["127.0.0.1"], allow_loopback=True), "egress.not_allowed"),
    ],
)
async def test_redirect_to_a_blocked_address_is_refused(
    server: Server, path: str, policy: EgressPolicy, code: str
) -> None:
    with pytest.raises(EgressError) as exc:
        await fetch(policy, f"{server.base}{path}")
    assert exc.value.code == code
    assert server.hits == [path]  # the first hop was allowed, the redirect never left


async def test_same_address_in_another_spelling_gets_the_same_decision(server: Server) -> None:
    for policy in (EgressPolicy(allow_networks=["127.0.0.1/32"]), EgressPolicy(["127.0.0.1"], allow_loopback=True)):
        assert await fetch(policy, f"{server.base}/to-mapped") == (200, "ok")
    assert server.hits == ["/to-mapped", "/ok"] * 2


async def test_resolved_address_is_checked_at_connect_time(server: Server) -> None:
    """A harmless-looking name that resolves to loopback (DNS rebinding) is refused."""
    dns = FakeDns({"api.partner.test": ["127.0.0.1"]})
    policy = EgressPolicy(["api.partner.test"])
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy, dns))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(EgressError) as exc:
            await session.get(f"http://api.partner.test:{server.port}/ok")
    assert exc.value.code == "egress.blocked"
    assert server.hits == []

    opened = EgressPolicy(["api.partner.test"], allow_loopback=True)
    connector = aiohttp.TCPConnector(resolver=opened.resolver(FakeDns({"api.partner.test": ["127.0.0.1"]})))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"http://api.partner.test:{server.port}/ok") as resp,
    ):
        assert resp.status == 200
    assert server.hits == ["/ok"]


async def test_resolver_filters_mixed_answers() -> None:
    dns = FakeDns(
        {
            "mixed.test": ["10.0.0.7", "93.184.215.14", "169.254.169.254", "2606:4700::1111"],
            "private.test": ["10.0.0.7", "fd00::1"],
        }
    )
    resolver = EgressPolicy().resolver(dns)
    answers = await resolver.resolve("mixed.test", 443)
    assert [a["host"] for a in answers] == ["93.184.215.14", "2606:4700::1111"]
    with pytest.raises(EgressError) as exc:
        await resolver.resolve("private.test", 443)
    assert exc.value.details["categories"] == ["private"]
    with pytest.raises(EgressError):
        await resolver.resolve("localhost", 443)  # refused by name before any lookup
    await resolver.close()
    assert isinstance(resolver, aiohttp.abc.AbstractResolver)


async def test_client_session_refuses_foreign_connector() -> None:
    with pytest.raises(TypeError):
        EgressPolicy().client_session(connector=object())
