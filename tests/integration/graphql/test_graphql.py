"""The graphql connector against a real GraphQL server (ariadne on uvicorn, started by the test suite)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.integration.graphql.conftest import TOKEN
from tests.integration.graphql.shop_server import ShopServer

from seamline import Engine, Flow, Message, open_store, sink, source, step
from seamline.connectors.graphql import GraphQLClient, GraphQLEndpoint
from seamline.core.component import BuildContext
from seamline.core.errors import ConfigError, FatalError, RetryableError
from seamline.store.base import DlqFilter
from seamline.testing.memory import channel, reset_channels

AUTH = "${env:SHOP_TOKEN}"
#: the test server is on loopback, which the egress guard blocks unless allowed
LOCAL = {"egress": {"allow_loopback": True}}
RECORD = "mutation Record($input: OrderInput!) { recordOrder(input: $input) { ok id userErrors } }"
ORDER_VARS = {"input": "{'id': order_id, 'customerId': customer, 'total': total}"}
CUSTOMERS = """
query Customers($first: Int!, $after: String) {
  customers(first: $first, after: $after) {
    edges { cursor node { id name updatedAt } }
    pageInfo { hasNextPage endCursor }
  }
}"""
CUSTOMERS_SINCE = """
query Changed($first: Int!, $after: String, $since: String) {
  customers(first: $first, after: $after, updatedSince: $since) {
    nodes { id name updatedAt riskScore }
    pageInfo { hasNextPage endCursor }
  }
}"""
CUSTOMER = "query One($id: ID!) { customer(id: $id) { id name riskScore } }"


@pytest.fixture(autouse=True)
def _channels() -> None:
    reset_channels()


def _flow(name: str, tmp: Path, *, src: Any = None, steps: list[Any] | None = None, sinks: list[Any] | None = None,
          retry: dict[str, Any] | None = None) -> Flow:
    return Flow(
        name,
        source=src or source("memory", channel=f"{name}-in"),
        steps=steps or [],
        sinks=sinks or [sink("memory", channel=f"{name}-out")],
        settings={"batch_size": 20, "concurrency": 2},
        on_error={"retry": retry or {"max_attempts": 3, "initial": 0.01, "max": 0.05}},
        base_dir=tmp,
    )


async def _run(flow: Flow, state: Path, *, ok: bool = True) -> Any:
    result = await Engine([flow], open_store(str(state)), retry_poll=0.02).run(
        until_idle=True, install_signals=False, idle_horizon=5)
    if ok:
        assert result.ok, result.errors
    return result


async def _dead(state: Path, flow: str) -> dict[str, Any]:
    store = open_store(str(state))
    await store.open()
    try:
        return {d.msg_id: d for d in await store.list_dead(DlqFilter(flow=flow))}
    finally:
        await store.close()


def _client(tmp: Path, **options: Any) -> GraphQLClient:
    cfg = GraphQLEndpoint.model_validate({**LOCAL, **options})
    return GraphQLClient(cfg, BuildContext(flow="t", base_dir=tmp, store=None))  # type: ignore[arg-type]


async def _execute(tmp: Path, variables: dict[str, Any], **options: Any) -> Any:
    client = _client(tmp, **options)
    await client.open()
    try:
        return await client.execute(variables)
    finally:
        await client.close()


# -- sink -----------------------------------------------------------------------------------------


async def test_sink_records_orders_and_classifies_errors(shop: ShopServer, tmp_path: Path) -> None:
    flow = _flow("orders", tmp_path, sinks=[sink(
        "graphql", **LOCAL, url=shop.url, bearer_token=AUTH, query=RECORD, variables=ORDER_VARS,
        reject_when="recordOrder.userErrors", retryable_codes=["RATE_LIMITED"],
    )])
    for oid, total in [("o1", 10.5), ("o2", 3), ("neg", -1), ("zero", 0), ("limited-1", 5)]:
        channel("orders-in").put({"order_id": oid, "customer": "c1", "total": total}, id=f"m-{oid}")
    await _run(flow, tmp_path / "state.db")

    assert sorted(shop.shop.orders) == ["o1", "o2"]
    assert sorted(shop.shop.idempotency_keys) == ["m-o1", "m-o2"], "the message id is the idempotency key"
    dead = await _dead(tmp_path / "state.db", "orders")
    assert set(dead) == {"m-neg", "m-zero", "m-limited-1"}
    neg = dead["m-neg"]
    assert (neg.error_code, neg.error_class, neg.attempts) == ("graphql.errors", "fatal", 1)
    details = neg.error_chain[0]["details"]
    assert details["errors"][0]["message"] == "total must not be negative, got -1.0"
    assert details["errors"][0]["path"] == ["recordOrder"]
    assert details["partial_data"] is False
    zero = dead["m-zero"]
    assert zero.error_code == "graphql.rejected" and "total is zero" in zero.error_message
    limited = dead["m-limited-1"]
    assert (limited.error_code, limited.error_class, limited.attempts) == ("graphql.errors.retryable", "retryable", 3)


async def test_sink_retries_5xx_until_delivered(shop: ShopServer, tmp_path: Path) -> None:
    shop.shop.fail_next(502, times=2)
    flow = _flow("retry", tmp_path, sinks=[sink("graphql", **LOCAL, url=shop.url, bearer_token=AUTH, query=RECORD,
                                                variables=ORDER_VARS)])
    channel("retry-in").put({"order_id": "r1", "customer": "c", "total": 1})
    await _run(flow, tmp_path / "state.db")
    assert shop.shop.orders == ["r1"]
    assert shop.shop.requests == 3


async def test_http_statuses_timeouts_and_refusals_are_classified(shop: ShopServer, tmp_path: Path) -> None:
    opts = {"url": shop.url, "bearer_token": AUTH, "query": CUSTOMER}
    for status in (503, 429):
        shop.shop.fail_next(status)
        with pytest.raises(RetryableError) as exc:
            await _execute(tmp_path, {"id": "x"}, **opts)
        assert exc.value.code == f"http.status.{status}" and exc.value.retry_after == 1
    with pytest.raises(FatalError) as unauthorized:
        await _execute(tmp_path, {"id": "x"}, **{**opts, "bearer_token": TOKEN[::-1]})
    assert unauthorized.value.code == "http.status.401"
    assert TOKEN[::-1] not in str(unauthorized.value.details)
    shop.shop.delay = 1.0
    with pytest.raises(RetryableError) as slow:
        await _execute(tmp_path, {"id": "x"}, **{**opts, "timeout": "200ms"})
    assert slow.value.code == "graphql.timeout"
    shop.shop.delay = 0
    with pytest.raises(RetryableError) as refused:
        await _execute(tmp_path, {"id": "x"}, **{**opts, "url": "http://127.0.0.1:9/graphql"})
    assert refused.value.code == "graphql.connection"


async def test_the_egress_guard_checks_the_endpoint_and_every_redirect(shop: ShopServer, tmp_path: Path) -> None:
    from seamline.security.errors import EgressError

    with pytest.raises(EgressError) as loopback:
        GraphQLClient(GraphQLEndpoint.model_validate({"url": shop.url, "query": CUSTOMER}),
                      BuildContext(flow="t", base_dir=tmp_path, store=None))  # type: ignore[arg-type]
    assert loopback.value.code == "egress.blocked"
    redirect = shop.url.replace("/graphql/", "/redirect")
    with pytest.raises(EgressError) as redirected:
        await _execute(tmp_path, {"id": "x"}, url=redirect, bearer_token=AUTH, query=CUSTOMER)
    assert redirected.value.code == "egress.blocked"
    assert "169.254.169.254" in redirected.value.message


async def test_documents_are_checked_when_built(shop: ShopServer, tmp_path: Path) -> None:
    with pytest.raises(FatalError) as syntax:
        _client(tmp_path, url=shop.url, query="query { customer(id: ")
    assert syntax.value.code == "graphql.query.invalid"
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "one.graphql").write_text(CUSTOMER)
    shop.shop.add("c9", "Nine")
    data, errors = await _execute(tmp_path, {"id": "c9"}, url=shop.url, bearer_token=AUTH, query_file="q/one.graphql")
    assert data == {"customer": {"id": "c9", "name": "Nine", "riskScore": 4}} and errors == []
    with pytest.raises(FatalError) as missing:
        _client(tmp_path, url=shop.url, query_file="q/none.graphql")
    assert missing.value.code == "graphql.query.not_found"
    with pytest.raises(ConfigError):
        step("graphql", **LOCAL, url=shop.url, query=CUSTOMER, query_file="q/one.graphql")


# -- step -----------------------------------------------------------------------------------------


async def test_call_step_merges_targets_and_handles_partial_answers(shop: ShopServer, tmp_path: Path) -> None:
    shop.shop.add("c1", "Ann")
    shop.shop.add("c2", "risky Bob")
    flow = _flow("enrich", tmp_path, steps=[
        step("graphql", **LOCAL, label="risk", url=shop.url, bearer_token=AUTH, query=CUSTOMER,
             variables={"id": "cid"}, partial="accept",
             merge="$merge([body, {'risk': response.customer.riskScore}])"),
        step("graphql", **LOCAL, label="whole", url=shop.url, bearer_token=AUTH, query=CUSTOMER,
             variables="{'id': cid}", target="crm"),
    ])
    channel("enrich-in").put({"cid": "c1"}, id="a")
    channel("enrich-in").put({"cid": "c2"}, id="b")
    await _run(flow, tmp_path / "state.db")

    out = {m.id: m for m in channel("enrich-out").written}
    assert out["a"].body == {"cid": "c1", "risk": 3, "crm": {"customer": {"id": "c1", "name": "Ann", "riskScore": 3}}}
    assert "graphql.errors" not in out["a"].headers
    dead = await _dead(tmp_path / "state.db", "enrich")
    assert set(dead) == {"b"} and set(out) == {"a"}, "the second step does not accept partial answers"
    assert dead["b"].step == "whole" and dead["b"].error_code == "graphql.errors"
    # the first step accepted the partial answer: the data went on, the errors in a header
    after_first = Message.from_record(dead["b"].current)
    assert after_first.body == {"cid": "c2", "risk": None}
    [err] = orjson.loads(after_first.headers["graphql.errors"])
    assert err["message"] == "risk service unavailable for c2" and err["path"] == ["customer", "riskScore"]


# -- source ---------------------------------------------------------------------------------------


async def test_source_pages_through_and_continues_after_the_last_cursor(shop: ShopServer, tmp_path: Path) -> None:
    for i in range(250):
        shop.shop.add(f"c{i:03d}")
    src = source("graphql", **LOCAL, url=shop.url, bearer_token=AUTH, query=CUSTOMERS, connection="customers",
                 page_size=40, mode="once")
    state = tmp_path / "state.db"
    await _run(_flow("poll", tmp_path, src=src), state)
    out = channel("poll-out")
    assert [m.id for m in out.written] == [f"c{i:03d}" for i in range(250)]
    assert out.written[0].headers["graphql.cursor"]
    assert shop.shop.requests == 7  # 250 nodes in pages of 40

    await _run(_flow("poll", tmp_path, src=src), state)
    assert len(out.written) == 250, "a second round finds nothing new"
    for i in range(250, 280):
        shop.shop.add(f"c{i:03d}")
    await _run(_flow("poll", tmp_path, src=src), state)
    assert [m.id for m in out.written[250:]] == [f"c{i:03d}" for i in range(250, 280)]


async def test_source_watermark_delivers_changes_once(shop: ShopServer, tmp_path: Path) -> None:
    for i in range(60):
        shop.shop.add(f"w{i:02d}")
    src = source("graphql", **LOCAL, url=shop.url, bearer_token=AUTH, query=CUSTOMERS_SINCE, connection="customers",
                 page_size=25, mode="once", watermark={"field": "updatedAt", "variable": "since"})
    state = tmp_path / "state.db"
    out = channel("wm-out")
    await _run(_flow("wm", tmp_path, src=src), state)
    assert len(out.written) == 60
    assert out.written[0].id == f"w00@{out.written[0].body['updatedAt']}"

    await _run(_flow("wm", tmp_path, src=src), state)
    assert len(out.written) == 60, "the boundary node is not delivered again"
    for cid in ("w03", "w59", "w10"):
        shop.shop.touch(cid, name=f"changed {cid}")
    shop.shop.add("w60")
    await _run(_flow("wm", tmp_path, src=src), state)
    assert [m.body["id"] for m in out.written[60:]] == ["w03", "w59", "w10", "w60"]
    assert out.written[60].body["name"] == "changed w03"
    await _run(_flow("wm", tmp_path, src=src), state)
    assert len(out.written) == 64


async def test_source_partial_answers_mark_only_the_affected_nodes(shop: ShopServer, tmp_path: Path) -> None:
    for i in range(6):
        shop.shop.add(f"p{i}", "risky" if i == 2 else None)
    common = {**LOCAL, "url": shop.url, "bearer_token": AUTH, "query": CUSTOMERS_SINCE, "connection": "customers",
              "mode": "once", "watermark": {"field": "updatedAt", "variable": "since"}}
    await _run(_flow("partial", tmp_path, src=source("graphql", partial="accept", **common)), tmp_path / "a.db")
    out = channel("partial-out").written
    assert len(out) == 6
    marked = [m.body["id"] for m in out if "graphql.errors" in m.headers]
    assert marked == ["p2"]
    assert orjson.loads(out[2].headers["graphql.errors"])[0]["path"] == ["customers", "nodes", 2, "riskScore"]

    result = await _run(_flow("strict", tmp_path, src=source("graphql", **common)), tmp_path / "b.db", ok=False)
    assert "graphql.errors" in result.errors["strict"]
    assert channel("strict-out").written == []


async def test_source_retries_failed_pages(shop: ShopServer, tmp_path: Path) -> None:
    for i in range(30):
        shop.shop.add(f"r{i:02d}")
    shop.shop.fail_next(500, times=2)
    src = source("graphql", **LOCAL, url=shop.url, bearer_token=AUTH, query=CUSTOMERS, connection="customers",
                 page_size=50, mode="once", retry={"max_attempts": 3, "initial": "10ms", "max": "50ms"})
    await _run(_flow("flaky", tmp_path, src=src), tmp_path / "state.db")
    assert len(channel("flaky-out").written) == 30


async def test_continuous_source_polls_on_an_interval(shop: ShopServer, tmp_path: Path) -> None:
    for i in range(5):
        shop.shop.add(f"k{i}")
    src = source("graphql", **LOCAL, url=shop.url, bearer_token=AUTH, query=CUSTOMERS, connection="customers",
                 interval="100ms")
    engine = Engine([_flow("live", tmp_path, src=src)], open_store(str(tmp_path / "state.db")), retry_poll=0.05)
    task = asyncio.create_task(engine.run(install_signals=False, drain_timeout=5))
    out = channel("live-out")

    async def until(n: int) -> None:
        deadline = time.monotonic() + 20
        while len(out.written) < n:
            assert not task.done(), task.result()
            assert time.monotonic() < deadline, f"only {len(out.written)} of {n} arrived"
            await asyncio.sleep(0.02)

    try:
        await until(5)
        for i in range(5, 12):
            shop.shop.add(f"k{i}")
        await until(12)
    finally:
        engine.request_stop()
        result = await asyncio.wait_for(task, 20)
    assert result.ok, result.errors
    assert [m.id for m in out.written] == [f"k{i}" for i in range(12)]


# -- secrets and imports --------------------------------------------------------------------------


async def test_the_token_never_reaches_errors_the_dlq_the_journal_or_logs(
    shop: ShopServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flow = _flow("leak", tmp_path, sinks=[sink("graphql", **LOCAL, url=shop.url, bearer_token=AUTH, query=RECORD,
                                               variables=ORDER_VARS)])
    # an "echo" order makes the server quote the request's headers, Authorization included, in its error
    channel("leak-in").put({"order_id": "echo-1", "customer": "c", "total": 1}, id="echo")
    state = tmp_path / "state.db"
    with caplog.at_level("DEBUG"):
        await _run(flow, state)
    dead = await _dead(state, "leak")
    assert "refused order echo-1; request headers" in dead["echo"].error_message, "the echo happened"
    store = open_store(str(state))
    await store.open()
    try:
        journal = repr(await store.trace("echo"))
    finally:
        await store.close()
    # our side's logs: seamline's and the client libraries' (the server's own logs are the server's business)
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("ariadne", "uvicorn")))
    assert "gql.transport.aiohttp" in {r.name for r in caplog.records}, "the client logged its exchange"
    for text in (orjson.dumps(dead["echo"].__dict__, default=str).decode(), journal, ours):
        assert TOKEN not in text


def test_validate_reports_a_broken_document_with_the_step(tmp_path: Path) -> None:
    from tests.helpers import cli

    flow = """
flow: check
source: {{file: {{path: in.ndjson}}}}
steps:
  - graphql:
      label: lookup
      url: https://api.example.com/graphql
      query: "{query}"
sinks: [{{file: {{path: out.ndjson}}}}]
"""
    (tmp_path / "flow.yaml").write_text(flow.format(query="query { customer(id: 1) { id } }"))
    ok = cli("validate", "flow.yaml", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "flow.yaml").write_text(flow.format(query="query { customer(id: "))
    bad = cli("validate", "flow.yaml", cwd=tmp_path)
    assert bad.returncode == 2
    assert "step 'lookup' (graphql)" in bad.stdout + bad.stderr
    assert "graphql.query.invalid" in bad.stdout + bad.stderr


def test_importing_the_connector_does_not_import_gql() -> None:
    code = ("import sys, seamline.connectors.graphql; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'gql', 'graphql', 'zeep'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
