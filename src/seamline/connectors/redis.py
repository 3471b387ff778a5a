"""The ``redis`` connector: Redis Streams with consumer groups.

Source: ``XREADGROUP`` into a consumer group. An entry is acknowledged
(``XACK``) only after the runtime acked it, i.e. after every sink confirmed it
or it is durably in the store (retry schedule or dead-letter queue). Entries
that stay pending longer than ``claim_min_idle`` (a consumer died holding
them) are taken over with ``XAUTOCLAIM``; on start the consumer first re-reads
its own pending entries, so a crash loses nothing. A nack re-claims the entry
at once so it is delivered again.

Sink: ``XADD`` of one entry per message (pipelined per batch), optionally
capped with ``MAXLEN``.

On the wire an entry carries the body in one field and the envelope in
others: ``message-id``, ``correlation-id``, ``traceparent``/``tracestate``,
``content-type`` and every message header under its own name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from seamline.config.models import ComponentConfig, SinkConfig, SourceConfig
from seamline.config.types import Duration, MaybeSecret, SecretStr
from seamline.connectors.wire import (
    CONTENT_TYPE_HEADER,
    CORRELATION_HEADER,
    MESSAGE_ID_HEADER,
    TRACEPARENT,
    decode_message,
    incoming,
    outgoing_headers,
)
from seamline.core.component import BuildContext, Delivery, Emit, Sink, Source
from seamline.core.errors import FatalError, RetryableError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.security.secrets import Secret

__all__ = ["RedisSink", "RedisSinkConfig", "RedisSource", "RedisSourceConfig"]

log = logging.getLogger("seamline.connectors.redis")



class _RedisConnection(ComponentConfig):
    url: MaybeSecret = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL (`redis://[user@]host:port/db`, `rediss://` for TLS); may use ${env:NAME}.",
    )
    password: SecretStr | None = Field(None, description="Password (instead of putting it into the URL).")
    stream: str = Field(..., min_length=1, description="Stream key.")
    body_field: str = Field("body", min_length=1, description="Entry field that holds the message body.")
    connect_timeout: Duration = Field(5.0, description="Timeout of connecting and of each command.")


class RedisSourceConfig(_RedisConnection, SourceConfig):
    """Read a Redis stream through a consumer group."""

    group: str = Field(..., min_length=1, description="Consumer group (created when missing).")
    consumer: str | None = Field(
        None,
        description="Consumer name inside the group; keep it stable across restarts so the consumer re-reads "
        "its own pending entries (default: `seamline-<flow>-<host>`).",
    )
    start: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a newly created group starts: the first entry or only new ones."
    )
    create_group: bool = Field(
        True, description="Create the stream and the group when missing (XGROUP CREATE MKSTREAM)."
    )
    block: Duration = Field(1.0, description="How long one XREADGROUP waits for new entries.")
    claim_min_idle: Duration = Field(
        60.0,
        description="Entries pending longer than this (their consumer died) are taken over with XAUTOCLAIM. "
        "Keep it above the longest time a message may spend in the flow.",
    )
    claim_interval: Duration = Field(10.0, description="How often to look for stale pending entries.")
    content_type: str = Field(
        "application/json", description="Content type of bodies whose entry carries none."
    )


class RedisSinkConfig(_RedisConnection, SinkConfig):
    """Append messages to a Redis stream."""

    maxlen: int | None = Field(None, ge=1, description="Cap the stream at about this many entries (XADD MAXLEN).")
    approximate: bool = Field(True, description="Trim with `~` (efficient, keeps a few more entries).")
    headers: bool = Field(True, description="Write message headers as entry fields.")


# -- shared ---------------------------------------------------------------------------------------------------


def _reveal(v: str | Secret | None) -> str | None:
    return v.reveal() if isinstance(v, Secret) else v


def _client(cfg: _RedisConnection) -> Any:
    import redis.asyncio as aioredis

    url = _reveal(cfg.url) or ""
    kw: dict[str, Any] = {
        "socket_connect_timeout": cfg.connect_timeout,
        "health_check_interval": 30,
    }
    if cfg.password is not None:
        kw["password"] = cfg.password.reveal()
    return aioredis.from_url(url, **kw)


def _is_connection_error(exc: BaseException) -> bool:
    import redis.exceptions as rex

    return isinstance(exc, rex.ConnectionError | rex.TimeoutError | ConnectionError | TimeoutError | OSError)


def _dec(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


_ENVELOPE_FIELDS = frozenset({MESSAGE_ID_HEADER, CORRELATION_HEADER, CONTENT_TYPE_HEADER, TRACEPARENT, "tracestate"})


def _fields_out(m: Message, body_field: str, headers: bool) -> dict[str, Any]:
    h = outgoing_headers(m)
    if not headers:
        h = {k: v for k, v in h.items() if k in _ENVELOPE_FIELDS}
    h.pop(body_field, None)
    return {body_field: m.raw, **h}


# -- source ---------------------------------------------------------------------------------------------------


class RedisSource(Source):
    def __init__(self, cfg: RedisSourceConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.batch_size = ctx.batch_size
        self.consumer = cfg.consumer or f"seamline-{ctx.flow}-{socket.gethostname()}"
        self._r: Any = None
        self._to_ack: list[bytes] = []
        self._redeliver: list[bytes] = []
        self._inflight: set[bytes] = set()
        self._wake = asyncio.Event()
        self._ack_lock = asyncio.Lock()

    async def open(self) -> None:
        self._r = _client(self.cfg)
        try:
            await self._ensure_group()
        except Exception as exc:
            await self._r.aclose()
            self._r = None
            raise _wrap(exc, f"cannot open stream {self.cfg.stream!r}") from exc

    async def _ensure_group(self) -> None:
        import redis.exceptions as rex

        if not self.cfg.create_group:
            return
        try:
            await self._r.xgroup_create(
                self.cfg.stream, self.cfg.group, id="0" if self.cfg.start == "earliest" else "$", mkstream=True
            )
        except rex.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, emit: Emit) -> None:
        backoff = 0.1
        backlog: str | None = "0"  # first re-read what this consumer held when it stopped
        last_claim = -1e18
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._flush_acks()
                if self._redeliver:
                    ids, self._redeliver = self._redeliver, []
                    entries = await self._call(self._r.xclaim, self.cfg.stream, self.cfg.group, self.consumer, 0, ids)
                    await self._emit(emit, entries, skip_inflight=False)
                    continue
                if backlog is not None:
                    resp = await self._call(
                        self._r.xreadgroup, self.cfg.group, self.consumer, {self.cfg.stream: backlog},
                        count=self.batch_size,
                    )
                    entries = _entries(resp)
                    if not entries:
                        backlog = None
                        continue
                    backlog = _dec(entries[-1][0])
                    await self._emit(emit, entries, skip_inflight=True)
                    continue
                if loop.time() - last_claim >= self.cfg.claim_interval:
                    last_claim = loop.time()
                    await self._claim_stale(emit)
                resp = await self._call(
                    self._r.xreadgroup,
                    self.cfg.group,
                    self.consumer,
                    {self.cfg.stream: ">"},
                    count=self.batch_size,
                    block=max(1, int(self.cfg.block * 1000)),
                )
                entries = _entries(resp)
                if entries:
                    await self._emit(emit, entries, skip_inflight=False)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _reraise_cancel()
                if _is_nogroup(exc) and self.cfg.create_group:
                    # the stream was deleted under us: recreate and continue
                    with contextlib.suppress(Exception):
                        await self._ensure_group()
                    continue
                if not _is_connection_error(exc):
                    raise _wrap(exc, f"reading stream {self.cfg.stream!r} failed") from exc
                log.warning("redis source %s: %s; reconnecting in %.1fs", self.cfg.stream, exc, backoff)
                # a reply lost with the connection may have moved entries into our pending list unseen:
                # re-read the pending list (skipping what is in flight) once the connection is back
                backlog = "0"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run one command so that a cancellation always gets through.

        redis-py occasionally swallows a cancellation that lands in a blocking
        read; the command runs in a task of its own, and when it does not end
        after being cancelled, the pool's sockets are closed under it.
        """
        t = asyncio.ensure_future(fn(*args, **kw))
        try:
            return await asyncio.shield(t)
        except asyncio.CancelledError:
            t.cancel()
            t.add_done_callback(_retrieve)
            _done, pending = await asyncio.wait({t}, timeout=1.0)
            if pending and self._r is not None:
                with contextlib.suppress(Exception):
                    await self._r.connection_pool.disconnect()
                await asyncio.wait({t}, timeout=1.0)
            raise

    async def _claim_stale(self, emit: Emit) -> None:
        start = "0-0"
        min_idle = int(self.cfg.claim_min_idle * 1000)
        while True:
            resp = await self._call(
                self._r.xautoclaim,
                self.cfg.stream, self.cfg.group, self.consumer, min_idle, start_id=start, count=self.batch_size
            )
            nxt, entries = resp[0], resp[1]
            entries = [e for e in entries if e is not None and e[1] is not None]
            if entries:
                await self._emit(emit, entries, skip_inflight=True)
            if _dec(nxt) == "0-0":
                return

    async def _emit(self, emit: Emit, entries: list[Any], *, skip_inflight: bool) -> None:
        batch: list[Delivery] = []
        for eid, fields in entries:
            if fields is None:
                # deleted while pending: nothing to deliver, just clear it
                self._to_ack.append(eid)
                continue
            if skip_inflight and eid in self._inflight:
                continue
            self._inflight.add(eid)
            batch.append(self._delivery(eid, fields))
        if batch:
            await emit(batch)

    def _delivery(self, eid: bytes, fields: dict[bytes, bytes]) -> Delivery:
        cfg = self.cfg
        entry_id = _dec(eid)
        f = {_dec(k): v for k, v in fields.items()}
        raw = f.pop(cfg.body_field, None)
        wire = {k: _dec(v) for k, v in f.items()}
        transport = {"redis.stream": cfg.stream, "redis.entry_id": entry_id}
        default_id = f"{cfg.stream}:{entry_id}"
        error: BaseException | None = None
        if raw is None:
            # an entry written by someone else without a body field: its fields are the record
            mid, corr, _ctype, headers = incoming(wire)
            headers.update(transport)
            msg = Message(dict(wire), id=mid or default_id, correlation_id=corr, headers=headers)
        else:
            msg, error = decode_message(
                bytes(raw), wire, default_id=default_id, default_content_type=cfg.content_type,
                transport=transport, connector="redis",
            )

        def ack() -> None:
            self._inflight.discard(eid)
            self._to_ack.append(eid)

        def nack(requeue: bool) -> None:
            self._inflight.discard(eid)
            if requeue:
                # the entry stays pending; claim it again at once (a restart re-reads it anyway)
                self._redeliver.append(eid)

        return Delivery(msg, ack, nack, error)

    async def _flush_acks(self) -> None:
        if not self._to_ack or self._r is None:
            return
        async with self._ack_lock:
            ids, self._to_ack = self._to_ack, []
            if not ids:
                return
            try:
                await self._call(self._r.xack, self.cfg.stream, self.cfg.group, *ids)
            except BaseException:
                # keep them: acked again later; at worst they are redelivered
                self._to_ack[:0] = ids
                raise

    async def commit_acks(self) -> None:
        try:
            await self._flush_acks()
        except Exception as exc:
            log.warning("redis source %s: XACK failed (%s); retrying later", self.cfg.stream, exc)

    async def close(self) -> None:
        if self._r is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush_acks(), self.cfg.connect_timeout)
        await self._r.aclose()
        self._r = None


def _retrieve(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


def _reraise_cancel() -> None:
    """redis-py may turn a cancellation into a connection error: do not swallow a pending cancel."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _entries(resp: Any) -> list[Any]:
    if not resp:
        return []
    if isinstance(resp, dict):  # RESP3
        out: list[Any] = []
        for v in resp.values():
            out.extend(v[0] if v and isinstance(v[0], list) else v)
        return out
    return list(resp[0][1])


def _is_nogroup(exc: BaseException) -> bool:
    return "NOGROUP" in str(exc)


def _wrap(exc: BaseException, what: str) -> Exception:
    if isinstance(exc, FatalError | RetryableError):
        return exc
    if _is_connection_error(exc):
        return RetryableError(f"{what}: {exc}", code="redis.unavailable")
    return FatalError(f"{what}: {exc}", code="redis.error")


# -- sink -----------------------------------------------------------------------------------------------------


class RedisSink(Sink):
    atomic_batches = False

    def __init__(self, cfg: RedisSinkConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self._r: Any = None

    async def open(self) -> None:
        self._r = _client(self.cfg)
        try:
            await self._r.ping()
        except Exception as exc:
            if not _is_connection_error(exc):
                await self._r.aclose()
                self._r = None
                raise _wrap(exc, "cannot connect to redis") from exc
            log.warning("redis sink %s: %s (will retry on write)", self.cfg.stream, exc)

    async def write(self, batch: Sequence[Message]) -> None:
        cfg = self.cfg
        pipe = self._r.pipeline(transaction=False)
        for m in batch:
            pipe.xadd(
                cfg.stream,
                _fields_out(m, cfg.body_field, cfg.headers),
                maxlen=cfg.maxlen,
                approximate=cfg.approximate,
            )
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            raise _wrap(exc, f"XADD to {cfg.stream!r} failed") from exc
        finally:
            with contextlib.suppress(Exception):
                await pipe.reset()
        errors = {i: _wrap(r, f"XADD to {cfg.stream!r} failed") for i, r in enumerate(results)
                  if isinstance(r, BaseException)}
        if errors:
            from seamline.core.component import BatchError

            raise BatchError(errors)

    async def close(self) -> None:
        if self._r is not None:
            await self._r.aclose()
            self._r = None


@register(
    "source",
    "redis",
    config=RedisSourceConfig,
    summary="Read a Redis stream through a consumer group; XACK after delivery, XAUTOCLAIM of stale entries.",
    examples=("redis: {url: 'redis://localhost:6379/0', stream: orders, group: erp-sync}",),
)
def _redis_source(cfg: RedisSourceConfig, ctx: BuildContext) -> RedisSource:
    return RedisSource(cfg, ctx)


@register(
    "sink",
    "redis",
    config=RedisSinkConfig,
    summary="Append messages to a Redis stream (XADD, optional MAXLEN).",
    examples=("redis: {url: 'redis://localhost:6379/0', stream: orders-out, maxlen: 100000}",),
)
def _redis_sink(cfg: RedisSinkConfig, ctx: BuildContext) -> RedisSink:
    return RedisSink(cfg, ctx)

