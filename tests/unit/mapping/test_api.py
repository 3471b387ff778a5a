"""The public API of seamline.mapping: compile, Expression, UNDEFINED, what an expression reads."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from tests.unit.mapping.helpers import PATHS, run

import seamline.mapping as mapping
from seamline.mapping import UNDEFINED, Expression, MappingError, compile

EXPECTED_API = {
    "UNDEFINED",
    "CsvLookup",
    "Expression",
    "HttpLookup",
    "LimitsConfig",
    "LookupConfig",
    "MapConfig",
    "Mapping",
    "MappingError",
    "SpecRow",
    "SqlLookup",
    "build_mapping",
    "compile",
    "register_function",
    "render_html",
    "render_markdown",
    "unregister_function",
}

ORDER = {
    "order": {
        "id": "SO-1",
        "customer": {"id": "C-7", "name": "Ada"},
        "lines": [{"sku": "A", "qty": 2, "price": 2.5}, {"sku": "B", "qty": 1, "price": 10}],
    }
}


def test_all_is_pinned() -> None:
    assert set(mapping.__all__) == EXPECTED_API
    for name in mapping.__all__:
        assert getattr(mapping, name) is not None


def test_compile_returns_an_expression_with_its_source() -> None:
    expression = compile("order.id")
    assert isinstance(expression, Expression)
    assert expression.source == "order.id"
    assert expression.limits == (1000, 500, 1_000_000)
    assert expression.evaluate(ORDER) == "SO-1"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("order.customer.name", "Ada"),
        ("order.lines.sku", ["A", "B"]),
        ("$sum(order.lines.(qty * price))", 15),
        ("order.lines[qty > 1].sku", "A"),
        ('{"n": $count(order.lines), "first": order.lines[0].sku}', {"n": 2, "first": "A"}),
        ('[order.lines.{"s": sku}]', [{"s": "A"}, {"s": "B"}]),
        ("($x := 3; $x * 2)", 6),
        ('order.customer.name & " (" & order.customer.id & ")"', "Ada (C-7)"),
    ],
)
def test_evaluates_the_same_on_both_paths(path: str, expr: str, expected: Any) -> None:
    assert run(compile(expr), ORDER, path) == expected


def test_undefined_is_none_by_default_and_distinct_on_request() -> None:
    missing = compile("order.nothing")
    null = compile("order.none")
    data = {"order": {"none": None}}
    assert missing.evaluate(data) is None
    assert null.evaluate(data) is None
    assert missing.evaluate(data, undefined=UNDEFINED) is UNDEFINED
    assert null.evaluate(data, undefined=UNDEFINED) is None


def test_undefined_is_a_falsy_singleton() -> None:
    assert not UNDEFINED
    assert repr(UNDEFINED) == "UNDEFINED"
    assert type(UNDEFINED)() is UNDEFINED


@pytest.mark.parametrize("path", PATHS)
def test_no_input_document(path: str) -> None:
    assert run(compile("1 + 2"), UNDEFINED, path) == 3
    assert run(compile("$"), UNDEFINED, path) is UNDEFINED


@pytest.mark.parametrize("path", PATHS)
def test_bindings_are_variables(path: str) -> None:
    expression = compile("price * $rate")
    assert run(expression, {"price": 10}, path, {"rate": 1.5}) == 15
    assert run(expression, {"price": 10}, path, {"$rate": 2}) == 20


def test_callable_bindings_are_functions() -> None:
    expression = compile("$twice(price)")
    assert expression.evaluate({"price": 4}, {"twice": lambda v: v * 2}) == 8


def test_an_array_input_is_one_document() -> None:
    expression = compile("$count($)")
    assert expression.evaluate([1, 2, 3]) == 3
    assert compile("a").evaluate([{"a": 1}, {"a": 2}]) == [1, 2]


def test_referenced_paths_and_functions() -> None:
    expression = compile(
        '{"id": order.id, "total": $sum(order.lines.(qty * price)), "c": $xref("customers", order.customer.id)}'
    )
    assert expression.referenced_paths() == [
        "order.id",
        "order.lines.qty",
        "order.lines.price",
        "order.customer.id",
    ]
    assert expression.referenced_functions() == ["sum", "xref"]
    assert expression.referenced_tables() == ["customers"]


def test_referenced_paths_follow_variables_and_function_parameters() -> None:
    expression = compile("($o := order; $map($o.lines, function($l) { $l.sku }))")
    assert "order.lines.sku" in expression.referenced_paths()
    assert compile("$translate('status', state)").referenced_value_maps() == ["status"]


def test_common_mappings_are_compiled() -> None:
    for expr in [
        "order.id",
        '{"a": order.id, "b": [order.lines.{"s": sku}], "c": $sum(order.lines.qty)}',
        "$uppercase(order.customer.name)",
        "order.lines[qty > 1]",
        "$map(order.lines, function($l) { $l.qty * 2 })",
        "order.total ? order.total : 0",
    ]:
        assert compile(expr).is_compiled, expr


def test_rest_of_jsonata_runs_on_the_engine() -> None:
    expression = compile('$replace(order.id, /SO-/, "S")')
    assert not expression.is_compiled
    assert expression.evaluate(ORDER) == "S1"


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout_ms"):
        compile("1", timeout_ms=0)
    with pytest.raises(MappingError):
        compile(42)  # type: ignore[arg-type]


def test_one_expression_is_safe_to_share_between_threads() -> None:
    expression = compile('{"n": $count(items), "s": $sum(items)}')
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for _ in range(200):
                assert expression.evaluate({"items": list(range(n))}) == {"n": n, "s": sum(range(n))}
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in (3, 5, 8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
