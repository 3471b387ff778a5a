"""The ``sqs`` connector: Amazon SQS queues (standard and FIFO) through aiobotocore.

Source: long polling (``ReceiveMessage`` with ``WaitTimeSeconds``). A received
message is invisible to other consumers for ``visibility_timeout``; while it
is in the flow a heartbeat keeps extending that, so a slow sink never lets it
reappear. It is deleted only after the runtime acked it (every sink confirmed
it, or it is durably in the store's retry schedule or DLQ): the deletes of a
batch go out as ``DeleteMessageBatch`` when the runtime commits the batch. A
nack makes the message visible again at once. A crash leaves the messages
undeleted: they reappear after the visibility timeout and are delivered
again (at-least-once). If the queue has its own redrive policy
(``maxReceiveCount``), keep it well above the number of restarts a message
may see, or SQS moves it to its DLQ on its own.

Sink: ``SendMessageBatch`` in chunks of 10. FIFO queues (``.fifo``) get a
message group id (from the config) and the message id as deduplication id,
so a retried batch is not enqueued twice within SQS's 5-minute window.

On the wire, message attributes carry ``message-id``, ``correlation-id``,
``traceparent``, ``content-type`` and the message headers (SQS allows 10
attributes; further headers travel packed in one ``seamline-headers``
attribute).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import Field, model_validator

from seamline.config.models import ComponentConfig, SinkConfig, SourceConfig
from seamline.config.types import Duration, SecretStr
from seamline.connectors.wire import decode_message, outgoing_headers, render_placeholders
from seamline.core.component import BatchError, BuildContext, Delivery, Emit, Sink, Source
from seamline.core.errors import FatalError, RetryableError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.security.secrets import Secret

__all__ = ["AwsConnection", "SqsSink", "SqsSinkConfig", "SqsSource", "SqsSourceConfig"]

log = logging.getLogger("seamline.connectors.sqs")

_PACKED = "seamline-headers"
_ENCODING = "content-transfer-encoding"
_MAX_ATTRIBUTES = 10
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_ATTR_NAME = re.compile(r"^(?!aws\.|amazon\.)(?!\.)(?!.*\.\.)[A-Za-z0-9_.-]{1,256}(?<!\.)$", re.I)
_RETRYABLE_CODES = {
    "ThrottlingException", "RequestThrottled", "ServiceUnavailable", "InternalError", "InternalFailure",
    "KMS.ThrottlingException", "RequestTimeout", "RequestTimeoutException", "SlowDown", "503", "500",
}


class AwsConnection(ComponentConfig):
    """Where and how to reach AWS (shared by the sqs and s3 connectors)."""

    region: str | None = Field(None, description="AWS region (default: from the environment / profile).")
    endpoint_url: str | None = Field(
        None, description="Custom endpoint (LocalStack, moto, MinIO, a VPC endpoint); default: AWS."
    )
    access_key_id: SecretStr | None = Field(None, description="Access key id (default: the AWS credential chain).")
    secret_access_key: SecretStr | None = Field(None, description="Secret access key.")
    session_token: SecretStr | None = Field(None, description="Session token of temporary credentials.")
    profile: str | None = Field(None, description="Named profile of the shared AWS config files.")
    connect_timeout: Duration = Field(10.0, description="Timeout of connecting to the endpoint.")


def aws_client(conn: AwsConnection, service: str, *, read_timeout: float = 60.0) -> Any:
    """An aiobotocore client context manager for ``service``."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    session = get_session()
    if conn.profile:
        session.set_config_variable("profile", conn.profile)
    kw: dict[str, Any] = {}
    if conn.region:
        kw["region_name"] = conn.region
    if conn.endpoint_url:
        kw["endpoint_url"] = conn.endpoint_url
    for name, value in (
        ("aws_access_key_id", conn.access_key_id),
        ("aws_secret_access_key", conn.secret_access_key),
        ("aws_session_token", conn.session_token),
    ):
        if value is not None:
            kw[name] = value.reveal() if isinstance(value, Secret) else value
    cfg = AioConfig(
        connect_timeout=conn.connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=20,
    )
    return session.create_client(service, config=cfg, **kw)


def aws_error(exc: BaseException, what: str, prefix: str) -> Exception:
    """Classify a botocore/aiohttp error: throttling and connection trouble are retryable."""
    if isinstance(exc, FatalError | RetryableError):
        return exc
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        msg = f"{what}: {code}: {err.get('Message', '')}"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _RETRYABLE_CODES or status >= 500 or status == 429:
            return RetryableError(msg, code=f"{prefix}.unavailable")
        return FatalError(msg, code=f"{prefix}.rejected", details={"aws_code": code})
    if isinstance(exc, BotoConnectionError | TimeoutError | ConnectionError | OSError):
        return RetryableError(f"{what}: {exc}", code=f"{prefix}.unavailable")
    if isinstance(exc, BotoCoreError):
        return RetryableError(f"{what}: {exc}", code=f"{prefix}.unavailable")
    try:
        import aiohttp

        if isinstance(exc, aiohttp.ClientError):
            return RetryableError(f"{what}: {exc}", code=f"{prefix}.unavailable")
    except ImportError:  # pragma: no cover
        pass
    return FatalError(f"{what}: {exc}", code=f"{prefix}.error")


class _SqsQueue(AwsConnection):
    queue: str = Field(..., min_length=1, description="Queue URL, or the queue name (looked up with GetQueueUrl).")


class SqsSourceConfig(_SqsQueue, SourceConfig):
    """Receive messages from an SQS queue."""

    wait_time: Duration = Field(20.0, le=20, description="Long-polling wait of one receive (at most 20s).")
    visibility_timeout: Duration = Field(
        30.0, ge=1, le=43200,
        description="How long a received message stays invisible; extended by a heartbeat while it is in the flow.",
    )
    receivers: int = Field(4, ge=1, le=64, description="Receive calls in parallel (each returns up to 10 messages).")
    content_type: str = Field("application/json", description="Content type of messages that carry none.")


class SqsSinkConfig(_SqsQueue, SinkConfig):
    """Send messages to an SQS queue."""

    message_group_id: str | None = Field(
        None,
        description="FIFO queues: message group; a fixed string or a template with `{id}`, `{correlation_id}`, "
        "`{headers.NAME}` or `{body.path}` (default: `seamline`, one ordered group).",
    )
    deduplication: bool = Field(
        True, description="FIFO queues: send the message id as deduplication id (retries are not enqueued twice)."
    )
    delay: Duration | None = Field(None, le=900, description="Delivery delay of each message (standard queues).")
    parallel_requests: int = Field(
        4, ge=1, le=64,
        description="Standard queues: SendMessageBatch calls in parallel per batch (1 keeps the send order; "
        "FIFO queues always send one after the other).",
    )
    max_message_bytes: int = Field(
        262_144, ge=1024, le=1_048_576, description="Largest message the queue accepts; larger ones are dead-lettered."
    )

    @model_validator(mode="after")
    def _check(self) -> SqsSinkConfig:
        if self.message_group_id is not None and not self.queue.endswith(".fifo"):
            raise ValueError("message_group_id only applies to FIFO queues (name ending in .fifo)")
        return self


async def _queue_url(client: Any, queue: str) -> str:
    if queue.startswith(("http://", "https://")):
        return queue
    resp = await client.get_queue_url(QueueName=queue)
    return str(resp["QueueUrl"])


# -- wire -----------------------------------------------------------------------------------------------------


def _attributes(m: Message) -> tuple[str, dict[str, Any]]:
    """(body, MessageAttributes) for one message."""
    raw = m.raw
    extra: dict[str, str] = {}
    try:
        body = raw.decode("utf-8")
        if _NOT_XML.search(body):
            raise UnicodeDecodeError("utf-8", raw, 0, 1, "characters SQS does not accept")
    except UnicodeDecodeError:
        body = base64.b64encode(raw).decode("ascii")
        extra[_ENCODING] = "base64"
    headers = {**outgoing_headers(m), **extra}
    attrs: dict[str, Any] = {}
    packed: dict[str, str] = {}
    # envelope first, so it always fits into the 10 attributes
    order = sorted(headers, key=lambda k: (k not in ("message-id", "correlation-id", "traceparent", "content-type",
                                                     _ENCODING), k))
    for k in order:
        v = str(headers[k])
        if len(attrs) < _MAX_ATTRIBUTES - 1 and _ATTR_NAME.match(k) and v:
            attrs[k] = {"DataType": "String", "StringValue": v}
        else:
            packed[k] = v
    if packed:
        attrs[_PACKED] = {"DataType": "String", "StringValue": orjson.dumps(packed).decode()}
    return body, attrs


def _wire_headers(msg: dict[str, Any]) -> tuple[dict[str, str], bool]:
    headers: dict[str, str] = {}
    b64 = False
    for k, a in (msg.get("MessageAttributes") or {}).items():
        if a.get("DataType", "").startswith(("String", "Number")) and "StringValue" in a:
            if k == _PACKED:
                with contextlib.suppress(ValueError, TypeError):
                    headers.update({str(x): str(y) for x, y in orjson.loads(a["StringValue"]).items()})
            elif k == _ENCODING:
                b64 = a["StringValue"] == "base64"
            else:
                headers[k] = a["StringValue"]
    return headers, b64


# -- source ---------------------------------------------------------------------------------------------------


class SqsSource(Source):
    def __init__(self, cfg: SqsSourceConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.batch_size = ctx.batch_size
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._url = ""
        self._inflight: dict[str, float] = {}  # receipt handle -> when received
        self._to_delete: list[str] = []
        self._delete_lock = asyncio.Lock()
        self._heartbeat_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                aws_client(self.cfg, "sqs", read_timeout=self.cfg.wait_time + 15)
            )
            self._url = await _queue_url(self._client, self.cfg.queue)
        except Exception as exc:
            await stack.aclose()
            raise aws_error(exc, f"cannot open queue {self.cfg.queue!r}", "sqs") from exc
        self._stack = stack

    async def run(self, emit: Emit) -> None:
        # the heartbeat outlives run(): during a shutdown the runtime still drains in-flight messages
        if self._heartbeat_task is None:
            self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="sqs-heartbeat")
        backoff = 0.2
        while True:
            try:
                msgs = await self._receive()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                err = aws_error(exc, f"receiving from {self.cfg.queue!r} failed", "sqs")
                if isinstance(err, FatalError):
                    raise err from exc
                log.warning("sqs source %s: %s; retrying in %.1fs", self.cfg.queue, err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if msgs:
                await emit([self._delivery(m) for m in msgs])

    async def _receive(self) -> list[dict[str, Any]]:
        want = min(self.batch_size, 10 * self.cfg.receivers)
        calls = max(1, min(self.cfg.receivers, (want + 9) // 10))

        async def one(wait: int) -> list[dict[str, Any]]:
            resp = await self._client.receive_message(
                QueueUrl=self._url,
                MaxNumberOfMessages=min(10, want),
                WaitTimeSeconds=wait,
                VisibilityTimeout=int(self.cfg.visibility_timeout),
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["ApproximateReceiveCount", "MessageGroupId", "SentTimestamp"],
            )
            got = list(resp.get("Messages") or [])
            now = time.monotonic()
            for m in got:
                self._inflight[m["ReceiptHandle"]] = now
            return got

        # the first call long-polls; when it brings messages, more calls fill the batch without waiting
        first = await one(int(self.cfg.wait_time))
        if len(first) < 10 or calls == 1:
            return first
        try:
            more = await asyncio.gather(*(one(0) for _ in range(calls - 1)), return_exceptions=True)
        except asyncio.CancelledError:
            # the flow stops: what the first call brought is handed back at once, not after the
            # visibility timeout (the other calls' messages, if any came, come back after it)
            await self._release([m["ReceiptHandle"] for m in first])
            raise
        out = list(first)
        for r in more:
            if isinstance(r, list):
                out.extend(r)
        return out

    async def _release(self, handles: list[str]) -> None:
        """Make received messages visible again (best effort: else the visibility timeout does it)."""
        for h in handles:
            self._inflight.pop(h, None)
        if self._client is None or not handles:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*(
                self._client.change_message_visibility_batch(
                    QueueUrl=self._url,
                    Entries=[{"Id": str(j), "ReceiptHandle": h, "VisibilityTimeout": 0}
                             for j, h in enumerate(handles[i : i + 10])],
                )
                for i in range(0, len(handles), 10)
            )), 10)

    def _delivery(self, m: dict[str, Any]) -> Delivery:
        handle = m["ReceiptHandle"]
        sysattrs = m.get("Attributes") or {}
        wire, b64 = _wire_headers(m)
        text = m.get("Body") or ""
        raw = base64.b64decode(text) if b64 else text.encode("utf-8")
        transport = {"sqs.message_id": m["MessageId"]}
        if "ApproximateReceiveCount" in sysattrs:
            transport["sqs.receive_count"] = str(sysattrs["ApproximateReceiveCount"])
        if "MessageGroupId" in sysattrs:
            transport["sqs.group_id"] = str(sysattrs["MessageGroupId"])
        msg, error = decode_message(
            raw, wire, default_id=m["MessageId"], default_content_type=self.cfg.content_type,
            transport=transport, connector="sqs",
        )

        def ack() -> None:
            if self._inflight.pop(handle, None) is not None:
                self._to_delete.append(handle)

        async def nack(requeue: bool) -> None:
            if self._inflight.pop(handle, None) is None or self._client is None:
                return
            # visible again at once; if this fails the visibility timeout does the same a bit later
            with contextlib.suppress(Exception):
                await self._client.change_message_visibility(
                    QueueUrl=self._url, ReceiptHandle=handle, VisibilityTimeout=0
                )

        return Delivery(msg, ack, nack, error)

    async def _heartbeat(self) -> None:
        every = max(0.5, self.cfg.visibility_timeout / 3)
        while True:
            await asyncio.sleep(every)
            cutoff = time.monotonic() - every * 0.9
            handles = [h for h, t in list(self._inflight.items()) if t <= cutoff]
            chunks = [handles[i : i + 10] for i in range(0, len(handles), 10)]
            # in parallel: with thousands in flight one tick must still end well inside the timeout
            for i in range(0, len(chunks), 16):
                await asyncio.gather(*(self._extend(c) for c in chunks[i : i + 16]))

    async def _extend(self, chunk: list[str]) -> None:
        try:
            resp = await self._client.change_message_visibility_batch(
                QueueUrl=self._url,
                Entries=[
                    {"Id": str(j), "ReceiptHandle": h, "VisibilityTimeout": int(self.cfg.visibility_timeout)}
                    for j, h in enumerate(chunk)
                ],
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("sqs source %s: extending visibility failed: %s", self.cfg.queue, exc)
            return
        now = time.monotonic()
        for h in chunk:
            if h in self._inflight:
                self._inflight[h] = now
        for f in resp.get("Failed") or []:
            log.warning("sqs source %s: visibility of a message not extended (%s)", self.cfg.queue, f.get("Code"))

    async def _flush_deletes(self) -> None:
        if not self._to_delete or self._client is None:
            return
        async with self._delete_lock:
            handles, self._to_delete = self._to_delete, []
            chunks = [handles[i : i + 10] for i in range(0, len(handles), 10)]
            results = await asyncio.gather(*(self._delete(c) for c in chunks), return_exceptions=True)
            for chunk, r in zip(chunks, results, strict=True):
                if isinstance(r, BaseException):
                    # keep them; at worst they reappear after the visibility timeout and are delivered again
                    self._to_delete.extend(chunk)
                    log.warning("sqs source %s: delete failed (%s); retrying later", self.cfg.queue, r)

    async def _delete(self, handles: list[str]) -> None:
        resp = await self._client.delete_message_batch(
            QueueUrl=self._url, Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
        )
        for f in resp.get("Failed") or []:
            log.warning("sqs source %s: a delete failed (%s); the message may come again", self.cfg.queue,
                        f.get("Code"))

    async def commit_acks(self) -> None:
        await self._flush_deletes()

    async def close(self) -> None:
        hb, self._heartbeat_task = self._heartbeat_task, None
        if hb is not None:
            hb.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await hb
        if self._stack is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush_deletes(), 10)
        stack, self._stack = self._stack, None
        await stack.aclose()
        self._client = None


# -- sink -----------------------------------------------------------------------------------------------------




def _template(tpl: str, m: Message) -> str:
    return render_placeholders(tpl, m, code="sqs.template")


def _dedup_id(mid: str) -> str:
    if len(mid) <= 128 and re.fullmatch(r"[A-Za-z0-9!-/:-@\[-`{-~]+", mid):
        return mid
    return hashlib.sha256(mid.encode()).hexdigest()


class SqsSink(Sink):
    def __init__(self, cfg: SqsSinkConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.fifo = cfg.queue.endswith(".fifo")
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._url = ""

    async def open(self) -> None:
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(aws_client(self.cfg, "sqs"))
            self._url = await _queue_url(self._client, self.cfg.queue)
        except Exception as exc:
            await stack.aclose()
            raise aws_error(exc, f"cannot open queue {self.cfg.queue!r}", "sqs") from exc
        self._stack = stack

    def _entry(self, i: int, m: Message) -> dict[str, Any]:
        body, attrs = _attributes(m)
        size = len(body.encode()) + sum(len(k) + len(v["StringValue"]) + 6 for k, v in attrs.items())
        if size > self.cfg.max_message_bytes:
            raise FatalError(f"message {m.id} is {size} bytes on the wire (limit {self.cfg.max_message_bytes})",
                             code="sqs.message_too_large")
        e: dict[str, Any] = {"Id": str(i), "MessageBody": body, "MessageAttributes": attrs}
        if self.fifo:
            e["MessageGroupId"] = _template(self.cfg.message_group_id, m) if self.cfg.message_group_id else "seamline"
            if self.cfg.deduplication:
                e["MessageDeduplicationId"] = _dedup_id(m.id)
        elif self.cfg.delay is not None:
            e["DelaySeconds"] = int(self.cfg.delay)
        return e

    async def write(self, batch: Sequence[Message]) -> None:
        errors: dict[int, BaseException] = {}
        entries: list[tuple[int, dict[str, Any], int]] = []
        for i, m in enumerate(batch):
            try:
                e = self._entry(i, m)
            except FatalError as exc:
                errors[i] = exc
                continue
            entries.append((i, e, len(e["MessageBody"]) + 1024))
        # chunks of at most 10 entries and within the request size limit
        chunks: list[list[dict[str, Any]]] = []
        cur: list[dict[str, Any]] = []
        size = 0
        for _i, e, n in entries:
            if cur and (len(cur) == 10 or size + n > self.cfg.max_message_bytes):
                chunks.append(cur)
                cur, size = [], 0
            cur.append(e)
            size += n
        if cur:
            chunks.append(cur)
        # FIFO: chunks go one after the other so the order within a group is kept
        step = 1 if self.fifo else self.cfg.parallel_requests
        for i in range(0, len(chunks), step):
            for r in await asyncio.gather(*(self._send(c) for c in chunks[i : i + step])):
                errors.update(r)
        if errors:
            if len(errors) == len(batch):
                first = next(iter(errors.values()))
                if isinstance(first, RetryableError) and all(isinstance(e, RetryableError) for e in errors.values()):
                    raise first
            raise BatchError(errors)

    async def _send(self, chunk: list[dict[str, Any]]) -> dict[int, BaseException]:
        try:
            resp = await self._client.send_message_batch(QueueUrl=self._url, Entries=chunk)
        except Exception as exc:
            err = aws_error(exc, f"sending to {self.cfg.queue!r} failed", "sqs")
            return {int(e["Id"]): err for e in chunk}
        out: dict[int, BaseException] = {}
        for f in resp.get("Failed") or []:
            text = f"sending to {self.cfg.queue!r} failed: {f.get('Code')}: {f.get('Message', '')}"
            if f.get("SenderFault"):
                out[int(f["Id"])] = FatalError(text, code="sqs.rejected")
            else:
                out[int(f["Id"])] = RetryableError(text, code="sqs.unavailable")
        return out

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
            self._client = None


@register(
    "source",
    "sqs",
    config=SqsSourceConfig,
    summary="Receive from an SQS queue (long polling); visibility extended while in the flow, deleted after delivery.",
    examples=("sqs: {queue: orders, region: eu-central-1, visibility_timeout: 60s}",),
)
def _sqs_source(cfg: SqsSourceConfig, ctx: BuildContext) -> SqsSource:
    return SqsSource(cfg, ctx)


@register(
    "sink",
    "sqs",
    config=SqsSinkConfig,
    summary="Send to an SQS queue in batches of 10; FIFO group and deduplication ids; attributes carry the envelope.",
    examples=("sqs: {queue: orders.fifo, region: eu-central-1, message_group_id: '{body.customer_id}'}",),
)
def _sqs_sink(cfg: SqsSinkConfig, ctx: BuildContext) -> SqsSink:
    return SqsSink(cfg, ctx)
