"""seamline.formats.json: strict decoding, hostile input, encoding, NDJSON."""

from __future__ import annotations

import io
import json as stdjson
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seamline.formats import json as sj
from seamline.formats.errors import JsonError

FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def code_of(data: bytes | str, **kwargs: object) -> str:
    with pytest.raises(JsonError) as info:
        sj.decode(data, **kwargs)  # type: ignore[arg-type]
    return info.value.code


# --------------------------------------------------------------------------- valid input


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b'{"a": [1, 2.5, "x", true, false, null]}', {"a": [1, 2.5, "x", True, False, None]}),
        (b"  42 ", 42),
        (b'"caf\xc3\xa9"', "café"),
        ('{"k": "ä"}', {"k": "ä"}),
        (b"\xef\xbb\xbf[1]", [1]),  # a UTF-8 BOM is tolerated
        (b'{"a:b": "c:d", "e": {"f": "g:h"}}', {"a:b": "c:d", "e": {"f": "g:h"}}),
        (b'{"a\\u003a": 1, "a": 2}', {"a:": 1, "a": 2}),  # escaped colon is not a duplicate
        (b'{"x": "[[[[[[{{{{{"}', {"x": "[[[[[[{{{{{"}),
        (b'{"id": "12345678901234567890123"}', {"id": "12345678901234567890123"}),
    ],
)
def test_decodes_valid_json(text: bytes | str, value: object) -> None:
    assert sj.decode(text) == value


def test_integers_beyond_64_bits_stay_exact() -> None:
    assert sj.decode(b"[18446744073709551616]") == [18446744073709551616]
    assert sj.decode(b"-9223372036854775809") == -9223372036854775809
    big = int("9" * 4300)
    assert sj.decode(f"[{big}]".encode()) == [big]
    assert isinstance(sj.decode(b'{"n": 123456789012345678901234567890}')["n"], int)


def test_bytearray_and_memoryview_are_accepted() -> None:
    assert sj.decode(bytearray(b"[1]")) == [1]
    assert sj.decode(memoryview(b'{"a":1}')) == {"a": 1}


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (b"NaN", "format.json.nan"),
        (b"[1, Infinity]", "format.json.nan"),
        (b'{"a": -Infinity}', "format.json.nan"),
        (b'{"a": 1, "a": 2}', "format.json.duplicate_key"),
        (b'{"a": 1, "\\u0061": 2}', "format.json.duplicate_key"),
        (b'[{"x": {"y": 1, "y": 1}}]', "format.json.duplicate_key"),
        (b'{"a\\u003a": 1, "a:": 2}', "format.json.duplicate_key"),
        (b"\xff\xfe", "format.json.utf8"),
        (b'["ok", "\xed\xa0\x80"]', "format.json.utf8"),
        (b'"\\ud800"', "format.json.utf8"),
        ("\ud800", "format.json.utf8"),
        (("1" * 4301).encode(), "format.json.big_int"),
        (("[" + "-" + "1" * 5000 + "]").encode(), "format.json.big_int"),
        (b"[1e400]", "format.json.number_range"),
        (b'{"a": tru}', "format.json.syntax"),
        (b"", "format.json.syntax"),
        (b"[1,]", "format.json.syntax"),
        (b"{'a': 1}", "format.json.syntax"),
    ],
)
def test_rejects_hostile_or_invalid_input(text: bytes | str, code: str) -> None:
    assert code_of(text) == code


def test_duplicate_key_error_names_the_key() -> None:
    with pytest.raises(JsonError) as info:
        sj.decode(b'{"order": {"id": 1, "total": 2, "id": 3}}')
    assert info.value.details["key"] == "id"
    assert "'id'" in info.value.message


def test_syntax_error_says_line_column_and_byte_offset() -> None:
    with pytest.raises(JsonError) as info:
        sj.decode('{\n  "name": "Müller",\n  "x": oops\n}'.encode())
    details = info.value.details
    assert (details["line"], details["column"]) == (3, 8)
    assert details["offset"] == len('{\n  "name": "Müller",\n  "x": '.encode())
    assert "line 3, column 8" in str(info.value)


def test_nan_error_has_position() -> None:
    with pytest.raises(JsonError) as info:
        sj.decode(b'{"a": [1, NaN]}')
    assert info.value.code == "format.json.nan"
    assert info.value.details["offset"] == 10


def test_invalid_utf8_error_gives_byte_offset() -> None:
    with pytest.raises(JsonError) as info:
        sj.decode(b'["abc", "\xc3\x28"]')
    assert info.value.details["offset"] == 9


@pytest.mark.parametrize(("opener", "closer"), [("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")])
def test_depth_limit_is_exact(opener: str, closer: str) -> None:
    per_level = 2 if opener == '[{"a":' else 1

    def nested(levels: int) -> bytes:
        return (opener * (levels // per_level) + "0" + closer * (levels // per_level)).encode()

    assert sj.decode(nested(64)) is not None
    assert code_of(nested(66)) == "format.json.depth"
    assert sj.decode(nested(10), max_depth=10) is not None
    assert code_of(nested(12), max_depth=10) == "format.json.depth"


def test_depth_counts_empty_innermost_containers() -> None:
    assert sj.decode(b"[[[]]]", max_depth=3) == [[[]]]
    assert code_of(b"[[[[]]]]", max_depth=3) == "format.json.depth"
    assert code_of(b'{"a": {"b": {"c": {}}}}', max_depth=3) == "format.json.depth"
    assert code_of(b'[1, {"deep": [[{}]]}]', max_depth=3) == "format.json.depth"
    assert sj.decode(b'[1, {"deep": [[]]}]', max_depth=4) == [1, {"deep": [[]]}]


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    doc = ('{"text": "' + "[" * 500 + '", "n": [1]}').encode()
    assert sj.decode(doc)["n"] == [1]


def test_deep_nesting_with_big_number_takes_the_strict_path_safely() -> None:
    doc = b"[1e999, " + b"[" * 5000 + b"]" * 5001
    assert code_of(doc) in {"format.json.depth", "format.json.number_range"}


def test_hundred_thousand_levels_are_refused_quickly_in_bounded_memory(bounded: Callable[..., Any]) -> None:
    for doc in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b"[" * 100_000):
        with bounded():
            assert code_of(doc) == "format.json.depth"


def test_oversized_input_is_refused_before_parsing(bounded: Callable[..., Any]) -> None:
    with bounded():
        assert code_of(b"[" + b"1," * 600_000 + b"1]", max_bytes=1_000_000) == "format.json.too_large"
    assert code_of("x" * 2_000, max_bytes=1_000) == "format.json.too_large"
    assert code_of("ä" * 600, max_bytes=1_000) == "format.json.too_large"  # counted in UTF-8 bytes
    with pytest.raises(JsonError) as info:
        sj.decode(b"[" * 20, max_bytes=10)
    assert info.value.details == {"size": 20, "max_bytes": 10}


def test_bad_max_depth_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        sj.decode(b"1", max_depth=0)
    with pytest.raises(TypeError):
        sj.decode(123)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- agreement with the standard library

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(alphabet='ab:[{\\"é', max_size=4), children, max_size=5)
    ),
    max_leaves=30,
)


@FAST
@given(json_values, st.booleans(), st.sampled_from([None, 1, 3]))
def test_decode_matches_the_standard_library(value: object, ascii_only: bool, indent: int | None) -> None:
    text = stdjson.dumps(value, ensure_ascii=ascii_only, indent=indent)
    assert sj.decode(text.encode()) == stdjson.loads(text)


@FAST
@given(json_values)
def test_encode_decode_round_trip(value: object) -> None:
    assert sj.decode(sj.encode(value), max_depth=1024) == value


@FAST
@given(st.lists(st.sampled_from(["a", "b", "a:", "c"]), min_size=2, max_size=6), st.integers(0, 3))
def test_duplicates_are_always_found(keys: list[str], depth: int) -> None:
    body = "{" + ", ".join(f'"{k}": {i}' for i, k in enumerate(keys)) + "}"
    doc = ('{"x": [' * depth + body + "]}" * depth).encode()
    if len(set(keys)) == len(keys):
        assert sj.decode(doc) is not None
    else:
        assert code_of(doc) == "format.json.duplicate_key"


@FAST
@given(st.integers(min_value=1, max_value=80), st.integers(min_value=1, max_value=70), st.booleans())
def test_depth_property(levels: int, limit: int, objects: bool) -> None:
    opener, closer = ('{"k":', "}") if objects else ("[", "]")
    doc = (opener * levels + "1" + closer * levels).encode()
    if levels <= limit:
        assert sj.decode(doc, max_depth=limit) is not None
    else:
        assert code_of(doc, max_depth=limit) == "format.json.depth"


# --------------------------------------------------------------------------- encode


def test_encode_is_compact_utf8_and_exact() -> None:
    assert sj.encode({"a": [1, "é"], "d": Decimal("1.10"), "big": 2**70}) == (
        b'{"a":[1,"\xc3\xa9"],"d":1.10,"big":1180591620717411303424}'
    )
    assert sj.encode({"b": 1, "a": 2}, sort_keys=True) == b'{"a":2,"b":1}'
    assert sj.encode((1, 2)) == b"[1,2]"
    assert sj.encode({"x": None}) == b'{"x":null}'
    assert b"\n" in sj.encode({"a": [1]}, indent=True)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ({"a": float("nan")}, "format.json.nan"),
        ([1, [float("-inf")]], "format.json.nan"),
        ({"d": Decimal("NaN")}, "format.json.nan"),
        ({"big": 2**70, "d": Decimal("Infinity")}, "format.json.nan"),
        ({1: "non-string key"}, "format.json.encode"),
        ({"o": object()}, "format.json.encode"),
        ({"big": 2**70, "o": object()}, "format.json.encode"),
    ],
)
def test_encode_refuses_what_json_cannot_hold(value: object, code: str) -> None:
    with pytest.raises(JsonError) as info:
        sj.encode(value)
    assert info.value.code == code


def test_encode_refuses_recursive_structures() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(JsonError) as info:
        sj.encode(loop)
    assert info.value.code == "format.json.encode"
    loop_with_big: list[object] = [2**70]
    loop_with_big.append(loop_with_big)
    with pytest.raises(JsonError):
        sj.encode(loop_with_big)


# --------------------------------------------------------------------------- NDJSON


def test_iter_ndjson_yields_line_numbers_offsets_and_errors() -> None:
    data = b'{"a": 1}\n\n[1, 2]\r\n{"a": 1, "a": 2}\nnot json\n"last"'
    items = list(sj.iter_ndjson(io.BytesIO(data)))
    assert [(i.line, i.offset) for i in items] == [(1, 0), (3, 10), (4, 18), (5, 35), (6, 44)]
    assert items[0].value == {"a": 1} and items[0].ok and items[0].error is None
    assert items[1].value == [1, 2]
    assert items[2].error is not None and items[2].error.code == "format.json.duplicate_key"
    assert items[3].error is not None and items[3].error.code == "format.json.syntax"
    assert items[3].error.details["line"] == 5
    assert items[3].error.details["offset"] == 35
    assert items[4].value == "last"
    line, offset, value = items[1]
    assert (line, offset, value) == (3, 10, [1, 2])


def test_iter_ndjson_skips_over_long_lines_without_buffering(bounded: Callable[..., Any]) -> None:
    huge = b'{"pad": "' + b"x" * 5_000_000 + b'"}\n'
    data = b"[1]\n" + huge + b"[2]\n"
    with bounded():
        items = list(sj.iter_ndjson(io.BytesIO(data), max_line_bytes=1000))
    assert [i.line for i in items] == [1, 2, 3]
    assert items[1].error is not None and items[1].error.code == "format.json.too_large"
    assert items[1].error.details["size"] == len(huge)
    assert items[2].value == [2] and items[2].offset == 4 + len(huge)


def test_iter_ndjson_resumes_from_a_checkpoint() -> None:
    data = b"[1]\n[2]\n[3]\n"
    items = list(sj.iter_ndjson(data))
    stream = io.BytesIO(data)
    stream.seek(items[1].offset)
    resumed = list(sj.iter_ndjson(stream, start_offset=items[1].offset, start_line=items[1].line))
    assert resumed == items[1:]


def test_iter_ndjson_requires_binary_streams() -> None:
    with pytest.raises(TypeError):
        list(sj.iter_ndjson(io.StringIO("[1]\n")))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        list(sj.iter_ndjson(42))  # type: ignore[arg-type]


def test_encode_and_write_ndjson_round_trip() -> None:
    values = [{"a": 1}, [1, "x\ny"], "s", None]
    encoded = sj.encode_ndjson(values)
    assert encoded.count(b"\n") == 4
    assert [item.value for item in sj.iter_ndjson(encoded)] == values
    out = io.BytesIO()
    assert sj.write_ndjson(out, iter(values)) == 4
    assert out.getvalue() == encoded
