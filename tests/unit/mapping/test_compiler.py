"""The Python compiler: same results as the full engine, on the happy path and off it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seamline.mapping import UNDEFINED, MappingError, compile
from seamline.mapping.functions import ValueMaps
from seamline.mapping.lookups import InlineTable, Lookups

ORDER_MAPPING = """{
  "id": orderId,
  "status": $translate("status", status),
  "customer": {"number": customer.id, "email": $lowercase(customer.email), "tier": $xref("tiers", customer.id, "std")},
  "items": [lines.{"sku": sku, "quantity": qty, "lineTotal": $round(qty * price, 2)}],
  "total": $round($sum(lines.(qty * price)), 2),
  "count": $count(lines),
  "big": lines[qty > 2].sku,
  "label": orderId & "/" & $string(qty)
}"""


def _functions() -> dict[str, Any]:
    lookups = Lookups()
    lookups.add("tiers", InlineTable({"C-1": "gold"}))
    maps = ValueMaps({"status": {"P": "paid", "N": "new"}})
    return {"xref": lookups.xref, "translate": maps.translate}


def _outcome(evaluate: Any, data: Any) -> tuple[str, Any]:
    try:
        return "value", evaluate(data)
    except MappingError as exc:
        return "error", exc.jsonata_code


def _both(expression: Any, data: Any) -> tuple[tuple[str, Any], tuple[str, Any]]:
    compiled = _outcome(lambda d: expression.evaluate(d, undefined=UNDEFINED), data)
    engine = _outcome(expression.evaluate_engine, data)
    return compiled, engine


GOOD_ORDER = {
    "orderId": "SO-1",
    "status": "P",
    "customer": {"id": "C-1", "email": "Ada@Example.COM"},
    "lines": [{"sku": "A", "qty": 2, "price": 2.675}, {"sku": "B", "qty": 3, "price": 10}],
}


@pytest.mark.parametrize(
    "data",
    [
        GOOD_ORDER,
        {**GOOD_ORDER, "lines": []},
        {**GOOD_ORDER, "lines": {"sku": "A", "qty": 1, "price": 1}},  # one line, not an array
        {**GOOD_ORDER, "lines": [{"sku": "A", "qty": 1}]},  # a field missing
        {**GOOD_ORDER, "customer": [{"id": "C-1", "email": "A@B"}, {"id": "C-2", "email": "C@D"}]},
        {**GOOD_ORDER, "customer": None},
        {**GOOD_ORDER, "status": "X"},  # translate miss: an error on both paths
        {**GOOD_ORDER, "lines": [{"sku": "A", "qty": True, "price": 1}]},  # boolean in arithmetic
        {**GOOD_ORDER, "lines": [{"sku": "A", "qty": "2", "price": 1}]},  # string in arithmetic
        {**GOOD_ORDER, "lines": [[{"sku": "A", "qty": 1, "price": 1}]]},  # nested array
        {"orderId": "SO-2"},
        [GOOD_ORDER, GOOD_ORDER],
        "not an object",
        None,
    ],
)
def test_order_mapping_agrees_with_the_engine(data: Any) -> None:
    expression = compile(ORDER_MAPPING, functions=_functions())
    assert expression.is_compiled
    compiled, engine = _both(expression, data)
    assert compiled == engine


def test_round_is_jsonata_round_not_python_round() -> None:
    expression = compile("[$round(2.675, 2), $round(0.125, 2), $round(2.5), $round(3.5), $round(-2.5)]")
    assert expression.evaluate(None) == [2.68, 0.12, 2, 4, -2]
    assert expression.evaluate_engine(None) == [2.68, 0.12, 2, 4, -2]


def test_number_semantics() -> None:
    assert compile("1/0 = 1/0").evaluate(None) is True
    with pytest.raises(MappingError) as info:
        compile("(1/0) * 2").evaluate(None)
    assert info.value.jsonata_code == "D1001"
    assert compile("-7 % 3").evaluate(None) == -1
    assert compile("$string(0.1 + 0.2)").evaluate(None) == "0.3"
    assert compile("$string(1e21)").evaluate(None) == "1e+21"
    assert compile("$string(123456789012)").evaluate(None) == "123456789012"


def test_booleans_are_not_numbers() -> None:
    assert compile("true = 1").evaluate(None) is False
    assert compile("1 in [true, 1]").evaluate(None) is True
    with pytest.raises(MappingError) as info:
        compile("flag + 1").evaluate({"flag": True})
    assert info.value.jsonata_code == "T2001"


def test_generated_python_is_kept_for_debugging() -> None:
    expression = compile('{"a": x.y}')
    assert expression._compiled is not None
    assert expression._compiled.python_source.startswith("def __jsonata(D, B, R):")


# --- property: random documents ------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-1000, max_value=1000),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "a", "P", "N", "C-1", "x y"]),
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["sku", "qty", "price", "id", "email", "x"]), children, max_size=4)
    ),
    max_leaves=12,
)
_line = st.fixed_dictionaries(
    {},
    optional={
        "sku": st.one_of(st.sampled_from(["A", "B"]), _json),
        "qty": st.one_of(st.integers(min_value=0, max_value=9), _json),
        "price": st.one_of(st.floats(min_value=0, max_value=500, allow_nan=False), _json),
    },
)
_orders = st.fixed_dictionaries(
    {},
    optional={
        "orderId": st.one_of(st.sampled_from(["SO-1", "SO-2"]), _json),
        "status": st.sampled_from(["P", "N"]),
        "customer": st.one_of(
            st.fixed_dictionaries({"id": st.sampled_from(["C-1", "C-2"]), "email": st.sampled_from(["A@B", "x"])}),
            _json,
        ),
        "lines": st.one_of(st.lists(_line, max_size=4), _line, _json),
        "qty": _json,
    },
)

EXPRESSIONS = [
    ORDER_MAPPING,
    '{"a": x, "b": [x.y], "c": x.y.z}',
    "lines[qty > 1].sku",
    "$sum(lines.qty)",
    '$map(lines, function($l, $i) { $i & ":" & $l.sku })',
    "$filter(lines, function($l) { $l.qty > 1 })",
    "lines.qty ? lines.qty : -1",
    '{"k": $lookup(customer, "id"), "e": $exists(customer.email), "t": $type(lines)}',
    "lines{sku: $sum(qty)}",
]


_COMPILED = [compile(expr, functions=_functions()) for expr in EXPRESSIONS]


def test_random_document_expressions_are_compiled() -> None:
    assert all(expression.is_compiled for expression in _COMPILED)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_orders)
def test_compiled_matches_engine_on_random_documents(data: dict[str, Any]) -> None:
    for expression in _COMPILED:
        compiled, engine = _both(expression, data)
        assert compiled == engine, (expression.source, data)
