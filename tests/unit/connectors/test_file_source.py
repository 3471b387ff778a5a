"""The file source on NDJSON: strict records, bad lines dead-lettered, position kept per batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from tests.helpers import dead_letters

from seamline import Flow, sink, source
from seamline.connectors.file import FileSource, FileSourceConfig
from seamline.connectors.offsets import OffsetTracker
from seamline.core.component import BuildContext, Delivery
from seamline.core.engine import Engine
from seamline.store import open_store


def _flow(tmp: Path, batch_size: int = 3, workers: int = 0, **src: object) -> Flow:
    return Flow(
        "files",
        source=source("file", path=str(tmp / "in.ndjson"), id_field="id", **src),
        sinks=[sink("file", label="out", path=str(tmp / "out.ndjson"), fsync=False)],
        settings={"batch_size": batch_size, "workers": workers},
    )


async def _run(fl: Flow, tmp: Path) -> None:
    await Engine([fl], open_store(str(tmp / "s.db"))).run(until_idle=True, idle_horizon=0, install_signals=False)


async def _dead(tmp: Path) -> list[Any]:
    return await dead_letters(tmp / "s.db")


async def test_bad_lines_are_dead_lettered_the_rest_delivered_once(tmp_path: Path) -> None:
    long_line = b'{"id": "big", "pad": "' + b"x" * 300 + b'"}'
    (tmp_path / "in.ndjson").write_bytes(
        b'{"id": "a", "n": 1}\n'
        b"\n"  # blank lines are skipped
        b'{"id": "dup", "n": 1, "n": 2}\n'  # duplicate key: refused, never silently merged
        + long_line + b"\n"
        b"{not json\n"
        b'{"id": "b", "n": 2}\r\n'
        b'{"id": "c", "n": 3}'  # no newline at the end
    )
    fl = _flow(tmp_path, max_record_bytes=200)
    await _run(fl, tmp_path)
    out = [orjson.loads(x) for x in (tmp_path / "out.ndjson").read_bytes().splitlines()]
    assert [o["id"] for o in out] == ["a", "b", "c"]
    dead = {d.error_code for d in await _dead(tmp_path)}
    assert dead == {"format.json.duplicate_key", "format.json.too_large", "format.json.syntax"}, dead
    await _run(fl, tmp_path)  # a second run: the position was kept, nothing is delivered twice
    assert len((tmp_path / "out.ndjson").read_bytes().splitlines()) == 3


async def test_the_position_moves_past_a_batch_only_when_all_of_it_is_acked(tmp_path: Path) -> None:
    (tmp_path / "in.ndjson").write_bytes(b"".join(b'{"id": "m%d"}\n' % i for i in range(5)))
    ctx = BuildContext(flow="f", base_dir=tmp_path, store=open_store(str(tmp_path / "s.db")), batch_size=2)
    await ctx.store.open()
    try:
        src = FileSource(FileSourceConfig(path="in.ndjson", id_field="id"), ctx)
        batches: list[list[Delivery]] = []

        async def emit(batch: list[Delivery]) -> None:
            batches.append(batch)

        await src.run(emit)
        assert [[d.message.id for d in b] for b in batches] == [["m0", "m1"], ["m2", "m3"], ["m4"]]
        tracker = src._tracker
        assert isinstance(tracker, OffsetTracker)
        batches[1][0].ack()
        batches[1][1].ack()
        batches[0][1].ack()
        assert tracker.committed == (0, 1, 0), "the first batch is not done: nothing moves"
        batches[0][0].ack()
        assert tracker.committed[2] == 4, "both batches done: past record 4"
        await src.commit_acks()
        (scope,) = src._positions
        assert (await ctx.store.get_checkpoint(scope))["records"] == 4
    finally:
        await ctx.store.close()


async def test_a_clean_batch_keeps_record_numbers_ids_and_raw_bytes(tmp_path: Path) -> None:
    (tmp_path / "in.ndjson").write_bytes(b'{"n": 1}\n\n  {"n": 2}  \r\n{"n": 3}\n{"n": 4}\n')
    src = FileSource(FileSourceConfig(path=str(tmp_path / "in.ndjson")),
                     BuildContext(flow="f", base_dir=tmp_path, store=open_store(":memory:"), batch_size=3))
    await src.ctx.store.open()
    got: list[list[Delivery]] = []

    async def emit(batch: list[Delivery]) -> None:
        got.append(batch)

    try:
        await src.run(emit)
    finally:
        await src.ctx.store.close()
    assert [len(b) for b in got] == [3, 1]
    msgs = [d.message for b in got for d in b]
    assert [m.id for m in msgs] == ["in.ndjson:1", "in.ndjson:2", "in.ndjson:3", "in.ndjson:4"]
    assert [m.headers["file.record"] for m in msgs] == ["1", "2", "3", "4"]
    assert [m.body for m in msgs] == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
    assert msgs[1].raw == b'{"n": 2}'  # the record as read, without the blanks around it
    assert all(d.error is None for b in got for d in b)


async def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path: Path) -> None:
    """An export from a Windows tool starts with a UTF-8 byte order mark: the first record is read
    without it, and a flow that passes records through unchanged does not copy it into the middle
    of its output (with or without worker processes)."""
    lines = [b'{"id": "a", "n": 1}', b'{"id": "b", "n": 2}', b'{"id": "c", "n": 3}']
    for workers in (0, 2):
        run = tmp_path / f"w{workers}"
        run.mkdir()
        (run / "in.ndjson").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
        (run / "out.ndjson").write_bytes(b'{"id": "before"}\n')
        fl = _flow(run, workers=workers)
        await _run(fl, run)
        assert (run / "out.ndjson").read_bytes().splitlines() == [b'{"id": "before"}', *lines], workers
        await _run(fl, run)  # the position was kept past the mark too
        assert len((run / "out.ndjson").read_bytes().splitlines()) == 4


async def test_a_small_file_that_grew_is_read_on_from_its_checkpoint(tmp_path: Path) -> None:
    """Lines appended to a file (shorter than the bytes that identify it) are new records: only they
    are delivered on the next run. A file replaced by another one is read from its start."""
    src = tmp_path / "in.ndjson"
    src.write_bytes(b'{"id": "a"}\n{"id": "b"}\n')
    fl = _flow(tmp_path)

    def delivered() -> list[str]:
        return [orjson.loads(x)["id"] for x in (tmp_path / "out.ndjson").read_bytes().splitlines()]

    await _run(fl, tmp_path)
    with src.open("ab") as f:
        f.write(b'{"id": "c"}\n')
    await _run(fl, tmp_path)
    assert delivered() == ["a", "b", "c"]
    src.write_bytes(b'{"id": "x"}\n{"id": "y"}\n{"id": "z"}\n{"id": "w"}\n')  # another file, longer than the old
    await _run(fl, tmp_path)
    assert delivered() == ["a", "b", "c", "x", "y", "z", "w"]


async def test_records_inside_a_json_document_are_found_by_records_at(tmp_path: Path) -> None:
    """An API dump keeps its records under a key: ``records_at`` names it; a document without
    them is dead-lettered whole with the reason, and nothing else happens."""
    (tmp_path / "in.ndjson").write_bytes(orjson.dumps(
        {"meta": {"page": 1}, "data": {"orders": [{"id": "o1"}, {"id": "o2"}, {"id": "o3"}]}}))
    await _run(_flow(tmp_path, format="json", records_at="data.orders"), tmp_path)
    out = [orjson.loads(x)["id"] for x in (tmp_path / "out.ndjson").read_bytes().splitlines()]
    assert out == ["o1", "o2", "o3"]
    await _run(_flow(tmp_path, format="json", records_at="data.orders"), tmp_path)  # checkpoint kept
    assert len((tmp_path / "out.ndjson").read_bytes().splitlines()) == 3

    (tmp_path / "in.ndjson").write_bytes(orjson.dumps({"data": {"orders": {"id": "not-a-list"}}}))
    await _run(_flow(tmp_path, format="json", records_at="data.orders"), tmp_path)
    (dead,) = await _dead(tmp_path)
    assert dead.error_code == "file.records_at" and "a dict, not an array" in dead.error_message
    assert len((tmp_path / "out.ndjson").read_bytes().splitlines()) == 3
