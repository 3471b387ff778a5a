"""seamline.formats.avro: schemas, container files, single-object encoding, hostile data."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seamline.formats import avro as sa
from seamline.formats.errors import AvroError

FAST = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

ORDER = {
    "type": "record",
    "name": "Order",
    "namespace": "com.example",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "total", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}


def order(i: int) -> dict[str, Any]:
    return {"id": i, "customer": f"c{i}", "total": Decimal("1.50") * i, "tags": ["a"] * (i % 3), "note": None}


def zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# --------------------------------------------------------------------------- schemas


def test_parse_schema_computes_canonical_form_and_fingerprint() -> None:
    # the reference value from the Avro specification's test data: CRC-64-AVRO("null")
    null = sa.parse_schema("null")
    assert null.canonical == '"null"'
    assert int.from_bytes(null.fingerprint, "little") == 7195948357588979594
    order_schema = sa.parse_schema(ORDER)
    assert order_schema.name == "com.example.Order"
    assert order_schema.canonical.startswith('{"name":"com.example.Order","type":"record"')
    assert sa.parse_schema(order_schema) is order_schema
    assert sa.parse_schema('{"type": "array", "items": "int"}').name is None


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ({"type": "nope"}, "unknown type"),
        ("nope", "unknown type"),
        ({"type": "record", "name": "X", "fields": [{"name": "a", "type": "missing"}]}, "unknown type"),
        ({"type": "enum", "name": "E", "symbols": ["a", "a"]}, "unique"),
        ('{"type": "record"', "not valid JSON"),
        ('{"type": "int", "type": "long"}', "not valid JSON"),
    ],
)
def test_bad_schemas(schema: Any, needle: str) -> None:
    with pytest.raises(AvroError) as info:
        sa.parse_schema(schema)
    assert info.value.code == "format.avro.schema"
    assert needle in info.value.message


# --------------------------------------------------------------------------- container files


def test_container_round_trip_streams_both_ways() -> None:
    consumed: list[int] = []

    def produce() -> Iterator[dict[str, Any]]:
        for i in range(2000):
            consumed.append(i)
            yield order(i)

    sink = io.BytesIO()
    assert sa.write_container(sink, ORDER, produce(), codec="deflate", metadata={"source": "test"}) == 2000
    assert len(consumed) == 2000
    reader = sa.ContainerReader(io.BytesIO(sink.getvalue()))
    assert reader.codec == "deflate"
    assert reader.metadata["source"] == "test"
    assert reader.writer_schema.name == "com.example.Order"
    first = next(iter(reader))
    assert first == order(0)
    assert list(sa.ContainerReader(sink.getvalue())) == [order(i) for i in range(2000)]


def test_container_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "orders.avro"
    with path.open("wb") as sink:
        sa.write_container(sink, ORDER, [order(1), order(2)])
    with path.open("rb") as source:
        reader = sa.ContainerReader(source)
        assert list(reader) == [order(1), order(2)]
        assert reader.records_read == 2


def test_reader_schema_resolution() -> None:
    sink = io.BytesIO()
    sa.write_container(sink, ORDER, [order(1)])
    projected = {"type": "record", "name": "com.example.Order", "fields": [{"name": "id", "type": "long"}]}
    assert list(sa.ContainerReader(sink.getvalue(), reader_schema=projected)) == [{"id": 1}]
    incompatible = {"type": "record", "name": "com.example.Order", "fields": [{"name": "zz", "type": "int"}]}
    with pytest.raises(AvroError) as info:
        list(sa.ContainerReader(sink.getvalue(), reader_schema=incompatible))
    assert info.value.code == "format.avro.resolution"


def test_write_refuses_invalid_records_and_codecs() -> None:
    with pytest.raises(AvroError) as info:
        sa.write_container(io.BytesIO(), ORDER, [order(1), {**order(2), "id": "two"}])
    assert info.value.code == "format.avro.invalid"
    assert "record 2" in info.value.message and "com.example.Order.id" in info.value.message
    with pytest.raises(AvroError) as info:
        sa.write_container(io.BytesIO(), ORDER, [{**order(1), "id": "x"}], validate=False)
    assert info.value.code == "format.avro.invalid"
    with pytest.raises(AvroError) as info:
        sa.write_container(io.BytesIO(), ORDER, [order(1)], codec="bogus")
    assert info.value.code == "format.avro.codec"


@pytest.mark.parametrize("data", [b"", b"Obj", b"not avro at all", b"Obj\x01" + b"\xff" * 20])
def test_not_a_container(data: bytes) -> None:
    with pytest.raises(AvroError) as info:
        list(sa.ContainerReader(data))
    assert info.value.code in {"format.avro.container", "format.avro.schema"}


def test_unknown_codec_in_a_file() -> None:
    sink = io.BytesIO()
    sa.write_container(sink, ORDER, [order(1)], codec="deflate")
    data = sink.getvalue().replace(b"\x0edeflate", b"\x0ebogus!!")
    with pytest.raises(AvroError) as info:
        list(sa.ContainerReader(data))
    assert info.value.code == "format.avro.codec"


def test_corrupt_and_truncated_containers_only_raise_avro_errors() -> None:
    sink = io.BytesIO()
    sa.write_container(sink, ORDER, [order(i) for i in range(50)], codec="deflate")
    data = sink.getvalue()
    rng = random.Random(1234)
    codes = set()
    for trial in range(300):
        damaged = bytearray(data)
        if trial % 2:
            damaged = damaged[: rng.randrange(len(damaged))]
        else:
            for _ in range(3):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            list(sa.ContainerReader(bytes(damaged)))
        except AvroError as exc:
            codes.add(exc.code)
    assert codes <= {
        "format.avro.container",
        "format.avro.schema",
        "format.avro.corrupt",
        "format.avro.codec",
        "format.avro.resolution",
    }
    assert "format.avro.corrupt" in codes


def test_arrays_of_zero_size_items_are_refused(bounded: Callable[..., Any]) -> None:
    """Four bytes claiming 2**27 nulls would otherwise build a list of 134 million items."""
    bomb_schema = {"type": "array", "items": "null"}
    message = sa.SINGLE_OBJECT_MAGIC + sa.parse_schema(bomb_schema).fingerprint + zigzag(2**27) + zigzag(0)
    with bounded(), pytest.raises(AvroError) as info:
        sa.decode_single(message, bomb_schema)
    assert info.value.code == "format.avro.schema"
    empty_record = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "xs", "type": {"type": "array", "items": {"type": "record", "name": "E", "fields": []}}}],
    }
    sink = io.BytesIO()
    sa.write_container(sink, empty_record, [{"xs": [{}]}])
    with pytest.raises(AvroError) as info:
        sa.ContainerReader(sink.getvalue())
    assert info.value.code == "format.avro.schema"
    # a recursive record is not zero-size: a union always writes its branch index
    linked = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "next", "type": ["null", "Node"]},
            {"name": "kids", "type": {"type": "array", "items": "Node"}},
        ],
    }
    sink = io.BytesIO()
    sa.write_container(sink, linked, [{"next": {"next": None, "kids": []}, "kids": []}])
    assert next(iter(sa.ContainerReader(sink.getvalue())))["next"] == {"next": None, "kids": []}


def test_forged_block_length_does_not_allocate_it(bounded: Callable[..., Any], tmp_path: Path) -> None:
    sink = io.BytesIO()
    sa.write_container(sink, ORDER, [order(1)])
    data = sink.getvalue()
    header_end = data.index(data[-16:]) + 16  # the sync marker ends the header
    forged = data[:header_end] + zigzag(1) + zigzag(2**40) + b"\x00" * 10
    path = tmp_path / "forged.avro"
    path.write_bytes(forged)
    with bounded(), path.open("rb") as source, pytest.raises(AvroError) as info:
        list(sa.ContainerReader(source))
    assert info.value.code == "format.avro.corrupt"


# --------------------------------------------------------------------------- single-object encoding


def test_single_object_round_trip_and_layout() -> None:
    schema = sa.parse_schema(ORDER)
    message = sa.encode_single(order(3), schema)
    assert message[:2] == b"\xc3\x01"
    assert message[2:10] == schema.fingerprint == sa.single_object_fingerprint(message)
    assert sa.decode_single(message, ORDER) == order(3)
    other = sa.parse_schema({"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]})
    assert sa.decode_single(message, [other, schema]) == order(3)
    projected = {"type": "record", "name": "com.example.Order", "fields": [{"name": "id", "type": "long"}]}
    assert sa.decode_single(message, schema, reader_schema=projected) == {"id": 3}


def test_single_object_errors() -> None:
    schema = sa.parse_schema(ORDER)
    message = sa.encode_single(order(3), schema)
    other = sa.parse_schema({"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]})
    cases = {
        message[:5]: "format.avro.single_object_header",
        b"\xc3\x02" + message[2:]: "format.avro.single_object_header",
        b"": "format.avro.single_object_header",
        message[:-3]: "format.avro.corrupt",
        message + b"\x00": "format.avro.corrupt",
    }
    for data, code in cases.items():
        with pytest.raises(AvroError) as info:
            sa.decode_single(data, schema)
        assert info.value.code == code, data
    with pytest.raises(AvroError) as info:
        sa.decode_single(message, other)
    assert info.value.code == "format.avro.fingerprint"
    assert info.value.details["fingerprint"] == schema.fingerprint.hex()
    with pytest.raises(AvroError) as info:
        sa.encode_single({**order(1), "id": "x"}, schema)
    assert info.value.code == "format.avro.invalid"
    with pytest.raises(AvroError) as info:
        sa.encode_single({**order(1), "tags": 5}, schema, validate=False)
    assert info.value.code == "format.avro.invalid"


records = st.fixed_dictionaries(
    {
        "id": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "customer": st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20),
        "total": st.decimals(min_value=-(10**7), max_value=10**7, places=2, allow_nan=False, allow_infinity=False),
        "tags": st.lists(st.text(max_size=5), max_size=4),
        "note": st.none() | st.text(max_size=10),
    }
)


@FAST
@given(st.lists(records, max_size=20), st.sampled_from(["null", "deflate"]))
def test_container_round_trip_property(batch: list[dict[str, Any]], codec: str) -> None:
    sink = io.BytesIO()
    assert sa.write_container(sink, ORDER, batch, codec=codec) == len(batch)
    assert list(sa.ContainerReader(sink.getvalue())) == batch


@FAST
@given(records)
def test_single_object_round_trip_property(record: dict[str, Any]) -> None:
    assert sa.decode_single(sa.encode_single(record, ORDER), ORDER) == record
