"""Integration functions ($xref, $translate, $uuid, $hash, ...), the standard functions seamline
supplies ($random, $clone) and user functions, on both paths."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from tests.unit.mapping.helpers import PATHS, run

from seamline.core.errors import RetryableError
from seamline.mapping import MappingError, compile, register_function, unregister_function
from seamline.mapping.functions import ValueMaps
from seamline.mapping.lookups import InlineTable, Lookups


@pytest.fixture
def tables() -> dict[str, Any]:
    lookups = Lookups()
    lookups.add("countries", InlineTable({"DE": "Germany", "42": "Answer"}))
    lookups.add("segments", InlineTable({"C-1": "gold"}), on_miss="default", default="standard")
    maps = ValueMaps({"status": {"A": "active", "1": "one"}})
    return {"xref": lookups.xref, "translate": maps.translate}


@pytest.mark.parametrize("path", PATHS)
def test_xref_finds_the_value(path: str, tables: dict[str, Any]) -> None:
    expression = compile("$xref('countries', c)", functions=tables)
    assert run(expression, {"c": "DE"}, path) == "Germany"
    assert run(expression, {"c": 42}, path) == "Answer"  # keys are also tried as text


@pytest.mark.parametrize("path", PATHS)
def test_xref_miss_fails_naming_table_and_key(path: str, tables: dict[str, Any]) -> None:
    expression = compile("$xref('countries', c)", functions=tables)
    with pytest.raises(MappingError) as info:
        run(expression, {"c": "FR"}, path)
    assert info.value.code == "mapping.xref_miss"
    assert info.value.details == {"table": "countries", "key": "FR"}
    assert "'FR'" in info.value.message and "'countries'" in info.value.message


@pytest.mark.parametrize("path", PATHS)
def test_xref_default_argument_and_on_miss_default(path: str, tables: dict[str, Any]) -> None:
    assert run(compile("$xref('countries', 'FR', 'unknown')", functions=tables), {}, path) == "unknown"
    assert run(compile("$xref('segments', 'C-9')", functions=tables), {}, path) == "standard"
    assert run(compile("$xref('segments', 'C-1')", functions=tables), {}, path) == "gold"


@pytest.mark.parametrize("path", PATHS)
def test_xref_of_a_missing_key_is_null(path: str, tables: dict[str, Any]) -> None:
    assert run(compile("$xref('countries', nothing)", functions=tables), {}, path) is None


def test_xref_unknown_table() -> None:
    with pytest.raises(MappingError) as info:
        compile("$xref('nope', 'x')").evaluate({})
    assert info.value.code == "mapping.xref_table"


@pytest.mark.parametrize("path", PATHS)
def test_translate(path: str, tables: dict[str, Any]) -> None:
    assert run(compile("$translate('status', s)", functions=tables), {"s": "A"}, path) == "active"
    assert run(compile("$translate('status', 1)", functions=tables), {}, path) == "one"
    assert run(compile("$translate('status', 'Z', 'other')", functions=tables), {}, path) == "other"
    with pytest.raises(MappingError) as info:
        run(compile("$translate('status', 'Z')", functions=tables), {}, path)
    assert info.value.code == "mapping.translate_miss"
    assert info.value.details == {"value_map": "status", "code": "Z"}


@pytest.mark.parametrize("path", PATHS)
def test_uuid_is_a_fresh_v4(path: str) -> None:
    expression = compile("[$uuid(), $uuid()]")
    first, second = run(expression, {}, path)
    assert first != second
    assert uuid.UUID(first).version == 4
    assert re.fullmatch(r"[0-9a-f-]{36}", first)


@pytest.mark.parametrize("path", PATHS)
def test_random_gives_numbers_from_zero_to_below_one(path: str) -> None:
    """``$random()`` is standard JSONata; the embedded engine names it but has no implementation."""
    numbers = run(compile("[1..200].$random()"), {}, path)
    assert len(numbers) == 200 and len(set(numbers)) == 200
    assert all(isinstance(x, float) and 0.0 <= x < 1.0 for x in numbers)
    assert run(compile("{'id': id, 'sample': $random() < 0.5 ? 'a' : 'b'}"), {"id": 7}, path)["sample"] in "ab"


@pytest.mark.parametrize("path", PATHS)
def test_clone_copies_deeply(path: str) -> None:
    data = {"order": {"lines": [{"sku": "A", "qty": 1}], "tags": ["x"]}}
    copied = run(compile("$clone(order)"), data, path)
    assert copied == data["order"]
    copied["lines"][0]["qty"] = 99
    assert data["order"]["lines"][0]["qty"] == 1, "the copy shares nothing with the input"
    assert run(compile("order ~> $clone()"), data, path) == data["order"]
    assert run(compile("$clone(nothing)"), data, path) is None


def test_now_formats_with_a_picture_and_a_timezone() -> None:
    """``$now(picture[, timezone])`` formats the time as ``$fromMillis`` does (the embedded engine's
    ``$now`` took no arguments); every ``$now()`` and ``$millis()`` of one evaluation read one clock."""
    before = int(time.time() * 1000)
    day, clock, shifted, iso, ms, zoned = compile(
        "[$now('[Y0001]-[M01]-[D01]'), $now('[H01]:[m01] [Z]', '+0530'), $now(undefined, '-0500'), $now(), "
        "$millis(), $now('[Y0001]-[M01]-[D01]T[H01]:[m01]:[s01].[f001][Z]', '+0100')]"
    ).evaluate({})
    after = int(time.time() * 1000)
    assert before <= ms <= after
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    assert iso == moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    assert day == moment.strftime("%Y-%m-%d")
    assert clock == (moment + timedelta(hours=5, minutes=30)).strftime("%H:%M") + " +05:30"
    assert datetime.fromisoformat(shifted) == moment and shifted.endswith("-05:00")
    assert datetime.fromisoformat(zoned) == moment
    assert datetime.fromisoformat(zoned).utcoffset() == timezone(timedelta(hours=1)).utcoffset(None)
    with pytest.raises(MappingError) as info:
        compile("$now(5)").evaluate({})
    assert info.value.code == "mapping.T0410" and "$now" in info.value.message


@pytest.mark.parametrize("path", PATHS)
def test_now_and_millis_read_one_clock_per_evaluation(path: str) -> None:
    expression = compile("{'a': $now(), 'b': [1..50].$now(), 'ms': $millis(), 'ms2': [1..50].$millis()}")
    out = run(expression, {}, path)
    assert set(out["b"]) == {out["a"]} and set(out["ms2"]) == {out["ms"]}
    moment = datetime.fromtimestamp(out["ms"] / 1000, UTC)
    assert out["a"] == moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{out['ms'] % 1000:03d}Z"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5", "sha512", "blake2b"])
def test_hash(path: str, algorithm: str) -> None:
    expected = hashlib.new(algorithm, "héllo".encode()).hexdigest()
    assert run(compile(f"$hash('{algorithm}', text)"), {"text": "héllo"}, path) == expected


@pytest.mark.parametrize("path", PATHS)
def test_hash_rejects_unknown_algorithms_and_passes_null(path: str) -> None:
    with pytest.raises(MappingError) as info:
        run(compile("$hash('crc32', 'x')"), {}, path)
    assert info.value.code == "mapping.hash"
    assert run(compile("$hash('md5', nothing)"), {}, path) is None


@pytest.fixture
def registered() -> Iterator[list[tuple[Any, ...]]]:
    calls: list[tuple[Any, ...]] = []

    def score(value: Any, weight: Any = 1) -> Any:
        calls.append((value, weight))
        return None if value is None else value * weight

    register_function("score", score)
    yield calls
    unregister_function("score")


@pytest.mark.parametrize("path", PATHS)
def test_registered_function_receives_plain_values(path: str, registered: list[tuple[Any, ...]]) -> None:
    expression = compile("$score(n, 3)")
    assert run(expression, {"n": 2}, path) == 6
    assert run(expression, {}, path) is None  # undefined arrives as None; None comes back as null
    assert registered == [(2, 3), (None, 3)]


def test_register_function_applies_to_later_compiles(registered: list[tuple[Any, ...]]) -> None:
    assert compile("$score(2)").evaluate({}) == 2
    unregister_function("score")
    with pytest.raises(MappingError) as info:
        compile("$score(2)").evaluate({})
    assert info.value.jsonata_code == "T1006"


@pytest.mark.parametrize("path", PATHS)
def test_per_compile_functions(path: str) -> None:
    expression = compile("$slug(name)", functions={"slug": lambda s: s.lower().replace(" ", "-")})
    assert run(expression, {"name": "Hello World"}, path) == "hello-world"


def test_extra_arguments_are_dropped_for_narrow_functions() -> None:
    expression = compile("$map([1, 2], $double)", functions={"double": lambda v: v * 2})
    assert expression.evaluate_engine({}) == [2, 4]
    assert compile("$double(2, 3, 4)", functions={"double": lambda v: v * 2}).evaluate({}) == 4


@pytest.mark.parametrize("path", PATHS)
def test_function_exceptions_become_mapping_errors(path: str) -> None:
    def broken(_: Any) -> Any:
        raise KeyError("nope")

    with pytest.raises(MappingError) as info:
        run(compile("$broken(1)", functions={"broken": broken}), {}, path)
    assert info.value.code == "mapping.function_error"
    assert info.value.details == {"function": "broken"}
    assert "KeyError" in info.value.message


@pytest.mark.parametrize("path", PATHS)
def test_retryable_errors_pass_through(path: str) -> None:
    def flaky(_: Any) -> Any:
        raise RetryableError("CRM timed out", code="sink.http.timeout")

    with pytest.raises(RetryableError) as info:
        run(compile("$flaky(1)", functions={"flaky": flaky}), {}, path)
    assert info.value.code == "sink.http.timeout"


def test_function_names_are_checked() -> None:
    with pytest.raises(ValueError, match="built-in"):
        register_function("sum", lambda *a: 0)
    with pytest.raises(ValueError, match="identifier"):
        register_function("$bad", lambda *a: 0)
    with pytest.raises(TypeError):
        register_function("fine", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="built-in"):
        compile("1", functions={"count": lambda *a: 0})
