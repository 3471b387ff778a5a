"""The soap connector against a real SOAP service (spyne, started by the test suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.integration.soap.conftest import PASSWORD, USER, Crm

from seamline import Engine, Flow, Message, open_store, sink, source, step
from seamline.config.types import parse_duration
from seamline.connectors.soap import SoapCaller, SoapOptions, fault_error
from seamline.core.component import BuildContext
from seamline.core.errors import FatalError, RetryableError
from seamline.store.base import DlqFilter
from seamline.testing.memory import channel, reset_channels

WSSE = {"username": USER, "password": "${env:CRM_PASSWORD}"}
#: the test service is on loopback, which the egress guard blocks unless allowed
LOCAL = {"egress": {"allow_loopback": True}}


@pytest.fixture(autouse=True)
def _channels() -> None:
    reset_channels()


def _flow(name: str, tmp: Path, *, steps: list[Any] | None = None, sinks: list[Any] | None = None,
          retry: dict[str, Any] | None = None) -> Flow:
    return Flow(
        name,
        source=source("memory", channel=f"{name}-in"),
        steps=steps or [],
        sinks=sinks or [sink("memory", channel=f"{name}-out")],
        settings={"batch_size": 20, "concurrency": 2},
        on_error={"retry": retry or {"max_attempts": 4, "initial": 0.01, "max": 0.05}},
        base_dir=tmp,
    )


async def _run(flow: Flow, state: Path) -> Any:
    store = open_store(str(state))
    result = await Engine([flow], store, retry_poll=0.02).run(until_idle=True, install_signals=False, idle_horizon=5)
    assert result.ok, result.errors
    return result


async def _dead(state: Path, flow: str) -> dict[str, Any]:
    store = open_store(str(state))
    await store.open()
    try:
        return {d.msg_id: d for d in await store.list_dead(DlqFilter(flow=flow))}
    finally:
        await store.close()


async def _trace_text(state: Path, ids: list[str]) -> str:
    store = open_store(str(state))
    await store.open()
    try:
        lines: list[str] = []
        for i in ids:
            lines.extend(repr(e) for e in await store.trace(i))
        return "\n".join(lines)
    finally:
        await store.close()


def _caller(tmp: Path, **options: Any) -> SoapCaller:
    cfg = SoapOptions.model_validate({**LOCAL, **options})
    return SoapCaller(cfg, BuildContext(flow="t", base_dir=tmp, store=None))  # type: ignore[arg-type]


async def _call(tmp: Path, body: Any, **options: Any) -> Any:
    caller = _caller(tmp, **options)
    await caller.open()
    try:
        return await caller.call(Message(body, id="m-1"))
    finally:
        await caller.close()


# -- calls ----------------------------------------------------------------------------------------


async def test_sink_creates_customers_and_classifies_faults(crm: Crm, tmp_path: Path) -> None:
    flow = _flow("create", tmp_path, sinks=[sink(
        "soap", **LOCAL, wsdl=crm.wsdl_url, operation="CreateCustomer", wsse=WSSE, concurrency=3,
        request="{'id': cid, 'name': who.name, 'email': who.email}",
    )])
    inputs = {
        "ok-1": {"cid": "c1", "who": {"name": "Ada", "email": "ada@example.com"}},
        "ok-2": {"cid": "c2", "who": {"name": "Bob vip", "email": "bob@example.com"}},
        "flaky": {"cid": "c3", "who": {"name": "flaky", "email": "f@example.com"}},
        "bad-email": {"cid": "c4", "who": {"name": "Eve", "email": "not-an-email"}},
        "down": {"cid": "c5", "who": {"name": "down", "email": "d@example.com"}},
    }
    for mid, body in inputs.items():
        channel("create-in").put(body, id=mid)
    await _run(flow, tmp_path / "state.db")

    assert sorted(crm.received()) == ["c1", "c2", "c3"], "flaky succeeded on its third attempt"
    assert crm.state()["customers"]["c2"]["tier"] == "gold"
    dead = await _dead(tmp_path / "state.db", "create")
    assert set(dead) == {"bad-email", "down"}

    client = dead["bad-email"]
    assert client.error_code == "soap.fault.client"
    assert client.error_class == "fatal"
    assert client.attempts == 1, "a Client fault is not retried"
    details = client.error_chain[0]["details"]
    assert details["fault_code"] == "Client.Validation"
    assert details["fault_string"] == "email is invalid"
    assert details["detail"] == {"ValidationError": {"field": "email", "value": "not-an-email"}}
    assert details["operation"] == "CreateCustomer"

    server = dead["down"]
    assert server.error_code == "soap.fault.server"
    assert server.error_class == "retryable"
    assert server.attempts == 4, "a Server fault is retried until the policy gives up"
    assert "the CRM database is down" in server.error_message


async def test_call_step_merges_and_sets_the_response(crm: Crm, tmp_path: Path) -> None:
    flow = _flow("enrich", tmp_path, steps=[
        step("soap", **LOCAL, label="create", wsdl=crm.wsdl_url, operation="CreateCustomer", wsse=WSSE,
             request={"id": "customer_id", "name": "name", "email": "email"},
             merge="$merge([body, {'crm_status': response.status}])"),
        step("soap", **LOCAL, label="lookup", wsdl=crm.wsdl_url, operation="GetCustomer", wsse=WSSE,
             request="{'id': customer_id}", target="crm.customer"),
    ])
    channel("enrich-in").put({"customer_id": "k1", "name": "Kim vip", "email": "kim@example.com", "crm": {"x": 1}})
    await _run(flow, tmp_path / "state.db")

    [out] = channel("enrich-out").bodies()
    assert out == {
        "customer_id": "k1", "name": "Kim vip", "email": "kim@example.com", "crm_status": "created",
        "crm": {"x": 1, "customer": {"id": "k1", "name": "Kim vip", "email": "kim@example.com", "tier": "gold"}},
    }


async def test_response_replaces_the_body_without_merge_or_target(crm: Crm, tmp_path: Path) -> None:
    await _call(tmp_path, {"id": "r1", "name": "Rae", "email": "rae@example.com"},
                wsdl=crm.wsdl_url, operation="CreateCustomer", wsse=WSSE)
    flow = _flow("lookup", tmp_path, steps=[
        step("soap", **LOCAL, wsdl=crm.wsdl_url, operation="GetCustomer", wsse=WSSE, request="{'id': $id}"),
    ])
    channel("lookup-in").put({"anything": True}, id="r1")
    channel("lookup-in").put({"anything": True}, id="nobody")
    await _run(flow, tmp_path / "state.db")
    assert channel("lookup-out").bodies() == [{"id": "r1", "name": "Rae", "email": "rae@example.com", "tier": "basic"}]
    dead = await _dead(tmp_path / "state.db", "lookup")
    assert dead["nobody"].error_code == "soap.fault.client"
    assert dead["nobody"].error_chain[0]["details"]["fault_code"] == "Client.NotFound"


async def test_wsdl_from_a_file_relative_to_the_flow_with_an_address_override(crm: Crm, tmp_path: Path) -> None:
    (tmp_path / "wsdl").mkdir()
    # the file names an endpoint that does not exist: `address` points the calls to the real one
    text = crm.wsdl_text().replace(crm.base + "/soap", "http://127.0.0.1:9/nowhere")
    (tmp_path / "wsdl" / "crm.wsdl").write_text(text)
    out = await _call(tmp_path, {"id": "w1", "name": "Wes", "email": "wes@example.com"},
                      wsdl="wsdl/crm.wsdl", address=crm.url("/soap"), operation="CreateCustomer", wsse=WSSE)
    assert out == {"id": "w1", "status": "created"}
    assert crm.received() == ["w1"]


async def test_soap12_with_password_digest_and_sender_receiver_faults(crm: Crm, tmp_path: Path) -> None:
    options = {"wsdl": crm.url("/soap12?wsdl"), "operation": "CreateCustomer",
               "wsse": {**WSSE, "digest": True}}
    assert await _call(tmp_path, {"id": "d1", "name": "Dee", "email": "dee@example.com"}, **options) == {
        "id": "d1", "status": "created"}
    with pytest.raises(FatalError) as sender:
        await _call(tmp_path, {"id": "d2", "name": "Dee", "email": "nope"}, **options)
    assert sender.value.code == "soap.fault.client"
    assert sender.value.details["fault_code"] == "Sender"
    assert sender.value.details["detail"] == {"ValidationError": {"field": "email", "value": "nope"}}
    with pytest.raises(RetryableError) as receiver:
        await _call(tmp_path, {"id": "d3", "name": "down", "email": "d@example.com"}, **options)
    assert receiver.value.code == "soap.fault.server"
    assert receiver.value.details["fault_code"] == "Receiver"


async def test_fault_classes_override_the_default_verdict(crm: Crm, tmp_path: Path) -> None:
    body = {"id": "o1", "name": "down", "email": "o@example.com"}
    with pytest.raises(FatalError) as exc:
        await _call(tmp_path, body, wsdl=crm.wsdl_url, operation="CreateCustomer", wsse=WSSE,
                    fault_classes={"Server.Unavailable": "fatal"})
    assert exc.value.code == "soap.fault.server"
    assert not exc.value.retryable


def test_fault_error_reads_soap12_subcodes_and_prefers_the_most_specific_override() -> None:
    from lxml import etree
    from zeep.exceptions import Fault

    detail = etree.fromstring("<detail><Reason><code>42</code><code>43</code></Reason></detail>")
    fault = Fault("quota exceeded", code="env:Receiver", subcodes=[etree.QName("urn:x", "Throttled")], detail=detail)
    err = fault_error(fault, operation="Op", url="https://u:p@crm.example.com/ws?token=abc", status=500,
                      headers={"Retry-After": "3"})
    assert isinstance(err, RetryableError) and err.code == "soap.fault.server"
    assert err.retry_after == 3
    assert err.details["subcodes"] == ["Throttled"]
    assert err.details["detail"] == {"Reason": {"code": ["42", "43"]}}
    assert "u:p" not in err.details["url"] and "abc" not in err.details["url"]
    fatal = fault_error(fault, operation="Op", classes={"Receiver": "retryable", "Throttled": "fatal"})
    assert isinstance(fatal, FatalError)
    other = fault_error(Fault("version", code="env:VersionMismatch"), operation="Op")
    assert other.code == "soap.fault.other" and not other.retryable


# -- HTTP, timeouts, bad requests -----------------------------------------------------------------


async def test_http_errors_without_a_fault_are_classified_by_status(crm: Crm, tmp_path: Path) -> None:
    body = {"id": "h1", "name": "Hal", "email": "hal@example.com"}
    with pytest.raises(RetryableError) as unavailable:
        await _call(tmp_path, body, wsdl=crm.wsdl_url, address=crm.url("/unavailable"), operation="CreateCustomer")
    assert unavailable.value.code == "http.status.503"
    assert unavailable.value.retry_after == 7
    with pytest.raises(FatalError) as missing:
        await _call(tmp_path, body, wsdl=crm.wsdl_url, address=crm.url("/missing"), operation="CreateCustomer")
    assert missing.value.code == "http.status.404"


async def test_timeouts_and_refused_connections_are_retryable(crm: Crm, tmp_path: Path) -> None:
    with pytest.raises(RetryableError) as slow:
        await _call(tmp_path, {"id": "s1", "name": "slow", "email": "s@example.com"},
                    wsdl=crm.wsdl_url, operation="CreateCustomer", wsse=WSSE, timeout="300ms")
    assert slow.value.code == "soap.timeout"
    with pytest.raises(RetryableError) as refused:
        await _call(tmp_path, {"id": "s2", "name": "Sam", "email": "s@example.com"},
                    wsdl=crm.wsdl_url, address="http://127.0.0.1:9/soap", operation="CreateCustomer")
    assert refused.value.code == "soap.connection"


async def test_requests_that_do_not_fit_the_operation_are_fatal(crm: Crm, tmp_path: Path) -> None:
    common = {"wsdl": crm.wsdl_url, "operation": "CreateCustomer", "wsse": WSSE}
    with pytest.raises(FatalError) as unknown:
        await _call(tmp_path, {"id": "x", "colour": "red"}, **common)
    assert unknown.value.code == "soap.request.invalid"
    with pytest.raises(FatalError) as not_object:
        await _call(tmp_path, {"id": "x"}, request="'just text'", **common)
    assert not_object.value.code == "soap.request.invalid"
    with pytest.raises(FatalError) as body_list:
        await _call(tmp_path, [1, 2], **common)
    assert body_list.value.code == "soap.request.invalid"
    assert crm.received() == []


async def test_wsdl_problems_fail_at_open_with_a_clear_code(crm: Crm, tmp_path: Path) -> None:
    with pytest.raises(FatalError) as op:
        await _call(tmp_path, {}, wsdl=crm.wsdl_url, operation="DeleteEverything")
    assert op.value.code == "soap.wsdl.operation"
    assert "CreateCustomer" in op.value.message and "GetCustomer" in op.value.message
    with pytest.raises(FatalError) as missing:
        await _call(tmp_path, {}, wsdl="no/such.wsdl", operation="CreateCustomer")
    assert missing.value.code == "soap.wsdl.not_found"
    with pytest.raises(RetryableError) as http:
        await _call(tmp_path, {}, wsdl=crm.url("/unavailable"), operation="CreateCustomer")
    assert http.value.code == "soap.wsdl.unavailable"


async def test_the_egress_guard_covers_the_wsdl_its_imports_and_the_endpoint(crm: Crm, tmp_path: Path) -> None:
    from seamline.security.errors import EgressError

    with pytest.raises(EgressError) as wsdl_url:
        SoapCaller(SoapOptions.model_validate({"wsdl": crm.wsdl_url, "operation": "CreateCustomer"}),
                   BuildContext(flow="t", base_dir=tmp_path, store=None))  # type: ignore[arg-type]
    assert wsdl_url.value.code == "egress.blocked"
    # a WSDL file that imports from the cloud metadata address: refused even with loopback allowed
    (tmp_path / "evil.wsdl").write_text(
        '<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" targetNamespace="urn:evil">'
        '<wsdl:import namespace="urn:x" location="http://169.254.169.254/latest/meta-data/x.wsdl"/>'
        "</wsdl:definitions>"
    )
    with pytest.raises(EgressError) as imported:
        await _call(tmp_path, {}, wsdl="evil.wsdl", operation="CreateCustomer")
    assert imported.value.code == "egress.blocked"
    (tmp_path / "crm.wsdl").write_text(crm.wsdl_text())
    with pytest.raises(EgressError) as endpoint:
        await _call(tmp_path, {}, wsdl="crm.wsdl", operation="CreateCustomer", egress={"allow_hosts": ["crm.example"]})
    assert endpoint.value.code in ("egress.blocked", "egress.not_allowed")
    assert crm.received() == []


# -- secrets --------------------------------------------------------------------------------------


async def test_the_password_never_reaches_errors_the_dlq_or_the_journal(
    crm: Crm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "echo" makes the server put the whole request, security header included, in its fault string
    flow = _flow("secrets", tmp_path, sinks=[
        sink("soap", **LOCAL, wsdl=crm.wsdl_url, operation="CreateCustomer", wsse=WSSE)])
    channel("secrets-in").put({"id": "e1", "name": "echo", "email": "e@example.com"}, id="echo")
    bad_pw = {"username": USER, "password": PASSWORD[::-1]}
    flow2 = _flow("badpw", tmp_path, sinks=[
        sink("soap", **LOCAL, wsdl=crm.wsdl_url, operation="CreateCustomer", wsse=bad_pw)])
    channel("badpw-in").put({"id": "e2", "name": "Ann", "email": "a@example.com"}, id="badpw")
    state = tmp_path / "state.db"
    with caplog.at_level("DEBUG"):
        await _run(flow, state)
        await _run(flow2, state)

    dead = {**await _dead(state, "secrets"), **await _dead(state, "badpw")}
    echo = dead["echo"]
    assert echo.error_code == "soap.fault.client"
    assert "rejected request" in echo.error_message and "UsernameToken" in echo.error_message, "the echo happened"
    assert dead["badpw"].error_chain[0]["details"]["fault_code"] == "Client.Authentication"
    outputs = [
        orjson.dumps([d.__dict__ for d in dead.values()], default=str).decode(),
        await _trace_text(state, ["echo", "badpw"]),
        caplog.text,
        repr(flow.sinks[0].config),
    ]
    for text in outputs:
        assert PASSWORD not in text and PASSWORD[::-1] not in text


def test_importing_the_connector_does_not_import_zeep() -> None:
    code = "import sys, seamline.connectors.soap; print(any(m.split('.')[0] == 'zeep' for m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_config_spec_is_registered_and_rejects_merge_with_target() -> None:
    from seamline.core.errors import ConfigError
    from seamline.core.registry import get_spec

    assert get_spec("sink", "soap") is not None and get_spec("step", "soap") is not None
    with pytest.raises(ConfigError):
        step("soap", **LOCAL, wsdl="x.wsdl", operation="Op", merge="body", target="a")
    cfg = step("soap", **LOCAL, wsdl="x.wsdl", operation="Op", timeout="2s").config
    assert cfg.timeout == parse_duration("2s")  # type: ignore[attr-defined]


def test_validate_reports_a_broken_request_mapping_with_the_step(tmp_path: Path) -> None:
    from tests.helpers import cli

    flow = """
flow: check
source: {{file: {{path: in.ndjson}}}}
steps:
  - soap:
      label: create
      wsdl: crm.wsdl
      operation: CreateCustomer
      request: "{request}"
sinks: [{{file: {{path: out.ndjson}}}}]
"""
    (tmp_path / "flow.yaml").write_text(flow.format(request="{'id': id}"))
    ok = cli("validate", "flow.yaml", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "flow.yaml").write_text(flow.format(request="{'id': id"))
    bad = cli("validate", "flow.yaml", cwd=tmp_path)
    assert bad.returncode == 2
    assert "step 'create' (soap)" in bad.stdout + bad.stderr
