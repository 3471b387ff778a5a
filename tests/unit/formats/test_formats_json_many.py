"""``decode_many``: a batch of documents decoded as strictly as ``decode`` does each one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seamline.formats import json as sj
from seamline.formats.errors import JsonError

GOOD = [b'{"id": 1, "at": "2026-03-27T10:00:00Z", "lines": [{"sku": "A", "qty": 2}]}', b"[1, 2.5, null]", b'"text"',
        b"42", b'{"nested": {"deeper": [[{}]]}}']

HOSTILE = [
    (b'{"a": 1, "a": 2}', "format.json.duplicate_key"),
    (b'{"a": 1, "\\u0061": 2}', "format.json.duplicate_key"),
    (b'{"a\\u003a": 1, "a:": 2}', "format.json.duplicate_key"),
    (b"NaN", "format.json.nan"),
    (("1" * 4301).encode(), "format.json.big_int"),
    (b"[1e400]", "format.json.number_range"),
    (b'{"a": tru}', "format.json.syntax"),
    (b'["ok", "\xed\xa0\x80"]', "format.json.utf8"),
    (b"[" * 65 + b"]" * 65, "format.json.depth"),
]


def _code(records: list[bytes], **kw: int) -> str:
    with pytest.raises(JsonError) as ei:
        sj.decode_many(records, **kw)
    return ei.value.code


def test_a_clean_batch_decodes_like_decode_does_each_document() -> None:
    assert sj.decode_many(GOOD) == [sj.decode(r) for r in GOOD]
    assert sj.decode_many([]) == []


@pytest.mark.parametrize(("bad", "code"), HOSTILE)
def test_one_bad_document_anywhere_in_a_batch_raises_what_decode_raises(bad: bytes, code: str) -> None:
    for at in (0, 2, len(GOOD)):
        batch = [*GOOD[:at], bad, *GOOD[at:]]
        assert _code(batch) == code


def test_long_digit_runs_and_escaped_colons_in_strings_are_fine() -> None:
    batch = [b'{"card": "12345678901234567890123"}', b'{"k": "a\\u003ab"}', b'{"n": 1234567890123456789012}']
    assert sj.decode_many(batch) == [sj.decode(r) for r in batch]
    assert sj.decode_many(batch)[2]["n"] == 1234567890123456789012  # exact, not a float


def test_integers_just_beyond_64_bits_stay_exact_beside_floats_and_long_integers_within_them() -> None:
    batch = [b'{"at_ns": 1796053676773000000, "max": 18446744073709551615}', b'{"n": 18446744073709551616}',
             b'{"n": -9223372036854775809}', b'{"x": 1e16, "y": 12345678901234567890.5, "note": "e+ in text"}']
    got = sj.decode_many(batch)
    assert got == [sj.decode(r) for r in batch]
    assert got[0] == {"at_ns": 1796053676773000000, "max": 18446744073709551615}
    assert got[1]["n"] == 2**64 and type(got[1]["n"]) is int
    assert got[2]["n"] == -(2**63) - 1 and type(got[2]["n"]) is int
    assert got[3]["x"] == 1e16 and type(got[3]["x"]) is float


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.integers(-(2**80), 2**80) | st.floats(allow_nan=False, allow_infinity=False), max_size=5),
                min_size=1, max_size=6))
def test_numbers_of_any_size_decode_as_the_standard_library_reads_them(docs: list[list[object]]) -> None:
    import json

    records = [json.dumps(d).encode() for d in docs]
    got = sj.decode_many(records)
    assert got == [json.loads(r) for r in records]
    assert [list(map(type, d)) for d in got] == [list(map(type, json.loads(r))) for r in records]


def test_depth_is_checked_per_document_not_per_batch() -> None:
    # 40 levels each: fine on their own, far beyond the limit of 64 counted over the batch
    doc = b"[" * 40 + b"]" * 40
    assert sj.decode_many([doc] * 10) == [sj.decode(doc)] * 10
    assert _code([doc, b"[" * 41 + b"]" * 41], max_depth=40) == "format.json.depth"


def test_size_limit_applies_to_each_document() -> None:
    assert sj.decode_many([b"[1]", b"[22]"], max_bytes=4) == [[1], [22]]
    assert _code([b"[1]", b"[1, 2, 3]"], max_bytes=4) == "format.json.too_large"


def test_a_byte_order_mark_is_skipped_as_decode_skips_it() -> None:
    assert sj.decode_many([b"\xef\xbb\xbf[1]", b"[2]"]) == [[1], [2]]


_SCALARS = st.integers(-(2**63), 2**63 - 1) | st.text(max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=4), _SCALARS, max_size=4), max_size=8),
       st.integers(min_value=0, max_value=8))
def test_matches_decode_on_generated_batches_with_a_planted_duplicate(docs: list[dict[str, object]], at: int) -> None:
    import orjson

    records = [orjson.dumps(d) for d in docs]
    assert sj.decode_many(records) == [sj.decode(r) for r in records]
    bad = b'{"x": 1, "x": 1}'
    records.insert(min(at, len(records)), bad)
    assert _code(records) == "format.json.duplicate_key"
