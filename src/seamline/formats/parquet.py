"""Parquet: stream row groups out as dicts, write batches of dicts in.

Needs pyarrow (the ``parquet`` extra). It is imported on first use only, so
importing this module is cheap; without pyarrow every function raises
``format.parquet.unavailable``. Unreadable files raise
``format.parquet.corrupt``; records that do not fit the schema raise
``format.parquet.invalid``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import IO, Any

from seamline.formats.errors import ParquetError

__all__ = ["available", "iter_row_groups", "iter_rows", "write_batches"]

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
# pyarrow reports some corrupt files as plain OSError; these are about the path instead
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _pyarrow() -> tuple[ModuleType, ModuleType]:
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise ParquetError(
            "Parquet support needs pyarrow: install seamline with the 'parquet' extra",
            code="format.parquet.unavailable",
        ) from None
    return pa, pq


def available() -> bool:
    """True when pyarrow can be imported."""
    try:
        _pyarrow()
    except ParquetError:
        return False
    return True


def _open(source: Source, columns: Sequence[str] | None) -> tuple[Any, Any]:
    pa, pq = _pyarrow()
    if isinstance(source, bytes | bytearray | memoryview):
        source = pa.BufferReader(bytes(source))
    try:
        parquet_file = pq.ParquetFile(source)
        if columns is not None:
            missing = [name for name in columns if name not in parquet_file.schema_arrow.names]
            if missing:
                raise ParquetError(f"columns {missing} are not in the file", code="format.parquet.invalid")
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, _PATH_ERRORS):
            raise
        raise ParquetError(f"not a readable Parquet file: {exc}", code="format.parquet.corrupt") from None
    return pa, parquet_file


def iter_row_groups(source: Source, *, columns: Sequence[str] | None = None) -> Iterator[list[dict[str, Any]]]:
    """Yield each row group of a Parquet file as a list of dicts, one group in memory at a time.

    ``source`` is a path, bytes or a binary file object; ``columns`` limits
    which columns are read.
    """
    pa, parquet_file = _open(source, columns)
    for index in range(parquet_file.num_row_groups):
        try:
            table = parquet_file.read_row_group(index, columns=list(columns) if columns is not None else None)
        except (pa.ArrowException, OSError) as exc:
            raise ParquetError(
                f"row group {index} is unreadable: {exc}", code="format.parquet.corrupt", details={"row_group": index}
            ) from None
        yield table.to_pylist()


def iter_rows(
    source: Source, *, columns: Sequence[str] | None = None, batch_size: int = 10_000
) -> Iterator[dict[str, Any]]:
    """Yield the rows of a Parquet file as dicts, reading ``batch_size`` rows at a time."""
    pa, parquet_file = _open(source, columns)
    batches = parquet_file.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise ParquetError(f"unreadable Parquet data: {exc}", code="format.parquet.corrupt") from None
        yield from batch.to_pylist()


def write_batches(
    sink: str | os.PathLike[str] | IO[bytes],
    batches: Iterable[Sequence[Mapping[str, Any]]],
    *,
    schema: Any = None,
    compression: str = "zstd",
) -> int:
    """Write batches of dicts to a Parquet file, each batch as one row group; return the row count.

    ``schema`` is a ``pyarrow.Schema``; without it the first non-empty batch
    decides the columns and types. With a schema and no rows an empty file
    is written; without either nothing is written.
    """
    pa, pq = _pyarrow()
    writer = None
    rows = 0
    try:
        if schema is not None:
            writer = pq.ParquetWriter(sink, schema, compression=compression)
        for number, batch in enumerate(batches, 1):
            if not batch:
                continue
            try:
                table = pa.Table.from_pylist(list(batch), schema=schema)
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise ParquetError(
                    f"batch {number} does not fit the schema: {exc}",
                    code="format.parquet.invalid",
                    details={"batch": number},
                ) from None
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(sink, schema, compression=compression)
            writer.write_table(table)
            rows += table.num_rows
    except (pa.ArrowException, ValueError) as exc:
        raise ParquetError(f"cannot write Parquet: {exc}", code="format.parquet.invalid") from None
    finally:
        if writer is not None:
            writer.close()
    return rows
