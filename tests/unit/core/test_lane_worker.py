"""The worker side of ``settings.workers``: one raw batch in, output lines and journal entries out."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import msgspec
import orjson

from seamline.core.lane_worker import build_functions, process_batch, read_frame, write_frame
from seamline.store.base import key_token

MAP = "{'order': id, 'total': $sum(lines.price), 'code': $number(code)}"


def _plan(tmp_path: Path, journal: str = "hops") -> Any:
    return build_functions({
        "flow": "f", "base_dir": str(tmp_path), "sinks": ["out"], "journal": journal,
        "steps": [
            ["seamline.steps.filter", "filter", "keep", {"condition": "status != 'void'"}],
            ["seamline.steps.map", "map", "shape", {"expression": MAP}],
        ],
    })


def _lines(*docs: Any) -> bytes:
    return b"".join(orjson.dumps(d) + b"\n" for d in docs)


def test_a_clean_batch_comes_back_as_output_lines_and_journal_entries(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    data = _lines({"id": "A", "status": "new", "lines": [{"price": 2}, {"price": 3}]},
                  {"id": "B", "status": "void", "lines": []})
    data += b"\n  \n" + _lines({"status": "new", "lines": [{"price": 1}], "code": "12"})
    answer = process_batch(plan, [100.0, 7, "in.ndjson", "id", None, 1 << 20, data])
    status, records, n_out, out, journal, keys, filtered, sources = answer
    assert (status, records, n_out, filtered) == ("ok", 3, 2, 1)
    assert sources is None  # NDJSON lines are written whole or not at all
    assert [orjson.loads(x) for x in out.splitlines()] == [{"order": "A", "total": 5}, {"total": 1, "code": 12}]
    entries = msgspec.msgpack.decode(journal)
    ids = [e[0] for e in entries]
    assert ids == ["A", "B", "in.ndjson:9"]  # no id field: file name and record number (blank lines skipped)
    a_hops = [(h[1], h[2]) for h in entries[0][2]]
    assert a_hops == [("source", "received"), ("keep", "ok"), ("shape", "ok"), ("out", "delivered")]
    assert all(h[0] == 100.0 for h in entries[0][2][:3]) and entries[0][2][3][0] is None  # stamped on commit
    assert [(h[1], h[2]) for h in entries[1][2]] == [("source", "received"), ("keep", "filtered")]
    # the delivered hop carries the digest of what was written, the received one that of what was read
    assert entries[0][2][3][4] == entries[0][2][2][4] != entries[0][2][0][4]
    assert set(keys.split()) == {key_token("A"), key_token("B"), key_token("in.ndjson:9")}


def test_edges_and_off_journal_less(tmp_path: Path) -> None:
    data = _lines({"id": 1, "status": "new", "lines": [{"price": 0}]})
    edges = process_batch(_plan(tmp_path, "edges"), [1.0, 1, "x", "id", None, 1 << 20, data])
    assert [(h[1], h[2]) for h in msgspec.msgpack.decode(edges[4])[0][2]] == [("source", "received"),
                                                                              ("out", "delivered")]
    off = process_batch(_plan(tmp_path, "off"), [1.0, 1, "x", "id", None, 1 << 20, data])
    assert off[:4] == ["ok", 1, 1, b'{"order":1,"total":0}\n'] and off[4] == b"" and off[5] == ""


def test_a_record_that_needs_the_engine_sends_the_whole_batch_back(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    good = _lines({"id": 1, "status": "new", "lines": []})
    for bad in (b'{"id": 2, "id": 3}\n', b"{not json}\n", _lines({"id": 4, "status": "new", "code": "not a number"})):
        answer = process_batch(plan, [1.0, 1, "x", "id", None, 1 << 20, good + bad + good])
        assert answer[0] == "fallback", bad
    assert process_batch(plan, [1.0, 1, "x", "id", None, 10, good])[0] == "fallback"  # over the record limit


def test_correlation_ids_are_indexed_and_kept_apart_from_message_ids(tmp_path: Path) -> None:
    data = _lines({"id": "A", "corr": "C-1", "status": "new", "lines": []},
                  {"id": "B", "corr": "B", "status": "new", "lines": []})
    answer = process_batch(_plan(tmp_path), [1.0, 1, "x", "id", "corr", 1 << 20, data])
    entries = msgspec.msgpack.decode(answer[4])
    assert [(e[0], e[1]) for e in entries] == [("A", "C-1"), ("B", None)]
    assert set(answer[5].split()) == {key_token("A"), key_token("C-1"), key_token("B")}


def test_frames_round_trip_and_end_of_file_is_none() -> None:
    buf = io.BytesIO()
    write_frame(buf, b"hello")
    write_frame(buf, b"")
    buf.seek(0)
    assert read_frame(buf) == b"hello"
    assert read_frame(buf) == b""
    assert read_frame(buf) is None
    torn = io.BytesIO(b"\x00\x00\x00\x09abc")
    assert read_frame(torn) is None
