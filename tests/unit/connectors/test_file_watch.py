"""The file source beyond one pass: whole files as messages, watching a folder, and what happens to a
file once every record of it is delivered or dead-lettered (keep, delete, move)."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.helpers import dead_letters

from seamline import Flow, sink, source, step
from seamline.config.loader import load_flows
from seamline.core.engine import Engine
from seamline.core.errors import ConfigError
from seamline.store import open_store


def _out(tmp: Path) -> list[Any]:
    path = tmp / "out.ndjson"
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


async def _dead(tmp: Path) -> list[Any]:
    return await dead_letters(tmp / "s.db")


async def _once(fl: Flow, tmp: Path) -> None:
    await Engine([fl], open_store(str(tmp / "s.db"))).run(until_idle=True, idle_horizon=0, install_signals=False)


async def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class _Running:
    """An engine running a watching flow in the background."""

    def __init__(self, fl: Flow, tmp: Path) -> None:
        self.engine = Engine([fl], open_store(str(tmp / "s.db")))
        self.task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> _Running:
        self.task = asyncio.create_task(self.engine.run(install_signals=False))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.engine.request_stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)


def _age(path: Path, seconds: float = 60.0) -> None:
    """Make ``path`` look written ``seconds`` ago (past any settle time)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


# -- format: file --------------------------------------------------------------------------------------


async def test_whole_files_become_one_message_each_with_their_content_type(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.xml").write_bytes(b'<order id="1"><line>x</line><line>y</line></order>')
    (inbox / "b.json").write_bytes(b'{"order": {"@id": "2"}, "note": "json is decoded, strictly"}')
    (inbox / "c.json").write_bytes(b'{"id": 1, "id": 2}')  # duplicate key: refused
    (inbox / "d.xml").write_bytes(b"<order><unclosed></order>")
    (inbox / "e.bin").write_bytes(b"\x00" * 5000)  # over max_file_bytes
    fl = Flow(
        "whole",
        source=source("file", path=str(inbox / "*.xml"), format="file"),
        steps=[step("decode", format="xml", force_list=["line"])],
        sinks=[sink("file", label="out", path=str(tmp_path / "out.ndjson"), fsync=False)],
    )
    await _once(fl, tmp_path)
    assert _out(tmp_path) == [{"order": {"@id": "1", "line": ["x", "y"]}}]
    dead = await _dead(tmp_path)
    assert [(d.msg_id, d.step, d.error_code) for d in dead] == [("d.xml", "decode", "format.xml.syntax")]

    json_flow = Flow(
        "whole-json",
        source=source("file", path=str(inbox / "*.json"), format="file"),
        sinks=[sink("file", label="out", path=str(tmp_path / "json.ndjson"), fsync=False)],
    )
    await _once(json_flow, tmp_path)
    got = [orjson.loads(x) for x in (tmp_path / "json.ndjson").read_bytes().splitlines()]
    assert got == [{"order": {"@id": "2"}, "note": "json is decoded, strictly"}]
    codes = {d.msg_id: d.error_code for d in await _dead(tmp_path)}
    assert codes["c.json"] == "format.json.duplicate_key"

    big_flow = Flow(
        "whole-big",
        source=source("file", path=str(inbox / "*.bin"), format="file", max_file_bytes=4096),
        sinks=[sink("file", label="out", path=str(tmp_path / "bin.ndjson"), fsync=False)],
    )
    await _once(big_flow, tmp_path)
    big = [d for d in await _dead(tmp_path) if d.msg_id == "e.bin"]
    assert [(d.step, d.error_code) for d in big] == [("source", "file.too_large")]

    # a second pass delivers nothing twice: each file's checkpoint says it was delivered
    await _once(fl, tmp_path)
    await _once(json_flow, tmp_path)
    assert len(_out(tmp_path)) == 1 and len((tmp_path / "json.ndjson").read_bytes().splitlines()) == 1
    assert len(await _dead(tmp_path)) == 3


async def test_a_file_message_carries_its_name_and_the_bytes_as_they_were(tmp_path: Path) -> None:
    data = b"ISA*00*          *00*~\r\nGS*PO\xff~"  # not text: kept byte for byte
    (tmp_path / "po.edi").write_bytes(data)
    (tmp_path / "note.txt").write_bytes(b"hello")
    seen: list[Any] = []

    def look(message: Any) -> dict[str, Any]:
        seen.append(message)
        return {"name": message.headers["file.name"], "type": message.content_type, "size": len(message.body)}

    for name, ctype in (("po.edi", None), ("note.txt", "text/x-note")):
        fl = Flow(
            f"edi-{name}",
            source=source("file", path=str(tmp_path / name), format="file",
                          **({"content_type": ctype} if ctype else {})),
            steps=[step("python", function=look, **{"pass": "message"})],
            sinks=[sink("file", label="out", path=str(tmp_path / "out.ndjson"), fsync=False)],
        )
        await _once(fl, tmp_path)
    assert _out(tmp_path) == [{"name": "po.edi", "type": "application/edi-x12", "size": len(data)},
                              {"name": "note.txt", "type": "text/x-note", "size": 5}]
    assert seen[0].body == data and seen[0].id == "po.edi"


# -- watch ------------------------------------------------------------------------------------------------


def _refused(tmp: Path, yaml_text: str) -> str:
    """The config error a flow file holding ``yaml_text`` is refused with."""
    bad = tmp / "f.yaml"
    bad.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_flows(bad)
    return str(err.value)


def _watching(tmp: Path, pattern: str = "in/*.ndjson", **src: Any) -> Flow:
    return Flow(
        "watch",
        source=source("file", path=str(tmp / pattern), id_field="id", watch=0.05, settle=5.0, **src),
        sinks=[sink("file", label="out", path=str(tmp / "out.ndjson"), fsync=False)],
        settings={"batch_size": 2},
    )


async def test_watch_reads_new_files_and_new_lines_until_stopped(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    first = tmp_path / "in" / "a.ndjson"
    first.write_bytes(b'{"id": "a1"}\n{"id": "a2"}\n{"id": "a3"}\n')
    _age(first)
    async with _Running(_watching(tmp_path), tmp_path):
        await _until(lambda: len(_out(tmp_path)) == 3, "the first file")
        # a new file and lines appended to the first one
        second = tmp_path / "in" / "b.ndjson"
        second.write_bytes(b'{"id": "b1"}\n')
        _age(second)
        with first.open("ab") as f:
            f.write(b'{"id": "a4"}\n')
        _age(first)
        await _until(lambda: len(_out(tmp_path)) == 5, "the new file and the appended line")
        # a file written just now is left alone until it has settled
        fresh = tmp_path / "in" / "c.ndjson"
        fresh.write_bytes(b'{"id": "c1"}\n')
        await asyncio.sleep(0.3)  # six looks, all well within the five seconds it must settle for
        assert [o["id"] for o in _out(tmp_path)][-1] != "c1", "read while it may still be being written"
        _age(fresh)  # the copy is done
        await _until(lambda: len(_out(tmp_path)) == 6, "the settled file")
        await asyncio.sleep(0.3)  # looks that find nothing new deliver nothing
    ids = [o["id"] for o in _out(tmp_path)]
    assert sorted(ids) == ["a1", "a2", "a3", "a4", "b1", "c1"] and len(ids) == 6
    # a restart reads on from the checkpoints: nothing twice
    async with _Running(_watching(tmp_path), tmp_path):
        await asyncio.sleep(0.5)
    assert len(_out(tmp_path)) == 6


async def test_watch_waits_for_a_file_that_is_not_there_yet(tmp_path: Path) -> None:
    fl = _watching(tmp_path, pattern="drop.ndjson")
    async with _Running(fl, tmp_path):
        await asyncio.sleep(0.2)
        target = tmp_path / "drop.ndjson"
        target.write_bytes(b'{"id": "late"}\n')
        _age(target)
        await _until(lambda: len(_out(tmp_path)) == 1, "the file that came late")


# -- after ------------------------------------------------------------------------------------------------


async def test_after_move_archives_a_file_once_every_record_is_settled(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    good = tmp_path / "in" / "orders.ndjson"
    good.write_bytes(b'{"id": "o1"}\n{"id": "o2"}\n{not json\n{"id": "o3"}\n')
    _age(good)
    fl = _watching(tmp_path, after="move", move_to=str(tmp_path / "archive"))
    async with _Running(fl, tmp_path):
        await _until(lambda: (tmp_path / "archive" / "orders.ndjson").exists(), "the file in the archive")
        assert not good.exists()
        assert [o["id"] for o in _out(tmp_path)] == ["o1", "o2", "o3"]
        # the same name again (tomorrow's export): read from its start, archived beside the first
        good.write_bytes(b'{"id": "o1"}\n{"id": "o4"}\n')
        _age(good)
        await _until(lambda: len(list((tmp_path / "archive").iterdir())) == 2, "the second file archived")
    assert [o["id"] for o in _out(tmp_path)] == ["o1", "o2", "o3", "o1", "o4"]
    names = {p.name for p in (tmp_path / "archive").iterdir()}
    assert "orders.ndjson" in names
    (stamped,) = names - {"orders.ndjson"}
    assert re.fullmatch(r"orders\.\d{8}T\d{6}Z\.ndjson", stamped), stamped
    dead = await _dead(tmp_path)
    assert [(d.msg_id, d.error_code) for d in dead] == [("orders.ndjson:3", "format.json.syntax")]


async def test_after_delete_without_watch_removes_the_files_read(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        (tmp_path / "in" / f"{name}.csv").write_bytes(b"id,qty\n" + b"".join(b"%s%d,%d\n" % (name.encode(), i, i)
                                                                         for i in range(5)))
    (tmp_path / "in" / "empty.csv").write_bytes(b"id,qty\n")
    fl = Flow(
        "csv",
        source=source("file", path=str(tmp_path / "in" / "*.csv"), format="csv", id_field="id", after="delete"),
        sinks=[sink("file", label="out", path=str(tmp_path / "out.ndjson"), fsync=False)],
        settings={"batch_size": 2},
    )
    await _once(fl, tmp_path)
    assert sorted(o["id"] for o in _out(tmp_path)) == sorted([f"{n}{i}" for n in "ab" for i in range(5)])
    assert list((tmp_path / "in").iterdir()) == []  # the empty file too: it had nothing to deliver


def test_after_move_needs_a_folder(tmp_path: Path) -> None:
    err = _refused(tmp_path, "flow: f\nsource: {file: {path: in.ndjson, after: move}}\n"
                             "sinks: [{file: {path: out.ndjson}}]\n")
    assert "f.yaml:2" in err and "move_to" in err
    err = _refused(tmp_path, "flow: f\nsource: {file: {path: in.ndjson, move_to: done}}\n"
                             "sinks: [{file: {path: out.ndjson}}]\n")
    assert "only used with after: move" in err


# -- the sink's one file per message -----------------------------------------------------------------------


async def test_a_folder_of_xml_files_is_transformed_into_another_under_the_same_names(tmp_path: Path) -> None:
    """XML in, XML out, file by file: read whole, decode, map, encode, written under the name it came with."""
    (tmp_path / "in").mkdir()
    for i in (1, 2):
        (tmp_path / "in" / f"order-{i}.xml").write_bytes(b'<order id="%d"><qty>%d</qty></order>' % (i, i * 10))
    fl = Flow(
        "xml-to-xml",
        source=source("file", path=str(tmp_path / "in" / "*.xml"), format="file", after="move",
                      move_to=str(tmp_path / "done")),
        steps=[
            step("decode", format="xml"),
            step("map", expression="{'Bestellung': {'@nr': order.`@id`, 'Menge': $number(order.qty)}}"),
            step("encode", format="xml"),
        ],
        sinks=[sink("file", label="out", path=str(tmp_path / "out" / "{date}" / "{name}"), format="file",
                    fsync=False)],
    )
    await _once(fl, tmp_path)
    (day,) = (tmp_path / "out").iterdir()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", day.name)
    written = {p.name: p.read_bytes() for p in day.iterdir()}
    assert sorted(written) == ["order-1.xml", "order-2.xml"]
    assert b'<Bestellung nr="2"><Menge>20</Menge></Bestellung>' in written["order-2.xml"]
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["order-1.xml", "order-2.xml"]


def test_one_file_per_message_needs_a_name_in_the_path(tmp_path: Path) -> None:
    err = _refused(tmp_path, "flow: f\nsource: {file: {path: in.ndjson}}\n"
                             "sinks: [{file: {path: \"out/{date}.xml\", format: file}}]\n")
    assert "put {id} or {name} in the path" in err


async def test_a_name_from_outside_never_leaves_the_folder(tmp_path: Path) -> None:
    (tmp_path / "in.ndjson").write_bytes(b'{"id": ".."}\n{"id": "../../escape"}\n{"id": "a/b"}\n')
    fl = Flow(
        "names",
        source=source("file", path=str(tmp_path / "in.ndjson"), id_field="id"),
        sinks=[sink("file", label="out", path=str(tmp_path / "out" / "{id}"), format="json", fsync=False)],
    )
    await _once(fl, tmp_path)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".._.._escape", "_", "a_b"]
    assert sorted(
        p.name for p in tmp_path.iterdir() if not p.name.startswith("s.")) == ["in.ndjson", "out"]  # nothing escaped


class _Days:
    """Stands in for the file module's ``time``: a UTC day the test chooses."""

    def __init__(self, day: str) -> None:
        self.day = day

    def strftime(self, fmt: str, _t: object = None) -> str:
        assert fmt == "%Y-%m-%d"
        return self.day

    def gmtime(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
async def test_a_dated_path_starts_a_file_a_day(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    from seamline.connectors import file as file_module

    days = _Days("2026-11-29")
    monkeypatch.setattr(file_module, "time", days)
    out = tmp_path / "feed"
    out.mkdir()
    # yesterday's file was left with a torn last line by a crash: cut off before today's lines go on
    torn = out / "orders-2026-11-29.ndjson"
    if fmt == "ndjson":
        torn.write_bytes(b'{"id": "old"}\n{"id": "to')

    def flow(name: str) -> Flow:
        return Flow(
            f"dated-{name}",
            source=source("file", path=str(tmp_path / f"{name}.ndjson"), id_field="id"),
            sinks=[sink("file", label="feed", path=str(out / f"orders-{{date}}.{fmt}"), format=fmt, fsync=False)],
        )

    (tmp_path / "a.ndjson").write_bytes(b'{"id": "a1", "n": 1}\n{"id": "a2", "n": 2}\n')
    await _once(flow("a"), tmp_path)
    days.day = "2026-11-30"
    (tmp_path / "b.ndjson").write_bytes(b'{"id": "b1", "n": 3}\n')
    await _once(flow("b"), tmp_path)
    first, second = out / f"orders-2026-11-29.{fmt}", out / f"orders-2026-11-30.{fmt}"
    if fmt == "ndjson":
        assert [orjson.loads(x)["id"] for x in first.read_bytes().splitlines()] == ["old", "a1", "a2"]
        assert [orjson.loads(x)["id"] for x in second.read_bytes().splitlines()] == ["b1"]
    else:
        assert first.read_text().splitlines() == ["id,n", "a1,1", "a2,2"]
        assert second.read_text().splitlines() == ["id,n", "b1,3"]  # each day's file has its header


def test_an_appended_file_takes_no_per_message_name(tmp_path: Path) -> None:
    err = _refused(tmp_path, "flow: f\nsource: {file: {path: in.ndjson}}\n"
                             "sinks: [{file: {path: \"out/{id}.ndjson\"}}]\n")
    assert "format: ndjson appends every message to one file" in err


# -- gzip ----------------------------------------------------------------------------------------------


async def test_gzip_exports_are_read_through_and_resumed_from_their_checkpoint(tmp_path: Path) -> None:
    import gzip

    (tmp_path / "in").mkdir()
    rows = b"".join(b'{"id": "n%d"}\n' % i for i in range(7))
    (tmp_path / "in" / "orders.ndjson.gz").write_bytes(gzip.compress(rows))
    (tmp_path / "in" / "accounts.csv.gz").write_bytes(gzip.compress(b"id,region\nc1,EU\nc2,US\n"))
    fl = Flow(
        "gz",
        source=source("file", path=str(tmp_path / "in" / "*.ndjson.gz"), id_field="id"),
        sinks=[sink("file", label="out", path=str(tmp_path / "out.ndjson"), fsync=False)],
        settings={"batch_size": 3},
    )
    await _once(fl, tmp_path)
    assert [o["id"] for o in _out(tmp_path)] == [f"n{i}" for i in range(7)]
    # the export grows by a gzip member appended (`gzip -c more >> orders.ndjson.gz`): read on, not again
    with (tmp_path / "in" / "orders.ndjson.gz").open("ab") as f:
        f.write(gzip.compress(b'{"id": "n7"}\n'))
    await _once(fl, tmp_path)
    assert [o["id"] for o in _out(tmp_path)] == [f"n{i}" for i in range(8)]
    csv_flow = Flow(
        "gz-csv",
        source=source("file", path=str(tmp_path / "in" / "*.csv.gz"), format="csv", id_field="id"),
        sinks=[sink("file", label="out", path=str(tmp_path / "csv.ndjson"), fsync=False)],
    )
    await _once(csv_flow, tmp_path)
    got = [orjson.loads(x) for x in (tmp_path / "csv.ndjson").read_bytes().splitlines()]
    assert got == [{"id": "c1", "region": "EU"}, {"id": "c2", "region": "US"}]


async def test_a_gzip_bomb_is_refused_and_a_damaged_stream_stops_only_its_file(tmp_path: Path) -> None:
    import gzip

    (tmp_path / "in").mkdir()
    # 64 MiB of JSON that compresses to about 64 KiB: refused at max_file_bytes without unfolding it
    bomb = b"[" + b'{"a": 1},' * (64 * 2**20 // 9) + b'{"a": 1}]'
    (tmp_path / "in" / "bomb.json.gz").write_bytes(gzip.compress(bomb))
    fl = Flow(
        "bomb",
        source=source("file", path=str(tmp_path / "in" / "*.json.gz"), format="json", max_file_bytes=1 << 20),
        sinks=[sink("file", label="out", path=str(tmp_path / "out.ndjson"), fsync=False)],
    )
    await _once(fl, tmp_path)
    assert [(d.msg_id, d.error_code) for d in await _dead(tmp_path)] == [("bomb.json.gz:1", "format.json.too_large")]
    # a stream cut short: the records before the damage are delivered, the next file still is
    whole = gzip.compress(b"".join(b'{"id": "d%d", "pad": "%s"}\n' % (i, b"x" * 200) for i in range(400)))
    (tmp_path / "in" / "a-damaged.ndjson.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "in" / "b-fine.ndjson.gz").write_bytes(gzip.compress(b'{"id": "f1"}\n'))
    nd = Flow(
        "damaged",
        source=source("file", path=str(tmp_path / "in" / "*.ndjson.gz"), id_field="id"),
        sinks=[sink("file", label="out", path=str(tmp_path / "nd.ndjson"), fsync=False)],
        settings={"batch_size": 50},
    )
    result = await Engine([nd], open_store(str(tmp_path / "s.db"))).run(until_idle=True, idle_horizon=0,
                                                                         install_signals=False)
    assert "a-damaged.ndjson.gz is not a valid gzip stream" in result.errors["damaged"]
    ids = [orjson.loads(x)["id"] for x in (tmp_path / "nd.ndjson").read_bytes().splitlines()]
    assert ids[-1] == "f1" and 0 < len(ids) - 1 < 400 and ids[:-1] == [f"d{i}" for i in range(len(ids) - 1)]
