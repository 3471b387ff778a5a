"""The ``file`` connector: read NDJSON, JSON arrays, CSV and whole files; write NDJSON, JSON and CSV.

The source remembers how far it got (a checkpoint in the store, moved only
past acknowledged messages), so a restart continues where it stopped and a
second run over the same file delivers nothing twice. With ``watch`` it keeps
looking for new files and new records; with ``after`` it deletes or archives
a file once every record of it was delivered or dead-lettered. The sink writes
atomically: appends are whole lines (a torn tail left by a crash is cut off
on open) and JSON files are written to a temporary name and renamed.
"""

from __future__ import annotations

import asyncio
import csv
import fnmatch
import functools
import glob as globlib
import gzip
import hashlib
import io
import logging
import mimetypes
import os
import re
import shutil
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import orjson
from pydantic import Field, model_validator

from seamline.config.models import SinkConfig, SourceConfig
from seamline.config.types import Duration
from seamline.connectors.offsets import OffsetTracker
from seamline.connectors.wire import decode_message
from seamline.core.component import BuildContext, Delivery, Emit, EmitRaw, RawBatch, Sink, Source
from seamline.core.errors import FatalError
from seamline.core.message import Message
from seamline.core.registry import flow_check, register

__all__ = ["FileSink", "FileSinkConfig", "FileSource", "FileSourceConfig"]

log = logging.getLogger("seamline.connectors.file")

_FP_BYTES = 1024
_BOM = b"\xef\xbb\xbf"
_READ_BUFFER = 1 << 20
_SKIP_CHUNK = 64 * 1024

Pos = tuple[int, int, int]  # byte offset, line number, records read
Rec = tuple[Pos, int, Any, "bytes | None", "BaseException | None"]


class CsvOptions(SourceConfig):
    """CSV dialect."""

    delimiter: str = Field(",", min_length=1, max_length=1, description="Field separator.")
    quotechar: str = Field('"', min_length=1, max_length=1, description="Quote character.")
    header: bool = Field(True, description="The first row names the columns.")
    columns: list[str] | None = Field(None, description="Column names when the file has no header row.")
    types: dict[str, str] | None = Field(
        None, description="Column types: int, float, decimal, bool, date, datetime or str (default: all text)."
    )


class FileSourceConfig(SourceConfig):
    """Read records from files."""

    path: str = Field(..., description="File to read, or a glob such as `in/*.ndjson` (relative to the flow file).")
    format: Literal["ndjson", "json", "csv", "file"] = Field(
        "ndjson",
        description="Record format; `file`: one message per file, its bytes as they are (XML, EDI, a PDF), to be "
        "parsed by a `decode` step or passed on.",
    )
    csv: CsvOptions = Field(default_factory=CsvOptions, description="CSV dialect (format: csv).")
    id_field: str | None = Field(
        None, description="Record field used as message id (default: file name and record number)."
    )
    correlation_field: str | None = Field(None, description="Record field used as correlation id.")
    max_record_bytes: int = Field(1_048_576, ge=1, description="Longer records are dead-lettered.")
    max_file_bytes: int = Field(
        256 * 2**20, ge=1, description="format: json and file read the whole file; larger files are refused."
    )
    encoding: str = Field("utf-8", description="Text encoding.")
    records_at: str | None = Field(
        None,
        description="format: json: where the records are in the document, as a dotted path of keys "
        "(`data.orders` for `{\"data\": {\"orders\": [...]}}`); default: the document itself (an array, "
        "or one record).",
        pattern=r"^[^.]+(\.[^.]+)*$",
    )
    compression: Literal["auto", "gzip", "none"] = Field(
        "auto", description="auto: files whose name ends in `.gz` are read through gzip (the checkpoint counts "
        "bytes of the decompressed data: a file that grows by an appended gzip member is read on, one compressed "
        "again is a new file); gzip: every file; none: as they are. A damaged gzip stream stops that file "
        "(`file.gzip`) after the records before the damage. format: file keeps a file's bytes as they are."
    )
    content_type: str | None = Field(
        None, description="format: file: the messages' content type (default: from the file name's extension, "
        "e.g. `application/xml` for `.xml`; JSON content is decoded, strictly)."
    )
    watch: Duration | None = Field(
        None, description="Look for new files, and for records added to the files read, this often; the flow then "
        "runs until stopped. Default: read the files there are, then end."
    )
    settle: Duration = Field(
        1.0, description="watch: a file changed less than this long ago is left for the next look (it may still "
        "be being written)."
    )
    after: Literal["keep", "delete", "move"] = Field(
        "keep", description="What happens to a file once every record of it was delivered or dead-lettered: "
        "keep it (its checkpoint remembers it), delete it, or move it to `move_to`."
    )
    move_to: str | None = Field(
        None, description="after: move: the folder files go to (relative to the flow file; made if missing). "
        "A file whose name is taken there gets a UTC time stamp in its name."
    )

    @model_validator(mode="after")
    def _where_to(self) -> FileSourceConfig:
        if self.after == "move" and not self.move_to:
            raise ValueError("after: move needs move_to (the folder the files go to)")
        if self.move_to and self.after != "move":
            raise ValueError("move_to is only used with after: move")
        return self


class FileSinkConfig(SinkConfig):
    """Write records to files."""

    path: str = Field(
        ...,
        description="Target file (ndjson, csv: appended; `{date}` in it starts a file a day, UTC YYYY-MM-DD, e.g. "
        "`out/orders-{date}.ndjson`) or, for json and file, a template naming one file per message: `{id}`, "
        "`{correlation_id}`, `{name}` (the name of the file the message was read from, else its id) and `{date}`, "
        "e.g. `out/{date}/{name}`; relative to the flow file.",
    )
    format: Literal["ndjson", "json", "csv", "file"] = Field(
        "ndjson",
        description="Record format; json: one file per message, its JSON; file: one file per message, its bytes "
        "as they are (what an `encode` step made, or a file read with `format: file`).",
    )
    csv_columns: list[str] | None = Field(None, description="CSV columns (default: keys of the first record).")
    csv_delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field separator.")
    neutralize_formulas: bool = Field(
        True, description="Prefix CSV cells that start with = + - @ tab or CR with ' (formula injection)."
    )
    fsync: bool = Field(True, description="fsync after every batch (survives power loss, not only a crash).")

    @model_validator(mode="after")
    def _one_file_per_message(self) -> FileSinkConfig:
        if self.format in ("ndjson", "csv") and _NAMING.search(self.path):
            raise ValueError(
                f"format: {self.format} appends every message to one file: {{id}}, {{correlation_id}} and {{name}} "
                "do not apply (only {date}, a file a day); write one file per message with format: json or file"
            )
        if self.format in ("json", "file") and not _NAMING.search(self.path):
            raise ValueError(
                f"format: {self.format} writes one file per message, so each message would replace the one before: "
                "put {id} or {name} in the path (e.g. out/{id}.json), or write one file with format: ndjson"
            )
        return self


# -- source -------------------------------------------------------------------------------------------------


def _fingerprint(path: Path, length: int) -> str:
    """What identifies a file: a digest of its first ``length`` bytes (at most ``_FP_BYTES``)."""
    with path.open("rb") as f:
        return hashlib.sha256(f.read(length)).hexdigest()[:16]


#: what a damaged gzip stream raises while it is read
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


class _FileState:
    """A file being read or with positions still to save: its offsets, the fingerprint its
    checkpoint carries, and whether it was read to its end."""

    __slots__ = ("fp", "fp_len", "path", "read_all", "tracker")

    def __init__(self, tracker: OffsetTracker, fp: str, fp_len: int, path: Path) -> None:
        self.tracker = tracker
        self.fp = fp
        self.fp_len = fp_len
        self.path = path
        self.read_all = False


class FileSource(Source):
    finite = True

    def __init__(self, cfg: FileSourceConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.batch_size = ctx.batch_size
        self.finite = cfg.watch is None  # type: ignore[misc]
        self._tracker: OffsetTracker | None = None  # the file being read
        # every file with positions still to save, by checkpoint scope: a glob's earlier file may
        # have batches in flight (and acknowledged later) while the next file is already read
        self._positions: dict[str, _FileState] = {}
        # watch: (size, modification time) of each file when it was last read to its end
        self._seen: dict[Path, tuple[int, int]] = {}
        self._lock = asyncio.Lock()

    def _scope(self, path: Path) -> str:
        return f"file:{self.ctx.flow}:{path.resolve()}"

    def _gz(self, path: Path) -> bool:
        c = self.cfg.compression
        return c == "gzip" or (c == "auto" and path.name.lower().endswith(".gz"))

    def _open(self, path: Path) -> BinaryIO:
        """``path`` for reading, decompressed when it is gzip (seekable either way)."""
        if self._gz(path):
            return cast(BinaryIO, gzip.open(path, "rb"))
        return path.open("rb", buffering=_READ_BUFFER)

    def _damaged(self, path: Path, exc: BaseException) -> FatalError:
        return FatalError(f"{path.name} is not a valid gzip stream ({type(exc).__name__}: {exc}); the records "
                          "before the damage were read", code="file.gzip", details={"file": path.name})

    def _files(self) -> list[Path]:
        pattern = str(self.ctx.resolve_path(self.cfg.path))
        if any(ch in pattern for ch in "*?["):
            return [Path(p) for p in sorted(globlib.glob(pattern)) if os.path.isfile(p)]
        p = Path(pattern)
        if not p.exists():
            if self.cfg.watch is not None:
                return []  # not there yet
            raise FatalError(f"input file not found: {self.cfg.path}", code="file.not_found")
        return [p]

    def _ready(self, path: Path) -> tuple[int, int] | None:
        """watch: ``path``'s (size, modification time) when it is to be read now; None when it is
        unchanged since it was read to its end, may still be being written, or still has records in
        flight from the last look."""
        try:
            st = path.stat()
        except OSError:  # gone meanwhile
            return None
        seen = (st.st_size, st.st_mtime_ns)
        if self._seen.get(path) == seen:
            return None
        if self.cfg.watch is not None and time.time() - st.st_mtime < self.cfg.settle:
            return None
        state = self._positions.get(self._scope(path))
        if state is not None and (state.tracker.in_flight or state.tracker.dirty):
            return None  # read on from its checkpoint once those are saved
        return seen

    async def _each_file(self, read: Callable[[Path], Awaitable[None]]) -> None:
        """``read`` every file, once; with ``watch``, again and again for new files and new records."""
        failed: FatalError | None = None
        while True:
            files = self._files()
            if len(self._seen) > len(files):  # forget files that are gone (removed by someone else)
                listed = set(files)
                self._seen = {p: v for p, v in self._seen.items() if p in listed}
            for path in files:
                seen = self._ready(path)
                if seen is None:
                    continue
                try:
                    await read(path)
                except _GZIP_ERRORS as exc:
                    # the other files go on; this one waits until it changes (or the next run)
                    damaged = self._damaged(path, exc)
                    log.error("file source of flow %s: %s", self.ctx.flow, damaged)
                    self._seen[path] = seen
                    failed = failed or damaged
                    continue
                self._seen[path] = seen
                state = self._positions.get(self._scope(path))
                if state is not None:
                    state.read_all = True
                await self.commit_acks()  # a file with nothing (left) in flight is done now
            if self.cfg.watch is None:
                if failed is not None:
                    raise failed  # a one-off run that could not read a file does not end as if it had
                return
            await asyncio.sleep(self.cfg.watch)

    async def run(self, emit: Emit) -> None:
        await self._each_file(functools.partial(self._run_file, emit=emit))

    async def _begin(self, path: Path) -> Pos:
        """Where to start reading ``path``: its checkpoint, unless the file was replaced or cut.

        The checkpoint holds a digest of the file's first bytes as they were (``fp_len`` of them, up
        to ``_FP_BYTES``): a file that only grew since (lines appended) still starts with them and is
        read on from its checkpoint, even one that was shorter than ``_FP_BYTES`` then."""
        scope = self._scope(path)
        cp = await self.ctx.store.get_checkpoint(scope)
        start: Pos = (0, 1, 0)
        size = path.stat().st_size
        # a file being deleted or moved (``after``) when the engine stopped: it is read again only if it is
        # not that file (a new one of the same name)
        gone = isinstance(cp, dict) and cp.get("disposing") and cp.get("size") != size
        # (the offsets of a gzip file count decompressed bytes: its size says nothing of them)
        if isinstance(cp, dict) and (self._gz(path) or int(cp.get("offset", 0)) <= size) and not gone:
            known = int(cp.get("fp_len", _FP_BYTES))  # checkpoints written before fp_len: the first KiB
            if cp.get("fingerprint") == _fingerprint(path, known):
                start = (int(cp["offset"]), int(cp.get("line", 1)), int(cp.get("records", 0)))
        length = min(size, _FP_BYTES)
        self._tracker = OffsetTracker(start)
        self._positions[scope] = _FileState(self._tracker, _fingerprint(path, length), length, path)
        return start

    def _delivery(self, name: str, rec_no: int, body: Any, raw: bytes | None, err: BaseException | None,
                  acker: _BatchAck) -> Delivery:
        mid = corr = None
        if type(body) is dict:
            id_field, corr_field = self.cfg.id_field, self.cfg.correlation_field
            if id_field is not None and (v := body.get(id_field)) is not None:
                mid = v if type(v) is str else str(v)
            if corr_field is not None and (v := body.get(corr_field)) is not None:
                corr = v if type(v) is str else str(v)
        if mid is None:
            mid = f"{name}:{rec_no}"
        msg = Message(body, raw=raw, id=mid, correlation_id=corr,
                      headers={"file.name": name, "file.record": str(rec_no)})
        return Delivery(msg, acker, _nack, err)

    async def _run_file(self, path: Path, emit: Emit) -> None:
        if self.cfg.format == "ndjson":
            await self._run_ndjson(path, emit)
            return
        if self.cfg.format == "file":
            await self._run_whole(path, emit)
            return
        start = await self._begin(path)
        assert self._tracker is not None
        tracker = self._tracker
        name = path.name
        # one ticket per batch: the position moves past a batch once all of its messages are
        # acknowledged (a restart re-reads at most the batches that were in flight)
        acker = _BatchAck(tracker)
        batch: list[Delivery] = []
        end: Pos = start
        for end, rec_no, body, raw, err in self._records(path, start):
            batch.append(self._delivery(name, rec_no, body, raw, err, acker))
            if len(batch) >= self.batch_size:
                acker.seal(end, len(batch))
                await emit(batch)
                acker = _BatchAck(tracker)
                batch = []
        if batch:
            acker.seal(end, len(batch))
            await emit(batch)

    def can_run_raw(self) -> bool:
        return self.cfg.format == "ndjson"

    async def run_raw(self, emit_raw: EmitRaw) -> None:
        limit = self.cfg.max_record_bytes

        async def hand_over(name: str, first: int, lines: list[bytes], long_record: int | None,
                            acker: _BatchAck) -> None:
            expand = functools.partial(self._expand, name, first, lines, long_record, acker)
            await emit_raw(RawBatch(
                b"".join(lines) if lines else None, len(lines) or 1, first_record=first, name=name,
                id_field=self.cfg.id_field, correlation_field=self.cfg.correlation_field,
                max_record_bytes=limit, expand=expand, ack=acker.ack_all, nack=_nack,
            ))

        await self._each_file(functools.partial(self._read_ndjson, handle=hand_over))

    async def _run_whole(self, path: Path, emit: Emit) -> None:
        """One message per file: its bytes, with the configured or guessed content type."""
        start = await self._begin(path)
        if start[2] >= 1:
            return  # delivered already
        assert self._tracker is not None
        acker = _BatchAck(self._tracker)
        name = path.name
        headers = {"file.name": name, "file.path": str(path)}
        limit = self.cfg.max_file_bytes
        size = path.stat().st_size
        ctype = self.cfg.content_type or _guess_type(name)
        if size > limit:
            err: BaseException | None = FatalError(f"{name} is {size} bytes (limit {limit})", code="file.too_large")
            msg = Message({"$file": name, "$size": size}, id=name, headers=headers)
        else:
            msg, err = decode_message(path.read_bytes(), {}, default_id=name, default_content_type=ctype,
                                      transport=headers, max_bytes=limit, connector="file")
        acker.seal((size, 1, 1), 1)
        await emit([Delivery(msg, acker, _nack, err)])

    async def _run_ndjson(self, path: Path, emit: Emit) -> None:
        """NDJSON, strictly: duplicate keys, NaN, deep nesting and huge numbers are refused per record.

        A batch's records are decoded together (``decode_many``: the strict checks run once over
        the batch); a batch with a bad record is decoded record by record, so each record gets
        its own verdict.
        """
        from seamline.formats.errors import FormatError
        from seamline.formats.json import decode_many

        limit = self.cfg.max_record_bytes

        async def decoded(name: str, first: int, lines: list[bytes], long_record: int | None,
                          acker: _BatchAck) -> None:
            if long_record is None:
                records = [line.strip() for line in lines]
                try:
                    values = decode_many(records, max_bytes=limit)
                except FormatError:
                    pass
                else:
                    await emit([self._delivery(name, rec_no, body, raw, None, acker)
                                for rec_no, (body, raw) in enumerate(zip(values, records, strict=True), first)])
                    return
            await emit(self._expand(name, first, lines, long_record, acker))

        await self._read_ndjson(path, decoded)

    async def _read_ndjson(
        self, path: Path, handle: Callable[[str, int, list[bytes], int | None, _BatchAck], Awaitable[None]]
    ) -> None:
        """Hand ``path``'s NDJSON lines to ``handle``, ``batch_size`` records at a time, from the checkpoint:
        ``handle(file name, first record number, lines, long record, acknowledgement)``.

        A record longer than ``max_record_bytes`` is not kept: it travels alone (``lines`` empty,
        ``long record`` its length), to be dead-lettered.
        """
        offset, line_no, rec_no = await self._begin(path)
        assert self._tracker is not None
        tracker = self._tracker
        name = path.name
        limit = self.cfg.max_record_bytes
        size = self.batch_size
        with self._open(path) as f:
            if offset == 0 and f.read(3) == _BOM:
                offset = 3  # a byte order mark is not part of the first record (nor of its raw bytes)
            f.seek(offset)
            readline = f.readline
            while True:
                lines: list[bytes] = []
                first = rec_no + 1
                long_record: int | None = None
                while len(lines) < size and (chunk := readline(limit + 1)):
                    length = len(chunk)
                    if length > limit and not chunk.endswith(b"\n"):
                        while more := readline(_SKIP_CHUNK):  # skip to its end
                            length += len(more)
                            if more.endswith(b"\n"):
                                break
                        long_record = length
                        if lines:  # the batch so far goes first; the long one is read again next time
                            f.seek(offset)
                            break
                        offset += length
                        line_no += 1
                        rec_no += 1
                        break
                    offset += length
                    line_no += 1
                    if chunk.isspace():
                        continue
                    rec_no += 1
                    lines.append(chunk)
                if lines:
                    long_record = None
                elif long_record is None:
                    break
                acker = _BatchAck(tracker)
                acker.seal((offset, line_no, rec_no), len(lines) or 1)
                await handle(name, first, lines, long_record, acker)

    def _expand(self, name: str, first: int, lines: list[bytes], long_record: int | None,
                acker: _BatchAck) -> list[Delivery]:
        """The deliveries ``run`` makes of the same lines (see ``RawBatch.expand``)."""
        limit = self.cfg.max_record_bytes
        if long_record is not None:
            too_long = FatalError(f"record {first} is {long_record} bytes (limit {limit})",
                                  code="format.json.too_large")
            return [self._delivery(name, first, {"$record": first}, None, too_long, acker)]
        out = []
        for rec_no, chunk in enumerate(lines, first):
            body, raw, err = _decode_line(chunk.strip(), rec_no, limit)
            out.append(self._delivery(name, rec_no, body, raw, err, acker))
        return out

    def _records(self, path: Path, start: Pos) -> Iterator[Rec]:
        if self.cfg.format == "csv":
            yield from self._csv(path, start)
        else:
            yield from self._json_array(path, start)

    def _csv(self, path: Path, start: Pos) -> Iterator[Rec]:
        """CSV with a dialect and typed columns; a bad row is dead-lettered, the rest carry on."""
        from seamline.formats.csv import Checkpoint, CsvDialect, CsvReader

        o = self.cfg.csv
        dialect = CsvDialect(delimiter=o.delimiter, quotechar=o.quotechar, header=o.header, encoding=self.cfg.encoding)
        offset, line_no, rec_no = start
        resume = Checkpoint(offset, line_no) if offset else None
        with self._open(path) as f:
            reader = CsvReader(f, dialect=dialect, columns=o.types, fieldnames=o.columns,
                               max_record_bytes=self.cfg.max_record_bytes, resume=resume)
            for row in reader:
                rec_no += 1
                end = (row.end_offset, row.end_line + 1, rec_no)
                if row.error is not None:
                    err = FatalError(f"record {rec_no} (line {row.line}): {row.error.message}", code=row.error.code,
                                     details=row.error.details)
                    raw = row.raw
                    body = {"$line": row.line, "$raw": (raw or b"").decode("utf-8", "replace")}
                    yield end, rec_no, body, None, err
                    continue
                yield end, rec_no, row.values, None, None

    def _json_array(self, path: Path, start: Pos) -> Iterator[Rec]:
        """A JSON array (or one document): read whole, within ``max_file_bytes``; checkpoint = items done."""
        from seamline.formats.errors import FormatError
        from seamline.formats.json import decode

        done = start[2]
        try:
            with self._open(path) as f:
                # one byte over the limit is enough for decode to refuse it (a zip bomb never unfolds)
                data = f.read(self.cfg.max_file_bytes + 1)
            items = decode(data, max_bytes=self.cfg.max_file_bytes)
        except FormatError as exc:
            if done == 0:
                err = FatalError(f"{path.name}: {exc.message}", code=exc.code, details=exc.details)
                yield (1, 1, 1), 1, {"$file": path.name}, None, err
            return
        if self.cfg.records_at is not None:
            found = _records_at(items, self.cfg.records_at)
            if not isinstance(found, list):
                if done == 0:
                    what = "nothing" if found is None else f"a {type(found).__name__}, not an array"
                    err = FatalError(f"{path.name}: records_at '{self.cfg.records_at}' finds {what}",
                                     code="file.records_at", details={"records_at": self.cfg.records_at})
                    yield (1, 1, 1), 1, {"$file": path.name}, None, err
                return
            items = found
        if not isinstance(items, list):
            items = [items]
        for i in range(done, len(items)):
            yield (i + 1, 1, i + 1), i + 1, items[i], None, None

    async def commit_acks(self) -> None:
        if not any(st.tracker.dirty or st.read_all for st in self._positions.values()):
            return
        async with self._lock:
            for scope, st in list(self._positions.items()):
                t = st.tracker
                if t.dirty:
                    t.dirty = False
                    offset, line, records = t.committed
                    await self.ctx.store.put_checkpoint(
                        scope,
                        {"offset": offset, "line": line, "records": records, "fingerprint": st.fp,
                         "fp_len": st.fp_len},
                    )
                if st.read_all and not t.in_flight and not t.dirty:
                    # every record of the file was delivered or dead-lettered, and that is saved
                    del self._positions[scope]
                    if self.cfg.after != "keep":
                        await self._dispose(scope, st)

    async def _dispose(self, scope: str, st: _FileState) -> None:
        """``after: delete | move`` for a file that is done; its checkpoint then no longer applies (a new
        file of the same name is read from its start).

        The checkpoint first says that the file is being disposed of, with its size: an engine stopped
        before the file was gone finishes the job on its next start without reading the file again,
        and one stopped after it never takes a new file of the same name for the old one."""
        path = st.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        offset, line, records = st.tracker.committed
        await self.ctx.store.put_checkpoint(scope, {
            "offset": offset, "line": line, "records": records, "fingerprint": st.fp, "fp_len": st.fp_len,
            "disposing": self.cfg.after, "size": size,
        })
        try:
            if self.cfg.after == "delete":
                path.unlink(missing_ok=True)
                where = "deleted"
            else:
                assert self.cfg.move_to is not None
                target = _free_name(self.ctx.resolve_path(self.cfg.move_to), path.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                if path.exists():
                    shutil.move(str(path), str(target))
                where = f"moved to {target}"
        except OSError as exc:
            # the file stays where it is, its checkpoint at its end: nothing is read twice, and the next
            # start tries again
            log.warning("file source of flow %s: %s is done but could not be %s: %s", self.ctx.flow, path.name,
                        "deleted" if self.cfg.after == "delete" else "moved", exc)
            return
        self._seen.pop(path, None)
        await self.ctx.store.put_checkpoint(scope, {"offset": 0, "line": 1, "records": 0, "fingerprint": None,
                                                    "done": where})
        log.info("file source of flow %s: %s %s", self.ctx.flow, path.name, where)

    async def close(self) -> None:
        await self.commit_acks()


def _guess_type(name: str) -> str:
    """A file's content type from its extension (``application/octet-stream`` when unknown)."""
    lower = name.lower()
    for ext, ctype in _TYPES:
        if lower.endswith(ext):
            return ctype
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


_TYPES = ((".ndjson", "application/x-ndjson"), (".jsonl", "application/x-ndjson"), (".json", "application/json"),
          (".xml", "application/xml"), (".csv", "text/csv"), (".txt", "text/plain"), (".edi", "application/edi-x12"),
          (".avro", "avro/binary"))


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or, when that is taken, the name with a UTC time stamp (and a counter) in it."""
    target = folder / name
    if not target.exists():
        return target
    p = Path(name)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1, 10_000):
        extra = stamp if n == 1 else f"{stamp}-{n}"
        target = folder / f"{p.stem}.{extra}{p.suffix}"
        if not target.exists():
            return target
    raise OSError(f"no free name for {name} in {folder}")


def _records_at(doc: Any, path: str) -> Any:
    """The value at a dotted path of keys in ``doc`` (None when a key is missing)."""
    for key in path.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _decode_line(stripped: bytes, rec_no: int, limit: int) -> tuple[Any, bytes, BaseException | None]:
    """One NDJSON record, strictly: ``(body, raw, error)``; a bad record's body says what it held."""
    from seamline.formats.errors import FormatError
    from seamline.formats.json import decode

    try:
        return decode(stripped, max_bytes=limit), stripped, None
    except FormatError as exc:
        err = FatalError(f"record {rec_no}: {exc.message}", code=exc.code, details=exc.details)
        return {"$raw": stripped[:4096].decode("utf-8", "replace")}, stripped, err


def _nack(requeue: bool) -> None:
    """Nothing to do: an unacknowledged record is read again after a restart."""


class _BatchAck:
    """The acknowledgement shared by the messages of one batch: acks the batch's ticket at the last."""

    __slots__ = ("_remaining", "_ticket", "_tracker")

    def __init__(self, tracker: OffsetTracker) -> None:
        self._tracker = tracker
        self._ticket = -1
        self._remaining = 0

    def seal(self, end: Pos, count: int) -> None:
        self._ticket = self._tracker.track(end)
        self._remaining = count

    def __call__(self) -> None:
        self._remaining -= 1
        if self._remaining == 0:
            self._tracker.ack(self._ticket)

    def ack_all(self) -> None:
        """The whole batch at once (the runtime settled it as one)."""
        self._remaining = 0
        self._tracker.ack(self._ticket)


@register(
    "source",
    "file",
    config=FileSourceConfig,
    summary="Read NDJSON, JSON arrays, CSV or whole files; remembers its position; can watch a folder and "
            "archive what it read.",
    examples=("file: {path: in/orders.csv, format: csv, id_field: order_id}",
              "file: {path: dumps/crm-*.json, format: json, records_at: data.accounts, id_field: id}",
              "file: {path: inbox/*.xml, format: file, watch: 5s, after: move, move_to: archive}"),
)
def _file_source(cfg: FileSourceConfig, ctx: BuildContext) -> FileSource:
    return FileSource(cfg, ctx)


# -- sink -----------------------------------------------------------------------------------------------------

_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_TEMPLATE = re.compile(r"\{(id|correlation_id|name|date)\}")
#: what tells one message's file from another's
_NAMING = re.compile(r"\{(id|correlation_id|name)\}")


def _neutralize(v: Any) -> Any:
    if isinstance(v, str) and v.startswith(_FORMULA):
        return "'" + v
    return v


class FileSink(Sink):
    def __init__(self, cfg: FileSinkConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.path = ctx.resolve_path(cfg.path)
        self._columns = cfg.csv_columns
        self._lock = asyncio.Lock()
        # ndjson / csv with {date}: a file a day (UTC), the day's path found when a batch is written
        self._dated = cfg.format in ("ndjson", "csv") and "{date}" in cfg.path
        self._repaired: Path | None = None  # the file whose torn tail was looked for

    async def open(self) -> None:
        if self.cfg.format in ("json", "file"):
            return  # each file's folder is made when the file is written
        await asyncio.to_thread(self._current)

    def _current(self) -> Path:
        """The file appended to now (made ready: a torn last line cut off), today's for a dated path."""
        if self._dated:
            self.path = self.ctx.resolve_path(self.cfg.path.replace("{date}", time.strftime("%Y-%m-%d", time.gmtime())))
        if self.path != self._repaired:
            self._repair_tail()
            self._repaired = self.path
        return self.path

    def _repair_tail(self) -> None:
        """Cut a torn last line left behind by a crash mid-write."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            return
        size = self.path.stat().st_size
        if size == 0:
            return
        with self.path.open("r+b") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                if self.cfg.format == "csv" and self._columns is None:
                    f.seek(0)
                    first = f.readline().decode("utf-8").rstrip("\r\n")
                    self._columns = next(csv.reader([first], delimiter=self.cfg.csv_delimiter))
                return
            back = min(size, 1 << 20)
            f.seek(size - back)
            tail = f.read(back)
            cut = tail.rfind(b"\n")
            f.truncate(size - back + cut + 1 if cut >= 0 else 0)

    async def write(self, batch: Sequence[Message]) -> None:
        async with self._lock:
            if self.cfg.format == "ndjson":
                data = b"".join(m.raw + b"\n" for m in batch)
                await asyncio.to_thread(self._append, data)
            elif self.cfg.format == "csv":
                await asyncio.to_thread(self._append_csv, [m.body for m in batch])
            else:
                await asyncio.to_thread(self._write_files, [(self._target(m), m.raw) for m in batch])

    def accepts_lines(self) -> bool:
        return self.cfg.format == "ndjson"

    async def write_lines(self, data: bytes, count: int) -> None:
        async with self._lock:
            await asyncio.to_thread(self._append, data)

    def _target(self, m: Message) -> Path:
        def part(mt: re.Match[str]) -> str:
            what = mt.group(1)
            if what == "name":
                return _safe_name(m.headers.get("file.name") or m.id)
            if what == "date":
                return time.strftime("%Y-%m-%d", time.gmtime())
            return _safe_name(str(getattr(m, what)))

        return self.ctx.resolve_path(_TEMPLATE.sub(part, self.cfg.path))

    def _append(self, data: bytes) -> None:
        fd = os.open(self._current(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self.cfg.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _append_csv(self, rows: list[Any]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=self.cfg.csv_delimiter, lineterminator="\n")
        path = self._current()
        new = not path.exists() or path.stat().st_size == 0
        if self._columns is None:
            first = rows[0] if rows else {}
            self._columns = list(first.keys()) if isinstance(first, dict) else None
        if new and self._columns:
            w.writerow(self._columns)
        fix = _neutralize if self.cfg.neutralize_formulas else (lambda v: v)
        for r in rows:
            if isinstance(r, dict) and self._columns:
                w.writerow([fix(_cell(r.get(c))) for c in self._columns])
            elif isinstance(r, list | tuple):
                w.writerow([fix(_cell(v)) for v in r])
            else:
                raise FatalError("CSV sink needs objects or arrays as records", code="file.csv_record_type")
        self._append(buf.getvalue().encode("utf-8"))

    def _write_files(self, items: list[tuple[Path, bytes]]) -> None:
        for target, data in items:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                if self.cfg.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, target)


def _cell(v: Any) -> Any:
    if isinstance(v, dict | list):
        return orjson.dumps(v).decode()
    return "" if v is None else v


def _safe_name(s: str) -> str:
    """A value fit to be one file name: no folders, never ``.`` or ``..``."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", s)[:200]
    return "_" if name in ("", ".", "..") else name


@register(
    "sink",
    "file",
    config=FileSinkConfig,
    summary="Write NDJSON or CSV (appended, whole lines) or one JSON file per message (atomic rename).",
    examples=("file: {path: out/orders.ndjson}", "file: {path: out/{id}.json, format: json}"),
)
def _file_sink(cfg: FileSinkConfig, ctx: BuildContext) -> FileSink:
    return FileSink(cfg, ctx)


@flow_check
def _reads_its_own_output(source: Any, sinks: list[Any], base_dir: Path) -> Iterator[tuple[int, str, str, str | None]]:
    """A file sink appending to the file (or a file of the glob) the file source reads would feed the
    flow its own output for ever; said when the flow is loaded, not found when the disk is full."""
    if source.name != "file":
        return
    pattern = os.path.normpath(os.path.join(base_dir, source.config.path))
    for i, sink in enumerate(sinks):
        if sink is None or sink.name != "file" or _TEMPLATE.search(sink.config.path):
            continue
        target = os.path.normpath(os.path.join(base_dir, sink.config.path))
        if target == pattern or fnmatch.fnmatchcase(target, pattern):
            yield (i, "path", f"writes {sink.config.path}, which the source reads: the flow would read its own "
                   "output again and again", "write to a file the source does not read")
