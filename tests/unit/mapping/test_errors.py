"""MappingError: JSONata code, stable seamline code, position, caret rendering."""

from __future__ import annotations

import pickle

import pytest
from tests.unit.mapping.helpers import PATHS, run

from seamline.core.errors import FatalError, classify
from seamline.mapping import MappingError, compile


def test_is_a_fatal_error_with_a_stable_code() -> None:
    error = MappingError("boom", jsonata_code="T2001", position=4)
    assert isinstance(error, FatalError)
    assert classify(error) is False
    assert error.code == "mapping.T2001"
    assert error.jsonata_code == "T2001"
    assert error.message == "boom"
    assert error.position == 4
    assert str(error) == "[mapping.T2001] boom (at character 4)"


@pytest.mark.parametrize(
    ("expr", "code", "position"),
    [
        ("1 +", "S0207", 3),
        ('{"a" 1}', "S0202", 5),
        ('"abc', "S0101", 0),
        ("$sum(a) /* note", "S0106", 8),
        ("a ? b :", "S0207", 7),
        ("[1, 2", "S0203", 5),
    ],
)
def test_syntax_errors_carry_code_and_position(expr: str, code: str, position: int) -> None:
    with pytest.raises(MappingError) as info:
        compile(expr)
    assert info.value.jsonata_code == code
    assert info.value.code == f"mapping.{code}"
    assert info.value.position == position
    assert info.value.expression == expr


def test_caret_points_at_the_position() -> None:
    with pytest.raises(MappingError) as info:
        compile('{"a" 1}')
    assert info.value.caret('{"a" 1}') == '{"a" 1}\n     ^'
    assert info.value.caret() == '{"a" 1}\n     ^'


def test_caret_on_a_multi_line_expression_shows_the_line() -> None:
    expr = '{\n  "a": x,\n  "b" y\n}'
    with pytest.raises(MappingError) as info:
        compile(expr)
    assert info.value.caret(expr) == '3 |   "b" y\n          ^'


def test_caret_without_position_is_the_expression() -> None:
    assert MappingError("x").caret("a.b") == "a.b"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("expr", "code"),
    [
        ('1 + "a"', "T2002"),
        ('"a" - 1', "T2001"),
        ("$sum(['a'])", "T0412"),
        ("$uppercase(5)", "T0410"),
        ("[1,2] < 3", "T2010"),
        ('$error("stop here")', "D3137"),
        ("$assert(false)", "D3141"),
        ('{"a": 1, "a": 2}', "D1009"),
    ],
)
def test_evaluation_errors_carry_the_jsonata_code(path: str, expr: str, code: str) -> None:
    with pytest.raises(MappingError) as info:
        run(compile(expr), {}, path)
    assert info.value.jsonata_code == code
    assert info.value.code == f"mapping.{code}"


def test_error_function_message_is_kept() -> None:
    with pytest.raises(MappingError, match="stop here"):
        compile('$error("stop here")').evaluate({})


def test_pickles_with_its_details() -> None:
    error = MappingError("m", jsonata_code="xref_miss", position=2, expression="e", details={"table": "t"})
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.jsonata_code, copy.position, copy.expression, copy.details) == (
        "mapping.xref_miss",
        "xref_miss",
        2,
        "e",
        {"table": "t"},
    )
