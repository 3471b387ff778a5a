"""A real GraphQL server for the graphql connector tests: the ariadne shop in ``shop_server.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.integration.graphql.shop_server import Shop, ShopServer

#: the bearer token: a sentinel that must never show up in any output
TOKEN = "tok-SENTINEL-0b7d44e2c9"


@pytest.fixture(scope="session")
def shop_server() -> Iterator[ShopServer]:
    server = ShopServer(Shop(TOKEN))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def shop(shop_server: ShopServer, monkeypatch: pytest.MonkeyPatch) -> ShopServer:
    """The shop with empty state, and the token in ``$SHOP_TOKEN`` for ``${env:SHOP_TOKEN}`` references."""
    monkeypatch.setenv("SHOP_TOKEN", TOKEN)
    shop_server.shop.reset()
    return shop_server
