"""Durable state: the store interface and its implementations."""

from __future__ import annotations

import os
from pathlib import Path

from seamline.store.base import Batch, DeadLetter, DlqFilter, JournalEntry, RetryEntry, Store

__all__ = [
    "DEFAULT_STATE",
    "Batch",
    "DeadLetter",
    "DlqFilter",
    "JournalEntry",
    "RetryEntry",
    "Store",
    "open_store",
    "state_url",
]

DEFAULT_STATE = ".seamline/state.db"


def state_url(explicit: str | None = None) -> str:
    """``--state`` wins, then ``SEAMLINE_STATE``, then ``.seamline/state.db``."""
    return explicit or os.environ.get("SEAMLINE_STATE") or DEFAULT_STATE


def open_store(url: str | None = None) -> Store:
    """A store for ``url``: ``sqlite:///path``, ``sqlite://:memory:`` or a plain path."""
    u = state_url(url)
    if u.startswith("sqlite:///"):
        path = u[len("sqlite:///") :]
    elif u.startswith("sqlite://"):
        path = u[len("sqlite://") :] or ":memory:"
    elif "://" in u:
        raise ValueError(f"unsupported state URL {u!r} (use sqlite:///PATH or a file path)")
    else:
        path = u
    from seamline.store.sqlite import SqliteStore

    return SqliteStore(Path(path) if path != ":memory:" else path)
