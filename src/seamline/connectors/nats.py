"""The ``nats`` connector (NATS JetStream via nats-py): durable pull consumer and deduplicating publisher.

Source
    Pulls from a durable JetStream consumer (created with explicit acks when
    missing). A message is acked only after the runtime acked it (delivered or
    in the dead-letter queue); ``nack(requeue)`` (shutdown) answers ``-NAK``
    with an optional delay, so JetStream redelivers it; messages still being
    worked on are kept alive with ``+WPI`` (in progress) so a slow flow does
    not trigger redelivery after ``ack_wait``. The client reconnects by
    itself; unacknowledged messages are redelivered by the server after
    ``ack_wait``. Undecodable messages go to seamline's dead-letter queue, or
    are terminated with ``+TERM`` (``on_decode_error: term``; JetStream then
    publishes a ``MSG_TERMINATED`` advisory and never redelivers them).

Sink
    Publishes to JetStream and waits for the stream's acknowledgement of
    every message of the batch. ``Nats-Msg-Id`` is the message id, so a
    message written twice (a retry, a redelivery) within the stream's
    duplicate window is stored once.

Headers carry ``correlation-id``, ``traceparent`` and ``content-type``; the
message id travels as ``Nats-Msg-Id`` (``seamline.connectors.wire``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from seamline.config.models import SinkConfig, SourceConfig
from seamline.config.types import ByteSize, Duration, MaybeSecret, SecretStr
from seamline.connectors.wire import connect_again, decode_message, outgoing_headers, safe_url
from seamline.core.component import BatchError, BuildContext, Delivery, Emit, Sink, Source
from seamline.core.errors import FatalError, RetryableError, SeamlineError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.security.secrets import Secret

__all__ = ["NatsSink", "NatsSinkConfig", "NatsSource", "NatsSourceConfig"]

log = logging.getLogger("seamline.connectors.nats")

MSG_ID = "Nats-Msg-Id"


class NatsConnection(BaseModel):
    """How to reach the NATS servers."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)

    servers: list[MaybeSecret] = Field(
        ...,
        min_length=1,
        description="Server URLs, e.g. `nats://localhost:4222` (one, a comma-separated list or a list); "
        "may use ${env:NAME}.",
    )
    user: str | None = Field(None, description="User name.")
    password: SecretStr | None = Field(None, description="Password (a secret; use ${env:NAME} or ${file:PATH}).")
    token: SecretStr | None = Field(None, description="Authentication token (a secret).")
    credentials: str | None = Field(None, description="Path of a `.creds` file (JWT and NKey seed).")
    name: str | None = Field(None, description="Connection name shown by the server.")

    @field_validator("servers", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",")] if isinstance(v, str) else v

    def urls(self) -> list[str]:
        out: list[str] = []
        for s in self.servers:
            text = s.reveal() if isinstance(s, Secret) else s
            out.extend(x.strip() for x in text.split(",") if x.strip())
        return out

    def shown(self) -> str:
        return ",".join(safe_url(u) for u in self.urls())

    async def connect(self, default_name: str, quiet: _Quiet) -> Any:
        import nats

        async def on_error(exc: Exception) -> None:
            quiet(type(exc).__name__, "nats: %s", exc)

        async def on_disconnect() -> None:
            quiet("disconnected", "nats: disconnected from %s; reconnecting", self.shown())

        async def on_reconnect() -> None:
            log.info("nats: reconnected")

        kw: dict[str, Any] = {
            "servers": self.urls(),
            "name": self.name or default_name,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
        }
        if self.user is not None:
            kw["user"] = self.user
        if self.password is not None:
            kw["password"] = self.password.reveal()
        if self.token is not None:
            kw["token"] = self.token.reveal()
        if self.credentials:
            kw["user_credentials"] = self.credentials
        return await nats.connect(**kw)


class NatsSourceConfig(SourceConfig, NatsConnection):
    """Pull messages from a durable JetStream consumer."""

    stream: str = Field(..., min_length=1, description="JetStream stream to read.")
    durable: str = Field(..., min_length=1, description="Durable consumer name; progress is kept under it.")
    subject: str | None = Field(None, description="Filter subject of the consumer (default: the whole stream).")
    create_consumer: bool = Field(True, description="Create the durable consumer (explicit acks) when missing.")
    ack_wait: Duration = Field(30.0, description="Redelivery timeout of an unacknowledged message.")
    max_deliver: int = Field(-1, description="Deliveries per message before JetStream gives up (-1: unlimited).")
    max_ack_pending: int = Field(10_000, ge=1, description="Unacknowledged messages the server hands out at most.")
    nak_delay: Duration = Field(0.0, description="Delay before a message given back at shutdown is redelivered.")
    fetch_timeout: Duration = Field(5.0, description="How long one pull request waits for messages.")
    content_type: str = Field(
        "application/json", description="Content type of messages without a `content-type` header."
    )
    max_message_bytes: ByteSize = Field(10 * 1024 * 1024, description="Larger messages are not decoded (e.g. 10MiB).")
    on_decode_error: Literal["dlq", "term"] = Field(
        "dlq",
        description="Messages that cannot be decoded: `dlq` = seamline's dead-letter queue; `term` = terminate "
        "them in JetStream (never redelivered; an advisory is published).",
    )


class NatsSinkConfig(SinkConfig, NatsConnection):
    """Publish to JetStream with deduplication by message id."""

    subject: str = Field(..., min_length=1, description="Subject to publish to (a stream must capture it).")
    stream: str | None = Field(
        None, description="Expected stream: the server refuses the message when another stream would store it."
    )
    publish_timeout: Duration = Field(10.0, description="How long to wait for the stream's acknowledgement.")


# -- helpers ----------------------------------------------------------------------------------------------------


class _Quiet:
    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}

    def __call__(self, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) >= self.every:
            self._last[kind] = now
            log.warning(msg, *args)


def _error(exc: BaseException, what: str) -> SeamlineError:
    import nats.errors as ne
    import nats.js.errors as je

    if isinstance(exc, SeamlineError):
        return exc
    text = f"{what}: {type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, ne.MaxPayloadError):
        return FatalError(text, code="nats.message_too_large")
    if isinstance(exc, ne.AuthorizationError):
        return FatalError(text, code="nats.unauthorized")
    if isinstance(exc, je.NoStreamResponseError):
        return RetryableError(f"{what}: no stream captures the subject (or JetStream is unavailable)",
                              code="nats.no_stream")
    if isinstance(exc, je.APIError):
        err_code = getattr(exc, "err_code", None)
        code = getattr(exc, "code", None)
        if err_code == 10060 or (code is not None and 400 <= int(code) < 500 and code not in (408, 429)):
            return FatalError(text, code="nats.rejected", details={"err_code": err_code, "status": code})
        return RetryableError(text, code="nats.unavailable", details={"err_code": err_code, "status": code})
    if isinstance(exc, TimeoutError | ne.TimeoutError):
        return RetryableError(text, code="nats.timeout")
    return RetryableError(text, code="nats.unavailable")


# -- source ------------------------------------------------------------------------------------------------------


class NatsSource(Source):
    def __init__(self, cfg: NatsSourceConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.batch_size = ctx.batch_size
        self._quiet = _Quiet()
        self._nc: Any = None
        self._sub: Any = None
        self._working: dict[str, Any] = {}  # reply subject → message, while the flow works on it
        self._keepalive: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            await self._connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = _error(exc, f"cannot consume {self.cfg.stream}/{self.cfg.durable}")
            await self._disconnect()
            if isinstance(err, FatalError):
                raise err from exc
            self._quiet("connect", "nats: %s; retrying", err)

    async def _connect(self) -> None:
        import nats.js.api as api
        import nats.js.errors as je

        c = self.cfg
        self._nc = await c.connect(f"seamline:{self.ctx.flow}:{self.ctx.label or 'source'}", self._quiet)
        js = self._nc.jetstream()
        try:
            await js.consumer_info(c.stream, c.durable)
        except je.NotFoundError:
            if not c.create_consumer:
                raise FatalError(f"JetStream consumer {c.durable} does not exist on stream {c.stream}",
                                 code="nats.no_consumer") from None
            config = api.ConsumerConfig(
                durable_name=c.durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_wait=c.ack_wait,
                max_deliver=c.max_deliver,
                max_ack_pending=c.max_ack_pending,
                filter_subject=c.subject,
            )
            await js.add_consumer(c.stream, config=config)
        self._sub = await js.pull_subscribe_bind(durable=c.durable, stream=c.stream)

    async def _disconnect(self) -> None:
        nc, self._nc = self._nc, None
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def run(self, emit: Emit) -> None:
        import nats.errors as ne

        self._keepalive = asyncio.create_task(self._keep_working())
        backoff = 0.2
        try:
            while True:
                if self._nc is None or self._nc.is_closed:
                    try:
                        await self._disconnect()
                        await self._connect()
                        backoff = 0.2
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        await self._disconnect()
                        err = _error(exc, f"cannot consume {self.cfg.stream}/{self.cfg.durable}")
                        if isinstance(err, FatalError):
                            raise err from exc
                        self._quiet("connect", "nats: %s; retrying", err)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                try:
                    msgs = await self._sub.fetch(self.batch_size, timeout=self.cfg.fetch_timeout)
                except (TimeoutError, ne.TimeoutError):
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # disconnected: the client reconnects by itself; wait a little and pull again
                    self._quiet("fetch", "nats: pulling from %s/%s failed: %s", self.cfg.stream, self.cfg.durable,
                                exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.2
                batch: list[Delivery] = []
                for m in msgs:
                    d = await self._delivery(m)
                    if d is not None:
                        batch.append(d)
                if batch:
                    await emit(batch)
        finally:
            if self._keepalive is not None:
                self._keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._keepalive
                self._keepalive = None

    async def _keep_working(self) -> None:
        """Tell JetStream that messages the flow still works on are in progress (resets ``ack_wait``)."""
        every = max(self.cfg.ack_wait / 3, 0.5)
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for m, since in list(self._working.values()):
                if now - since >= every:
                    with contextlib.suppress(Exception):
                        await m.in_progress()

    async def _delivery(self, m: Any) -> Delivery | None:
        hdrs = dict(m.headers or {})
        native_id = hdrs.pop(MSG_ID, None)
        wire = {k: v for k, v in hdrs.items() if not k.startswith("Nats-")}
        meta = m.metadata
        seq = meta.sequence.stream
        transport = {
            "nats.subject": m.subject,
            "nats.stream": meta.stream,
            "nats.sequence": str(seq),
            "nats.delivered": str(meta.num_delivered),
        }
        msg, error = decode_message(
            m.data,
            wire,
            default_id=f"{meta.stream}-{seq}",
            default_content_type=self.cfg.content_type,
            transport=transport,
            message_id=native_id,
            max_bytes=self.cfg.max_message_bytes,
            connector="nats",
        )
        if error is not None and self.cfg.on_decode_error == "term":
            log.warning("nats: terminating message %s of %s: %s", msg.id, meta.stream, error)
            with contextlib.suppress(Exception):
                await m.term()
            return None
        reply = m.reply
        self._working[reply] = (m, time.monotonic())

        async def ack() -> None:
            self._working.pop(reply, None)
            try:
                await m.ack()
            except Exception as exc:
                self._quiet("ack", "nats: ack failed (%s); the message will be redelivered", exc)

        async def nack(requeue: bool) -> None:
            self._working.pop(reply, None)
            try:
                await m.nak(delay=self.cfg.nak_delay or None)
            except Exception as exc:
                self._quiet("nak", "nats: nak failed (%s); the message is redelivered after ack_wait", exc)

        return Delivery(msg, ack, nack, error)

    async def commit_acks(self) -> None:
        nc = self._nc
        if nc is not None and nc.is_connected:
            try:
                await nc.flush(timeout=5)
            except Exception as exc:
                self._quiet("flush", "nats: flushing acks failed (%s); unacked messages are redelivered", exc)

    async def close(self) -> None:
        await self.commit_acks()
        self._working.clear()
        await self._disconnect()


# -- sink ---------------------------------------------------------------------------------------------------------


class NatsSink(Sink):
    def __init__(self, cfg: NatsSinkConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self._quiet = _Quiet()
        self._nc: Any = None
        self._js: Any = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            await self._connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = _error(exc, f"cannot connect to {self.cfg.shown()}")
            await self._disconnect()
            if isinstance(err, FatalError):
                raise err from exc
            log.warning("nats: %s; connecting again on the first write", err)

    async def _connect(self) -> None:
        self._nc = await self.cfg.connect(f"seamline:{self.ctx.flow}:{self.ctx.label or 'sink'}", self._quiet)
        self._js = self._nc.jetstream()

    async def _disconnect(self) -> None:
        nc, self._nc = self._nc, None
        self._js = None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def write(self, batch: Sequence[Message]) -> None:
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                await connect_again(
                    self._connect, self._disconnect, lambda e: _error(e, f"cannot connect to {self.cfg.shown()}")
                )
            js = self._js
            errors: dict[int, BaseException] = {}
            futures: dict[int, asyncio.Future[Any]] = {}
            for i, m in enumerate(batch):
                try:
                    headers = outgoing_headers(m, message_id=False)
                    headers[MSG_ID] = m.id
                    futures[i] = await js.publish_async(
                        self.cfg.subject, m.raw, headers=headers, stream=self.cfg.stream,
                        wait_stall=self.cfg.publish_timeout,
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    errors[i] = _error(exc, f"publishing message {m.id} to {self.cfg.subject}")
            if futures:
                _done, pending = await asyncio.wait(futures.values(), timeout=self.cfg.publish_timeout)
                for f in pending:
                    f.cancel()
                for i, f in futures.items():
                    if f in pending:
                        errors[i] = RetryableError(
                            f"no acknowledgement for message {batch[i].id} within {self.cfg.publish_timeout}s",
                            code="nats.timeout",
                        )
                    elif (failure := f.exception()) is not None:
                        errors[i] = _error(failure, f"publishing message {batch[i].id} to {self.cfg.subject}")
            if errors:
                raise BatchError(errors)

    async def close(self) -> None:
        async with self._lock:
            await self._disconnect()


@register(
    "source",
    "nats",
    config=NatsSourceConfig,
    summary="Pull from a durable NATS JetStream consumer; ack after delivery, nak with delay, term for poison.",
    examples=(
        "nats: {servers: 'nats://localhost:4222', stream: ORDERS, durable: orders-to-erp}",
        "nats: {servers: ['nats://a:4222', 'nats://b:4222'], stream: ORDERS, durable: erp, "
        "subject: 'orders.eu.>', ack_wait: 2m, on_decode_error: term}",
    ),
)
def _nats_source(cfg: NatsSourceConfig, ctx: BuildContext) -> NatsSource:
    return NatsSource(cfg, ctx)


@register(
    "sink",
    "nats",
    config=NatsSinkConfig,
    summary="Publish to NATS JetStream and wait for the stream's ack; Nats-Msg-Id = message id (dedupe).",
    examples=("nats: {servers: 'nats://localhost:4222', subject: orders.canonical}",),
)
def _nats_sink(cfg: NatsSinkConfig, ctx: BuildContext) -> NatsSink:
    return NatsSink(cfg, ctx)
