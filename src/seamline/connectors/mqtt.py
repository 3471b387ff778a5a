"""The ``mqtt`` connector: MQTT 5 with persistent sessions, QoS 1 and 2, user properties.

What "acknowledge after delivery" means here
--------------------------------------------
aiomqtt acknowledges every message as soon as it is queued for the
application; it has no manual acknowledgement of its own. The source turns
on paho-mqtt's ``manual_ack`` mode on the client underneath aiomqtt, so the
broker gets the acknowledgement only when the runtime acked the message
(every sink confirmed it, or it is durably in the store):

* QoS 1: the PUBACK is sent after delivery. Until then the message stays
  unacknowledged in the broker's session; after a crash or a dropped
  connection the broker sends it again when the client reconnects with the
  same client id (``clean_start: false`` and a session expiry > 0).
* QoS 2: paho answers a PUBLISH with PUBREC at once, and a broker never
  resends a message after PUBREC — a crash between PUBREC and delivery would
  lose it. The source therefore holds the PUBREC back until delivery
  (reaching into paho's packet handlers, which are stable across paho 2.x) and
  answers the PUBREL with PUBCOMP straight away. The result is at-least-once
  processing, the same as QoS 1; QoS 2 still spares duplicates when nothing
  fails.

MQTT requires acknowledgements in the order the messages arrived. The
runtime may finish batches out of order, so acknowledgements are released
in arrival order: a slow message holds back the acks of later ones (they
stay in flight, bounded by ``receive_maximum``). MQTT has no negative
acknowledgement: a nack drops the connection and reconnects, so the broker
redelivers everything unacknowledged.

The broker decides how many messages it keeps for an offline session
(mosquitto: ``max_queued_messages``, 1000 by default — beyond that it drops
them). Size it for the backlog a stopped flow may build up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator

from seamline.config.models import ComponentConfig, SinkConfig, SourceConfig
from seamline.config.types import Duration, MaybeSecret, SecretStr
from seamline.connectors.wire import (
    CORRELATION_HEADER,
    MESSAGE_ID_HEADER,
    PLACEHOLDER,
    TRACEPARENT,
    decode_message,
    outgoing_headers,
    render_placeholders,
)
from seamline.core.component import BatchError, BuildContext, Delivery, Emit, Sink, Source
from seamline.core.errors import FatalError, RetryableError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.security.secrets import Secret

__all__ = ["MqttSink", "MqttSinkConfig", "MqttSource", "MqttSourceConfig"]

log = logging.getLogger("seamline.connectors.mqtt")

_ENVELOPE = frozenset({MESSAGE_ID_HEADER, CORRELATION_HEADER, TRACEPARENT, "tracestate"})


class _MqttConnection(ComponentConfig):
    url: MaybeSecret = Field(
        "mqtt://127.0.0.1:1883",
        description="Broker URL: `mqtt://host:1883` or `mqtts://host:8883` (TLS); may use ${env:NAME}.",
    )
    username: str | None = Field(None, description="User name.")
    password: SecretStr | None = Field(None, description="Password.")
    client_id: str | None = Field(
        None,
        description="Client identifier. The source needs a stable one for its persistent session "
        "(default: `seamline-<flow>` for sources, random for sinks).",
    )
    keepalive: int = Field(30, ge=5, le=65535, description="Keep-alive interval in seconds.")
    connect_timeout: Duration = Field(10.0, description="Timeout of connecting and subscribing.")


class MqttSourceConfig(_MqttConnection, SourceConfig):
    """Subscribe to MQTT topics with a persistent session."""

    topics: list[str] = Field(
        ..., min_length=1, description="Topic filters (`+`, `#` and shared subscriptions `$share/group/...`)."
    )
    qos: Literal[1, 2] = Field(
        1, description="Subscription QoS. Both give at-least-once delivery into the flow (see the ADR)."
    )
    session_expiry: Duration = Field(
        3600.0,
        description="How long the broker keeps the session (subscriptions and unacknowledged messages) "
        "while the flow is stopped. 0 ends the session with the connection: messages are lost while stopped.",
    )
    clean_start: bool = Field(False, description="Start with a fresh session on connect (drops the backlog).")
    receive_maximum: int = Field(
        500, ge=1, le=65535, description="Unacknowledged QoS 1/2 messages the broker may send at once."
    )
    linger: Duration = Field(0.05, description="How long to wait for more messages before handing over a batch.")
    content_type: str = Field(
        "application/json", description="Content type of payloads that carry none (MQTT 5 content type)."
    )


class MqttSinkConfig(_MqttConnection, SinkConfig):
    """Publish messages to an MQTT topic."""

    topic: str = Field(
        ...,
        description="Topic; may contain `{id}`, `{correlation_id}`, `{headers.NAME}` or `{body.path}` "
        "(e.g. `orders/{body.customer.region}`).",
    )
    qos: Literal[0, 1, 2] = Field(
        1, description="Publish QoS. A batch is confirmed once the broker acknowledged every message (1, 2)."
    )
    retain: bool = Field(False, description="Ask the broker to retain the last message per topic.")
    message_expiry: Duration | None = Field(None, description="MQTT 5 message expiry interval.")
    headers: bool = Field(True, description="Send message headers as MQTT 5 user properties.")
    publish_timeout: Duration = Field(10.0, description="How long to wait for the broker's acknowledgement.")
    max_inflight: int = Field(100, ge=1, le=65535, description="Unacknowledged publishes at once.")

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if "+" in v or "#" in v:
            raise ValueError("a publish topic cannot contain the wildcards + or #")
        return v


# -- shared ---------------------------------------------------------------------------------------------------


def _client(cfg: _MqttConnection, client_id: str, **kw: Any) -> Any:
    import aiomqtt

    raw = cfg.url.reveal() if isinstance(cfg.url, Secret) else cfg.url
    u = urlsplit(raw)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise FatalError(f"unsupported MQTT URL scheme {u.scheme!r} (use mqtt:// or mqtts://)", code="mqtt.url")
    tls = u.scheme in ("mqtts", "ssl")
    user = cfg.username or (unquote(u.username) if u.username else None)
    pw = cfg.password.reveal() if cfg.password is not None else (unquote(u.password) if u.password else None)
    return aiomqtt.Client(
        u.hostname or "127.0.0.1",
        u.port or (8883 if tls else 1883),
        username=user,
        password=pw,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        keepalive=cfg.keepalive,
        timeout=cfg.connect_timeout,
        tls_context=ssl.create_default_context() if tls else None,
        **kw,
    )


def _consume_disconnect(client: Any) -> None:
    fut = getattr(client, "_disconnected", None)
    if fut is not None and fut.done() and not fut.cancelled():
        fut.exception()  # mark as retrieved


def _user_properties(m: Message, headers: bool) -> list[tuple[str, str]]:
    # the content type travels in the MQTT 5 content type property
    h = outgoing_headers(m, content_type=False)
    return [(k, str(v)) for k, v in h.items() if headers or k in _ENVELOPE]


# -- source ---------------------------------------------------------------------------------------------------


class _Ack:
    __slots__ = ("done", "mid", "qos")

    def __init__(self, mid: int, qos: int) -> None:
        self.mid = mid
        self.qos = qos
        self.done = False


class _InOrderAcks:
    """Releases acknowledgements to the broker in arrival order (MQTT requires it)."""

    def __init__(self, send: Callable[[int, int], Any]) -> None:
        self._send = send
        self._q: deque[_Ack] = deque()
        self.alive = True

    def track(self, mid: int, qos: int) -> _Ack:
        a = _Ack(mid, qos)
        self._q.append(a)
        return a

    def ack(self, a: _Ack) -> None:
        a.done = True
        if not self.alive:
            return
        q = self._q
        while q and q[0].done:
            head = q.popleft()
            self._send(head.mid, head.qos)

    @property
    def pending(self) -> int:
        return len(self._q)


def _hold_pubrec(pc: Any) -> Callable[[int, int], Any]:
    """Make a paho client hand QoS 2 messages over on PUBLISH and send PUBREC only when told.

    Returns ``send(mid, qos)`` which acknowledges a message of either QoS.
    """
    from paho.mqtt.client import MQTTErrorCode

    real_pubrec = pc._send_pubrec
    orig_publish = pc._handle_publish
    orig_pubrel = pc._handle_pubrel
    held: list[int] = []

    def send_pubrec(mid: int) -> Any:
        held.append(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def handle_publish() -> Any:
        held.clear()
        rc = orig_publish()
        for mid in held:
            with pc._in_message_mutex:
                msg = pc._in_messages.pop(mid, None)
            if msg is not None:
                pc._handle_on_message(msg)
        held.clear()
        return rc

    def handle_pubrel() -> Any:
        # the message was handed over on PUBLISH; complete the exchange at once
        # (this also answers PUBRELs left over from a previous process)
        pc._manual_ack = False
        try:
            return orig_pubrel()
        finally:
            pc._manual_ack = True

    pc._send_pubrec = send_pubrec
    pc._handle_publish = handle_publish
    pc._handle_pubrel = handle_pubrel

    def send(mid: int, qos: int) -> Any:
        if qos == 1:
            return pc._send_puback(mid)
        if qos == 2:
            return real_pubrec(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    return send


class MqttSource(Source):
    def __init__(self, cfg: MqttSourceConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.batch_size = ctx.batch_size
        self.client_id = cfg.client_id or f"seamline-{ctx.flow}"
        self._acks: _InOrderAcks | None = None
        self._reconnect = asyncio.Event()
        self.connected = asyncio.Event()
        self._lingering: Any = None

    async def open(self) -> None:
        # configuration errors surface here; the connection itself is made (and remade) by run()
        self._new_client()

    def _new_client(self) -> Any:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.cfg.session_expiry)
        props.ReceiveMaximum = self.cfg.receive_maximum
        client = _client(self.cfg, self.client_id, clean_start=self.cfg.clean_start, properties=props)
        client._client.manual_ack_set(True)
        return client

    async def run(self, emit: Emit) -> None:
        import aiomqtt
        from paho.mqtt.subscribeoptions import SubscribeOptions

        backoff = 0.2
        while True:
            client = self._new_client()
            send = _hold_pubrec(client._client)
            acks = _InOrderAcks(send)
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                _consume_disconnect(client)
                log.warning("mqtt source %s: %s; reconnecting in %.1fs", self.client_id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._acks = acks
            try:
                opts = SubscribeOptions(qos=self.cfg.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
                await client.subscribe([(t, opts) for t in self.cfg.topics])
                self.connected.set()
                backoff = 0.2
                await self._consume(client, acks, emit)
            except asyncio.CancelledError:
                # shutdown: the runtime still drains what is in flight and acks it; the connection
                # stays open until close() so those acknowledgements reach the broker
                self._lingering = client
                raise
            except aiomqtt.MqttError as exc:
                log.warning("mqtt source %s: %s; reconnecting in %.1fs", self.client_id, exc, backoff)
                acks.alive = False
                await self._disconnect(client)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            finally:
                self.connected.clear()
            # a nack asked for redelivery: reconnect
            acks.alive = False
            await self._disconnect(client)

    async def _disconnect(self, client: Any) -> None:
        _consume_disconnect(client)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.__aexit__(None, None, None), self.cfg.connect_timeout)
        _consume_disconnect(client)

    async def close(self) -> None:
        client, self._lingering = self._lingering, None
        if self._acks is not None:
            self._acks.alive = False
        if client is not None:
            await self._settle_acks(client)
            await self._disconnect(client)

    async def _settle_acks(self, client: Any) -> None:
        """Return once the broker has processed every acknowledgement sent so far.

        The broker keeps sending messages while the drain acknowledges, so the socket may hold unread
        data when it is closed; the kernel then resets the connection, and a broker that sees the reset
        before reading the last PUBACKs drops them (those messages would be delivered again). The broker
        handles a connection's packets in order: an UNSUBACK for a filter this client never subscribed
        proves every earlier acknowledgement was processed.
        """
        with contextlib.suppress(Exception):
            await client.unsubscribe(f"seamline/ack-barrier/{uuid.uuid4().hex}", timeout=self.cfg.connect_timeout)

    async def _consume(self, client: Any, acks: _InOrderAcks, emit: Emit) -> None:
        # Read aiomqtt's queue directly: cancelling its message iterator can drop a message it
        # already took off the queue. One getter task lives across batches and is never cancelled
        # while the connection is in use.
        import aiomqtt

        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Any] = client._queue
        gone: asyncio.Future[None] = client._disconnected
        self._reconnect.clear()
        wake = asyncio.ensure_future(self._reconnect.wait())
        getter: asyncio.Future[Any] | None = None
        try:
            while True:
                if getter is None:
                    getter = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({getter, wake, gone}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    if gone.done():
                        raise aiomqtt.MqttError(f"disconnected: {gone.exception() if not gone.cancelled() else ''}")
                    # unacknowledged messages of this connection are redelivered after the reconnect
                    log.info("mqtt source %s: reconnecting so the broker redelivers", self.client_id)
                    return
                batch = [getter.result()]
                getter = None
                deadline = loop.time() + self.cfg.linger
                while len(batch) < self.batch_size:
                    try:
                        batch.append(q.get_nowait())
                        continue
                    except asyncio.QueueEmpty:
                        pass
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    getter = asyncio.ensure_future(q.get())
                    done, _ = await asyncio.wait({getter}, timeout=remaining)
                    if getter not in done:
                        break  # keep the getter for the next batch
                    batch.append(getter.result())
                    getter = None
                await emit([self._delivery(m, acks) for m in batch])
        finally:
            wake.cancel()
            if getter is not None and not getter.done():
                getter.cancel()

    def _delivery(self, m: Any, acks: _InOrderAcks) -> Delivery:
        props = m.properties
        user = (getattr(props, "UserProperty", None) or []) if props is not None else []
        wire: dict[str, str] = {str(k): str(v) for k, v in user}
        if props is not None and not any(k.lower() in ("correlation-id", "correlation_id") for k in wire):
            cd = getattr(props, "CorrelationData", None)
            if cd:
                wire[CORRELATION_HEADER] = cd.decode("utf-8", "replace") if isinstance(cd, bytes) else str(cd)
        ctype = getattr(props, "ContentType", None) if props is not None else None
        transport = {"mqtt.topic": m.topic.value}
        if m.retain:
            transport["mqtt.retain"] = "true"
        payload = m.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        msg, error = decode_message(
            bytes(payload), wire, default_id=uuid.uuid4().hex, default_content_type=self.cfg.content_type,
            transport=transport, content_type=ctype or None, connector="mqtt",
        )
        if m.qos == 0:
            return Delivery(msg, error=error)
        ticket = acks.track(m.mid, m.qos)

        def ack() -> None:
            acks.ack(ticket)

        def nack(requeue: bool) -> None:
            # No negative acknowledgement in MQTT. The message stays unacknowledged (and, acks being in
            # order, so do the ones after it); a reconnect makes the broker send them again. During a
            # shutdown there is no reconnect: the next session gets them.
            if acks.alive:
                self._reconnect.set()

        return Delivery(msg, ack, nack, error)


# -- sink -----------------------------------------------------------------------------------------------------



def _topic_level(value: str) -> str:
    """A placeholder's value as one topic level: no level separator or wildcard in it."""
    return value.replace("/", "_").replace("+", "_").replace("#", "_")
_RETRYABLE_CODES = {0x80, 0x89, 0x97}  # unspecified, server busy, quota exceeded



class MqttSink(Sink):
    def __init__(self, cfg: MqttSinkConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.client_id = cfg.client_id or f"seamline-{ctx.flow}-{uuid.uuid4().hex[:8]}"
        self._client: Any = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._templated = bool(PLACEHOLDER.search(cfg.topic))
        self._slots = asyncio.Semaphore(cfg.max_inflight)

    async def open(self) -> None:
        try:
            await self._connect()
        except RetryableError as exc:
            log.warning("mqtt sink %s: %s (will retry on write)", self.cfg.topic, exc)

    async def _connect(self) -> Any:
        import aiomqtt

        if self._client is not None:
            fut = self._client._disconnected
            if not fut.done():
                return self._client
            await self._drop()
        client = _client(self.cfg, self.client_id, max_inflight_messages=self.cfg.max_inflight)
        client.pending_calls_threshold = 1 << 30
        pc = client._client
        pc.on_publish = self._on_publish
        aiomqtt_on_connect = pc.on_connect
        server_max: list[int] = []

        def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
            rm = getattr(props, "ReceiveMaximum", None) if props is not None else None
            if rm:
                server_max.append(int(rm))
            aiomqtt_on_connect(c, userdata, flags, rc, props)

        pc.on_connect = on_connect
        self._watch_pubrec(pc)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise RetryableError(f"cannot connect to the MQTT broker: {exc}", code="mqtt.unavailable") from exc
        # paho ignores the broker's Receive Maximum; publishing past it makes the broker refuse messages
        self._slots = asyncio.Semaphore(min([self.cfg.max_inflight, *server_max]))
        self._client = client
        self._waiting.clear()
        return client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        for f in self._waiting.values():
            if not f.done():
                f.cancel()
        self._waiting.clear()
        _consume_disconnect(client)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.__aexit__(None, None, None), self.cfg.connect_timeout)
        _consume_disconnect(client)

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, reason_code: Any, _properties: Any) -> None:
        # PUBACK (QoS 1) or PUBCOMP (QoS 2); both arrive on a later loop turn than the publish call
        fut = self._waiting.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reason_code)

    def _watch_pubrec(self, pc: Any) -> None:
        """paho ignores the reason code of PUBREC: a QoS 2 message the broker refused would count as sent."""
        from paho.mqtt import _packet

        orig = pc._handle_pubrec

        def handle_pubrec() -> Any:
            with contextlib.suppress(Exception):
                r = _packet.decode_pubrec(pc._in_packet["command"], pc._in_packet["packet"], pc._protocol)
                value = getattr(r.reason, "value", 0)
                if isinstance(value, int) and value >= 0x80:
                    fut = self._waiting.pop(r.mid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(r.reason)
            return orig()

        pc._handle_pubrec = handle_pubrec

    def _topic(self, m: Message) -> str:
        if not self._templated:
            return self.cfg.topic
        return render_placeholders(self.cfg.topic, m, code="mqtt.topic", what="topic placeholder",
                                   clean=_topic_level)

    def _properties(self, m: Message) -> Any:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = _user_properties(m, self.cfg.headers)
        if m.content_type:
            props.ContentType = m.content_type
        if self.cfg.message_expiry is not None:
            props.MessageExpiryInterval = int(self.cfg.message_expiry)
        return props

    async def _publish(self, client: Any, m: Message) -> None:
        async with self._slots:
            await self._publish_one(client, m)

    async def _publish_one(self, client: Any, m: Message) -> None:
        from paho.mqtt.client import MQTT_ERR_SUCCESS

        pc = client._client
        info = pc.publish(self._topic(m), m.raw, self.cfg.qos, self.cfg.retain, self._properties(m))
        if info.rc != MQTT_ERR_SUCCESS:
            raise RetryableError(f"publish failed (paho rc {info.rc})", code="mqtt.publish")
        if self.cfg.qos == 0:
            return
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[info.mid] = fut
        gone = client._disconnected
        try:
            done, _ = await asyncio.wait({fut, gone}, timeout=self.cfg.publish_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self._waiting.get(info.mid) is fut:
                del self._waiting[info.mid]
        if fut not in done:
            fut.cancel()
            raise RetryableError(
                "the broker did not acknowledge the publish" + (" (disconnected)" if gone.done() else ""),
                code="mqtt.timeout",
            )
        rc = fut.result()
        value = getattr(rc, "value", rc)
        if isinstance(value, int) and value >= 0x80:
            text = f"the broker refused the publish: {rc} (0x{value:02x})"
            if value in _RETRYABLE_CODES:
                raise RetryableError(text, code="mqtt.refused")
            raise FatalError(text, code="mqtt.refused")

    async def write(self, batch: Sequence[Message]) -> None:
        client = await self._connect()
        results = await asyncio.gather(*(self._publish(client, m) for m in batch), return_exceptions=True)
        errors: dict[int, BaseException] = {}
        broken = False
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                if isinstance(r, asyncio.CancelledError):
                    raise r
                errors[i] = r
                broken = broken or (isinstance(r, RetryableError) and r.code != "mqtt.refused")
        if broken:
            await self._drop()
        if errors:
            if len(errors) == len(batch):
                first = next(iter(errors.values()))
                if isinstance(first, RetryableError):
                    raise first
            raise BatchError(errors)

    async def close(self) -> None:
        await self._drop()


@register(
    "source",
    "mqtt",
    config=MqttSourceConfig,
    summary="Subscribe to MQTT 5 topics (QoS 1/2, persistent session); acknowledged after delivery.",
    examples=(
        "mqtt: {url: 'mqtt://localhost:1883', topics: ['plant/+/telemetry'], client_id: telemetry-ingest}",
    ),
)
def _mqtt_source(cfg: MqttSourceConfig, ctx: BuildContext) -> MqttSource:
    return MqttSource(cfg, ctx)


@register(
    "sink",
    "mqtt",
    config=MqttSinkConfig,
    summary="Publish to an MQTT 5 topic (QoS 0/1/2) with user properties; confirmed by the broker's ack.",
    examples=("mqtt: {url: 'mqtt://localhost:1883', topic: 'orders/{body.region}', qos: 1}",),
)
def _mqtt_sink(cfg: MqttSinkConfig, ctx: BuildContext) -> MqttSink:
    return MqttSink(cfg, ctx)
