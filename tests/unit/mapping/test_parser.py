"""The JSONata parser: syntax-tree shape, positions, spans, and expression analysis."""

from __future__ import annotations

import pytest

from seamline.mapping.analysis import analyse, object_fields
from seamline.mapping.compiler.parser import ParseError, parse


def test_paths_and_predicates_follow_the_reference_tree() -> None:
    tree = parse("a.b[0].c")
    assert tree.type == "path"
    assert [step.value for step in tree.steps] == ["a", "b", "c"]
    assert tree.steps[1].stages[0].expr.value == 0


def test_literals_in_paths_are_names() -> None:
    tree = parse('a."b c"')
    assert [step.type for step in tree.steps] == ["name", "name"]
    with pytest.raises(ParseError) as info:
        parse("a.1")
    assert info.value.code == "S0213"


def test_unary_minus_on_a_number_is_folded() -> None:
    tree = parse("-5")
    assert (tree.type, tree.value) == ("number", -5)


def test_spans_cover_whole_sub_expressions() -> None:
    source = '{"total": $sum(lines.(qty * price)), "n": (x ? 1 : 2)}'
    tree = parse(source)
    spans = [source[value.span[0] : value.span[1]] for _, value in tree.lhs]
    assert spans == ["$sum(lines.(qty * price))", "(x ? 1 : 2)"]


@pytest.mark.parametrize(
    ("source", "code", "start"),
    [
        ("1 +", "S0207", 3),
        ('"open', "S0101", 0),
        ("`open", "S0105", 0),
        ("a /* open", "S0106", 2),
        ('"\\q"', "S0103", 2),
        ("x := 1", "S0212", 0),
        ("function(a) { a }", "S0208", 9),
        ("a ! b", "S0204", 2),
        ("a ~ b", "S0204", 2),
        ("$match(a, //)", "S0301", 10),
        ("1e999", "S0102", 0),
    ],
)
def test_syntax_errors(source: str, code: str, start: int) -> None:
    with pytest.raises(ParseError) as info:
        parse(source)
    assert (info.value.code, info.value.start) == (code, start)


def test_comments_and_regexes() -> None:
    tree = parse("/* c */ $match(s, /a[/]b/i)")
    regex = tree.arguments[1]
    assert regex.type == "regex"
    assert (regex.value.pattern, regex.value.flags) == ("a[/]b", "i")


def test_analysis_collects_what_an_expression_reads() -> None:
    facts = analyse('order.lines[qty > 1].{"sku": sku, "name": $xref("products", sku)}')
    assert facts.paths == ["order.lines.qty", "order.lines.sku"]
    assert facts.functions == ["xref"]
    assert facts.tables == ["products"]


def test_analysis_of_invalid_source_keeps_the_error() -> None:
    facts = analyse("a +")
    assert facts.ast is None
    assert facts.error is not None and facts.error.code == "S0207"


def test_object_fields_split_literal_objects() -> None:
    fields = object_fields('{"a": x, "b": {"c": $sum(y.z), "d": {}}}')
    assert [(target, part.source, part.paths) for target, part in fields] == [
        ("a", "x", ["x"]),
        ("b.c", "$sum(y.z)", ["y.z"]),
        ("b.d", "{}", []),
    ]
    assert object_fields("[1, 2]") == []
    assert object_fields('{"a" & "b": 1}') == []
