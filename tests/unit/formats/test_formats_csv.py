"""seamline.formats.csv: dialects, typed columns, per-row errors, checkpoints, safe writing."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import IO, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seamline.formats import csv as sc
from seamline.formats.errors import CsvError

FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

ORDERS = (
    b"id,name,price,paid,day,at\r\n"
    b'1,"M\xc3\xbcller, A",1.50,yes,2024-01-02,2024-01-02T10:00:00+00:00\r\n'
    b'2,"two\r\nlines",2,false,,\r\n'
)
TYPES: dict[str, Any] = {"id": "int", "price": Decimal, "paid": "bool", "day": "date", "at": "datetime"}


def rows(data: bytes | IO[bytes], **kwargs: Any) -> list[sc.CsvRow]:
    return list(sc.CsvReader(data, **kwargs))


def errors(data: bytes, **kwargs: Any) -> list[tuple[int, str]]:
    return [(r.line, r.error.code) for r in rows(data, **kwargs) if r.error is not None]


# --------------------------------------------------------------------------- reading


def test_reads_typed_rows_with_positions() -> None:
    reader = sc.CsvReader(io.BytesIO(ORDERS), columns=TYPES)
    result = list(reader)
    assert reader.fieldnames == ["id", "name", "price", "paid", "day", "at"]
    assert [r.values for r in result] == [
        {
            "id": 1,
            "name": "Müller, A",
            "price": Decimal("1.50"),
            "paid": True,
            "day": date(2024, 1, 2),
            "at": datetime(2024, 1, 2, 10, tzinfo=UTC),
        },
        {"id": 2, "name": "two\r\nlines", "price": Decimal("2"), "paid": False, "day": None, "at": None},
    ]
    first, second = result
    assert (first.line, first.end_line, first.offset) == (1 + 1, 2, ORDERS.index(b"1,"))
    assert first.end_offset == second.offset == ORDERS.index(b'2,"two')
    assert (second.line, second.end_line, second.end_offset) == (3, 4, len(ORDERS))
    assert second.checkpoint == sc.Checkpoint(len(ORDERS), 5)
    assert all(r.ok and r.raw is None for r in result)


def test_utf8_bom_is_ignored_in_the_header() -> None:
    assert rows(b"\xef\xbb\xbfa,b\n1,2\n")[0].values == {"a": "1", "b": "2"}


def test_blank_lines_are_skipped_but_counted() -> None:
    result = rows(b"a\n\n1\n\r\n2\n")
    assert [(r.line, r.values) for r in result] == [(3, {"a": "1"}), (5, {"a": "2"})]


def test_dialects() -> None:
    semicolon = sc.CsvDialect(delimiter=";", quotechar="'", header=False)
    assert [r.values for r in rows(b"a;'b;c'\n", dialect=semicolon)] == [["a", "b;c"]]
    escaped = sc.CsvDialect(escapechar="\\", doublequote=False, header=False)
    assert [r.values for r in rows(b'a\\,b,"q\\"x"\n', dialect=escaped)] == [["a,b", 'q"x']]
    unquoted = sc.CsvDialect(quotechar=None, delimiter="\t", header=False)
    assert [r.values for r in rows(b'"a"\tb\n', dialect=unquoted)] == [['"a"', "b"]]
    latin1 = sc.CsvDialect(encoding="latin-1")
    assert rows("n\nGrüße\n".encode("latin-1"), dialect=latin1)[0].values == {"n": "Grüße"}
    spaced = sc.CsvDialect(skip_initial_space=True)
    assert rows(b"a, b\n1, 2\n", dialect=spaced)[0].values == {"a": "1", "b": "2"}


def test_fieldnames_without_header() -> None:
    no_header = sc.CsvDialect(header=False)
    result = rows(b"1,x\n2,y\n", dialect=no_header, fieldnames=["n", "s"], columns={"n": int})
    assert [r.values for r in result] == [{"n": 1, "s": "x"}, {"n": 2, "s": "y"}]
    # without names, the first row decides the field count
    assert errors(b"1,2\n3\n", dialect=no_header) == [(2, "format.csv.field_count")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delimiter": ",,"}, "delimiter"),
        ({"delimiter": "\n"}, "delimiter"),
        ({"quotechar": ","}, "differ"),
        ({"escapechar": '"'}, "differ"),
        ({"encoding": "utf-16"}, "ASCII-compatible"),
        ({"encoding": "no-such-codec"}, "unknown"),
        ({"line_terminator": "\n\n"}, "line_terminator"),
    ],
)
def test_bad_dialects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CsvError) as info:
        sc.CsvDialect(**kwargs)
    assert info.value.code == "format.csv.dialect"
    assert message in info.value.message


def test_bad_column_specs() -> None:
    with pytest.raises(CsvError) as info:
        sc.CsvReader(b"a\n", columns={"a": "money"})
    assert info.value.code == "format.csv.dialect"
    with pytest.raises(CsvError):
        sc.CsvReader(b"1\n", dialect=sc.CsvDialect(header=False), columns={"a": int})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"a,a\n1,2\n", "twice"),
        (b"a,,c\n", "no name"),
        (b'a,"b\n', "malformed"),
        (b"a,b\n", "typed columns"),
    ],
)
def test_bad_headers_stop_the_reader(data: bytes, message: str) -> None:
    with pytest.raises(CsvError) as info:
        rows(data, columns={"zz": int} if message == "typed columns" else None)
    assert info.value.code == "format.csv.header"
    assert message in info.value.message


def test_empty_input_has_no_rows() -> None:
    assert rows(b"") == []
    assert rows(b"a,b\n") == []


def test_malformed_rows_are_reported_and_reading_goes_on() -> None:
    data = (
        b"id,name\n"
        b"1,ok\n"
        b"2\n"  # too few fields
        b"3,b,extra\n"  # too many
        b'4,"bad"quote\n'  # text after a closing quote
        b"x,typed\n"  # not an int
        b"5,\xff\xfe\n"  # not UTF-8
        b"6,fine\n"
        b'7,"never closed\n'
        b"8,swallowed\n"
    )
    result = rows(data, columns={"id": int})
    assert [(r.line, r.error.code if r.error else r.values) for r in result] == [
        (2, {"id": 1, "name": "ok"}),
        (3, "format.csv.field_count"),
        (4, "format.csv.field_count"),
        (5, "format.csv.quote"),
        (6, "format.csv.type"),
        (7, "format.csv.encoding"),
        (8, {"id": 6, "name": "fine"}),
        (9, "format.csv.quote"),
    ]
    unclosed = result[-1]
    assert (unclosed.line, unclosed.end_line, unclosed.end_offset) == (9, 10, len(data))
    assert unclosed.raw == b'7,"never closed\n8,swallowed\n'
    assert result[1].raw == b"2\n"
    assert result[4].error is not None and result[4].error.details["column"] == "id"
    assert "line 6" in result[4].error.message
    assert result[2].error is not None and result[2].error.details["fields"] == 3


def test_over_long_fields_and_records(bounded: Callable[..., Any]) -> None:
    data = b"a,b\n" + b"1," + b"x" * 500 + b"\n" + b"2,ok\n"
    assert errors(data, max_field_chars=100) == [(2, "format.csv.field_too_long")]
    huge_line = b"1," + b"y" * 3_000_000 + b"\n"
    with bounded():
        result = rows(b"a,b\n" + huge_line + b"2,ok\n", max_record_bytes=10_000)
    assert [(r.line, r.error.code if r.error else r.values) for r in result] == [
        (2, "format.csv.record_too_long"),
        (3, {"a": "2", "b": "ok"}),
    ]
    assert result[0].raw is None
    assert result[1].offset == 4 + len(huge_line)


def test_the_csv_modules_own_field_limit_is_a_row_error() -> None:
    data = b'a,b\n1,"' + b"z" * 200_000 + b'"\n2,ok\n'
    assert errors(data, max_record_bytes=1_000_000) == [(2, "format.csv.field_too_long")]


def test_unclosed_quote_in_a_long_file_stays_linear(bounded: Callable[..., Any]) -> None:
    body = b"".join(b'%d,"open\n' % i for i in range(20_000))
    with bounded():
        result = rows(b"a,b\n" + body, max_record_bytes=4096)
    assert all(r.error is not None for r in result)
    assert sum(r.end_line - r.line + 1 for r in result) == 20_000


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("int", [("-12", -12), ("+3", 3), ("", None)], ["1.0", "1_000", " 1", "١", "9" * 5000]),  # noqa: RUF001
        ("float", [("1.5e3", 1500.0), (".5", 0.5), ("-2", -2.0)], ["nan", "inf", "1e999", "1,5", "0x10"]),
        ("decimal", [("10.50", Decimal("10.50")), ("-1e2", Decimal("-1e2"))], ["NaN", "Infinity", "1_0", "€1"]),
        ("bool", [("TRUE", True), ("n", False), ("0", False), ("Yes", True)], ["maybe", "2"]),
        ("date", [("2024-02-29", date(2024, 2, 29))], ["2023-02-29", "02/01/2024", "today"]),
        ("datetime", [("2024-01-02 03:04:05", datetime(2024, 1, 2, 3, 4, 5))], ["2024-13-01T00:00"]),
        ("str", [("", ""), (" x ", " x ")], []),
    ],
)
def test_column_types(kind: str, good: list[tuple[str, Any]], bad: list[str]) -> None:
    def csv_of(text: str) -> bytes:
        return sc.encode([{"v": text}], neutralize_formulas=False)

    for text, value in good:
        assert sc.decode(csv_of(text), columns={"v": kind}) == [{"v": value}]
    for text in bad:
        with pytest.raises(CsvError) as info:
            sc.decode(csv_of(text), columns={"v": kind})
        assert info.value.code == "format.csv.type", text


def test_column_options() -> None:
    german = sc.Column("date", format="%d.%m.%Y")
    assert sc.decode(b"d\n24.12.2024\n", columns={"d": german}) == [{"d": date(2024, 12, 24)}]
    required = sc.Column(int, required=True)
    with pytest.raises(CsvError, match="required"):
        sc.decode(b"n,m\n,1\n", columns={"n": required})
    with pytest.raises(CsvError, match="required"):
        sc.decode(b"n,m\n,1\n", columns={"n": sc.Column("str", required=True)})


def test_decode_raises_the_first_row_error() -> None:
    with pytest.raises(CsvError) as info:
        sc.decode(b"a,b\n1,2\n3\n4\n")
    assert info.value.code == "format.csv.field_count"
    assert info.value.details["line"] == 3


# --------------------------------------------------------------------------- checkpoints


def test_resuming_from_any_checkpoint_gives_the_remaining_rows() -> None:
    data = b'a,b\n1,x\n2,"multi\nline"\n3,y\nbad\n4,z\n'
    everything = rows(data)
    for index, row in enumerate(everything):
        resumed = rows(io.BytesIO(data), resume=row.checkpoint)
        assert [(r.line, r.offset, r.values) for r in resumed] == [
            (r.line, r.offset, r.values) for r in everything[index + 1 :]
        ]


def test_resuming_from_the_start_reads_everything() -> None:
    data = b"a\n1\n2\n"
    assert [r.values for r in rows(data, resume=sc.Checkpoint(0, 1))] == [{"a": "1"}, {"a": "2"}]


def test_resume_needs_a_seekable_stream() -> None:
    class Pipe:
        def readline(self, size: int = -1) -> bytes:
            return b""

    with pytest.raises(TypeError):
        list(sc.CsvReader(Pipe(), resume=sc.Checkpoint(10, 2)))


# --------------------------------------------------------------------------- writing


def test_writer_neutralises_formula_injection_by_default() -> None:
    out = sc.encode(
        [
            {"a": '=HYPERLINK("http://x")', "b": "+1", "c": "-2", "d": "@SUM(A1)"},
            {"a": "\tx", "b": "\rcr", "c": -5, "d": "safe = text"},
        ]
    )
    assert out == (b'a,b,c,d\r\n"\'=HYPERLINK(""http://x"")",\'+1,\'-2,\'@SUM(A1)\r\n\'\tx,"\'\rcr",-5,safe = text\r\n')
    raw = sc.encode([{"a": "=1+2"}], neutralize_formulas=False)
    assert raw == b"a\r\n=1+2\r\n"
    assert sc.neutralize("=x") == "'=x" and sc.neutralize("x=") == "x="


def test_writer_formats_values_and_streams() -> None:
    stream = io.BytesIO()
    writer = sc.CsvWriter(stream, fieldnames=["n", "d", "b", "none", "dt"])
    assert (
        writer.writerows(
            [
                {
                    "n": Decimal("1.10"),
                    "d": date(2024, 1, 2),
                    "b": True,
                    "none": None,
                    "dt": datetime(2024, 1, 2, 3, 4),
                },
                {"n": 2.5},
            ]
        )
        == 2
    )
    assert stream.getvalue() == b"n,d,b,none,dt\r\n1.10,2024-01-02,true,,2024-01-02T03:04:00\r\n2.5,,,,\r\n"
    assert writer.rows_written == 2


def test_writer_dialect_and_sequences() -> None:
    dialect = sc.CsvDialect(delimiter=";", header=False, line_terminator="\n", quote_all=True)
    assert sc.encode([[1, "a;b"], ("x", None)], dialect=dialect) == b'"1";"a;b"\n"x";""\n'
    latin1 = sc.CsvDialect(encoding="latin-1")
    assert sc.encode([{"n": "é"}], dialect=latin1) == b"n\r\n\xe9\r\n"


def test_empty_export_still_has_a_header() -> None:
    assert sc.encode([], fieldnames=["a", "b"]) == b"a,b\r\n"


@pytest.mark.parametrize(
    ("rows_", "kwargs"),
    [
        ([{"a": 1}, {"a": 1, "b": 2}], {}),
        ([{"a": object()}], {}),
        (["not a row"], {}),
        ([{"a": "€"}], {"dialect": sc.CsvDialect(encoding="latin-1")}),
        ([["a,b"]], {"dialect": sc.CsvDialect(quotechar=None, header=False)}),
    ],
)
def test_writer_errors(rows_: list[Any], kwargs: dict[str, Any]) -> None:
    with pytest.raises(CsvError) as info:
        sc.encode(rows_, **kwargs)
    assert info.value.code == "format.csv.encode"


cells = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=10)


@FAST
@given(
    st.lists(st.lists(cells, min_size=3, max_size=3), min_size=1, max_size=8),
    st.sampled_from([",", ";", "\t", "|"]),
    st.booleans(),
)
def test_write_read_round_trip(table: list[list[str]], delimiter: str, quote_all: bool) -> None:
    dialect = sc.CsvDialect(delimiter=delimiter, quote_all=quote_all, header=False)
    data = sc.encode(table, dialect=dialect, neutralize_formulas=False)
    result = rows(data, dialect=dialect)
    assert [r.values for r in result] == table
    assert result[-1].end_offset == len(data)


@FAST
@given(st.lists(cells, min_size=1, max_size=5))
def test_neutralised_cells_never_start_a_formula(values: list[str]) -> None:
    data = sc.encode([values], dialect=sc.CsvDialect(header=False))
    for row in rows(data, dialect=sc.CsvDialect(header=False)):
        assert row.values is not None
        for original, cell in zip(values, row.values, strict=True):
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
            assert cell in (original, "'" + original)
