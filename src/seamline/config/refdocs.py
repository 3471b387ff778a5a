"""Reference docs for connectors and steps, generated from their specs."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from seamline.core.registry import ComponentSpec, all_specs

__all__ = ["render_reference", "write_reference"]

_ROLE_TITLES = {"source": "Sources", "step": "Steps", "sink": "Sinks"}


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(ann))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(ann))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if ann is type(None):
        return "null"
    if isinstance(ann, type):
        if issubclass(ann, BaseModel):
            return ann.__name__
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "dict": "object",
                "list": "array"}.get(ann.__name__, ann.__name__)
    return str(ann).replace("typing.", "")


def _default(f: FieldInfo) -> str:
    if f.is_required():
        return "**required**"
    if f.default_factory is not None:
        try:
            v = f.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return ""
    else:
        v = f.default
    if v is PydanticUndefined:
        return ""
    if isinstance(v, BaseModel):
        return "(see below)"
    return f"`{v!r}`" if v not in (None, "") else ("`null`" if v is None else "`''`")


def _models_in(ann: Any) -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = []
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        out.append(ann)
    for a in typing.get_args(ann) or ():
        out.extend(_models_in(a))
    return out


def _table(model: type[BaseModel], seen: set[type[BaseModel]], nested: list[type[BaseModel]]) -> list[str]:
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, f in model.model_fields.items():
        key = f.alias or name
        desc = (f.description or "").replace("|", "\\|").replace("\n", " ")
        typ = _type_name(f.annotation).replace("|", "\\|")
        lines.append(f"| `{key}` | {typ} | {_default(f)} | {desc} |")
        for m in _models_in(f.annotation):
            if m not in seen:
                seen.add(m)
                nested.append(m)
    return lines


def _section(model: type[BaseModel], level: str, seen: set[type[BaseModel]],
             nested: list[type[BaseModel]]) -> list[str]:
    """A model's heading, its docstring and its field table."""
    out = ["", f"{level} {model.__name__}", ""]
    if model.__doc__:
        out += [" ".join(model.__doc__.split()), ""]
    return out + _table(model, seen, nested)


def _nested_tables(seen: set[type[BaseModel]], nested: list[type[BaseModel]]) -> list[str]:
    """The sections of the models the tables so far refer to, and of the ones those refer to."""
    out: list[str] = []
    while nested:
        out += _section(nested.pop(0), "###", seen, nested)
    return out


def render_spec(spec: ComponentSpec) -> str:
    model = spec.config
    doc = (model.__doc__ or "").strip()
    out = [f"# `{spec.name}` {spec.role}", "", spec.summary, ""]
    if doc:
        out += [" ".join(doc.split()), ""]
    out += ["## Fields", ""]
    seen: set[type[BaseModel]] = {model}
    nested: list[type[BaseModel]] = []
    out += _table(model, seen, nested)
    out += _nested_tables(seen, nested)
    if spec.examples:
        out += ["", "## Examples", ""]
        for ex in spec.examples:
            out += ["```yaml", f"- {ex}" if spec.role != "source" else f"source: {{{ex}}}", "```", ""]
    out.append("")
    return "\n".join(out).rstrip() + "\n"


_FLOW_KEYS = (
    ("flow", "string", "**required**", "The flow's name: unique among the flows run together; it names the flow in "
     "the journal, the DLQ, checkpoints and metrics."),
    ("description", "string", "`null`", "What the flow is for, in a sentence."),
    ("source", "object", "**required**", "One source: `{CONNECTOR: {settings}}` (see Sources)."),
    ("steps", "array", "`[]`", "The steps in order, each `{STEP: {settings, label: NAME}}` (see Steps)."),
    ("sinks", "array", "**required**", "One or more sinks, each `{CONNECTOR: {settings, label: NAME}}` (see Sinks); "
     "every message goes to all of them unless a `route` step chooses."),
    ("on_error", "OnErrorConfig", "(see below)", "Retries, error classification and where dead letters go."),
    ("settings", "FlowSettings", "(see below)", "Batching, concurrency, worker processes, the journal, shutdown."),
    ("tests", "list[FlowTest]", "`[]`", "Offline tests, run by `seamline test PATH`: inputs, mocks for labelled "
     "steps, lookup rows, and the outputs or dead letters expected (see below)."),
)


def render_flow() -> str:
    """The flow file's own keys, ``on_error`` and ``settings``, from their models."""
    from seamline.config.models import FlowSettings, FlowTest, OnErrorConfig

    out = ["# The flow file", "", "One YAML file per flow (or a folder of them). Its keys:", "",
           "| key | type | default | description |", "|---|---|---|---|"]
    out += [f"| `{k}` | {t} | {d} | {desc} |" for k, t, d, desc in _FLOW_KEYS]
    seen: set[type[BaseModel]] = {OnErrorConfig, FlowSettings, FlowTest}
    nested: list[type[BaseModel]] = []
    for model in (OnErrorConfig, FlowSettings, FlowTest):
        out += _section(model, "##", seen, nested)
    out += _nested_tables(seen, nested)
    out += ["", "## Example", "", "```yaml", "flow: orders-to-crm", "source: {file: {path: in/orders.csv, "
            "format: csv, id_field: order_id}}", "steps:", "  - validate: {schema: schemas/order.json}",
            "  - map: {label: to-canonical, expression: \"{'id': order_id, 'total': $number(total)}\"}",
            "sinks:", "  - sql: {url: 'sqlite:///crm.db', table: orders, mode: upsert, key: [id]}",
            "on_error: {retry: {max_attempts: 8, max: 5m}}",
            "settings: {batch_size: 200, concurrency: 4}",
            "tests:",
            "  - name: an order becomes a CRM row",
            "    input: {order_id: SO-1, total: '12.50'}",
            "    expect: {output: [{id: SO-1, total: 12.5}]}",
            "  - name: a row the schema refuses is dead-lettered",
            "    input: {order_id: SO-2}",
            "    expect: {dead: [{step: validate}]}",
            "```", "",
            "Mocks replace a labelled step for a test: `mocks: {lookup: {returns: {...}}}` or `mocks: {lookup: "
            "{raises: 'not found', code: http.status.404}}`; `lookups: {accounts: {C1: ACC-1}}` replaces a map "
            "step's lookup table. Tests run offline in the flow's own runtime, with a clock that runs ahead "
            "while the flow waits (retries and delays take no time); a step that is not mocked runs as it is.",
            ""]
    return "\n".join(out)


def render_reference() -> dict[str, str]:
    """File name → Markdown for every registered component, the flow file, plus an index."""
    files: dict[str, str] = {"flow.md": render_flow()}
    index = ["# Reference", "", "Generated from the component specs by `seamline docs reference`; do not edit.", "",
             "- [The flow file](flow.md): its keys, `on_error` and `settings`.", ""]
    for role in ("source", "step", "sink"):
        specs = all_specs(role)  # type: ignore[arg-type]
        index += [f"## {_ROLE_TITLES[role]}", ""]
        for s in specs:
            fname = f"{role}s/{s.name}.md"
            files[fname] = render_spec(s)
            index.append(f"- [`{s.name}`]({fname}): {s.summary}")
        index.append("")
    files["README.md"] = "\n".join(index).rstrip() + "\n"
    return files


def write_reference(out: Path) -> list[Path]:
    written = []
    for name, text in render_reference().items():
        p = out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        written.append(p)
    return written
