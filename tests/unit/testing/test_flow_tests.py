"""``tests:`` in a flow file, run offline by ``seamline test``: the flow's own steps and runtime, the
source and sinks replaced, labelled steps mocked, lookup tables given as rows."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
from tests.helpers import ROOT, SEAMLINE, cli

from seamline import Flow, sink, source, step
from seamline.testing import run_flow_tests

FLOW = """
flow: orders
source: {file: {path: in.ndjson, id_field: id}}
steps:
  - filter: {condition: "status != 'cancelled'"}
  - http:
      label: lookup
      url: "http://127.0.0.1:9/customers/{body.customer}"
      merge: "$merge([body, {'customer_info': response.body}])"
  - map:
      label: to-canonical
      expression: "{'id': id, 'status': $uppercase(status), 'name': customer_info.name,
                    'region': $xref('regions', customer)}"
      lookups:
        regions: {sql: {url: "sqlite:///nowhere/crm.db", query: "SELECT customer_no, region FROM c"}}
  - route:
      routes:
        - {when: "region = 'EU'", to: [eu]}
        - {when: "true", to: [rest]}
sinks:
  - file: {label: eu, path: eu.ndjson}
  - file: {label: rest, path: rest.ndjson}
on_error: {retry: {max_attempts: 4, initial: 10m, max: 1h}}
tests:
%s
"""

PASSING = """
  - name: an EU order goes to the EU sink
    input: {id: SO-1, status: paid, customer: C1}
    mocks: {lookup: {returns: {id: SO-1, status: paid, customer: C1, customer_info: {name: ACME}}}}
    lookups: {regions: {C1: EU, C2: US}}
    expect:
      sinks: {eu: [{id: SO-1, status: PAID, name: ACME, region: EU}]}
  - name: cancelled orders go nowhere, the others to their region
    inputs:
      - {id: SO-2, status: cancelled, customer: C1}
      - {id: SO-3, status: new, customer: C2}
    mocks: {lookup: {returns: {id: SO-3, status: new, customer: C2, customer_info: {name: Bolt}}}}
    lookups: {regions: {C1: EU, C2: US}}
    expect:
      sinks: {rest: [{id: SO-3, status: NEW, name: Bolt, region: US}]}
  - name: a customer the CRM does not know is dead-lettered
    input: {id: SO-4, status: paid, customer: C9}
    mocks: {lookup: {raises: "404 Not Found", code: http.status.404}}
    expect:
      dead: [{step: lookup, code: http.status.404, reason: Not Found, attempts: 1}]
  - name: a lookup that keeps failing is retried (hours of backoff, no waiting), then dead-lettered
    input: {id: SO-5, status: paid, customer: C1}
    mocks: {lookup: {raises: "503 Service Unavailable", code: http.status.503, retryable: true}}
    expect:
      dead: [{step: lookup, attempts: 4}]
"""

FAILING = """
  - name: the wrong name is expected
    input: {id: SO-6, status: paid, customer: C1}
    mocks: {lookup: {returns: {id: SO-6, status: paid, customer: C1, customer_info: {name: Other}}}}
    lookups: {regions: {C1: EU}}
    expect:
      sinks: {eu: [{id: SO-6, status: PAID, name: ACME, region: EU}]}
  - name: a dead letter is expected that does not happen
    input: {id: SO-7, status: cancelled, customer: C1}
    expect:
      dead: [{step: lookup}]
  - name: output nobody expected
    input: {id: SO-8, status: paid, customer: C2}
    mocks: {lookup: {returns: {id: SO-8, status: paid, customer: C2}}}
    lookups: {regions: {C2: US}}
"""


def _write(tmp: Path, tests: str) -> Path:
    f = tmp / "orders.yaml"
    f.write_text(FLOW % tests)
    return f


def test_passing_tests_exit_0_and_say_so(tmp_path: Path) -> None:
    r = cli("test", str(_write(tmp_path, PASSING)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("pass ") == 4 and "4 passed, 0 failed" in r.stdout
    # nothing was written by the flow's own sinks, and no state was left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.yaml"]


def test_failing_tests_exit_1_and_say_what_differs(tmp_path: Path) -> None:
    r = cli("test", str(_write(tmp_path, PASSING + FAILING)), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    results = {x["test"]: x for x in orjson.loads(r.stdout)}
    assert [x["passed"] for x in results.values()] == [True] * 4 + [False] * 3
    (wrong,) = results["the wrong name is expected"]["problems"]
    assert wrong.startswith("sink 'eu', message 1: expected ") and wrong.endswith("(at name)")
    assert '"name":"Other"' in wrong
    (missing,) = results["a dead letter is expected that does not happen"]["problems"]
    assert missing == "expected a dead letter (step 'lookup'), found none"
    (unexpected,) = results["output nobody expected"]["problems"]
    assert unexpected.startswith("sink 'rest': expected 0 message(s), got 1")
    # --name picks tests
    r = cli("test", str(tmp_path / "orders.yaml"), "--name", "wrong name")
    assert r.returncode == 1 and "0 passed, 1 failed" in r.stdout and "FAIL" in r.stdout


def test_a_bad_test_is_a_config_error_with_file_and_line(tmp_path: Path) -> None:
    bad = """
  - name: a mock for a step that is not there
    input: {id: 1}
    mocks: {lookpu: {returns: {}}}
    lookups: {region: {C1: EU}}
    expect: {sinks: {euro: []}}
  - name: both
    input: {id: 1}
    inputs: [{id: 2}]
  - name: neither
  - name: mocks do one thing
    input: {id: 1}
    mocks: {lookup: {returns: {}, raises: boom}}
    expect: {output: [], sinks: {eu: []}}
"""
    f = _write(tmp_path, bad)
    for command in ("validate", "test"):
        r = cli(command, str(f))
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert any(":28:13: test 'a mock for a step that is not there': no step is labelled 'lookpu'" in x
                   and "did you mean 'lookup'?" in x for x in lines), lines
        assert any("no map step has a lookup table 'region'" in x and "did you mean 'regions'?" in x
                   for x in lines), lines
        assert any("no sink is labelled 'euro'" in x for x in lines), lines
        assert any("give either input or inputs, not both" in x for x in lines), lines
        assert any("a test needs input (one body) or inputs" in x for x in lines), lines
        assert any("a mock either returns a body or raises an error, not both" in x for x in lines), lines
        assert any("give either output (every sink) or sinks (by label), not both" in x for x in lines), lines


async def test_flows_built_in_python_carry_tests_too(tmp_path: Path) -> None:
    fl = Flow(
        "py",
        source=source("file", path=str(tmp_path / "in.ndjson")),
        steps=[step("map", label="twice", expression="{'n': n * 2}")],
        sinks=[sink("file", path=str(tmp_path / "out.ndjson"))],
        tests=[
            {"name": "doubles", "inputs": [{"n": 1}, {"n": 2}], "expect": {"output": [{"n": 2}, {"n": 4}]}},
            {"name": "text is refused", "input": {"n": "x"}, "expect": {"dead": [{"step": "twice"}]}},
        ],
    )
    results = await run_flow_tests([fl])
    assert [(r.name, r.problems) for r in results] == [("doubles", []), ("text is refused", [])]


async def test_encoded_bodies_are_compared_as_text_and_held_messages_come_due(tmp_path: Path) -> None:
    fl = Flow(
        "xml",
        source=source("file", path=str(tmp_path / "in.ndjson")),
        steps=[step("delay", label="hold", **{"for": "6h"}),  # the test's clock runs ahead: no waiting
               step("map", expression="{'order': {'@id': id}}"),
               step("encode", format="xml")],
        sinks=[sink("file", path=str(tmp_path / "out.xml"))],
        tests=[{"name": "xml", "input": {"id": 7},
                "expect": {"output": ["<?xml version='1.0' encoding='UTF-8'?>\n<order id=\"7\"/>"]}}],
    )
    (result,) = await run_flow_tests([fl])
    assert result.problems == [], result.problems


def test_the_quickstart_flow_passes_its_own_tests() -> None:
    r = cli("test", str(ROOT / "examples" / "quickstart" / "flows"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 passed, 0 failed" in r.stdout


def test_the_kafka_example_passes_its_tests_offline_once_its_variables_are_set() -> None:
    flows = str(ROOT / "examples" / "kafka-to-postgres" / "flows")
    bare = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "DATABASE_URL")}
    r = subprocess.run([*SEAMLINE, "test", flows], env=bare, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "set the variables they name" in r.stderr, r.stdout + r.stderr
    r = cli("test", flows, env={"KAFKA_BOOTSTRAP": "-", "DATABASE_URL": "postgresql://-"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed, 0 failed" in r.stdout
