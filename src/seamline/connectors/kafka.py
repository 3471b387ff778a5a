"""The ``kafka`` connector (confluent-kafka / librdkafka): consumer-group source and idempotent sink.

Source
    Joins a consumer group and reads its topics. Offsets are committed per
    partition, in order, and only up to the last message that was delivered
    or dead-lettered: a message still in flight holds back the commit of its
    partition, so a crash or a rebalance re-reads it (at-least-once) and never
    skips it. ``nack(requeue)`` rewinds the partition to its first
    unacknowledged offset. The record key is kept in ``headers["kafka.key"]``
    (``kafka.key.b64`` when it is not UTF-8) next to ``kafka.topic``,
    ``kafka.partition``, ``kafka.offset`` and ``kafka.timestamp``.

Sink
    An idempotent producer (``enable.idempotence``, ``acks=all``): broker-side
    retries never duplicate or reorder. ``write`` returns once the broker
    confirmed every message of the batch; failed messages are reported one by
    one (timeouts and broker outages retryable, oversized or refused records
    fatal). The key comes from a body field or a header (by default the
    ``kafka.key`` a Kafka source put there, so keys survive Kafka → Kafka);
    the default partitioner is Java-compatible (murmur2), so a key maps to the
    same partition as with Java clients.

Both sides carry ``message-id``, ``correlation-id``, ``traceparent`` and
``content-type`` as record headers (``seamline.connectors.wire``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import operator
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from seamline.config.models import SinkConfig, SourceConfig
from seamline.config.types import ByteSize, Duration, MaybeSecret, SecretStr
from seamline.connectors.offsets import OffsetTracker
from seamline.connectors.wire import (
    CONTENT_TYPE_HEADER,
    CORRELATION_HEADER,
    JSON_CONTENT_TYPES,
    MESSAGE_ID_HEADER,
    NOT_DECODED,
    TRACEPARENT,
    content_type_of,
    decode_message,
    field_at,
    incoming_pairs,
    outgoing_from,
    outgoing_headers,
)
from seamline.core.component import (
    BatchError,
    BuildContext,
    Delivery,
    Emit,
    EmitRaw,
    LaneCodec,
    RawBatch,
    Sink,
    Source,
)
from seamline.core.errors import FatalError, RetryableError, SeamlineError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.formats.errors import JsonError
from seamline.formats.json import decode_each
from seamline.security.secrets import Secret

__all__ = ["KafkaSink", "KafkaSinkConfig", "KafkaSource", "KafkaSourceConfig"]

log = logging.getLogger("seamline.connectors.kafka")

_T = TypeVar("_T")



class _LibLog:
    """librdkafka's own log lines, one level down: its errors are also reported through
    ``error_cb`` (logged as warnings, at most once per error kind every 30 s)."""

    _log = logging.getLogger("seamline.connectors.kafka.librdkafka")

    def log(self, level: int, fmt: str, *args: Any) -> None:
        self._log.log(logging.WARNING if level >= logging.CRITICAL else logging.DEBUG, fmt, *args)


_RDKAFKA_LOG = _LibLog()


class _Quiet:
    """Logs a repeated broker error once per ``every`` seconds per kind."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}

    def __call__(self, kind: str, level: int, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) >= self.every:
            self._last[kind] = now
            log.log(level, msg, *args)

KEY_HEADER = "kafka.key"


class KafkaConnection(BaseModel):
    """How to reach the Kafka cluster."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)

    bootstrap_servers: MaybeSecret = Field(
        ..., description="Brokers to bootstrap from, `host:port[,host:port...]`; may use ${env:NAME}."
    )
    security_protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] = Field(
        "plaintext", description="Transport security (librdkafka `security.protocol`)."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is `sasl_*`."
    )
    username: str | None = Field(None, description="SASL user name.")
    password: SecretStr | None = Field(None, description="SASL password (a secret; use ${env:NAME} or ${file:PATH}).")
    ssl_ca_location: str | None = Field(None, description="CA certificate file to verify the brokers.")
    client_id: str = Field("seamline", description="Client id shown in broker logs and quotas.")
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Further librdkafka properties (e.g. `fetch.max.bytes`); they override the settings above.",
    )

    def rdkafka(self) -> dict[str, Any]:
        servers = self.bootstrap_servers
        conf: dict[str, Any] = {
            "bootstrap.servers": servers.reveal() if isinstance(servers, Secret) else servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.username is not None:
            conf["sasl.username"] = self.username
        if self.password is not None:
            conf["sasl.password"] = self.password.reveal()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf


class KafkaSourceConfig(SourceConfig, KafkaConnection):
    """Consume topics as a member of a consumer group.

    With the flow setting `workers: N` (JSON records, a `kafka` or NDJSON `file` sink), worker
    processes decode the records, run the flow's steps and encode the output; offsets then move a
    poll's batch at a time, still only past delivered or dead-lettered records."""

    topics: list[str] = Field(..., min_length=1, description="Topics to read (a name or a list of names).")
    group: str = Field(..., min_length=1, description="Consumer group id; offsets are committed for this group.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group without committed offsets starts: the oldest or only new records."
    )
    session_timeout: Duration = Field(45.0, description="Consumer session timeout (`session.timeout.ms`).")
    heartbeat_interval: Duration = Field(3.0, description="Group heartbeat interval (`heartbeat.interval.ms`).")
    max_poll_interval: Duration = Field(
        300.0, description="Longest pause between polls before the group evicts this member."
    )
    batch_wait: Duration = Field(0.1, description="How long to wait for a batch to fill before handing it on.")
    commit_interval: Duration = Field(
        1.0,
        description="How often acknowledged offsets are committed to the group (also on rebalance and on "
        "close); a crash replays at most this much acknowledged work, never skips any.",
    )
    content_type: str = Field(
        "application/json",
        description="Content type of records without a `content-type` header; JSON records are parsed on "
        "arrival and invalid JSON goes to the dead-letter queue.",
    )
    max_message_bytes: ByteSize = Field(
        10 * 1024 * 1024, description="Larger records go to the dead-letter queue (e.g. 10MiB)."
    )

    @field_validator("topics", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class KafkaSinkConfig(SinkConfig, KafkaConnection):
    """Produce each message as a record.

    After a `kafka` source with the flow setting `workers: N`, worker processes encode the records
    (value, key, headers) and the sink produces them as they are; a record the producer refuses runs
    again alone, the usual way."""

    topic: str = Field(..., min_length=1, description="Topic to write to.")
    key_field: str | None = Field(
        None, description="Dotted body path of the record key (e.g. `customer.id`); wins over `key_header`."
    )
    key_header: str | None = Field(
        KEY_HEADER, description="Header holding the record key; by default the key a Kafka source read."
    )
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "none", description="Compression of record batches."
    )
    linger: Duration = Field(0.005, description="How long the producer waits to fill a record batch (`linger.ms`).")
    delivery_timeout: Duration = Field(
        30.0, description="How long a record may take to be confirmed before it fails as retryable."
    )
    partitioner: Literal["murmur2_random", "murmur2", "consistent_random", "consistent", "fnv1a_random"] = Field(
        "murmur2_random", description="Key → partition hash; murmur2 matches Java clients."
    )
    max_message_bytes: ByteSize = Field(
        1_000_000, description="Largest record; larger messages are dead-lettered (`message.max.bytes`)."
    )


# -- errors --------------------------------------------------------------------------------------------------------

_FATAL_NAMES = {
    "MSG_SIZE_TOO_LARGE": "kafka.message_too_large",
    "_MSG_SIZE_TOO_LARGE": "kafka.message_too_large",
    "RECORD_LIST_TOO_LARGE": "kafka.message_too_large",
    "INVALID_RECORD": "kafka.rejected",
    "CORRUPT_MESSAGE": "kafka.rejected",
    "INVALID_REQUIRED_ACKS": "kafka.config",
    "INVALID_CONFIG": "kafka.config",
    "_INVALID_ARG": "kafka.config",
    "POLICY_VIOLATION": "kafka.rejected",
    "TOPIC_AUTHORIZATION_FAILED": "kafka.unauthorized",
    "CLUSTER_AUTHORIZATION_FAILED": "kafka.unauthorized",
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED": "kafka.unauthorized",
    "SASL_AUTHENTICATION_FAILED": "kafka.unauthorized",
    "_AUTHENTICATION": "kafka.unauthorized",
    "INVALID_TOPIC_EXCEPTION": "kafka.config",
}


def _error(err: Any, what: str) -> SeamlineError:
    """A KafkaError (or KafkaException) → a classified seamline error."""
    if hasattr(err, "args") and err.args and hasattr(err.args[0], "code"):
        err = err.args[0]  # KafkaException wraps a KafkaError
    name = err.name() if hasattr(err, "name") else type(err).__name__
    text = err.str() if hasattr(err, "str") else str(err)
    msg = f"{what}: {name}: {text}"
    if name in _FATAL_NAMES:
        return FatalError(msg, code=_FATAL_NAMES[name], details={"kafka_error": name})
    if name in ("_MSG_TIMED_OUT", "REQUEST_TIMED_OUT", "_TIMED_OUT"):
        return RetryableError(msg, code="kafka.timeout", details={"kafka_error": name})
    if name in ("_UNKNOWN_TOPIC", "UNKNOWN_TOPIC_OR_PART"):
        return RetryableError(msg, code="kafka.unknown_topic", details={"kafka_error": name})
    return RetryableError(msg, code="kafka.unavailable", details={"kafka_error": name})



# -- source ----------------------------------------------------------------------------------------------------------


def _transport(topic: str, spart: str, soffset: str, key: bytes | None, ts_type: int, ts: int) -> dict[str, str]:
    """The headers a record's message gets from where it was read (``kafka.*``)."""
    transport = {"kafka.topic": topic, "kafka.partition": spart, "kafka.offset": soffset}
    if key is not None:
        try:
            transport[KEY_HEADER] = key.decode("utf-8")
        except UnicodeDecodeError:
            transport[KEY_HEADER + ".b64"] = base64.b64encode(key).decode("ascii")
    if ts_type:
        transport["kafka.timestamp"] = str(ts)
    return transport


def _wire(hdrs: list[tuple[str, bytes | None]] | None) -> dict[str, str]:
    return {hk: ("" if hv is None else hv.decode("utf-8", "replace")) for hk, hv in hdrs} if hdrs else {}


def _record_message(topic: str, spart: str, offset: int, key: bytes | None, ts_type: int, ts: int,
                    hdrs: list[tuple[str, bytes | None]] | None, value: bytes | None, content_type: str,
                    max_bytes: int, now: float, parsed: Any = NOT_DECODED) -> tuple[Message, BaseException | None]:
    """The message for one record (what the source hands on, in the engine or in a worker);
    ``parsed``: its value as ``_decoded`` decoded it with the rest of its batch."""
    soffset = str(offset)
    return decode_message(
        value or b"",
        _wire(hdrs),
        default_id=f"{topic}-{spart}-{soffset}",
        default_content_type=content_type,
        transport=_transport(topic, spart, soffset, key, ts_type, ts),
        max_bytes=max_bytes,
        connector="kafka",
        now=now,
        parsed=parsed,
    )


class _LaneRecord(tuple):  # type: ignore[type-arg]
    """What a worker keeps of a record for the sink's encoder instead of a whole message: the same
    id, correlation id, content type and headers ``_record_message`` would give it, the transport
    headers made only if an encoder asks for them (``headers``). A tuple, made without a Python
    call: ``(id, correlation id, content type, rest, key, topic, partition, offset, timestamp type,
    timestamp)``, ``rest`` being the wire headers as ``incoming`` left them (traceparent included)."""

    __slots__ = ()

    id = property(operator.itemgetter(0))

    @property
    def headers(self) -> dict[str, str]:
        """The message's headers, as ``_record_message`` makes them."""
        topic, spart, offset, ts_type, ts = self[5:]
        return {**self[3], **_transport(topic, spart, str(offset), self[4], ts_type, ts)}


_new_tuple = tuple.__new__


def _decoded(values: list[bytes | None], content_type: str, max_bytes: int) -> list[Any]:
    """The records' values decoded together, strictly (a refused one: its ``JsonError``), when the
    topic's content type is JSON; else nothing is decoded ahead (each record on its own)."""
    if content_type not in JSON_CONTENT_TYPES:
        return [NOT_DECODED] * len(values)
    # a value over the limit is refused by ``decode_message`` before it looks at this
    return decode_each([v or b"" for v in values], max_bytes=max(max_bytes, 1))


class _BatchAcks:
    """The offset tickets of a raw batch (one per partition); they are acknowledged once the whole
    batch is (``ack_all``), or each of its deliveries (``ack_one``) when it ran the usual way."""

    __slots__ = ("left", "tickets")

    def __init__(self, tickets: list[tuple[OffsetTracker, int]], count: int) -> None:
        self.tickets = tickets
        self.left = count

    def ack_all(self) -> None:
        self.left = 0
        tickets, self.tickets = self.tickets, []
        for tracker, ticket in tickets:
            tracker.ack(ticket)

    def ack_one(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.ack_all()


def _nack_all(nacks: list[Callable[[bool], None]], requeue: bool) -> None:
    for nack in nacks:
        nack(requeue)


def lane_decode(settings: dict[str, Any], payload: list[Any], now: float) -> list[Any]:
    """A worker's decoding of a raw batch (``KafkaSource.lane_decoder``); ``payload`` holds one
    ``(topic, partition, offset, key, (timestamp type, timestamp), headers, value)`` per record.

    Each record gets the id, correlation id, body and headers the engine's message for it would
    have (``_record_message``: the same ``incoming`` and content type rules), kept as a
    ``_LaneRecord`` rather than a whole message: building messages and reading their headers back
    took about 3.5 of a worker's 8 µs a record. A record that is too big, not JSON or not valid JSON
    sends the batch back to the engine, which dead-letters it with the usual reason."""
    from seamline.core.lane_worker import Fallback

    default, max_bytes = settings["content_type"], settings["max_bytes"]
    # decoded together; a record refused here sends the batch back
    values = _decoded([r[6] for r in payload], default, max_bytes)
    items: list[Any] = []
    append = items.append
    for (topic, spart, offset, key, (ts_type, ts), hdrs, value), body in zip(payload, values, strict=True):
        mid, corr, declared, rest = incoming_pairs(hdrs)
        mid = mid or f"{topic}-{spart}-{offset}"
        if value is not None and len(value) > max_bytes:
            raise Fallback(f"record {mid}: kafka.message_too_large")
        ctype = default if declared is None else content_type_of(declared, default)
        if ctype not in JSON_CONTENT_TYPES:
            raise Fallback(f"record {mid}: content type {ctype}")
        if body is NOT_DECODED or isinstance(body, JsonError):
            raise Fallback(f"record {mid}: {getattr(body, 'code', 'not decoded')}")
        append((mid, corr, value or b"", body,
                _new_tuple(_LaneRecord, (mid, corr or mid, ctype, rest, key, topic, spart, offset, ts_type, ts))))
    return items


class KafkaSource(Source):
    def __init__(self, cfg: KafkaSourceConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.batch_size = ctx.batch_size
        self._consumer: Any = None
        # every consumer call runs on this one thread (librdkafka callbacks included)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-src-{ctx.flow}")
        self._lock = threading.Lock()
        self._parts: dict[tuple[str, int], OffsetTracker] = {}
        self._rewind: dict[tuple[str, int], tuple[OffsetTracker, int]] = {}
        # after a rewind, the offset the partition must start again from
        self._starts: dict[tuple[str, int], int] = {}
        self._to_store: list[Any] = []
        self._closed = False
        self._quiet = _Quiet()

    def _conf(self) -> dict[str, Any]:
        c = self.cfg
        conf = c.rdkafka()
        conf.update(
            {
                "group.id": c.group,
                # at-least-once: offsets are stored only past acknowledged messages (commit_acks),
                # librdkafka commits the stored offsets every commit_interval, on rebalance and on close
                "enable.auto.commit": True,
                "auto.commit.interval.ms": max(1, int(c.commit_interval * 1000)),
                "enable.auto.offset.store": False,
                "auto.offset.reset": c.auto_offset_reset,
                "isolation.level": "read_committed",
                "session.timeout.ms": int(c.session_timeout * 1000),
                "heartbeat.interval.ms": int(c.heartbeat_interval * 1000),
                "max.poll.interval.ms": int(c.max_poll_interval * 1000),
                "on_commit": self._on_commit,
                "error_cb": self._on_error,
                "logger": _RDKAFKA_LOG,
            }
        )
        conf.update(c.options)
        return conf

    async def open(self) -> None:
        from confluent_kafka import Consumer, KafkaException

        try:
            self._consumer = await self._call(Consumer, self._conf())
        except KafkaException as exc:
            raise _error(exc, "cannot create the Kafka consumer") from exc
        await self._call(
            self._consumer.subscribe,
            list(self.cfg.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    async def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    # librdkafka callbacks (on the consumer thread) ------------------------------------------------------
    def _on_error(self, err: Any) -> None:
        if err.fatal():
            log.error("kafka consumer (group %s): fatal error: %s", self.cfg.group, err)
        else:
            self._quiet(err.name(), logging.WARNING, "kafka consumer (group %s): %s", self.cfg.group, err.str())

    def _on_commit(self, err: Any, partitions: Any) -> None:
        if err is not None:
            log.warning("kafka: committing offsets of group %s failed (a later commit covers it): %s",
                        self.cfg.group, err)

    def _on_assign(self, consumer: Any, partitions: Any) -> None:
        with self._lock:
            for tp in partitions:
                self._parts.pop((tp.topic, tp.partition), None)
                self._rewind.pop((tp.topic, tp.partition), None)
                self._starts.pop((tp.topic, tp.partition), None)
        log.info("kafka: group %s assigned %s", self.cfg.group, [(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, consumer: Any, partitions: Any) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        keys = {(tp.topic, tp.partition) for tp in partitions}
        with self._lock:
            latest = {(tp.topic, tp.partition): tp for tp in self._to_store}
            self._to_store = []
            for (t, p), tr in self._parts.items():
                if (t, p) in keys and tr.dirty:
                    latest[(t, p)] = TopicPartition(t, p, tr.committed)
            offsets = list(latest.values())
            for k in keys:
                self._parts.pop(k, None)
                self._rewind.pop(k, None)
                self._starts.pop(k, None)
        try:
            if offsets:
                consumer.store_offsets(offsets=offsets)
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            # _NO_OFFSET: nothing to commit; otherwise in-flight messages are read again by the next owner
            if "NO_OFFSET" not in str(exc):
                log.warning("kafka: commit on revoke failed (in-flight messages will be read again): %s", exc)

    def _on_lost(self, consumer: Any, partitions: Any) -> None:
        with self._lock:
            for tp in partitions:
                self._parts.pop((tp.topic, tp.partition), None)
                self._rewind.pop((tp.topic, tp.partition), None)
                self._starts.pop((tp.topic, tp.partition), None)

    # acks ----------------------------------------------------------------------------------------------------
    def _nack(self, key: tuple[str, int], tracker: OffsetTracker, requeue: bool) -> None:
        """Rewind the partition to its first unacknowledged offset (everything after it is read again)."""
        with self._lock:
            if self._parts.get(key) is tracker:
                self._rewind[key] = (tracker, tracker.committed)

    async def commit_acks(self) -> None:
        from confluent_kafka import TopicPartition

        if self._consumer is None or self._closed:
            return
        with self._lock:
            offsets: list[Any] = []
            for (t, p), tr in self._parts.items():
                if tr.dirty:
                    tr.dirty = False
                    offsets.append(TopicPartition(t, p, tr.committed))
        if offsets:
            # stored by the consumer thread before its next poll (a store from this thread would wait for
            # the consumer's locks); librdkafka commits stored offsets every commit_interval, on rebalance
            # and on close
            with self._lock:
                self._to_store.extend(offsets)

    # reading -----------------------------------------------------------------------------------------------
    def _poll(self) -> list[Any]:
        """One consume call on the consumer thread (rewinds first). The records are turned into
        deliveries on the event loop's thread: per-record work here would queue for the GIL."""
        from confluent_kafka import KafkaException, TopicPartition

        consumer = self._consumer
        with self._lock:
            rewinds = list(self._rewind.items())
            self._rewind.clear()
            to_store, self._to_store = self._to_store, []
        if to_store:
            try:
                consumer.store_offsets(offsets=to_store)
            except KafkaException as exc:
                # the partition moved away meanwhile: its new owner reads the in-flight messages again
                self._quiet("store", logging.WARNING, "kafka: storing offsets failed: %s", exc)
        for (t, p), (tracker, offset) in rewinds:
            with self._lock:
                if self._parts.get((t, p)) is not tracker:
                    continue
                self._parts.pop((t, p), None)
                self._starts[(t, p)] = offset
            try:
                consumer.seek(TopicPartition(t, p, offset))
            except KafkaException as exc:
                log.warning("kafka: rewinding %s[%d] to %d failed: %s", t, p, offset, exc)
        return consumer.consume(self.batch_size, self.cfg.batch_wait)  # type: ignore[no-any-return]

    def _accepted(self, msgs: list[Any]) -> list[tuple[Any, tuple[OffsetTracker, Any, str]]]:
        """The records of one poll to hand on, each with its partition's ``(tracker, nack, partition as
        text)``; errors and records fetched before a rewind took effect are left out. Called under
        the lock, on the event loop's thread, between two polls (so no rebalance callback runs
        meanwhile)."""
        from confluent_kafka import KafkaError, KafkaException

        out: list[tuple[Any, tuple[OffsetTracker, Any, str]]] = []
        parts, starts = self._parts, self._starts
        nack = self._nack
        groups: dict[tuple[str, int], tuple[OffsetTracker, Any, str]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaException(err)
                self._quiet(err.name(), logging.WARNING, "kafka: consuming for group %s: %s", self.cfg.group,
                            err.str())
                continue
            key = (m.topic(), m.partition())
            group = groups.get(key)
            if group is None:
                tracker = parts.get(key)
                if tracker is None:
                    offset = m.offset()
                    start = starts.pop(key, None)
                    if start is not None and offset != start:
                        # fetched before a rewind took effect: it comes again from the rewound position
                        starts[key] = start
                        continue
                    tracker = parts[key] = OffsetTracker(offset)
                group = groups[key] = (tracker, functools.partial(nack, key, tracker), str(key[1]))
            out.append((m, group))
        return out

    def _deliveries(self, msgs: list[Any]) -> list[Delivery]:
        """Records → deliveries, each acknowledged on its own."""
        ctype, max_bytes = self.cfg.content_type, self.cfg.max_message_bytes
        partial = functools.partial
        now = time.time()  # one receive time for the records of one poll
        out: list[Delivery] = []
        append = out.append
        with self._lock:
            accepted = self._accepted(msgs)
            tickets = [tracker.track(m.offset() + 1) for m, (tracker, _, _) in accepted]
        bodies = _decoded([m.value() for m, _ in accepted], ctype, max_bytes)
        for (m, (tracker, group_nack, spart)), ticket, body in zip(accepted, tickets, bodies, strict=True):
            ts_type, ts = m.timestamp()
            msg, error = _record_message(m.topic(), spart, m.offset(), m.key(), ts_type, ts, m.headers(), m.value(),
                                         ctype, max_bytes, now, body)
            append(Delivery(msg, partial(tracker.ack, ticket), group_nack, error))
        return out

    async def _polled(self, convert: Callable[[list[Any]], _T]) -> AsyncIterator[_T]:
        """Poll for ever; each poll's records as ``convert`` turns them (on the event loop's thread)."""
        from confluent_kafka import KafkaException

        while True:
            try:
                batch = convert(await self._call(self._poll))
            except KafkaException as exc:
                raise _error(exc, f"kafka consumer of group {self.cfg.group} failed") from exc
            yield batch

    async def run(self, emit: Emit) -> None:
        async for batch in self._polled(self._deliveries):
            if batch:
                await emit(batch)

    # the workers path (flow setting ``workers``) ---------------------------------------------------------
    def can_run_raw(self) -> bool:
        # records are decoded as JSON in a worker; other bodies stay in the engine
        return self.cfg.content_type in JSON_CONTENT_TYPES

    def lane_decoder(self) -> LaneCodec:
        return ("seamline.connectors.kafka", "lane_decode",
                {"content_type": self.cfg.content_type, "max_bytes": self.cfg.max_message_bytes})

    async def run_raw(self, emit_raw: EmitRaw) -> None:
        async for batch in self._polled(self._raw_batch):
            if batch is not None:
                await emit_raw(batch)

    def _raw_batch(self, msgs: list[Any]) -> RawBatch | None:
        """One poll's records as they came (see ``lane_decode``), acknowledged together: one offset
        ticket per partition, past the batch's last record there."""
        max_bytes = self.cfg.max_message_bytes
        with self._lock:
            accepted = self._accepted(msgs)
            if not accepted:
                return None
            last: dict[int, tuple[tuple[OffsetTracker, Any, str], int]] = {}
            records: list[tuple[Any, ...]] = []
            append = records.append
            fits = True
            for m, group in accepted:
                offset = m.offset()
                last[id(group)] = (group, offset)
                value = m.value()
                if value is not None and len(value) > max_bytes:
                    fits = False
                append((m.topic(), group[2], offset, m.key(), m.timestamp(), m.headers(), value))
            acks = _BatchAcks([(g[0], g[0].track(offset + 1)) for g, offset in last.values()], len(accepted))
        nacks = [g[1] for g, _ in last.values()]
        expand = functools.partial(self._expand, accepted, acks, time.time())
        payload = records if fits else None
        return RawBatch(payload, len(accepted), kind="records", expand=expand, ack=acks.ack_all,
                        nack=functools.partial(_nack_all, nacks))

    def _expand(self, accepted: list[tuple[Any, tuple[OffsetTracker, Any, str]]], acks: _BatchAcks,
                now: float) -> list[Delivery]:
        """The deliveries ``run`` makes of a raw batch's records (acknowledged together)."""
        ctype, max_bytes = self.cfg.content_type, self.cfg.max_message_bytes
        out = []
        bodies = _decoded([m.value() for m, _ in accepted], ctype, max_bytes)
        for (m, (_, group_nack, spart)), body in zip(accepted, bodies, strict=True):
            ts_type, ts = m.timestamp()
            msg, error = _record_message(m.topic(), spart, m.offset(), m.key(), ts_type, ts, m.headers(), m.value(),
                                         ctype, max_bytes, now, body)
            out.append(Delivery(msg, acks.ack_one, group_nack, error))
        return out

    async def close(self) -> None:
        if self._consumer is None or self._closed:
            self._pool.shutdown(wait=False)
            return
        self._closed = True
        from confluent_kafka import KafkaException, TopicPartition

        with self._lock:
            latest = {(tp.topic, tp.partition): tp for tp in self._to_store}
            for (t, p), tr in self._parts.items():
                if tr.dirty:
                    latest[(t, p)] = TopicPartition(t, p, tr.committed)
            offsets = list(latest.values())
            self._to_store = []
            self._parts.clear()
        consumer = self._consumer

        def _finish() -> None:
            try:
                if offsets:
                    consumer.store_offsets(offsets=offsets)
                consumer.commit(asynchronous=False)
            except KafkaException as exc:
                if "NO_OFFSET" not in str(exc):
                    log.warning("kafka: final commit failed (in-flight messages will be read again): %s", exc)
            consumer.close()

        try:
            await self._call(_finish)
        finally:
            self._consumer = None
            self._pool.shutdown(wait=True)


# -- sink --------------------------------------------------------------------------------------------------------------


def _record_key(key_field: str | None, key_header: str | None, body: Any, headers: dict[str, str]) -> bytes | None:
    """The record key of a message: a body field, else a header (``kafka.key.b64`` for a binary key)."""
    k: Any = None
    if key_field:
        k = field_at(body, key_field)
    elif key_header:
        k = headers.get(key_header)
        if k is None and key_header == KEY_HEADER and KEY_HEADER + ".b64" in headers:
            return base64.b64decode(headers[KEY_HEADER + ".b64"])
    if k is None:
        return None
    return k if isinstance(k, bytes) else str(k).encode("utf-8")


def lane_encode(settings: dict[str, Any], outs: list[Any]) -> list[Any]:
    """A worker's encoding for ``KafkaSink.submit_encoded``: ``[values, keys, headers]``, each record
    as ``submit`` would produce it (``meta`` is what the source's decoder kept: a ``_LaneRecord``
    from a Kafka source, else a message). A record over ``max_message_bytes`` sends the batch back
    to the engine, which dead-letters it."""
    from seamline.core.lane_worker import Fallback

    key_field, key_header, max_bytes = settings["key_field"], settings["key_header"], settings["max_bytes"]
    # a value within a few KiB of the limit: the record's size on the wire (key, headers, framing) decides,
    # and a record that may be too big runs in the engine, which dead-letters it alone
    near = max_bytes - _NEAR_LIMIT
    record_key = not key_field and key_header == KEY_HEADER  # the key the record came with
    values, keys, headers = [], [], []
    for out, body, meta in outs:
        key: bytes | None
        if meta.__class__ is _LaneRecord:
            key = meta[4]
            if not record_key or key is None:
                key = _record_key(key_field, key_header, body, meta.headers if key_header else {})
            rest = meta[3]
            if len(rest) == 1:  # the trace context alone (``incoming`` always leaves one): what outgoing_from makes
                hdrs = {TRACEPARENT: rest[TRACEPARENT], MESSAGE_ID_HEADER: meta[0], CORRELATION_HEADER: meta[1],
                        CONTENT_TYPE_HEADER: meta[2]}
            else:
                hdrs = outgoing_from(rest, meta[0], meta[1], meta[2])
        else:
            key = _record_key(key_field, key_header, body, meta.headers)
            hdrs = outgoing_headers(meta)
        if len(out) > near and (len(out) + len(key or b"") + _WIRE_MARGIN
                                + sum(len(k) + len(v) + 8 for k, v in hdrs.items())) > max_bytes:
            raise Fallback(f"message {meta.id} may be over max_message_bytes")
        values.append(out)
        keys.append(key)
        headers.append(hdrs)
    return [values, keys, headers]


#: what a record may need on the wire beside its value, key and headers (librdkafka's framing)
_WIRE_MARGIN = 64
#: values closer than this to ``max_message_bytes`` have their whole record measured
_NEAR_LIMIT = 8192


class _Sent:
    """The delivery reports of one batch handed to the producer.

    One bound method serves every record of the batch: a closure per record (to know its index)
    cost about 0.6 µs of the engine's thread per record. A report names its record only when it
    carries an error; ``_confirm`` then finds the record by its message-id header (``ids``).
    """

    __slots__ = ("failed", "ids", "left", "refused", "total")

    def __init__(self, n: int, ids: Sequence[str | None]) -> None:
        self.total = n
        self.left = n
        self.ids = ids  # the message-id header of each record, by index
        self.failed: list[tuple[Any, Any]] = []  # (error, record) of each failed report
        self.refused: dict[int, BaseException] = {}  # records never handed over: no report comes

    def report(self, err: Any, msg: Any) -> None:
        self.left -= 1
        if err is not None:
            self.failed.append((err, msg))

    def refuse(self, i: int, err: BaseException) -> None:
        self.left -= 1
        self.refused[i] = err

    def failed_indices(self) -> list[tuple[list[int], Any]]:
        """Each failed report with the indices it may stand for: the records carrying its message
        id, or every record handed over when no record carries it (then all of them are sent again:
        a duplicate is allowed, a loss is not)."""
        if not self.failed:  # the usual case: no index is looked up
            return []
        by_id: dict[str | None, list[int]] = {}
        for i, mid in enumerate(self.ids):
            if i not in self.refused:
                by_id.setdefault(mid, []).append(i)
        every = [i for i in range(self.total) if i not in self.refused]
        out = []
        for err, msg in self.failed:
            mid = next((hv.decode("utf-8", "replace") for hk, hv in msg.headers() or ()
                        if hk == MESSAGE_ID_HEADER and hv is not None), None)
            out.append((by_id.get(mid, every), err))
        return out


class KafkaSink(Sink):
    pipelined = True

    def __init__(self, cfg: KafkaSinkConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self._producer: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-sink-{ctx.flow}")
        self._lock = asyncio.Lock()
        self._broken = False
        self._quiet = _Quiet()

    def _conf(self) -> dict[str, Any]:
        c = self.cfg
        conf = c.rdkafka()
        conf.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": c.compression,
                "linger.ms": max(0, int(c.linger * 1000)),
                "message.timeout.ms": max(1, int(c.delivery_timeout * 1000)),
                "partitioner": c.partitioner,
                "message.max.bytes": c.max_message_bytes,
                "error_cb": self._on_error,
                "logger": _RDKAFKA_LOG,
            }
        )
        conf.update(c.options)
        return conf

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._broken = True
            log.error("kafka producer: fatal error (the producer is recreated): %s", err)
        else:
            self._quiet(err.name(), logging.WARNING, "kafka producer (topic %s): %s", self.cfg.topic, err.str())

    async def open(self) -> None:
        from confluent_kafka import KafkaException, Producer

        try:
            self._producer = Producer(self._conf())
        except KafkaException as exc:
            raise _error(exc, "cannot create the Kafka producer") from exc

    def _key(self, m: Message) -> bytes | None:
        return _record_key(self.cfg.key_field, self.cfg.key_header, m.body, m.headers)

    def _renew(self) -> None:
        from confluent_kafka import Producer

        # batches handed to the old producer keep polling it until they are settled; it is dropped after
        self._producer = Producer(self._conf())
        self._broken = False

    async def write(self, batch: Sequence[Message]) -> None:
        confirm = await self.submit(batch)
        await confirm()

    async def submit(self, batch: Sequence[Message]) -> Callable[[], Awaitable[None]]:
        """Produce the batch (its order on each partition is fixed here) and return the wait for its
        delivery reports. Reports are served by ``poll`` on the event loop's thread: a producer polled
        or flushed on another thread needs the interpreter lock for every report and waits for it
        behind the event loop."""
        ids: list[str | None] = [None] * len(batch)
        sent = _Sent(len(batch), ids)

        def records() -> Iterator[tuple[int, bytes, bytes | None, dict[str, str]]]:
            for i, m in enumerate(batch):
                try:
                    headers = outgoing_headers(m)  # str values: librdkafka gets them as UTF-8
                    key = self._key(m)
                    value = m.raw
                except Exception as exc:
                    sent.refuse(i, FatalError(f"cannot encode message {m.id}: {exc}", code="kafka.encode"))
                    continue
                ids[i] = headers.get(MESSAGE_ID_HEADER)
                yield i, value, key, headers

        producer = await self._produce(sent, records())
        deadline = asyncio.get_running_loop().time() + self.cfg.delivery_timeout + 5.0
        return functools.partial(self._confirm, producer, sent, lambda i: batch[i].id, deadline)

    # the workers path (flow setting ``workers``) -----------------------------------------------------
    def lane_encoder(self) -> LaneCodec:
        c = self.cfg
        return ("seamline.connectors.kafka", "lane_encode",
                {"key_field": c.key_field, "key_header": c.key_header, "max_bytes": c.max_message_bytes})

    async def submit_encoded(self, payload: Any, count: int) -> Callable[[], Awaitable[None]]:
        """Produce records a worker encoded (``lane_encode``), like ``submit``."""
        values, keys, headers = payload
        sent = _Sent(count, [h.get(MESSAGE_ID_HEADER) for h in headers])
        producer = await self._produce(sent, zip(range(count), values, keys, headers, strict=True))
        deadline = asyncio.get_running_loop().time() + self.cfg.delivery_timeout + 5.0
        return functools.partial(self._confirm, producer, sent, lambda i: headers[i].get(MESSAGE_ID_HEADER, f"#{i}"),
                                 deadline)

    async def _produce(self, sent: _Sent, records: Iterable[tuple[int, bytes, bytes | None, dict[str, str]]]) -> Any:
        """Hand records to the producer in order and send them at once; the producer they went to."""
        from confluent_kafka import KafkaException

        async with self._lock:
            if self._broken:
                self._renew()
            producer = self._producer
            topic = self.cfg.topic
            produce = producer.produce
            report = sent.report
            for i, value, key, headers in records:
                while True:
                    try:
                        produce(topic, value=value, key=key, headers=headers, on_delivery=report)
                        break
                    except BufferError:
                        # the local queue is full: serve delivery reports, then try again
                        producer.poll(0)
                        await asyncio.sleep(0.005)
                    except KafkaException as exc:
                        sent.refuse(i, exc)
                        break
            # send now rather than after linger.ms: the batch is complete
            producer.flush(0)
        return producer

    async def _confirm(self, producer: Any, sent: _Sent, name: Callable[[int], str], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.0005
        producer.poll(0)
        # every record is reported within message.timeout.ms; the deadline is a little longer than that
        while sent.left and loop.time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.001)
            producer.poll(0)
        topic = self.cfg.topic
        errors: dict[int, BaseException] = {}
        for i, err in sent.refused.items():
            errors[i] = err if isinstance(err, SeamlineError) else _error(err, f"writing message {name(i)} to {topic}")
        for indices, err in sent.failed_indices():
            if hasattr(err, "fatal") and err.fatal():
                self._broken = True
            for i in indices:
                errors.setdefault(i, _error(err, f"writing message {name(i)} to {topic}"))
        if sent.left > 0:
            # which records are still without a report is not known: every one not failed already is
            # sent again (the ones that did arrive become duplicates, none is lost)
            for i in range(sent.total):
                if i not in errors:
                    errors[i] = RetryableError(
                        f"no delivery report for message {name(i)} ({sent.left} of {sent.total} record(s) "
                        "of its batch unconfirmed)",
                        code="kafka.timeout",
                    )
        if errors:
            raise BatchError(errors)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(self._pool, producer.flush, 10.0)
        self._pool.shutdown(wait=True)


@register(
    "source",
    "kafka",
    config=KafkaSourceConfig,
    summary="Consume Kafka topics in a consumer group; offsets committed in order, only past delivered messages.",
    examples=(
        "kafka: {bootstrap_servers: 'localhost:9092', topics: [orders], group: orders-to-erp}",
        "kafka: {bootstrap_servers: '${env:KAFKA}', topics: orders, group: g, security_protocol: sasl_ssl, "
        "sasl_mechanism: SCRAM-SHA-512, username: svc, password: '${env:KAFKA_PASSWORD}'}",
    ),
)
def _kafka_source(cfg: KafkaSourceConfig, ctx: BuildContext) -> KafkaSource:
    return KafkaSource(cfg, ctx)


@register(
    "sink",
    "kafka",
    config=KafkaSinkConfig,
    summary="Produce to a Kafka topic with an idempotent producer; keys, headers and compression kept.",
    examples=(
        "kafka: {bootstrap_servers: 'localhost:9092', topic: orders.canonical, key_field: order_id}",
        "kafka: {bootstrap_servers: 'localhost:9092', topic: audit, compression: zstd}",
    ),
)
def _kafka_sink(cfg: KafkaSinkConfig, ctx: BuildContext) -> KafkaSink:
    return KafkaSink(cfg, ctx)
