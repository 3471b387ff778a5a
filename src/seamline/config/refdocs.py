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
    while nested:
        m = nested.pop(0)
        out += ["", f"### {m.__name__}", ""]
        if m.__doc__:
            out += [" ".join(m.__doc__.split()), ""]
        out += _table(m, seen, nested)
    if spec.examples:
        out += ["", "## Examples", ""]
        for ex in spec.examples:
            out += ["```yaml", f"- {ex}" if spec.role != "source" else f"source: {{{ex}}}", "```", ""]
    out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_reference() -> dict[str, str]:
    """File name → Markdown for every registered component plus an index."""
    files: dict[str, str] = {}
    index = ["# Reference", "", "Generated from the component specs by `seamline docs reference`; do not edit.", ""]
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
