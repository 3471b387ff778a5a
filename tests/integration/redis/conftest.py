from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from tests.integration.services import require


@pytest.fixture
def redis_url() -> str:
    return require("redis")


@pytest.fixture
def stream(redis_url: str) -> Iterator[str]:
    import redis

    name = f"seamline-test-{uuid.uuid4().hex[:12]}"
    yield name
    r = redis.Redis.from_url(redis_url)
    try:
        r.delete(name)
    finally:
        r.close()
