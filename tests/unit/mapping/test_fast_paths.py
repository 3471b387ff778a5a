"""Fast paths of the generated code: each must give exactly what the general code (and the engine) gives.

Covered: ``$round`` inlined with a near-tie guard, ``$xref``/``$translate``
over a literal table read directly, ``$toTimezone`` with a literal zone
resolved once, the single-function evaluation used by ``Mapping.apply``,
and the per-expression evaluation state (limits still enforced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.unit.mapping.helpers import PATHS, run

from seamline.core.errors import RetryableError
from seamline.mapping import UNDEFINED, MapConfig, MappingError, build_mapping, compile
from seamline.mapping.compiler.runtime import State
from seamline.mapping.compiler.values import Seq
from seamline.mapping.functions import NOT_CONSTANT, ValueMaps, specialise
from seamline.mapping.lookups import MISSING, HttpTable, InlineTable, Lookups
from seamline.mapping.timezones import to_timezone, to_timezone_in


def _outcome(evaluate: Any, data: Any) -> tuple[str, Any]:
    try:
        return "value", evaluate(data)
    except MappingError as exc:
        details = exc.details if exc.jsonata_code.startswith(("xref", "translate", "tz", "timezone")) else None
        return "error", (exc.jsonata_code, details)


def _agree(expression: Any, data: Any) -> Any:
    """Compiled and engine results (or errors) are the same; returns the compiled outcome."""
    assert expression.is_compiled
    compiled = _outcome(lambda d: expression.evaluate(d, undefined=UNDEFINED), data)
    engine = _outcome(expression.evaluate_engine, data)
    assert compiled == engine, (expression.source, data)
    return compiled


# --- $round ----------------------------------------------------------------------------------

#: decimal ties (half-even on the decimal form), values just beside them, and unusual numbers
ROUND_VALUES = [
    2.675, 1.005, 0.125, 0.135, 0.145, 1.115, 2.5, 3.5, -2.675, -0.125, -1.005, 0.0049999, 0.005, 0.015,
    1.0049999999, 1.00500001, 12.344999, 12.345001, 1e10 + 0.015, 123456.785, 0.1 + 0.2, 1 / 3, -1 / 3,
    1e-9, -1e-9, 1e300, -1e300, 5e15 + 0.5, 7, -7, 0, 1234567.891,
]  # fmt: skip


@pytest.mark.parametrize("value", ROUND_VALUES)
@pytest.mark.parametrize("digits", [1, 2, 3])
def test_inline_round_agrees_with_the_engine(value: float, digits: int) -> None:
    _agree(compile(f"$round(x, {digits})"), {"x": value})
    # speculative form: inside an object, over a product of fields
    _agree(compile(f'{{"r": $round(x * y, {digits})}}'), {"x": value, "y": 1})
    # the loop form of the speculative code
    _agree(compile(f'{{"r": [items.{{"v": $round(x, {digits})}}]}}'), {"items": [{"x": value}, {"x": value}]})


def test_inline_round_of_odd_operands_agrees_with_the_engine() -> None:
    for data in ({"x": "1.5"}, {"x": True}, {"x": None}, {}, {"x": [1.005, 2.675]}):
        _agree(compile("$round(x, 2)"), data)
        _agree(compile('{"r": $round(x, 2)}'), data)


def test_round_of_a_literal_is_compiled() -> None:
    expression = compile("$round(2.675, 2) + $round(3, 2)")
    assert _agree(expression, {}) == ("value", 2.68 + 3)


# --- $sum in the speculative loop ------------------------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [[], [{"q": 2, "p": 1.5}], [{"q": 2, "p": 1.5}, {"q": 1, "p": 0.25}], [{"q": 1}], [{"q": "x", "p": 1}]],
)
def test_sum_loop_agrees_with_the_engine(lines: list[dict[str, Any]]) -> None:
    _agree(compile('{"total": $sum(lines.(q * p)), "n": $count(lines)}'), {"lines": lines})


# --- $xref / $translate over a literal table ---------------------------------------------------


def _tables() -> tuple[Lookups, ValueMaps, dict[str, Any]]:
    lookups = Lookups()
    lookups.add("countries", InlineTable({"DE": "Germany", "42": "Answer", "L": [1, 2]}))
    lookups.add("segments", InlineTable({"C-1": "gold"}), on_miss="default", default="standard")
    maps = ValueMaps({"status": {"A": "active", "1": "one"}})
    return lookups, maps, {"xref": lookups.xref, "translate": maps.translate}


def test_literal_table_reads_the_table_directly() -> None:
    lookups, maps, functions = _tables()
    for source in ("$xref('countries', c)", '{"v": $xref("countries", c)}', "$translate('status', c)"):
        expression = compile(source, functions=functions)
        assert expression._compiled is not None
        assert "MISS" in expression._compiled.python_source
    assert specialise(lookups.xref, ["countries", NOT_CONSTANT]) is not None
    assert specialise(maps.translate, ["status", NOT_CONSTANT]) is not None
    assert specialise(lookups.xref, [NOT_CONSTANT, NOT_CONSTANT]) is None
    assert specialise(lookups.xref, ["nope", NOT_CONSTANT]) is None


@pytest.mark.parametrize("source", ["$xref('countries', c)", '{"v": $xref("countries", c)}'])
@pytest.mark.parametrize("key", ["DE", 42, 42.0, "FR", None, True, [1], ["DE", "DE"], "L", {"a": 1}])
def test_xref_over_a_literal_table_agrees_with_the_engine(source: str, key: Any) -> None:
    _agree(compile(source, functions=_tables()[2]), {"c": key})
    _agree(compile(source, functions=_tables()[2]), {})


@pytest.mark.parametrize(
    "source",
    [
        "$xref('segments', c)",
        "$xref('segments', c, 'other')",
        "$xref('countries', c, 'other')",
        '{"v": $xref("segments", c, "x"), "w": $translate("status", c, "none")}',
        "$translate('status', c)",
        "$translate('status', c, 'other')",
        '{"v": $translate("status", c)}',
    ],
)
@pytest.mark.parametrize("key", ["C-1", "C-9", "A", 1, "1", None, "Z"])
def test_defaults_and_misses_over_a_literal_table(source: str, key: Any) -> None:
    _agree(compile(source, functions=_tables()[2]), {"c": key})


@pytest.mark.parametrize("path", PATHS)
def test_replacing_a_table_after_compiling_is_seen(path: str) -> None:
    lookups, _, functions = _tables()
    expression = compile('{"v": $xref("countries", c)}', functions=functions)
    table = lookups.table("countries")
    assert run(expression, {"c": "DE"}, path) == {"v": "Germany"}
    lookups.add("countries", InlineTable({"DE": "Deutschland"}))
    assert run(expression, {"c": "DE"}, path) == {"v": "Deutschland"}
    assert table.get("DE") == "Germany"  # the replaced table keeps its data
    lookups.add("countries", _Changing())
    assert lookups.view("countries") is None
    assert run(expression, {"c": "DE"}, path) == {"v": "first"}
    assert run(expression, {"c": "DE"}, path) == {"v": "second"}


class _Changing:
    """A table whose answers change (like a SQL table after its ttl): never read directly."""

    def __init__(self) -> None:
        self.answers = ["first", "second"]

    def get(self, key: Any) -> Any:
        return self.answers.pop(0) if self.answers else MISSING

    def describe(self) -> str:
        return "changing"


def test_tables_that_may_change_are_not_read_directly() -> None:
    lookups = Lookups()
    lookups.add("remote", HttpTable("http://example.invalid/{key}", fetch=_unavailable))
    assert lookups.view("remote") is None
    expression = compile("$xref('remote', c)", functions={"xref": lookups.xref})
    with pytest.raises(RetryableError):
        expression.evaluate({"c": "x"})


def _unavailable(url: str, timeout: float) -> tuple[int, bytes]:
    raise OSError("down")


def test_a_table_holding_tuples_is_not_read_directly() -> None:
    lookups = Lookups()
    lookups.add("t", InlineTable({"a": (1, 2)}))
    assert lookups.view("t") is None
    assert compile("$xref('t', 'a')", functions={"xref": lookups.xref}).evaluate({}) == [1, 2]
    assert ValueMaps({"m": {"a": (1, 2)}}).view("m") is None


def test_a_user_function_named_xref_is_not_specialised() -> None:
    calls: list[Any] = []

    def xref(table: Any, key: Any) -> Any:
        calls.append((table, key))
        return "mine"

    expression = compile('{"v": $xref("countries", c)}', functions={"xref": xref})
    assert expression.evaluate({"c": "DE"}) == {"v": "mine"}
    assert calls == [("countries", "DE")]


# --- $toTimezone with a literal zone ---------------------------------------------------------


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-03-31T00:30:00Z",
        "2024-03-31T02:30:00",  # nonexistent local time
        "2024-10-27T02:30:00",  # ambiguous local time
        "2024-01-01T10:00:00.123+01:00",
        "2024-01-01T10:00:00.123456Z",
        1_700_000_000_000,
        None,
        "not a time",
        True,
        [1],
    ],
)
@pytest.mark.parametrize(
    "source",
    [
        "$toTimezone(t, 'Europe/Berlin')",
        "$toTimezone(t, 'Europe/Berlin', 'later')",
        "$toTimezone(t, 'Europe/Berlin', 'reject')",
        "$toTimezone(t, 'Europe/Berlin', 'bogus')",
        '{"v": $toTimezone(t, "America/New_York")}',
        "$toTimezone(t, 'Mars/Olympus')",
    ],
)
def test_to_timezone_with_a_literal_zone_agrees_with_the_engine(stamp: Any, source: str) -> None:
    _agree(compile(source), {"t": stamp})


def test_to_timezone_in_is_to_timezone() -> None:
    for stamp in ("2024-03-31T00:30:00Z", "2024-03-31T02:30:00", 1_700_000_000_000, None):
        for policy in ("compatible", "earlier", "later", None):
            assert to_timezone_in("Europe/Berlin", policy)(stamp) == to_timezone(stamp, "Europe/Berlin", policy)
    with pytest.raises(MappingError):
        to_timezone_in("Mars/Olympus")
    assert specialise(to_timezone, [NOT_CONSTANT, "Mars/Olympus"]) is None
    assert specialise(to_timezone, [NOT_CONSTANT, NOT_CONSTANT]) is None
    assert specialise(to_timezone, [NOT_CONSTANT, "UTC", NOT_CONSTANT]) is None


# --- evaluation entry points -----------------------------------------------------------------


def test_mapping_apply_uses_the_compiled_function() -> None:
    config = MapConfig.model_validate({"expression": "{'a': x, 'b': y}"})
    mapping = build_mapping(config, base_dir=Path.cwd())
    assert mapping._run is not None
    assert mapping.apply({"x": 1}) == {"a": 1}
    assert mapping.apply({"x": 1}, {"unused": 2}) == {"a": 1}
    config = MapConfig.model_validate({"expression": "nothing"})
    assert build_mapping(config, base_dir=Path.cwd()).apply({"x": 1}) is None


def test_a_sequence_result_is_a_plain_list() -> None:
    expression = compile("a.b")
    result = expression.evaluate({"a": [{"b": 1}, {"b": 2}]})
    assert result == [1, 2] and result.__class__ is list
    assert compile("a.b[]").evaluate({"a": {"b": 1}}).__class__ is list


def test_compiled_run_reports_limits() -> None:
    expression = compile("[1..10000000]", max_sequence=1000)
    assert expression.runner is not None
    with pytest.raises(MappingError) as info:
        expression.runner({})
    assert info.value.details.get("limit") == "sequence"
    slow = compile("($f := function($n) { $n = 0 ? 0 : $f($n - 1) + 0 }; [1..200].($f(400)))", timeout_ms=1)
    with pytest.raises(MappingError) as info:
        slow.evaluate({})
    assert info.value.details.get("limit") in ("timeout", "depth")


def test_state_holds_the_limits_of_its_expression() -> None:
    state = State.start(250, 7)
    assert state.timeout_ms == 250 and state.max_sequence == 7 and state.deadline > 0
    assert state.now() == state.now()
    with pytest.raises(Exception, match="exceeds the limit of 7"):
        state.size(8)
    other = State.start(1000, 1_000_000)
    assert other.max_sequence == 1_000_000 and state.max_sequence == 7
    assert State.limited(250, 7) is type(state) and State.limited(250, 8) is not type(state)
    assert isinstance(Seq([1]), list)


_ARRAY_PATH_DATA = [
    {"lines": [{"sku": "a"}, {"sku": "b"}]},
    {"lines": [{"sku": "a"}]},  # a singleton collapses
    {"lines": []},  # nothing: undefined
    {"lines": [{"sku": "a"}, {"qty": 1}]},  # an item without the field is skipped
    {"lines": [{"sku": ["a", "b"]}, {"sku": "c"}]},  # array values are spliced
    {"lines": [{"sku": "a"}, 5, "x"]},  # items that are not objects
    {"lines": [[{"sku": "a"}], {"sku": "b"}]},  # nested arrays
    {"lines": {"sku": "a"}},  # an object, not an array
    {"lines": "text"},
    {"lines": None},
    {"other": 1},
    {"a": [{"b": {"c": 1}}, {"b": {"c": 2}}]},
    {"a": [{"b": [{"c": 1}, {"c": 2}]}]},
    {"a": {"b": [{"c": 1}]}},
]


@pytest.mark.parametrize("data", _ARRAY_PATH_DATA)
@pytest.mark.parametrize("expr", [
    "lines.sku",
    "{'skus': lines.sku, 'n': $count(lines)}",
    "{'c': a.b.c, 'x': a.b}",
    "$count(lines.sku)",
    "[lines.sku]",
])
def test_paths_through_arrays_agree_with_the_engine(expr: str, data: Any) -> None:
    """Speculative code maps a path step over an array of objects exactly as JSONata does."""
    _agree(compile(expr), data)
