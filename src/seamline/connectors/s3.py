"""The ``s3`` connector: objects in Amazon S3 (or any S3-compatible store) through aiobotocore.

Source: lists the objects under a prefix in key order and reads each one —
split into records (NDJSON lines, CSV rows) or as one message per object.
How far it got is a checkpoint in the store: the last object (and, within a
split object, the last record) whose messages were all acknowledged. A
restart continues there; a crash re-reads only what was in flight. Keys must
sort in the order objects arrive (date- or sequence-prefixed keys, as most
producers write them): an object added later under a key that sorts before
the checkpoint is not read. Keys ending in ``.gz`` are decompressed.

Sink: writes one object per batch — NDJSON, CSV, a JSON array or Parquet
(needs pyarrow) — with one ``PutObject``, so an object is either complete or
absent. The key comes from a template; its default names the batch by a hash
of its message ids, so a retried batch overwrites its own object instead of
adding a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import gzip
import hashlib
import io
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import orjson
from pydantic import Field

from seamline.config.models import SinkConfig, SourceConfig
from seamline.config.types import ByteSize, Duration
from seamline.connectors.offsets import OffsetTracker
from seamline.connectors.sqs import AwsConnection, aws_client, aws_error
from seamline.connectors.wire import decode_message
from seamline.core.component import BuildContext, Delivery, Emit, Sink, Source
from seamline.core.errors import FatalError, RetryableError
from seamline.core.message import Message
from seamline.core.registry import register

__all__ = ["S3Sink", "S3SinkConfig", "S3Source", "S3SourceConfig"]

log = logging.getLogger("seamline.connectors.s3")


class S3SourceConfig(AwsConnection, SourceConfig):
    """Read objects under a prefix, in key order."""

    bucket: str = Field(..., min_length=3, description="Bucket name.")
    prefix: str = Field("", description="Read only keys starting with this (e.g. `exports/orders/`).")
    format: Literal["ndjson", "csv", "object"] = Field(
        "ndjson", description="ndjson: one message per line; csv: one per row; object: one message per object."
    )
    csv_delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field separator.")
    csv_columns: list[str] | None = Field(None, description="CSV column names when the objects have no header row.")
    content_type: str = Field(
        "application/json", description="format object: content type when the object declares none."
    )
    id_field: str | None = Field(None, description="Record field used as message id (default: bucket/key#record).")
    correlation_field: str | None = Field(None, description="Record field used as correlation id.")
    interval: Duration = Field(10.0, description="Pause between listings once everything was read.")
    max_object_bytes: ByteSize = Field(
        268_435_456, description="Larger objects are not read; they are dead-lettered with their key."
    )
    stop_when_idle: bool = Field(
        False, description="End the source once every object was read (for `seamline run --until-idle`)."
    )


class S3SinkConfig(AwsConnection, SinkConfig):
    """Write each batch as one object."""

    bucket: str = Field(..., min_length=3, description="Bucket name.")
    key: str = Field(
        "{flow}/{date}/{batch}.{ext}",
        description="Object key template: `{flow}`, `{date}` (YYYY/MM/DD, UTC), `{time}` (HHMMSS), `{batch}` "
        "(hash of the batch's message ids: a retry overwrites the same object), `{first_id}`, `{ext}`.",
    )
    format: Literal["ndjson", "csv", "json", "parquet"] = Field(
        "ndjson", description="Object format; parquet needs pyarrow (`pip install seamline[parquet]`)."
    )
    csv_columns: list[str] | None = Field(None, description="CSV columns (default: fields of the records in order).")
    csv_delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field separator.")
    gzip: bool = Field(False, description="Compress the object (ndjson, csv, json); `.gz` is added to `{ext}`.")
    storage_class: str | None = Field(None, description="S3 storage class (e.g. STANDARD_IA).")


_EXT = {"ndjson": "ndjson", "csv": "csv", "json": "json", "parquet": "parquet"}
_CTYPE = {
    "ndjson": "application/x-ndjson",
    "csv": "text/csv",
    "json": "application/json",
    "parquet": "application/vnd.apache.parquet",
}


# -- source ---------------------------------------------------------------------------------------------------

# a position: (object key, records of it done, the whole object done)
Position = tuple[str, int, bool]


class S3Source(Source):
    def __init__(self, cfg: S3SourceConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.finite = cfg.stop_when_idle  # type: ignore[misc]
        self.batch_size = ctx.batch_size
        self.scope = f"s3:{ctx.flow}:{cfg.bucket}/{cfg.prefix}"
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._tracker: OffsetTracker | None = None
        self._lock = asyncio.Lock()
        self._rewind = False
        self._read_pos: Position | None = None  # the last object read (handed to the runtime)

    async def open(self) -> None:
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(aws_client(self.cfg, "s3"))
            await self._client.head_bucket(Bucket=self.cfg.bucket)
        except Exception as exc:
            await stack.aclose()
            raise aws_error(exc, f"cannot open bucket {self.cfg.bucket!r}", "s3") from exc
        self._stack = stack
        self._tracker = OffsetTracker(await self._checkpoint())

    async def _checkpoint(self) -> Position | None:
        cp = await self.ctx.store.get_checkpoint(self.scope)
        if isinstance(cp, dict) and isinstance(cp.get("key"), str):
            return (cp["key"], int(cp.get("records", 0)), bool(cp.get("complete", True)))
        return None

    async def run(self, emit: Emit) -> None:
        backoff = 0.5
        while True:
            try:
                n = await self._pass(emit)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                err = aws_error(exc, f"reading s3://{self.cfg.bucket}/{self.cfg.prefix} failed", "s3")
                if not isinstance(err, RetryableError):
                    raise err from exc
                log.warning("s3 source %s: %s; retrying in %.1fs", self.cfg.bucket, err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if n == 0:
                assert self._tracker is not None
                if self.cfg.stop_when_idle and self._tracker.in_flight == 0:
                    return
                await asyncio.sleep(self.cfg.interval if not self.cfg.stop_when_idle else 0.05)

    async def _pass(self, emit: Emit) -> int:
        """One listing from the read position; returns the number of messages emitted."""
        assert self._tracker is not None
        if self._rewind:
            self._rewind = False
            self._tracker = OffsetTracker(self._tracker.committed)
            self._read_pos = self._tracker.committed
        pos: Position | None = self._read_pos or self._tracker.committed
        tracker = self._tracker
        kw: dict[str, Any] = {"Bucket": self.cfg.bucket, "Prefix": self.cfg.prefix}
        if pos is not None:
            # an unfinished object is listed again (StartAfter is exclusive)
            kw["StartAfter"] = pos[0] if pos[2] else _before(pos[0])
        emitted = 0
        batch: list[Delivery] = []
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(**kw):
            for obj in page.get("Contents") or []:
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                if pos is not None and (key < pos[0] or (key == pos[0] and pos[2])):
                    continue
                skip = pos[1] if pos is not None and key == pos[0] and not pos[2] else 0
                got = 0
                async for d in self._object(obj, skip, tracker):
                    batch.append(d)
                    got += 1
                    if len(batch) >= self.batch_size:
                        await emit(batch)
                        emitted += len(batch)
                        batch = []
                if got == 0:
                    # nothing to deliver (empty object): it still counts as done, in order
                    tracker.ack(tracker.track((key, skip, True)))
                self._read_pos = (key, 0, True)
                pos = self._read_pos
        if batch:
            await emit(batch)
            emitted += len(batch)
        return emitted

    async def _object(self, obj: dict[str, Any], skip: int, tracker: OffsetTracker) -> Any:
        cfg = self.cfg
        key = obj["Key"]
        size = int(obj.get("Size") or 0)
        base_headers = {"s3.bucket": cfg.bucket, "s3.key": key}
        if obj.get("ETag"):
            base_headers["s3.etag"] = str(obj["ETag"]).strip('"')
        if size > cfg.max_object_bytes:
            err = FatalError(f"object {key} is {size} bytes (limit {cfg.max_object_bytes})", code="s3.too_large")
            msg = Message({"$object": key, "$size": size}, id=f"{cfg.bucket}/{key}", headers=base_headers)
            t = tracker.track((key, 1, True))
            yield Delivery(msg, _Ack(tracker, t), self._nack, err)
            return
        resp = await self._client.get_object(Bucket=cfg.bucket, Key=key)
        async with resp["Body"] as stream:
            data = await stream.read()
        if key.endswith(".gz") and data[:2] == b"\x1f\x8b":  # (an HTTP layer may have decoded it already)
            try:
                data = await asyncio.to_thread(gzip.decompress, data)
            except (OSError, EOFError) as exc:
                err = FatalError(f"object {key}: not valid gzip: {exc}", code="s3.gzip")
                msg = Message({"$object": key}, id=f"{cfg.bucket}/{key}", headers=base_headers)
                t = tracker.track((key, 1, True))
                yield Delivery(msg, _Ack(tracker, t), self._nack, err)
                return
        if cfg.format == "object":
            meta = {k.lower(): v for k, v in (resp.get("Metadata") or {}).items()}
            ctype = (resp.get("ContentType") or "").split(";")[0].strip()
            if not ctype or ctype in ("binary/octet-stream", "application/octet-stream"):
                ctype = cfg.content_type
            msg, err = decode_message(
                data, meta, default_id=f"{cfg.bucket}/{key}", default_content_type=cfg.content_type,
                transport=base_headers, content_type=ctype, connector="s3",
            )
            t = tracker.track((key, 1, True))
            yield Delivery(msg, _Ack(tracker, t), self._nack, err)
            return
        records = list(self._records(key, data))
        last = len(records)
        for i, (body, raw, err) in enumerate(records):
            n = i + 1
            if n <= skip:
                continue
            headers = {**base_headers, "s3.record": str(n)}
            mid = f"{cfg.bucket}/{key}#{n}"
            corr = None
            if isinstance(body, dict):
                if cfg.id_field and body.get(cfg.id_field) is not None:
                    mid = str(body[cfg.id_field])
                if cfg.correlation_field and body.get(cfg.correlation_field) is not None:
                    corr = str(body[cfg.correlation_field])
            msg = Message(body, raw=raw, id=mid, correlation_id=corr, headers=headers)
            t = tracker.track((key, n, n == last))
            yield Delivery(msg, _Ack(tracker, t), self._nack, err)

    def _records(self, key: str, data: bytes) -> Iterator[tuple[Any, bytes | None, BaseException | None]]:
        if self.cfg.format == "ndjson":
            for n, line in enumerate(data.split(b"\n"), 1):
                s = line.strip()
                if not s:
                    continue
                try:
                    yield orjson.loads(s), s, None
                except orjson.JSONDecodeError as exc:
                    err = FatalError(f"{key} line {n}: invalid JSON: {exc}", code="format.json.syntax")
                    yield {"$raw": s[:4096].decode("utf-8", "replace")}, None, err
            return
        text = data.decode("utf-8-sig", "replace")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.cfg.csv_delimiter, strict=True)
        header = self.cfg.csv_columns
        n = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                n += 1
                yield {"$record": n}, None, FatalError(f"{key} record {n}: malformed CSV: {exc}",
                                                      code="format.csv.malformed")
                continue
            if not row or all(not c.strip() for c in row):
                continue
            if header is None:
                header = [h.strip() for h in row]
                continue
            n += 1
            if len(row) != len(header):
                err = FatalError(f"{key} record {n}: {len(row)} fields, header has {len(header)}",
                                 code="format.csv.field_count")
                yield {"$fields": row}, None, err
                continue
            yield dict(zip(header, row, strict=True)), None, None

    def _nack(self, requeue: bool) -> None:
        if requeue:
            self._rewind = True

    async def commit_acks(self) -> None:
        t = self._tracker
        if t is not None and t.dirty:
            async with self._lock:
                if t.dirty:
                    t.dirty = False
                    key, records, complete = t.committed
                    await self.ctx.store.put_checkpoint(
                        self.scope, {"key": key, "records": records, "complete": complete}
                    )

    async def close(self) -> None:
        if self._stack is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.commit_acks(), 10)
        stack, self._stack = self._stack, None
        await stack.aclose()
        self._client = None


def _before(key: str) -> str:
    """A string sorting just before ``key`` (StartAfter is exclusive)."""
    if not key:
        return ""
    last = key[-1]
    return key[:-1] + (chr(ord(last) - 1) + "\U0010ffff" if ord(last) > 0 else "")


class _Ack:
    __slots__ = ("ticket", "tracker")

    def __init__(self, tracker: OffsetTracker, ticket: int) -> None:
        self.tracker = tracker
        self.ticket = ticket

    def __call__(self) -> None:
        self.tracker.ack(self.ticket)


# -- sink -----------------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def _cell(v: Any) -> Any:
    if isinstance(v, dict | list):
        return orjson.dumps(v).decode()
    return "" if v is None else v


class S3Sink(Sink):
    atomic_batches = True

    def __init__(self, cfg: S3SinkConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    async def open(self) -> None:
        if self.cfg.format == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise FatalError(
                    "format parquet needs pyarrow: pip install 'seamline[parquet]'", code="s3.parquet_unavailable"
                ) from None
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(aws_client(self.cfg, "s3"))
        except Exception as exc:
            await stack.aclose()
            raise aws_error(exc, "cannot create the S3 client", "s3") from exc
        self._stack = stack

    def key_for(self, batch: Sequence[Message], now: dt.datetime | None = None) -> str:
        now = now or dt.datetime.now(dt.UTC)
        ext = _EXT[self.cfg.format] + (".gz" if self.cfg.gzip and self.cfg.format != "parquet" else "")
        digest = hashlib.sha256("\n".join(m.id for m in batch).encode()).hexdigest()[:20]
        values = {
            "flow": self.ctx.flow,
            "date": now.strftime("%Y/%m/%d"),
            "time": now.strftime("%H%M%S"),
            "batch": digest,
            "first_id": re.sub(r"[^A-Za-z0-9._-]", "_", batch[0].id)[:200] if batch else "empty",
            "ext": ext,
        }

        def sub(mt: re.Match[str]) -> str:
            name = mt.group(1)
            if name not in values:
                raise FatalError(f"unknown key placeholder {{{name}}}", code="s3.key_template")
            return values[name]

        return _PLACEHOLDER.sub(sub, self.cfg.key)

    def _encode(self, batch: Sequence[Message]) -> bytes:
        fmt = self.cfg.format
        if fmt == "ndjson":
            data = b"".join(m.raw.rstrip(b"\n") + b"\n" for m in batch)
        elif fmt == "json":
            data = orjson.dumps([m.body for m in batch])
        elif fmt == "csv":
            rows = [m.body for m in batch]
            cols = self.cfg.csv_columns
            if cols is None:
                seen: dict[str, None] = {}
                for r in rows:
                    if isinstance(r, dict):
                        seen.update(dict.fromkeys(r))
                cols = list(seen)
            buf = io.StringIO()
            w = csv.writer(buf, delimiter=self.cfg.csv_delimiter, lineterminator="\n")
            w.writerow(cols)
            for r in rows:
                if not isinstance(r, dict):
                    raise FatalError("the csv format needs object bodies", code="s3.record_type")
                w.writerow([_cell(r.get(c)) for c in cols])
            data = buf.getvalue().encode()
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            rows = [m.body for m in batch]
            if not all(isinstance(r, dict) for r in rows):
                raise FatalError("the parquet format needs object bodies", code="s3.record_type")
            try:
                table = pa.Table.from_pylist(rows)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise FatalError(f"records do not fit one parquet schema: {exc}", code="s3.parquet_schema") from exc
            out = io.BytesIO()
            pq.write_table(table, out, compression="snappy")
            return out.getvalue()
        return gzip.compress(data, compresslevel=6) if self.cfg.gzip else data

    async def write(self, batch: Sequence[Message]) -> None:
        if not batch:
            return
        key = self.key_for(batch)
        body = await asyncio.to_thread(self._encode, batch) if len(batch) > 200 else self._encode(batch)
        kw: dict[str, Any] = {
            "Bucket": self.cfg.bucket,
            "Key": key,
            "Body": body,
            "ContentType": _CTYPE[self.cfg.format],
            "Metadata": {"seamline-count": str(len(batch)), "seamline-flow": self.ctx.flow},
        }
        if self.cfg.gzip and self.cfg.format != "parquet":
            kw["ContentEncoding"] = "gzip"
        if self.cfg.storage_class:
            kw["StorageClass"] = self.cfg.storage_class
        try:
            await self._client.put_object(**kw)
        except Exception as exc:
            raise aws_error(exc, f"writing s3://{self.cfg.bucket}/{key} failed", "s3") from exc

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
            self._client = None


@register(
    "source",
    "s3",
    config=S3SourceConfig,
    summary="Read objects under a prefix in key order (NDJSON/CSV split into records, or whole objects); "
    "checkpointed.",
    examples=("s3: {bucket: exports, prefix: orders/2026/, format: ndjson, region: eu-central-1}",),
)
def _s3_source(cfg: S3SourceConfig, ctx: BuildContext) -> S3Source:
    return S3Source(cfg, ctx)


@register(
    "sink",
    "s3",
    config=S3SinkConfig,
    summary="Write each batch as one object: NDJSON, CSV, JSON or Parquet; key from a template.",
    examples=("s3: {bucket: lake, key: 'orders/{date}/{batch}.{ext}', format: parquet}",),
)
def _s3_sink(cfg: S3SinkConfig, ctx: BuildContext) -> S3Sink:
    return S3Sink(cfg, ctx)
