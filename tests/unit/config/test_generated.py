"""The committed JSON Schema and reference docs are generated from the specs and must not go stale.

They are regenerated in a fresh process, so components that tests register for themselves never
leak into the comparison.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema_rs
import orjson
from tests.helpers import ROOT, cli

from seamline.config.jsonschema import flow_schema
from seamline.core.registry import all_specs

REGENERATE = "run `make docs` and commit the result"


def test_committed_flow_schema_is_current() -> None:
    r = cli("schema")
    assert r.returncode == 0, r.stderr
    committed = (ROOT / "schema" / "flow.schema.json").read_text(encoding="utf-8")
    assert committed == r.stdout, f"schema/flow.schema.json is stale: {REGENERATE}"


def test_committed_reference_docs_are_current(tmp_path: Path) -> None:
    r = cli("docs", "reference", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    ref = ROOT / "docs" / "reference"
    expected = {str(p.relative_to(tmp_path)): p.read_text(encoding="utf-8") for p in tmp_path.rglob("*.md")}
    on_disk = {str(p.relative_to(ref)): p.read_text(encoding="utf-8") for p in ref.rglob("*.md")}
    assert sorted(on_disk) == sorted(expected), f"docs/reference lists other files: {REGENERATE}"
    for name, text in expected.items():
        assert on_disk[name] == text, f"docs/reference/{name} is stale: {REGENERATE}"


def test_every_component_is_documented_with_descriptions() -> None:
    for spec in all_specs():
        if not spec.factory.__module__.startswith("seamline."):
            continue  # registered by a test for itself
        assert spec.summary, spec.name
        undocumented = [n for n, f in spec.config.model_fields.items() if not f.description]
        assert not undocumented, f"{spec.role} {spec.name}: fields without description: {undocumented}"


def test_schema_accepts_the_examples_and_rejects_typos() -> None:
    validator = jsonschema_rs.validator_for(flow_schema())
    import yaml

    for f in sorted((ROOT / "examples").rglob("flows/*.yaml")):
        doc = yaml.safe_load(f.read_text())
        errors = [e.message for e in validator.iter_errors(orjson.loads(orjson.dumps(doc)))]
        assert not errors, f"{f.name}: {errors[:3]}"
    bad = {"flow": "x", "source": {"file": {"path": "a", "formt": "csv"}}, "sinks": [{"file": {"path": "b"}}]}
    assert not validator.is_valid(bad)


def test_schema_command_prints_the_schema() -> None:
    r = cli("schema")
    assert r.returncode == 0
    assert orjson.loads(r.stdout)["title"] == "seamline flow"
