"""The message envelope that travels through a flow."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from xxhash import xxh3_64_hexdigest

__all__ = ["Message", "new_id"]

_JSON_TYPES = ("application/json", "application/x-ndjson")
_UNSET: Any = object()


def new_id() -> str:
    """A fresh, sortable-enough message id (uuid4 hex)."""
    return uuid.uuid4().hex


class Message:
    """One unit of data with its metadata.

    ``body`` is decoded lazily: a message built from raw JSON bytes parses
    them on first access, and a message whose body was set encodes it once
    when ``raw`` is first asked for (and caches the bytes).
    """

    __slots__ = (
        "_body",
        "_digest",
        "_raw",
        "attempt",
        "content_type",
        "correlation_id",
        "created_at",
        "custody",
        "effects",
        "headers",
        "id",
        "received_at",
        "route",
        "schema",
    )

    def __init__(
        self,
        body: Any = _UNSET,
        *,
        raw: bytes | None = None,
        id: str | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        schema: str | None = None,
        attempt: int = 0,
        created_at: float | None = None,
        received_at: float | None = None,
    ) -> None:
        if body is _UNSET and raw is None:
            body = None
        self._body: Any = body
        self._raw: bytes | None = raw
        self._digest: str | None = None
        self.id: str = id or new_id()
        self.correlation_id: str = correlation_id or self.id
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self.content_type = content_type
        self.schema = schema
        self.attempt = attempt
        now = time.time()
        self.created_at: float = created_at if created_at is not None else now
        self.received_at: float = received_at if received_at is not None else now
        #: names of the sinks this message goes to (set by ``route``); None = all sinks
        self.route: tuple[str, ...] | None = None
        #: id of the store row holding this message while a step parked it (see ``Held``)
        self.custody: str | None = None
        #: store changes to commit with the batch that settles this message:
        #: ``("idem", when, scope, key, expires_at)`` or ``("checkpoint", when, scope, value)``,
        #: ``when`` being ``"delivered"`` or ``"settled"`` (delivered, retry scheduled or dead-lettered)
        self.effects: list[tuple[Any, ...]] | None = None

    @classmethod
    def adopt(
        cls,
        body: Any,
        raw: bytes | None,
        id: str,
        correlation_id: str | None,
        headers: dict[str, str],
        content_type: str,
        now: float,
    ) -> Message:
        """A new message for a source's hot path: ``headers`` is taken over (not copied), so the
        caller must not use that dict again; both timestamps are ``now``."""
        m = cls.__new__(cls)
        m._body = body
        m._raw = raw
        m._digest = None
        m.id = id
        m.correlation_id = correlation_id or id
        m.headers = headers
        m.content_type = content_type
        m.schema = None
        m.attempt = 0
        m.created_at = now
        m.received_at = now
        m.route = None
        m.custody = None
        m.effects = None
        return m

    # -- body ---------------------------------------------------------------
    @property
    def body(self) -> Any:
        if self._body is _UNSET:
            raw = self._raw or b""
            if self.content_type in _JSON_TYPES:
                self._body = orjson.loads(raw)
            else:
                self._body = raw
        return self._body

    @body.setter
    def body(self, value: Any) -> None:
        self._body = value
        self._raw = None
        self._digest = None

    @property
    def raw(self) -> bytes:
        """The body as bytes (encoded once, then cached)."""
        if self._raw is None:
            body = self._body
            if isinstance(body, bytes):
                self._raw = body
            elif isinstance(body, str) and self.content_type not in _JSON_TYPES:
                self._raw = body.encode()
            else:
                try:
                    self._raw = orjson.dumps(body)
                except TypeError as exc:
                    if "64-bit" not in str(exc):
                        raise
                    # an integer beyond 64 bits (strict decoding keeps every digit): written exactly
                    from seamline.formats.json import encode

                    self._raw = encode(body)
        return self._raw

    @property
    def digest(self) -> str:
        """A short fingerprint of the body bytes (XXH3, 64 bits, hex; for the journal), computed once."""
        d = self._digest
        if d is None:
            d = self._digest = xxh3_64_hexdigest(self.raw)
        return d

    @property
    def is_decoded(self) -> bool:
        return self._body is not _UNSET

    # -- copies ---------------------------------------------------------------
    def evolve(self, body: Any = _UNSET, **changes: Any) -> Message:
        """A copy with a new body and/or other fields changed; the id stays."""
        m = Message.__new__(Message)
        m._body = self._body if body is _UNSET else body
        m._raw = self._raw if body is _UNSET else None
        m._digest = self._digest if body is _UNSET else None
        m.id = self.id
        m.correlation_id = self.correlation_id
        m.headers = dict(self.headers)
        m.content_type = self.content_type
        m.schema = self.schema
        m.attempt = self.attempt
        m.created_at = self.created_at
        m.received_at = self.received_at
        m.route = self.route
        m.custody = self.custody
        m.effects = list(self.effects) if self.effects else None
        for k, v in changes.items():
            setattr(m, k, v)
        return m

    # -- persistence ------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        """A dict for the store: the raw bytes when they are current, else the decoded body."""
        raw = self._raw
        return {
            "id": self.id,
            "correlation_id": self.correlation_id,
            "headers": self.headers,
            "content_type": self.content_type,
            "schema": self.schema,
            "attempt": self.attempt,
            "created_at": self.created_at,
            "received_at": self.received_at,
            "route": list(self.route) if self.route is not None else None,
            "custody": self.custody,
            "raw": raw,
            "body": None if raw is not None else self._body,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Message:
        raw = rec.get("raw")
        m = cls(
            _UNSET if raw is not None else rec.get("body"),
            raw=raw,
            id=rec["id"],
            correlation_id=rec.get("correlation_id"),
            headers=rec.get("headers") or {},
            content_type=rec.get("content_type") or "application/json",
            schema=rec.get("schema"),
            attempt=int(rec.get("attempt") or 0),
            created_at=rec.get("created_at"),
            received_at=rec.get("received_at"),
        )
        route = rec.get("route")
        m.route = tuple(route) if route is not None else None
        m.custody = rec.get("custody")
        return m

    def __repr__(self) -> str:
        return f"Message(id={self.id!r}, correlation_id={self.correlation_id!r}, attempt={self.attempt})"
