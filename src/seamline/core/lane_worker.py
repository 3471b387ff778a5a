"""A worker process of the ``workers`` flow setting: runs a flow's pure steps over raw batches.

The engine starts it as ``python -m seamline.core.lane_worker`` and writes one JSON line to its
stdin: the steps to build (registered type, label, config) and what the journal records. Then
it answers requests in the order they came, each a length-prefixed msgpack frame (the engine may
write the next request while the worker is still on one):

- request: ``[now, first_record, file_name, id_field, correlation_field, max_bytes, data]``,
  ``data`` being whole NDJSON lines as the source read them, or ``["records", now, payload]``,
  ``payload`` being what the source's ``lane_decoder`` decodes (e.g. Kafka record values, keys and
  headers);
- answer: ``["ok", records, out_count, out_data, journal, keys, filtered, kept]`` or
  ``["fallback", reason]``; ``kept`` (for a sink with an encoder, else None) gives the input
  index of each output, so that the engine can tell which records a partly failed write concerns.

``out_data`` is the batch's output as NDJSON, or what the sink's ``lane_encoder`` made of it,
``journal`` the batch's journal entries (msgpack,
the store's packed format, delivered hops without a time: the engine stamps them when the sink
confirmed) and ``keys`` the index document of their ids. A batch in which any record is not
plain sailing (it does not decode, a step raises, the output cannot be encoded) is answered
with ``fallback``: the engine then runs that batch itself, the usual way, which dead-letters
what must be dead-lettered with the usual reasons. Nothing here touches the store or a sink.

The worker ends on end of file on its stdin (the engine closed it or died) or SIGTERM; it ignores
SIGINT, which a terminal sends to the engine too (the engine drains, then closes the stdin).
"""

from __future__ import annotations

import functools
import gc
import importlib
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import orjson
from xxhash import xxh3_64_hexdigest

from seamline.core.component import FILTERED, BuildContext
from seamline.core.registry import get_spec
from seamline.formats.errors import FormatError
from seamline.formats.json import decode_many
from seamline.store.base import key_token

__all__ = [
    "FRAME_HEADER",
    "Fallback",
    "LanePlan",
    "build_functions",
    "main",
    "process_batch",
    "read_frame",
    "serve",
    "write_frame",
]

#: every frame on a worker's pipes starts with its length, 4 bytes big-endian
FRAME_HEADER = struct.Struct(">I")
_MAX_FRAME = 1 << 30


@dataclass(frozen=True)
class LanePlan:
    """What a worker does to every batch: its step functions, what the journal records, and how the
    source's records are decoded and the sink's encoded (None: NDJSON lines)."""

    steps: list[tuple[str, Callable[[Any], Any]]]  # label, body function
    sinks: list[str]
    journal: str  # hops | edges | off
    decode: Callable[[Any, float], list[Any]] | None = None
    encode: Callable[[list[Any]], Any] | None = None


def _codec(spec: Any) -> Callable[..., Any] | None:
    """``[module, function, settings]`` → the function with its settings bound."""
    if spec is None:
        return None
    module, name, settings = spec
    fn = getattr(importlib.import_module(module), name)
    return functools.partial(fn, settings)


def build_functions(spec: dict[str, Any]) -> LanePlan:
    """Build the plan's steps from their registered type and config (as sent by the engine)."""
    base_dir = Path(spec["base_dir"])
    steps: list[tuple[str, Callable[[Any], Any]]] = []
    for module, name, label, config in spec["steps"]:
        importlib.import_module(module)  # registers the step
        sp = get_spec("step", name)
        if sp is None:
            raise ValueError(f"unknown step {name!r}")
        cfg = sp.config.model_validate(config)
        ctx = BuildContext(flow=spec["flow"], base_dir=base_dir, store=None, label=label)  # type: ignore[arg-type]
        step = sp.factory(cfg, ctx)
        fn = step.body_function()
        if fn is None:
            raise ValueError(f"step {label!r} cannot run in a worker")
        steps.append((label, fn))
    return LanePlan(steps=steps, sinks=list(spec["sinks"]), journal=spec["journal"],
                    decode=_codec(spec.get("decode")), encode=_codec(spec.get("encode")))


class Fallback(Exception):
    """The batch needs the engine's own path."""


def _split(data: bytes) -> list[bytes]:
    return [s for s in map(bytes.strip, data.split(b"\n")) if s]


#: records decoded and run through the steps at a time: a batch's decoded records, all alive at once,
#: no longer fit the processor's cache (measured on 430-byte orders: about 10 % more time a record
#: at 1,000 than at 128)
CHUNK = 128


def _lines(first_record: int, name: str, id_field: str | None, corr_field: str | None, max_bytes: int,
           data: bytes) -> Iterator[list[Any]]:
    """An NDJSON batch's records, strictly decoded, ``CHUNK`` at a time: ``(id, correlation id, raw,
    body, None)`` each."""
    records = _split(data)
    rec_no = first_record - 1
    for start in range(0, len(records), CHUNK):
        chunk = records[start:start + CHUNK]
        try:
            values = decode_many(chunk, max_bytes=max_bytes)
        except FormatError as exc:
            raise Fallback(f"decode: {exc.code}") from None
        items = []
        for raw, body in zip(chunk, values, strict=True):
            rec_no += 1
            mid = corr = None
            if body.__class__ is dict:
                if id_field is not None and (v := body.get(id_field)) is not None:
                    mid = v if v.__class__ is str else str(v)
                if corr_field is not None and (v := body.get(corr_field)) is not None:
                    corr = v if v.__class__ is str else str(v)
            if mid is None:
                mid = f"{name}:{rec_no}"
            items.append((mid, corr, raw, body, None))
        yield items


def _records(decode: Callable[[Any, float], list[Any]], payload: list[Any], now: float) -> Iterator[list[Any]]:
    """A source's records as its decoder makes them, ``CHUNK`` at a time."""
    for start in range(0, len(payload), CHUNK):
        yield decode(payload[start:start + CHUNK], now)


def _ndjson(outs: list[bytes]) -> bytes:
    return b"\n".join(outs) + b"\n" if outs else b""


def process_batch(plan: LanePlan, request: list[Any]) -> list[Any]:
    """One request's answer (see the module docs); pure: the same request gives the same answer,
    apart from durations."""
    try:
        if request[0] == "records":
            if plan.decode is None:
                raise Fallback("the source's records have no decoder here")
            now = request[1]
            chunks = _records(plan.decode, request[2], now)
        else:
            now = request[0]
            chunks = _lines(*request[1:])
        return _run(plan, now, chunks)
    except Fallback as fb:
        return ["fallback", str(fb)]


def _run(plan: LanePlan, now: float, chunks: Iterable[list[Any]]) -> list[Any]:
    hops_on = plan.journal == "hops"
    edges = plan.journal != "off"
    clock = time.perf_counter_ns
    dumps = orjson.dumps
    steps = plan.steps
    sinks = plan.sinks
    outs: list[bytes] = []
    # what a sink's encoder needs beside the encoded body: (body, meta) of each output (a chunk's)
    entries: list[Any] = []
    keys: dict[str, None] = {}
    filtered = 0
    # for a sink that reports failures record by record: which input each output is
    sources: list[int] | None = [] if plan.encode is not None else None
    count = 0  # records so far
    encoded: list[list[Any]] | None = None
    for items in chunks:
        # a sink's encoder takes a chunk at a time: a whole batch of outputs and their messages
        # alive at once no longer fits the processor's cache
        extra: list[Any] | None = [] if plan.encode is not None else None
        first = count
        count += len(items)
        for index, (mid, corr, raw, body, meta) in enumerate(items, first):
            if corr == mid:
                corr = None
            out: bytes | None = raw
            if edges:
                digest = xxh3_64_hexdigest(raw)
                hops: list[Any] = [(now, "source", "received", 0, digest, None)]
                keys[mid] = None
                if corr is not None:
                    keys[corr] = None
            kept = True
            for label, fn in steps:
                t0 = clock() if hops_on else 0  # a step's duration is kept in its hop only
                try:
                    new = fn(body)
                except Exception as exc:
                    raise Fallback(f"step {label}: {type(exc).__name__}") from None
                dur = (clock() - t0) // 1000 if hops_on else 0
                if new is FILTERED:
                    if hops_on:
                        hops.append((now, label, "filtered", dur, None, None))
                    kept = False
                    break
                if new is not body:
                    body = new
                    out = None
                if hops_on:
                    if out is None:
                        try:
                            out = dumps(body)
                        except TypeError:
                            raise Fallback(f"step {label}: the body cannot be encoded") from None
                        digest = xxh3_64_hexdigest(out)
                    hops.append((now, label, "ok", dur, digest, None))
            if not kept:
                filtered += 1
                if edges:
                    entries.append((mid, corr, hops))
                continue
            if out is None:
                try:
                    out = dumps(body)
                except TypeError:
                    raise Fallback("the body cannot be encoded") from None
                if edges:
                    digest = xxh3_64_hexdigest(out)
            outs.append(out)
            if extra is not None and sources is not None:
                extra.append((out, body, meta))
                sources.append(index)
            if edges:
                for sink in sinks:
                    hops.append((None, sink, "delivered", 0, digest, None))
                entries.append((mid, corr, hops))
        if plan.encode is not None and extra:
            part = plan.encode(extra)
            if encoded is None:
                encoded = part
            else:
                for whole, more in zip(encoded, part, strict=True):
                    whole.extend(more)
    if plan.encode is None:
        out_data: Any = _ndjson(outs)
    else:
        out_data = encoded if encoded is not None else plan.encode([])
    journal = msgspec.msgpack.encode(entries) if entries else b""
    return ["ok", count, len(outs), out_data, journal, " ".join(map(key_token, keys)), filtered, sources]


# -- framing ---------------------------------------------------------------------------------------


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(FRAME_HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame, or None at end of file."""
    head = stream.read(FRAME_HEADER.size)
    if len(head) < FRAME_HEADER.size:
        return None
    (size,) = FRAME_HEADER.unpack(head)
    if size > _MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    body = stream.read(size)
    if len(body) < size:
        return None
    return body


def serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Read the plan, answer ``ready``, then answer batches until end of file; the exit code."""
    first = stdin.readline()
    if not first:
        return 0
    try:
        plan = build_functions(orjson.loads(first))
    except Exception as exc:
        # the settings were validated by the engine; name the problem, never the values
        errors = getattr(exc, "errors", None)
        what = (", ".join(".".join(map(str, e["loc"])) for e in errors()) if callable(errors)
                else str(exc))
        print(f"seamline worker: cannot build the steps: {type(exc).__name__}: {what}", file=sys.stderr)
        return 2
    # as in the engine (see engine._tune_gc): batches are acyclic garbage, freed by reference
    # counting; the collector need not walk them many times a batch
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    write_frame(stdout, b"ready")
    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    while (frame := read_frame(stdin)) is not None:
        try:
            answer = process_batch(plan, dec.decode(frame))
        except Exception as exc:  # a bug here must not lose the batch: the engine runs it itself
            answer = ["fallback", f"worker: {type(exc).__name__}: {exc}"]
        write_frame(stdout, enc.encode(answer))
    return 0


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl-C reaches the whole process group: the engine drains, using its workers, and then
    # closes their stdin
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    # run the package's module, not this ``__main__`` copy of it: codecs raise the package's ``Fallback``
    from seamline.core.lane_worker import main as _main

    sys.exit(_main())
