"""MapConfig: the `map:` block of a flow file, validated with clear messages."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from seamline.mapping import LookupConfig, MapConfig


def test_expression_form() -> None:
    config = MapConfig.model_validate({"expression": '{"id": order.id}'})
    assert config.fields is None
    assert config.limits.timeout_ms == 1000
    assert config.limits.max_depth == 500
    assert config.limits.max_sequence == 1_000_000


def test_fields_form_with_lookups_value_maps_and_limits() -> None:
    config = MapConfig.model_validate(
        {
            "fields": {"customer.id": "order.customer.id", "status": "$translate('status', order.status)"},
            "lookups": {
                "countries": {"inline": {"DE": "Germany"}, "on_miss": "default", "default": "?"},
                "codes": {"csv": {"path": "codes.csv", "key": "code", "value": "name", "delimiter": ";"}},
                "segments": {"sql": {"url": "sqlite:///x.db", "query": "SELECT id, seg FROM s", "ttl": 60}},
                "crm": {"http": {"url": "https://crm.example.com/c/{key}", "value_path": "data.name"}},
            },
            "value_maps": {"status": {"A": "active"}},
            "limits": {"timeout_ms": 250, "max_depth": 100, "max_sequence": 1000},
        }
    )
    assert config.lookups["countries"].source_kind == "inline"
    assert config.lookups["codes"].source_kind == "csv"
    assert config.lookups["segments"].sql is not None and config.lookups["segments"].sql.ttl == 60
    assert config.lookups["crm"].source_kind == "http"
    assert config.limits.timeout_ms == 250


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "exactly one of 'expression'"),
        ({"expression": "a", "fields": {"x": "a"}}, "exactly one of 'expression'"),
        ({"fields": {}}, "at least one target field"),
        ({"expression": "a", "label": "x"}, "Extra inputs are not permitted"),
        ({"fields": {"a": "x", "a.b": "y"}}, "inside target field 'a'"),
        ({"fields": {"a..b": "x"}}, "empty segment"),
        ({"expression": "a", "limits": {"timeout_ms": 0}}, "greater than 0"),
        ({"expression": "a", "lookups": {"t": {}}}, "exactly one source"),
        (
            {"expression": "a", "lookups": {"t": {"inline": {}, "csv": {"path": "p", "key": "k", "value": "v"}}}},
            "got inline, csv",
        ),
        ({"expression": "a", "lookups": {"t": {"inline": {}, "on_miss": "ignore"}}}, "'fail' or 'default'"),
        ({"expression": "a", "lookups": {"t": {"http": {"url": "https://x/y"}}}}, "must contain {key}"),
    ],
)
def test_invalid_configs_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MapConfig.model_validate(data)


def test_a_syntax_error_names_the_field_and_shows_a_caret() -> None:
    with pytest.raises(ValidationError) as info:
        MapConfig.model_validate({"fields": {"total": "$sum(lines.price"}})
    text = str(info.value)
    assert "field 'total'" in text
    assert "mapping.S0203" in text
    assert "$sum(lines.price\n" in text


def test_every_field_is_documented() -> None:
    from seamline.mapping import CsvLookup, HttpLookup, LimitsConfig, SqlLookup

    for model in (MapConfig, LookupConfig, CsvLookup, SqlLookup, HttpLookup, LimitsConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
    schema = MapConfig.model_json_schema()
    assert schema["additionalProperties"] is False
    assert "expression" in schema["properties"]
