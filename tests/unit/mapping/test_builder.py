"""build_mapping: the `map` step's transformation, its errors and its specification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from seamline.mapping import MapConfig, MappingError, build_mapping, render_html, render_markdown

ORDER = {
    "id": "SO-1",
    "status": "P",
    "createdAt": "2024-07-01T10:00:00Z",
    "customer": {"id": "C-1", "country": "DE", "email": "Ada@Example.com"},
    "lines": [{"sku": "A", "qty": 2, "price": 2.5}, {"sku": "B", "qty": 1, "price": 10}],
}


def _config(**kwargs: Any) -> MapConfig:
    base: dict[str, Any] = {
        "lookups": {
            "countries": {"inline": {"DE": "Germany"}},
            "codes": {"csv": {"path": "codes.csv", "key": "code", "value": "label"}},
        },
        "value_maps": {"status": {"P": "paid", "N": "new"}},
    }
    base.update(kwargs)
    return MapConfig.model_validate(base)


@pytest.fixture
def flow_dir(tmp_path: Path) -> Path:
    (tmp_path / "codes.csv").write_text("code,label\nA,Apple\nB,Banana\n", encoding="utf-8")
    return tmp_path


def test_fields_build_nested_output(flow_dir: Path) -> None:
    mapping = build_mapping(
        _config(
            fields={
                "orderId": "id",
                "customer.number": "customer.id",
                "customer.country": "$xref('countries', customer.country)",
                "customer.email": "$lowercase(customer.email)",
                "status": "$translate('status', status)",
                "placedAt": "$toTimezone(createdAt, 'Europe/Berlin')",
                "items": "[lines.{'sku': sku, 'label': $xref('codes', sku)}]",
                "total": "$sum(lines.(qty * price))",
                "discount": "discount",
            }
        ),
        base_dir=flow_dir,
    )
    assert mapping.apply(ORDER) == {
        "orderId": "SO-1",
        "customer": {"number": "C-1", "country": "Germany", "email": "ada@example.com"},
        "status": "paid",
        "placedAt": "2024-07-01T12:00:00+02:00",
        "items": [{"sku": "A", "label": "Apple"}, {"sku": "B", "label": "Banana"}],
        "total": 15,
    }


def test_expression_mode(flow_dir: Path) -> None:
    mapping = build_mapping(_config(expression='{"id": id, "n": $count(lines)}'), base_dir=flow_dir)
    assert mapping.apply(ORDER) == {"id": "SO-1", "n": 2}
    assert build_mapping(_config(expression="nothing"), base_dir=flow_dir).apply(ORDER) is None


def test_bindings_reach_every_field(flow_dir: Path) -> None:
    mapping = build_mapping(_config(fields={"source": "$source", "id": "id"}), base_dir=flow_dir)
    assert mapping.apply(ORDER, {"source": "webhook"}) == {"source": "webhook", "id": "SO-1"}


def test_field_errors_name_the_target_field(flow_dir: Path) -> None:
    mapping = build_mapping(
        _config(fields={"id": "id", "country": "$xref('countries', customer.country)"}), base_dir=flow_dir
    )
    with pytest.raises(MappingError) as info:
        mapping.apply({**ORDER, "customer": {"country": "FR"}})
    error = info.value
    assert error.code == "mapping.xref_miss"
    assert error.details["field"] == "country"
    assert error.details["table"] == "countries"
    assert error.message.startswith("field 'country': ")


def test_unknown_tables_and_value_maps_fail_at_build_time(flow_dir: Path) -> None:
    with pytest.raises(MappingError) as table:
        build_mapping(_config(fields={"c": "$xref('currencies', cur)"}), base_dir=flow_dir)
    assert table.value.code == "mapping.xref_table"
    assert table.value.details == {"table": "currencies", "field": "c"}
    with pytest.raises(MappingError) as value_map:
        build_mapping(_config(expression="$translate('colours', c)"), base_dir=flow_dir)
    assert value_map.value.code == "mapping.translate_map"


def test_missing_csv_fails_at_build_time(tmp_path: Path) -> None:
    with pytest.raises(MappingError) as info:
        build_mapping(_config(expression="1"), base_dir=tmp_path)
    assert info.value.details["table"] == "codes"


def test_limits_apply_to_every_expression(flow_dir: Path) -> None:
    mapping = build_mapping(_config(fields={"r": "[1..2000]"}, limits={"max_sequence": 1000}), base_dir=flow_dir)
    with pytest.raises(MappingError) as info:
        mapping.apply({})
    assert info.value.details["limit"] == "sequence"
    assert info.value.details["field"] == "r"


def test_spec_rows_for_fields(flow_dir: Path) -> None:
    mapping = build_mapping(
        _config(
            fields={
                "customer.country": "$xref('countries', customer.country)",
                "status": "$translate('status', status)",
                "total": "$sum(lines.(qty * price))",
            }
        ),
        base_dir=flow_dir,
    )
    rows = mapping.spec_rows()
    assert [row.target for row in rows] == ["customer.country", "status", "total"]
    assert rows[0].sources == ["customer.country"]
    assert rows[0].lookups == ["countries"]
    assert rows[1].value_maps == ["status"]
    assert rows[2].sources == ["lines.qty", "lines.price"]
    assert rows[2].functions == ["sum"]


def test_spec_rows_split_an_object_expression(flow_dir: Path) -> None:
    mapping = build_mapping(
        _config(expression='{"id": id, "customer": {"country": $xref("countries", customer.country)}}'),
        base_dir=flow_dir,
    )
    rows = mapping.spec_rows()
    assert [(row.target, row.expression) for row in rows] == [
        ("id", "id"),
        ("customer.country", '$xref("countries", customer.country)'),
    ]
    assert rows[1].lookups == ["countries"]


def test_spec_of_a_non_object_expression_is_one_row(flow_dir: Path) -> None:
    rows = build_mapping(_config(expression="$sum(lines.price)"), base_dir=flow_dir).spec_rows()
    assert len(rows) == 1
    assert rows[0].target == "(document)"
    assert rows[0].sources == ["lines.price"]


def test_rendered_specification(flow_dir: Path) -> None:
    mapping = build_mapping(_config(fields={"a|b": "x & '|'", "c": "$xref('countries', '<DE>')"}), base_dir=flow_dir)
    markdown = render_markdown(mapping.spec_rows())
    assert markdown.splitlines()[0] == "| Target field | Expression | Source fields | Lookup tables | Value maps |"
    assert "`a\\|b`" in markdown
    assert "countries" in markdown
    html = render_html(mapping.spec_rows())
    assert html.startswith('<table class="mapping-spec">')
    assert "&lt;DE&gt;" in html and "<DE>" not in html


def test_fields_form_runs_as_one_compiled_function(flow_dir: Path) -> None:
    fields = {"a.x": "p", "a.y": "q", "b": "$uppercase(r)", "c.d.e": "missing"}
    mapping = build_mapping(_config(fields=fields), base_dir=flow_dir)
    assert mapping._combined is not None
    data = {"p": 1, "q": [1, 2], "r": "s"}
    expected = {"a": {"x": 1, "y": [1, 2]}, "b": "S", "c": {"d": {}}}
    assert mapping.apply(data) == expected
    assert mapping._apply_fields(data, None) == expected  # the field-by-field form agrees


def test_fields_that_need_the_engine_run_one_by_one(flow_dir: Path) -> None:
    mapping = build_mapping(_config(fields={"a": "p", "b": "$replace(q, /x/, 'y')"}), base_dir=flow_dir)
    assert mapping._combined is None
    assert mapping.apply({"p": 1, "q": "xx"}) == {"a": 1, "b": "yy"}
