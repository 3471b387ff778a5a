"""The JSON Schema of flow files, generated from the registered specs."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from seamline.config.models import FlowSettings, FlowTest, OnErrorConfig
from seamline.core.registry import all_specs

__all__ = ["flow_schema", "flow_schema_text"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def flow_schema() -> dict[str, Any]:
    specs = all_specs()
    models: list[tuple[type[BaseModel], str]] = [(OnErrorConfig, "validation"), (FlowSettings, "validation"),
                                                 (FlowTest, "validation")]
    models += [(s.config, "validation") for s in specs]
    keys, top = models_json_schema(models, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top.get("$defs", {})

    def ref_of(model: type[BaseModel]) -> dict[str, Any]:
        return dict(keys[(model, "validation")])

    def choice(role: str) -> dict[str, Any]:
        options = []
        for s in specs:
            if s.role != role:
                continue
            options.append(
                {
                    "type": "object",
                    "description": s.summary,
                    "properties": {s.name: ref_of(s.config)},
                    "required": [s.name],
                    "additionalProperties": False,
                }
            )
        return {"oneOf": options}

    on_error = defs.get(OnErrorConfig.__name__)
    if on_error is not None and "dlq" in on_error.get("properties", {}):
        prop = on_error["properties"]["dlq"]
        on_error["properties"]["dlq"] = {
            "description": prop.get("description", ""),
            "default": "store",
            "anyOf": [{"const": "store"}, _ref("Sink")],
        }
    defs["Source"] = choice("source")
    defs["Step"] = choice("step")
    defs["Sink"] = choice("sink")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://seamline.dev/schema/flow.json",
        "title": "seamline flow",
        "description": "A seamline flow: one source, ordered steps, one or more sinks.",
        "type": "object",
        "properties": {
            "flow": {"type": "string", "minLength": 1, "description": "Name of the flow."},
            "description": {"type": "string"},
            "source": _ref("Source"),
            "steps": {"type": "array", "items": _ref("Step")},
            "sinks": {"type": "array", "items": _ref("Sink"), "minItems": 1},
            "on_error": ref_of(OnErrorConfig),
            "settings": ref_of(FlowSettings),
            "tests": {"type": "array", "items": ref_of(FlowTest),
                      "description": "Offline tests of the flow, run by `seamline test`."},
        },
        "required": ["flow", "source", "sinks"],
        "additionalProperties": False,
        "$defs": dict(sorted(defs.items())),
    }


def flow_schema_text() -> str:
    return orjson.dumps(flow_schema(), option=orjson.OPT_INDENT_2).decode() + "\n"
