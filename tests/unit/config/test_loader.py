"""Flow files load into the model; every problem names file:line:col, step and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers import cli

from seamline.config.loader import load_flows
from seamline.core.errors import ConfigError

GOOD = """\
flow: orders
source:
  file: {path: in.ndjson}
steps:
  - filter: {condition: "total > 0", label: positive}
  - map:
      label: to-canonical
      expression: "{'id': id}"
sinks:
  - file: {path: out.ndjson, label: erp}
"""


def write(tmp_path: Path, text: str, name: str = "flow.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def issues(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_flows(write(tmp_path, text))
    return [i.render() for i in exc.value.issues]


def test_valid_flow_loads_into_the_model(tmp_path: Path) -> None:
    (flow,) = load_flows(write(tmp_path, GOOD))
    assert flow.name == "orders"
    assert [s.label for s in flow.steps] == ["positive", "to-canonical"]
    assert [s.name for s in flow.steps] == ["filter", "map"]
    assert flow.sink_labels() == ["erp"]
    assert flow.base_dir == tmp_path.resolve()
    assert flow.on_error.retry.max_attempts == 5
    assert flow.steps[1].line == 6


def test_misspelt_field_names_file_line_column_step_and_hint(tmp_path: Path) -> None:
    text = GOOD.replace("      expression:", "      expresion:")
    (msg,) = issues(tmp_path, text)
    assert msg.endswith(
        "flow.yaml:8:7: step 'to-canonical' (map): unknown field 'expresion' (did you mean 'expression'?)"
    )


def test_unknown_step_type_is_suggested(tmp_path: Path) -> None:
    (msg,) = issues(tmp_path, GOOD.replace("  - filter:", "  - filtr:"))
    assert ":5:5: " in msg and "unknown step type 'filtr'" in msg and "did you mean 'filter'" in msg


def test_wrong_value_type_names_the_field(tmp_path: Path) -> None:
    text = GOOD + "settings: {batch_size: lots}\n"
    (msg,) = issues(tmp_path, text)
    assert ":11:" in msg and "batch_size" in msg


def test_missing_required_field_and_sinks(tmp_path: Path) -> None:
    text = "flow: x\nsource:\n  file: {format: csv}\n"
    msgs = issues(tmp_path, text)
    assert any("missing required field 'path'" in m for m in msgs)
    assert any("missing 'sinks'" in m for m in msgs)


def test_invalid_yaml_reports_position(tmp_path: Path) -> None:
    (msg,) = issues(tmp_path, "flow: x\nsource: [unclosed\n")
    assert "invalid YAML" in msg and "flow.yaml:" in msg


def test_duplicate_keys_are_rejected(tmp_path: Path) -> None:
    (msg,) = issues(tmp_path, GOOD + "flow: again\n")
    assert "duplicate key 'flow'" in msg and ":11:1" in msg


def test_unknown_top_level_key(tmp_path: Path) -> None:
    (msg,) = issues(tmp_path, GOOD + "sink: []\n")
    assert "unknown key 'sink'" in msg and "did you mean 'sinks'" in msg


def test_duplicate_labels_and_flow_names_across_files(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD, "b.yaml")
    with pytest.raises(ConfigError) as exc:
        load_flows(tmp_path)
    (dup,) = [i for i in exc.value.issues if i.code == "config.duplicate_flow"]
    assert (Path(dup.file or "").name, dup.line, dup.col) == ("b.yaml", 1, 7)
    assert dup.message.startswith("flow name 'orders' is already used at ") and dup.message.endswith("a.yaml:1")
    assert "checkpoints, journal and dead letters" in dup.render()
    text = GOOD.replace("label: positive", "label: erp")
    (msg,) = issues(tmp_path / "a.yaml", text) if False else issues(tmp_path, text)
    assert "labels must be unique" in msg


def test_unlabelled_steps_get_unique_labels(tmp_path: Path) -> None:
    text = GOOD.replace("label: positive", "").replace("{condition: \"total > 0\", }", "{condition: \"true\"}")
    text = text.replace("  - map:\n      label: to-canonical\n", "  - map:\n")
    text = text.replace("sinks:", "  - map: {expression: '$'}\nsinks:")
    (flow,) = load_flows(write(tmp_path, text))
    assert [s.label for s in flow.steps] == ["filter", "map", "map-2"]


def test_a_folder_loads_every_flow(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD.replace("flow: orders", "flow: other"), "b.yml")
    assert sorted(f.name for f in load_flows(tmp_path)) == ["orders", "other"]


def test_secret_references_resolve_and_never_print(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_DSN", "sqlite:///secret-pw.db")
    text = GOOD.replace("  - file: {path: out.ndjson, label: erp}",
                        "  - sql: {url: '${env:CRM_DSN}', table: t, label: crm}")
    (flow,) = load_flows(write(tmp_path, text))
    cfg = flow.sinks[0].config
    assert "secret-pw" not in repr(cfg) and "secret-pw" not in str(cfg.url)
    assert cfg.url.reveal() == "sqlite:///secret-pw.db"


def test_references_in_plain_settings_resolve_as_plain_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One flow file for every environment: a path, topics, a list of servers and header values take
    ``${env:...}`` / ``${file:...}``; secret settings still resolve into secrets."""
    monkeypatch.setenv("IN_DIR", "exports")
    monkeypatch.setenv("TOPIC_PREFIX", "prod")
    monkeypatch.setenv("KAFKA", "broker-1:9092")
    monkeypatch.setenv("REDIS_URL", "redis://:pw-9@cache:6379/0")
    (tmp_path / "tenant.txt").write_text("acme\n")
    text = """\
flow: env
source:
  kafka: {bootstrap_servers: '${env:KAFKA}', topics: ['${env:TOPIC_PREFIX}.orders', audit], group: g}
steps:
  - map: {expression: "{'id': id}", label: m}
sinks:
  - file: {path: '${env:IN_DIR}/out-${file:tenant.txt}.ndjson', label: erp}
  - redis: {url: '${env:REDIS_URL}', stream: s, label: cache}
  - http: {url: 'http://127.0.0.1:9/${env:TOPIC_PREFIX}', headers: {X-Env: '${env:TOPIC_PREFIX}'}, label: api}
"""
    (flow,) = load_flows(write(tmp_path, text))
    src = flow.source.config
    assert src.topics == ["prod.orders", "audit"]
    assert src.bootstrap_servers.reveal() == "broker-1:9092", "a connection setting stays a secret"
    assert flow.sinks[0].config.path == "exports/out-acme.ndjson"
    redis = flow.sinks[1].config
    assert redis.url.reveal() == "redis://:pw-9@cache:6379/0" and "pw-9" not in repr(redis)
    http = flow.sinks[2].config
    assert http.url == "http://127.0.0.1:9/prod"
    assert http.headers["X-Env"].reveal() == "prod"


def test_an_unresolved_reference_names_file_line_and_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    text = GOOD.replace("  - file: {path: out.ndjson, label: erp}",
                        "  - file: {path: '${env:NOT_SET_ANYWHERE}/out.ndjson', label: erp}")
    (problem,) = issues(tmp_path, text)
    assert problem.endswith(
        "flow.yaml:10:18: sink 'erp' (file): field 'path': environment variable 'NOT_SET_ANYWHERE' is not set"
    ), problem
    r = cli("validate", str(tmp_path / "flow.yaml"))
    assert r.returncode == 2 and "environment variable 'NOT_SET_ANYWHERE' is not set" in r.stderr


def test_a_union_without_its_type_says_which_types_there_are(tmp_path: Path) -> None:
    text = GOOD.replace("  - file: {path: out.ndjson, label: erp}",
                        "  - http: {url: 'http://127.0.0.1:9/x', auth: {bearer: {token: t}}, label: api}")
    (problem,) = issues(tmp_path, text)
    assert "field 'auth' needs 'type': one of basic, bearer, api_key" in problem
    assert "(write {type: bearer, ...}, the settings beside it)" in problem
    text = GOOD.replace("  - file: {path: out.ndjson, label: erp}",
                        "  - http: {url: 'http://127.0.0.1:9/x', auth: {type: bearr, token: t}, label: api}")
    (problem,) = issues(tmp_path, text)
    assert "field 'auth': unknown type 'bearr'" in problem and "did you mean 'bearer'?" in problem


def test_a_json_file_sink_without_id_in_its_path_is_refused(tmp_path: Path) -> None:
    """``format: json`` writes one file per message: one fixed path would keep only the last message."""
    erp = "  - file: {path: out.ndjson, label: erp}"
    text = GOOD.replace(erp, "  - file: {path: out.json, format: json, label: erp}")
    (problem,) = issues(tmp_path, text)
    assert "sink 'erp' (file): format: json writes one file per message" in problem
    assert "put {id} or {name} in the path" in problem and "Value error" not in problem
    ok = GOOD.replace(erp, "  - file: {path: 'out/{id}.json', format: json, label: erp}")
    (flow,) = load_flows(write(tmp_path, ok))
    assert flow.sinks[0].config.path == "out/{id}.json"


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD, "good.yaml")
    r = cli("validate", str(good))
    assert r.returncode == 0, r.stderr
    bad = write(tmp_path, GOOD.replace("      expression:", "      expresion:"), "bad.yaml")
    r = cli("validate", str(bad))
    assert r.returncode == 2
    assert "bad.yaml:8:7: step 'to-canonical' (map): unknown field 'expresion'" in r.stderr


def test_validate_catches_bad_expressions(tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD.replace("expression: \"{'id': id}\"", "expression: \"{'id': \""), "bad.yaml")
    r = cli("validate", str(bad))
    assert r.returncode == 2
    assert "bad.yaml:" in r.stderr and "to-canonical" in r.stderr and "expression" in r.stderr


@pytest.mark.parametrize(
    ("source", "sink"),
    [("in.ndjson", "in.ndjson"), ("data/in.ndjson", "./data/../data/in.ndjson"), ("data/*.ndjson", "data/out.ndjson")],
)
def test_a_file_sink_writing_what_the_file_source_reads_is_refused(tmp_path: Path, source: str, sink: str) -> None:
    text = GOOD.replace("path: in.ndjson", f'path: "{source}"').replace("path: out.ndjson", f'path: "{sink}"')
    (msg,) = issues(tmp_path, text)
    assert ":10:18: sink 'erp' (file): writes " in msg and "which the source reads" in msg


def test_a_file_sink_beside_the_source_is_fine(tmp_path: Path) -> None:
    text = GOOD.replace("path: in.ndjson", 'path: "in/*.ndjson"').replace("path: out.ndjson", "path: out/all.ndjson")
    (flow,) = load_flows(write(tmp_path, text))
    assert flow.sink_labels() == ["erp"]
