"""The data-mapping specification: one row per target field, as Markdown or HTML.

``seamline docs mapping`` renders these rows so that the document analysts
read is generated from the mapping that runs, never written twice.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seamline.mapping.api import Expression

__all__ = ["SpecRow", "render_html", "render_markdown", "rows_for_expression"]

#: the target of a whole-document expression that is not an object constructor
DOCUMENT = "(document)"


@dataclass(frozen=True)
class SpecRow:
    """One target field of a mapping and where its value comes from."""

    target: str
    expression: str
    sources: list[str] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)
    value_maps: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)


def rows_for_expression(expr: Expression) -> list[SpecRow]:
    """Rows for a whole-document expression: one per field when it builds an object, else one row."""
    from seamline.mapping.analysis import object_fields

    rows: list[SpecRow] = []
    for target, part in object_fields(expr.source):
        rows.append(
            SpecRow(
                target=target,
                expression=part.source,
                sources=part.paths,
                lookups=part.tables,
                value_maps=part.value_maps,
                functions=part.functions,
            )
        )
    if rows:
        return rows
    return [
        SpecRow(
            target=DOCUMENT,
            expression=expr.source,
            sources=expr.referenced_paths(),
            lookups=expr.referenced_tables(),
            value_maps=expr.referenced_value_maps(),
            functions=expr.referenced_functions(),
        )
    ]


_HEADERS = ("Target field", "Expression", "Source fields", "Lookup tables", "Value maps")


def _cells(row: SpecRow) -> tuple[str, str, str, str, str]:
    return (
        row.target,
        " ".join(row.expression.split()),
        ", ".join(row.sources),
        ", ".join(row.lookups),
        ", ".join(row.value_maps),
    )


def _md(text: str, code: bool = False) -> str:
    text = text.replace("|", "\\|")
    if code and text:
        fence = "``" if "`" in text else "`"
        pad = " " if "`" in text else ""
        return f"{fence}{pad}{text}{pad}{fence}"
    return text


def render_markdown(rows: Iterable[SpecRow]) -> str:
    """A Markdown table of the rows (GitHub-flavoured; pipes escaped)."""
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    for row in rows:
        target, expression, sources, lookups, value_maps = _cells(row)
        lines.append(
            "| "
            + " | ".join(
                [_md(target, code=True), _md(expression, code=True), _md(sources), _md(lookups), _md(value_maps)]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def render_html(rows: Iterable[SpecRow]) -> str:
    """An HTML ``<table>`` of the rows (all text escaped)."""
    out = ['<table class="mapping-spec">', "  <thead><tr>"]
    out.extend(f"    <th>{html.escape(h)}</th>" for h in _HEADERS)
    out.append("  </tr></thead>")
    out.append("  <tbody>")
    for row in rows:
        target, expression, sources, lookups, value_maps = _cells(row)
        out.append("  <tr>")
        out.append(f"    <td><code>{html.escape(target)}</code></td>")
        out.append(f"    <td><code>{html.escape(expression)}</code></td>")
        for cell in (sources, lookups, value_maps):
            out.append(f"    <td>{html.escape(cell)}</td>")
        out.append("  </tr>")
    out.append("  </tbody>")
    out.append("</table>")
    return "\n".join(out) + "\n"
