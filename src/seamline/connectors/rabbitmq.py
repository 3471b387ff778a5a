"""The ``rabbitmq`` connector (AMQP 0-9-1 via aio-pika): queue consumer and confirmed publisher.

Source
    Consumes a queue with manual acknowledgements and a prefetch limit.
    A message is acknowledged only after the runtime acked it (delivered or
    in the dead-letter queue): acknowledgements are sent once per batch as one
    ``basic.ack(multiple)`` up to the last delivery tag whose predecessors are
    all done. ``nack(requeue)`` (shutdown) sends ``basic.nack(requeue=true)``
    at once. When the connection drops, unacknowledged messages go back to the
    queue (the broker requeues them) and the source reconnects with backoff.
    The queue can be declared and bound to exchanges, with arguments such as
    ``x-dead-letter-exchange`` or ``x-queue-type: quorum``.

    Undecodable messages (invalid JSON, too large) go to seamline's
    dead-letter queue by default (``on_decode_error: dlq``). With
    ``on_decode_error: reject`` they are rejected without requeue instead,
    so the queue's own dead-letter exchange receives them (without one the
    broker drops them). Messages that fail later, in a step or a sink, always
    go to seamline's DLQ (the runtime acknowledges a dead-lettered message like
    a delivered one).

Sink
    Publishes with publisher confirms, persistent delivery and ``mandatory``:
    ``write`` returns once the broker confirmed every message of the batch;
    a message the broker cannot route fails as fatal (``rabbitmq.unroutable``),
    a nack or a lost connection as retryable.

AMQP properties carry the envelope: ``message_id``, ``correlation_id``,
``content_type``; ``traceparent`` and the other headers go to the headers
table (``seamline.connectors.wire``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from seamline.config.models import SinkConfig, SourceConfig
from seamline.config.types import ByteSize, Duration, SecretStr
from seamline.connectors.wire import connect_again, decode_message, field_at, outgoing_headers, safe_url
from seamline.core.component import BatchError, BuildContext, Delivery, Emit, Sink, Source
from seamline.core.errors import FatalError, RetryableError, SeamlineError
from seamline.core.message import Message
from seamline.core.registry import register

__all__ = ["RabbitMQSink", "RabbitMQSinkConfig", "RabbitMQSource", "RabbitMQSourceConfig"]

log = logging.getLogger("seamline.connectors.rabbitmq")

ExchangeKind = Literal["direct", "topic", "fanout", "headers"]


class RabbitMQBinding(BaseModel):
    """Bind the queue to an exchange."""

    model_config = ConfigDict(extra="forbid")

    exchange: str = Field(..., min_length=1, description="Exchange to bind to.")
    routing_key: str = Field("", description="Binding key (topic exchanges: patterns such as `orders.#`).")
    exchange_type: ExchangeKind | None = Field(
        None, description="Declare the exchange (durable) with this type; omit when it exists already."
    )


class RabbitMQSourceConfig(SourceConfig):
    """Consume a queue with manual acknowledgements."""

    url: SecretStr = Field(
        ..., description="AMQP URL `amqp://user:password@host:5672/vhost` (a secret; may use ${env:NAME})."
    )
    queue: str = Field(..., min_length=1, description="Queue to consume.")
    declare: bool = Field(True, description="Declare the queue (durable) when it does not exist.")
    queue_arguments: dict[str, Any] = Field(
        default_factory=dict,
        description="Arguments of the declared queue, e.g. `x-dead-letter-exchange`, `x-queue-type: quorum`; "
        "they must match an existing queue's.",
    )
    bindings: list[RabbitMQBinding] = Field(default_factory=list, description="Bind the queue to these exchanges.")
    prefetch: int = Field(1000, ge=1, le=65535, description="Unacknowledged messages the broker may send ahead.")
    batch_wait: Duration = Field(0.05, description="How long to wait for a batch to fill before handing it on.")
    content_type: str = Field(
        "application/json", description="Content type of messages without a `content_type` property."
    )
    max_message_bytes: ByteSize = Field(10 * 1024 * 1024, description="Larger messages are not decoded (e.g. 10MiB).")
    on_decode_error: Literal["dlq", "reject"] = Field(
        "dlq",
        description="Messages that cannot be decoded: `dlq` = seamline's dead-letter queue; `reject` = "
        "basic.reject without requeue, so the queue's own dead-letter exchange gets them.",
    )
    reconnect_max: Duration = Field(5.0, description="Longest wait between reconnection attempts.")
    connection_name: str | None = Field(None, description="Connection name shown in the management UI.")


class RabbitMQSinkConfig(SinkConfig):
    """Publish each message with publisher confirms."""

    url: SecretStr = Field(
        ..., description="AMQP URL `amqp://user:password@host:5672/vhost` (a secret; may use ${env:NAME})."
    )
    exchange: str = Field("", description="Exchange to publish to; empty = the default exchange (routing key = queue).")
    exchange_type: ExchangeKind | None = Field(
        None, description="Declare the exchange (durable) with this type; omit when it exists already."
    )
    routing_key: str = Field("", description="Routing key (default exchange: the queue name).")
    routing_key_field: str | None = Field(
        None, description="Dotted body path whose value is the routing key (wins over `routing_key`)."
    )
    routing_key_header: str | None = Field(
        None, description="Header whose value is the routing key (wins over `routing_key`)."
    )
    persistent: bool = Field(True, description="Persistent delivery (survives a broker restart in durable queues).")
    mandatory: bool = Field(True, description="Unroutable messages fail (dead-lettered) instead of being dropped.")
    confirm_timeout: Duration = Field(30.0, description="How long to wait for the broker's confirmation.")
    connection_name: str | None = Field(None, description="Connection name shown in the management UI.")


# -- errors -------------------------------------------------------------------------------------------------------


def _error(exc: BaseException, what: str) -> SeamlineError:
    import aiormq.exceptions as amqe

    text = f"{what}: {type(exc).__name__}: {exc}".strip()
    if isinstance(exc, SeamlineError):
        return exc
    if isinstance(
        exc,
        amqe.AuthenticationError
        | amqe.ProbableAuthenticationError
        | amqe.ConnectionNotAllowed
        | amqe.ChannelAccessRefused,
    ):
        return FatalError(text, code="rabbitmq.unauthorized")
    if isinstance(exc, amqe.ChannelNotFoundEntity):
        return FatalError(text, code="rabbitmq.not_found")
    if isinstance(exc, amqe.ChannelPreconditionFailed):
        return FatalError(text, code="rabbitmq.precondition_failed")
    if isinstance(exc, amqe.PublishError):
        return FatalError(text, code="rabbitmq.unroutable")
    if isinstance(exc, amqe.DeliveryError):
        return RetryableError(text, code="rabbitmq.nacked")
    if isinstance(exc, TimeoutError):
        return RetryableError(text, code="rabbitmq.timeout")
    return RetryableError(text, code="rabbitmq.unavailable")


def _fatal_connect(exc: BaseException) -> bool:
    err = _error(exc, "")
    return isinstance(err, FatalError)


def _header_text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    if isinstance(v, bool | int | float):
        return str(v).lower() if isinstance(v, bool) else str(v)
    try:
        return orjson.dumps(v, default=str).decode()
    except TypeError:
        return str(v)



async def _connect(url: str, name: str, timeout: float = 10.0) -> Any:
    import aio_pika

    return await aio_pika.connect(url, timeout=timeout, client_properties={"connection_name": name})


class _Quiet:
    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}

    def __call__(self, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) >= self.every:
            self._last[kind] = now
            log.warning(msg, *args)


# -- source --------------------------------------------------------------------------------------------------------


class _Tags:
    """Delivery tags in arrival order, each settled as acked (True) or given back (False).

    ``take()`` pops the settled prefix and returns the highest *acked* tag in it: a
    ``basic.ack(multiple)`` up to that tag acknowledges exactly the acked messages (given-back ones
    are no longer outstanding), while a multiple-ack naming a given-back tag would be refused by the
    broker (unknown delivery tag) and close the channel.
    """

    __slots__ = ("_pending", "_state", "dirty")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._state: dict[int, bool | None] = {}
        self.dirty = False

    def track(self, tag: int) -> None:
        self._pending.append(tag)
        self._state[tag] = None

    def settle(self, tag: int, acked: bool) -> None:
        if tag in self._state:
            self._state[tag] = acked
            self.dirty = True

    def take(self) -> int:
        upto = 0
        pending, state = self._pending, self._state
        while pending and state[pending[0]] is not None:
            tag = pending.popleft()
            if state.pop(tag):
                upto = tag
        self.dirty = False
        return upto


class _Gen:
    """One channel's worth of deliveries: tags are only meaningful on the channel that sent them."""

    __slots__ = ("alive", "raw", "tags")

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.tags = _Tags()
        self.alive = True


class RabbitMQSource(Source):
    def __init__(self, cfg: RabbitMQSourceConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.batch_size = ctx.batch_size
        self._url = cfg.url.reveal()
        self._name = cfg.connection_name or f"seamline:{ctx.flow}:{ctx.label or 'source'}"
        self._conn: Any = None
        self._channel: Any = None
        self._queue: Any = None
        self._ctag: str | None = None
        self._gen: _Gen | None = None
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._quiet = _Quiet()

    async def open(self) -> None:
        try:
            await self._connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._disconnect()
            if _fatal_connect(exc):
                raise _error(exc, f"cannot consume {self.cfg.queue} at {safe_url(self._url)}") from exc
            # the broker may come back: run() keeps trying
            self._quiet("connect", "rabbitmq: cannot connect to %s yet (%s); retrying", safe_url(self._url), exc)

    async def _connect(self) -> None:
        import aio_pika

        c = self.cfg
        self._conn = await _connect(self._url, self._name)
        channel = await self._conn.channel(publisher_confirms=False)
        self._channel = channel
        await channel.set_qos(prefetch_count=c.prefetch)
        if c.declare:
            queue = await channel.declare_queue(c.queue, durable=True, arguments=c.queue_arguments or None)
        else:
            queue = await channel.declare_queue(c.queue, passive=True)
        for b in c.bindings:
            if b.exchange_type is not None:
                await channel.declare_exchange(b.exchange, aio_pika.ExchangeType(b.exchange_type), durable=True)
            await queue.bind(b.exchange, routing_key=b.routing_key)
        self._queue = queue
        gen = _Gen(await channel.get_underlay_channel())
        self._gen = gen
        inbox = self._inbox

        def closed(_sender: Any, exc: BaseException | None = None) -> None:
            gen.alive = False
            inbox.put_nowait((gen, None))

        channel.close_callbacks.add(closed)
        self._conn.close_callbacks.add(closed)

        async def on_message(message: Any) -> None:
            inbox.put_nowait((gen, message))

        self._ctag = await queue.consume(on_message, no_ack=False)

    async def _disconnect(self) -> None:
        if self._gen is not None:
            self._gen.alive = False
        conn, self._conn = self._conn, None
        self._channel = self._queue = None
        self._ctag = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        # whatever was prefetched on the old channel is requeued by the broker
        while not self._inbox.empty():
            self._inbox.get_nowait()

    async def run(self, emit: Emit) -> None:
        backoff = 0.2
        while True:
            if self._conn is None or self._conn.is_closed:
                try:
                    await self._disconnect()
                    await self._connect()
                    log.info("rabbitmq: consuming %s at %s", self.cfg.queue, safe_url(self._url))
                    backoff = 0.2
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    await self._disconnect()
                    if _fatal_connect(exc):
                        raise _error(exc, f"cannot consume {self.cfg.queue}") from exc
                    self._quiet("connect", "rabbitmq: cannot connect to %s (%s); retrying",
                                safe_url(self._url), exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.cfg.reconnect_max)
                    continue
            try:
                await self._pump(emit)
            except asyncio.CancelledError:
                await self._stop_consuming()
                raise
            except ConnectionError as exc:
                self._quiet("lost", "rabbitmq: connection to %s lost (%s); reconnecting", safe_url(self._url), exc)
                await self._disconnect()

    async def _stop_consuming(self) -> None:
        """Stop deliveries but keep the channel open: in-flight messages can still be acknowledged."""
        if self._queue is not None and self._ctag is not None and self._conn is not None and not self._conn.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._queue.cancel(self._ctag), 5)
        self._ctag = None

    async def _pump(self, emit: Emit) -> None:
        inbox = self._inbox
        while True:
            first = await inbox.get()
            items = [first]
            deadline = time.monotonic() + self.cfg.batch_wait
            while len(items) < self.batch_size:
                if not inbox.empty():
                    items.append(inbox.get_nowait())
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(inbox.get(), left))
                except TimeoutError:
                    break
            batch: list[Delivery] = []
            lost = False
            for gen, message in items:
                if message is None or not gen.alive:
                    if gen is self._gen:
                        lost = True
                    continue
                d = await self._delivery(gen, message)
                if d is not None:
                    batch.append(d)
            if batch:
                await emit(batch)
            if lost:
                raise ConnectionError("channel closed")

    async def _delivery(self, gen: _Gen, message: Any) -> Delivery | None:
        tag = message.delivery_tag
        gen.tags.track(tag)
        wire = {str(k): _header_text(v) for k, v in (message.headers or {}).items()}
        transport = {
            "amqp.exchange": message.exchange or "",
            "amqp.routing_key": message.routing_key or "",
            "amqp.redelivered": "true" if message.redelivered else "false",
        }
        msg, error = decode_message(
            message.body,
            wire,
            default_id=uuid.uuid4().hex,
            default_content_type=self.cfg.content_type,
            transport=transport,
            message_id=message.message_id or None,
            correlation_id=message.correlation_id or None,
            content_type=message.content_type or None,
            max_bytes=self.cfg.max_message_bytes,
            connector="rabbitmq",
        )
        if error is not None and self.cfg.on_decode_error == "reject":
            log.warning("rabbitmq: rejecting message %s from %s to its dead-letter exchange: %s",
                        msg.id, self.cfg.queue, error)
            await self._settle(gen, tag, requeue=False, reject=True)
            return None
        return Delivery(
            msg,
            functools.partial(gen.tags.settle, tag, True),
            functools.partial(self._nack, gen, tag),
            error,
        )

    async def _settle(self, gen: _Gen, tag: int, *, requeue: bool, reject: bool = False) -> None:
        if gen.alive:
            try:
                if reject:
                    await gen.raw.basic_reject(tag, requeue=requeue)
                else:
                    await gen.raw.basic_nack(tag, multiple=False, requeue=requeue)
            except Exception as exc:
                # the channel is gone: the broker requeues the message by itself
                log.debug("rabbitmq: nack of %s failed: %s", tag, exc)
        gen.tags.settle(tag, False)

    async def _nack(self, gen: _Gen, tag: int, requeue: bool) -> None:
        await self._settle(gen, tag, requeue=True)

    async def commit_acks(self) -> None:
        gen = self._gen
        if gen is None or not gen.alive or not gen.tags.dirty:
            return
        upto = gen.tags.take()
        if not upto:
            return
        try:
            await gen.raw.basic_ack(upto, multiple=True)
        except Exception as exc:
            # not acknowledged: the broker redelivers these messages after the reconnect (at-least-once)
            self._quiet("ack", "rabbitmq: acknowledging up to %s failed (%s); they will be redelivered", upto, exc)

    async def close(self) -> None:
        await self._stop_consuming()
        await self.commit_acks()
        await self._disconnect()


# -- sink ------------------------------------------------------------------------------------------------------------


class RabbitMQSink(Sink):
    def __init__(self, cfg: RabbitMQSinkConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self._url = cfg.url.reveal()
        self._name = cfg.connection_name or f"seamline:{ctx.flow}:{ctx.label or 'sink'}"
        self._conn: Any = None
        self._exchange: Any = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            await self._connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._disconnect()
            err = _error(exc, f"cannot publish to {self.cfg.exchange or '(default exchange)'} at {safe_url(self._url)}")
            if isinstance(err, FatalError):
                raise err from exc
            log.warning("rabbitmq: %s; connecting again on the first write", err)

    async def _connect(self) -> None:
        import aio_pika

        self._conn = await _connect(self._url, self._name)
        channel = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
        if not self.cfg.exchange:
            self._exchange = channel.default_exchange
        elif self.cfg.exchange_type is not None:
            self._exchange = await channel.declare_exchange(
                self.cfg.exchange, aio_pika.ExchangeType(self.cfg.exchange_type), durable=True
            )
        else:
            self._exchange = await channel.get_exchange(self.cfg.exchange, ensure=True)

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self._exchange = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def _routing_key(self, m: Message) -> str:
        c = self.cfg
        if c.routing_key_field:
            v = field_at(m.body, c.routing_key_field)
            if v is not None:
                return str(v)
        if c.routing_key_header:
            v = m.headers.get(c.routing_key_header)
            if v is not None:
                return v
        return c.routing_key

    def _message(self, m: Message) -> Any:
        import aio_pika

        mode = aio_pika.DeliveryMode.PERSISTENT if self.cfg.persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
        return aio_pika.Message(
            body=m.raw,
            message_id=m.id,
            correlation_id=m.correlation_id,
            content_type=m.content_type,
            headers=dict[str, Any](outgoing_headers(m, message_id=False, correlation_id=False, content_type=False)),
            delivery_mode=mode,
        )

    async def write(self, batch: Sequence[Message]) -> None:
        async with self._lock:
            if self._conn is None or self._conn.is_closed:
                await connect_again(
                    self._connect, self._disconnect, lambda e: _error(e, f"cannot connect to {safe_url(self._url)}")
                )
            exchange = self._exchange
            errors: dict[int, BaseException] = {}
            tasks: list[tuple[int, asyncio.Task[Any]]] = []
            for i, m in enumerate(batch):
                try:
                    amqp_msg = self._message(m)
                    rk = self._routing_key(m)
                except Exception as exc:
                    errors[i] = FatalError(f"cannot encode message {m.id}: {exc}", code="rabbitmq.encode")
                    continue
                # tasks start in order and aiormq publishes under a FIFO lock: the batch keeps its order
                tasks.append((i, asyncio.ensure_future(
                    exchange.publish(amqp_msg, rk, mandatory=self.cfg.mandatory, timeout=self.cfg.confirm_timeout)
                )))
            if tasks:
                results = await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
                broken = False
                for (i, _), r in zip(tasks, results, strict=True):
                    if isinstance(r, BaseException):
                        if isinstance(r, asyncio.CancelledError):
                            raise r
                        err = _error(r, f"publishing message {batch[i].id}")
                        errors[i] = err
                        if err.code in ("rabbitmq.unavailable", "rabbitmq.timeout"):
                            broken = True
                if broken:
                    await self._disconnect()
            if errors:
                raise BatchError(errors)

    async def close(self) -> None:
        async with self._lock:
            await self._disconnect()


@register(
    "source",
    "rabbitmq",
    config=RabbitMQSourceConfig,
    summary="Consume a RabbitMQ queue with manual acks and prefetch; redelivered after a crash or a dropped link.",
    examples=(
        "rabbitmq: {url: '${env:AMQP_URL}', queue: orders}",
        "rabbitmq: {url: 'amqp://guest:guest@localhost/', queue: orders, "
        "bindings: [{exchange: shop, exchange_type: topic, routing_key: 'order.*'}], "
        "queue_arguments: {x-dead-letter-exchange: orders.dlx}, on_decode_error: reject}",
    ),
)
def _rabbitmq_source(cfg: RabbitMQSourceConfig, ctx: BuildContext) -> RabbitMQSource:
    return RabbitMQSource(cfg, ctx)


@register(
    "sink",
    "rabbitmq",
    config=RabbitMQSinkConfig,
    summary="Publish to a RabbitMQ exchange with publisher confirms, persistent and mandatory.",
    examples=(
        "rabbitmq: {url: '${env:AMQP_URL}', exchange: events, exchange_type: topic, routing_key_field: type}",
        "rabbitmq: {url: 'amqp://guest:guest@localhost/', routing_key: orders.out}",
    ),
)
def _rabbitmq_sink(cfg: RabbitMQSinkConfig, ctx: BuildContext) -> RabbitMQSink:
    return RabbitMQSink(cfg, ctx)
