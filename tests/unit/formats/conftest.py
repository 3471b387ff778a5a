"""Fixtures for the format tests: the defusedxml corpus and a resource guard."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import psutil
import pytest

#: RSS may grow by at most this much while one hostile input is handled.
MAX_RSS_GROWTH = 64 * 1024 * 1024
#: ...and handling it may take at most this long (generous: the machine is shared).
MAX_SECONDS = 5.0


@pytest.fixture(scope="session")
def defused(conformance_dir: Path) -> Path:
    """The official defusedxml corpus of hostile XML documents."""
    return conformance_dir / "defusedxml"


@contextmanager
def _bounded(max_rss: int = MAX_RSS_GROWTH, max_seconds: float = MAX_SECONDS) -> Iterator[None]:
    process = psutil.Process()
    before = process.memory_info().rss
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    grown = process.memory_info().rss - before
    assert elapsed < max_seconds, f"took {elapsed:.2f}s"
    assert grown < max_rss, f"RSS grew by {grown / 1e6:.1f} MB"


@pytest.fixture
def bounded() -> Callable[..., AbstractContextManager[None]]:
    """``with bounded(): ...`` fails when the block is slow or grows RSS a lot."""
    return _bounded
