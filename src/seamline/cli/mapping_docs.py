"""``seamline docs mapping``: the data-mapping specification of a flow's map steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seamline.cli.common import console


def _rows(flow: Any) -> list[tuple[str, list[Any]]]:
    from seamline.mapping import build_mapping

    out = []
    for ref in flow.steps:
        if ref.name != "map":
            continue
        m = build_mapping(ref.config, base_dir=flow.base_dir)
        out.append((ref.label, m.spec_rows()))
    return out


def mapping_docs(flows: list[Any], out: Path | None) -> None:
    from seamline.mapping import render_html, render_markdown

    c = console()
    for fl in flows:
        sections = _rows(fl)
        if not sections:
            continue
        md = [f"# Data mapping: {fl.name}\n"]
        if fl.description:
            md.append(fl.description.strip() + "\n")
        html_parts = [f"<h1>Data mapping: {fl.name}</h1>"]
        for label, rows in sections:
            md.append(f"## Step `{label}`\n")
            md.append(render_markdown(rows))
            html_parts.append(f"<h2>Step {label}</h2>")
            html_parts.append(render_html(rows))
        text = "\n".join(md)
        if out is None:
            c.print(text, markup=False)
            continue
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{fl.name}-mapping.md").write_text(text, encoding="utf-8")
        html = "<!doctype html><meta charset='utf-8'><title>" + fl.name + "</title>" + "\n".join(html_parts)
        (out / f"{fl.name}-mapping.html").write_text(html, encoding="utf-8")
        c.print(f"wrote {out / (fl.name + '-mapping.md')} and .html")
