"""seamline.formats.parquet: row groups out, batches in, clear errors."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from seamline.formats import parquet as sp
from seamline.formats.errors import ParquetError

pa = pytest.importorskip("pyarrow")


def batches(count: int, size: int) -> list[list[dict[str, object]]]:
    return [[{"id": b * size + i, "name": f"n{i}", "score": i / 2} for i in range(size)] for b in range(count)]


def test_round_trip_one_row_group_per_batch(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    assert sp.write_batches(path, batches(3, 4)) == 12
    groups = list(sp.iter_row_groups(path))
    assert [len(group) for group in groups] == [4, 4, 4]
    assert groups[1][0] == {"id": 4, "name": "n0", "score": 0.0}
    assert [row["id"] for row in sp.iter_rows(str(path), batch_size=5)] == list(range(12))
    assert list(sp.iter_rows(path.read_bytes(), columns=["name"]))[:2] == [{"name": "n0"}, {"name": "n1"}]
    assert next(sp.iter_row_groups(io.BytesIO(path.read_bytes()), columns=["id"]))[0] == {"id": 0}


def test_explicit_schema_and_empty_input() -> None:
    schema = pa.schema([("id", pa.int32()), ("note", pa.string())])
    sink = io.BytesIO()
    assert sp.write_batches(sink, [[], [{"id": 1}], [{"id": 2, "note": "x"}]], schema=schema) == 2
    assert list(sp.iter_rows(sink.getvalue())) == [{"id": 1, "note": None}, {"id": 2, "note": "x"}]
    empty = io.BytesIO()
    assert sp.write_batches(empty, [], schema=schema) == 0
    assert list(sp.iter_rows(empty.getvalue())) == []
    nothing = io.BytesIO()
    assert sp.write_batches(nothing, []) == 0
    assert nothing.getvalue() == b""


@pytest.mark.parametrize("cut", [0, 4, 30, -12])
def test_corrupt_files(cut: int) -> None:
    sink = io.BytesIO()
    sp.write_batches(sink, batches(2, 50))
    data = sink.getvalue()
    damaged = b"nope" if cut == 0 else data[:cut]
    with pytest.raises(ParquetError) as info:
        list(sp.iter_rows(damaged))
    assert info.value.code == "format.parquet.corrupt"


def test_damaged_pages_raise_corrupt() -> None:
    sink = io.BytesIO()
    sp.write_batches(sink, batches(1, 200), compression="zstd")
    data = bytearray(sink.getvalue())
    for index in range(20, 60):
        data[index] ^= 0xFF
    with pytest.raises(ParquetError) as info:
        list(sp.iter_rows(bytes(data)))
    assert info.value.code == "format.parquet.corrupt"
    with pytest.raises(ParquetError) as info:
        list(sp.iter_row_groups(bytes(data)))
    assert info.value.code == "format.parquet.corrupt"


def test_missing_path_is_not_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(sp.iter_rows(tmp_path / "missing.parquet"))


def test_invalid_batches_and_options() -> None:
    with pytest.raises(ParquetError) as info:
        sp.write_batches(io.BytesIO(), [[{"a": 1}], [{"a": "text"}]])
    assert info.value.code == "format.parquet.invalid"
    assert info.value.details["batch"] == 2
    with pytest.raises(ParquetError) as info:
        sp.write_batches(io.BytesIO(), [[{"a": 1}]], compression="bogus")
    assert info.value.code == "format.parquet.invalid"
    with pytest.raises(ParquetError) as info:
        list(sp.iter_rows(_small_file(), columns=["nope"]))
    assert info.value.code == "format.parquet.invalid"


def _small_file() -> bytes:
    sink = io.BytesIO()
    sp.write_batches(sink, batches(1, 2))
    return sink.getvalue()


def test_without_pyarrow_every_call_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert sp.available() is False
    for call in (
        lambda: list(sp.iter_rows(b"PAR1")),
        lambda: list(sp.iter_row_groups(b"PAR1")),
        lambda: sp.write_batches(io.BytesIO(), [[{"a": 1}]]),
    ):
        with pytest.raises(ParquetError) as info:
            call()
        assert info.value.code == "format.parquet.unavailable"
        assert "parquet" in info.value.message


def test_available_with_pyarrow() -> None:
    assert sp.available() is True
