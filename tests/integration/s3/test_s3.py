"""The s3 connector against moto's S3 server."""

from __future__ import annotations

import asyncio
import gzip
import io
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.integration.s3.conftest import aws
from tests.integration.services import MotoServer
from tests.integration.services.crash import sigkill_mid_stream
from tests.integration.services.flows import COLLECTED, make_flow

from seamline.connectors.s3 import S3Sink, S3SinkConfig
from seamline.core.component import BuildContext
from seamline.core.engine import Engine
from seamline.core.flow import sink, source, step
from seamline.core.message import Message
from seamline.store import open_store
from seamline.store.base import DlqFilter


def _ctx(tmp: Path, flow: str = "export") -> BuildContext:
    return BuildContext(flow=flow, base_dir=tmp, store=None, batch_size=100)  # type: ignore[arg-type]


async def _get(s3: Any, bucket: str, key: str) -> bytes:
    resp = await s3.get_object(Bucket=bucket, Key=key)
    async with resp["Body"] as body:
        return bytes(await body.read())


async def _keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    resp = await s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in resp.get("Contents") or []]


async def _put(s3: Any, bucket: str, key: str, data: bytes, **kw: Any) -> None:
    await s3.put_object(Bucket=bucket, Key=key, Body=data, **kw)


def _ndjson(rows: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


@pytest.mark.parametrize("fmt", ["ndjson", "csv", "json", "parquet", "ndjson-gzip"])
async def test_sink_writes_one_object_per_batch(moto_server: MotoServer, s3: Any, bucket: str, tmp_path: Path,
                                                fmt: str) -> None:
    gz = fmt.endswith("-gzip")
    fmt = fmt.removesuffix("-gzip")
    s = S3Sink(S3SinkConfig(bucket=bucket, format=fmt, gzip=gz, key="out/{date}/{batch}.{ext}",
                            **aws(moto_server.url)), _ctx(tmp_path))
    batch = [Message({"id": i, "name": f"n{i}", "tags": ["a", "b"] if i == 0 else []}, id=f"m{i}")
             for i in range(25)]
    await s.open()
    try:
        await s.write(batch)
        await s.write(batch)  # a retried batch overwrites its own object
        await s.write(batch[:5])
        key = s.key_for(batch)
    finally:
        await s.close()
    keys = await _keys(s3, bucket, "out/")
    assert len(keys) == 2 and key in keys
    ext = {"ndjson": "ndjson", "csv": "csv", "json": "json", "parquet": "parquet"}[fmt] + (".gz" if gz else "")
    assert key.endswith("." + ext)
    data = await _get(s3, bucket, key)
    if gz:
        data = gzip.decompress(data)
    if fmt == "ndjson":
        rows = [orjson.loads(x) for x in data.splitlines()]
    elif fmt == "json":
        rows = orjson.loads(data)
    elif fmt == "csv":
        import csv

        rows = list(csv.DictReader(io.StringIO(data.decode())))
        assert rows[0]["tags"] == '["a","b"]'
        rows = [{"id": int(r["id"]), "name": r["name"]} for r in rows]
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    assert [r["id"] for r in rows] == list(range(25))
    assert rows[3]["name"] == "n3"


async def _run_until_idle(flow: Any, state: Path) -> Any:
    engine = Engine([flow], open_store(str(state)), retry_poll=0.05)
    res = await asyncio.wait_for(engine.run(until_idle=True, idle_horizon=1, install_signals=False), 60)
    assert res.ok, res.errors
    return res


async def test_source_splits_objects_and_resumes_from_checkpoint(moto_server: MotoServer, s3: Any, bucket: str,
                                                                  tmp_path: Path) -> None:
    await _put(s3, bucket, "in/2026-03-01.ndjson", _ndjson([{"id": f"a{i}"} for i in range(30)]))
    await _put(s3, bucket, "in/2026-03-02.ndjson",
               _ndjson([{"id": "b0"}]) + b"{broken\n" + _ndjson([{"id": "b2"}]))
    await _put(s3, bucket, "in/2026-03-03.ndjson", b"")
    await _put(s3, bucket, "other/ignored.ndjson", _ndjson([{"id": "x"}]))
    key = f"s3-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state.db"

    def flow() -> Any:
        return make_flow("s3-in", source("s3", bucket=bucket, prefix="in/", id_field="id", stop_when_idle=True,
                                         **aws(moto_server.url)),
                         [sink("test-collect", key=key)], batch_size=7)

    await _run_until_idle(flow(), state)
    got = COLLECTED.pop(key)
    assert sorted(m.id for m in got) == sorted([f"a{i}" for i in range(30)] + ["b0", "b2"])
    first = next(m for m in got if m.id == "a0")
    assert first.headers["s3.key"] == "in/2026-03-01.ndjson" and first.headers["s3.record"] == "1"
    store = open_store(str(state))
    await store.open()
    try:
        dead = await store.list_dead(DlqFilter(flow="s3-in"))
    finally:
        await store.close()
    assert [(d.msg_id, d.error_code) for d in dead] == [(f"{bucket}/in/2026-03-02.ndjson#2", "format.json.syntax")]
    # new objects (one gzipped) are read on the next run; nothing is read twice
    await _put(s3, bucket, "in/2026-03-04.ndjson.gz", gzip.compress(_ndjson([{"id": "d0"}, {"id": "d1"}])))
    await _put(s3, bucket, "in/2026-03-05.ndjson", _ndjson([{"id": "e0"}]))
    await _run_until_idle(flow(), state)
    assert sorted(m.id for m in COLLECTED.pop(key)) == ["d0", "d1", "e0"]


async def test_source_csv_and_whole_objects(moto_server: MotoServer, s3: Any, bucket: str, tmp_path: Path) -> None:
    await _put(s3, bucket, "csv/a.csv", b"order_id,total\nO1,10.5\nO2,3\n")
    await _put(s3, bucket, "docs/1.json", b'{"doc": 1}', ContentType="application/json",
               Metadata={"correlation-id": "corr-1", "message-id": "doc-1"})
    await _put(s3, bucket, "docs/2.xml", b"<doc n='2'/>", ContentType="application/xml")
    key = f"s3-{uuid.uuid4().hex[:8]}"
    await _run_until_idle(make_flow("s3-csv", source("s3", bucket=bucket, prefix="csv/", format="csv",
                                                     stop_when_idle=True, **aws(moto_server.url)),
                                    [sink("test-collect", key=key)]), tmp_path / "a.db")
    assert [m.body for m in COLLECTED.pop(key)] == [{"order_id": "O1", "total": "10.5"},
                                                   {"order_id": "O2", "total": "3"}]
    await _run_until_idle(make_flow("s3-obj", source("s3", bucket=bucket, prefix="docs/", format="object",
                                                     stop_when_idle=True, **aws(moto_server.url)),
                                    [sink("test-collect", key=key)]), tmp_path / "b.db")
    docs = {m.id: m for m in COLLECTED.pop(key)}
    assert docs["doc-1"].body == {"doc": 1} and docs["doc-1"].correlation_id == "corr-1"
    xml = docs[f"{bucket}/docs/2.xml"]
    assert xml.content_type == "application/xml" and xml.raw == b"<doc n='2'/>"


def test_sigkill_mid_stream_loses_nothing(moto_server: MotoServer, bucket: str, tmp_path: Path) -> None:
    n_obj, per = 15, 100
    ids = {str(i) for i in range(n_obj * per)}
    poison = {str(i) for i in range(n_obj * per) if i % 250 == 7}

    async def fill() -> None:
        from aiobotocore.session import get_session

        async with get_session().create_client("s3", region_name="us-east-1", endpoint_url=moto_server.url,
                                               aws_access_key_id="test", aws_secret_access_key="test") as c:
            for o in range(n_obj):
                rows = [{"id": o * per + i, "poison": (o * per + i) % 250 == 7} for i in range(per)]
                await c.put_object(Bucket=bucket, Key=f"crash/{o:04d}.ndjson", Body=_ndjson(rows))

    asyncio.run(fill())
    src = ("source:\n  s3: {" + f"bucket: {bucket}, prefix: crash/, id_field: id, interval: 200ms, "
           f"endpoint_url: '{moto_server.url}', region: us-east-1, access_key_id: test, secret_access_key: test}}")
    res = sigkill_mid_stream(tmp_path, src, "s3-crash", ids, poison)
    assert res.duplicates <= 50 * 6


async def test_source_nack_redelivers(moto_server: MotoServer, s3: Any, bucket: str, tmp_path: Path) -> None:
    from seamline.connectors.s3 import S3Source, S3SourceConfig
    from seamline.core.component import Delivery

    await _put(s3, bucket, "n/a.ndjson", _ndjson([{"id": f"r{i}"} for i in range(6)]))
    store = open_store(str(tmp_path / "state.db"))
    await store.open()
    ctx = BuildContext(flow="s3-nack", base_dir=tmp_path, store=store, batch_size=4)
    src = S3Source(S3SourceConfig(bucket=bucket, prefix="n/", id_field="id", interval=0.05, **aws(moto_server.url)),
                   ctx)
    seen: list[str] = []
    done = asyncio.Event()

    async def emit(batch: list[Delivery]) -> None:
        for d in batch:
            seen.append(d.message.id)
            if d.message.id == "r2" and seen.count("r2") == 1:
                d.nack(True)
            else:
                d.ack()
        await src.commit_acks()
        if seen.count("r2") == 2 and {"r5"} <= set(seen):
            done.set()

    await src.open()
    task = asyncio.create_task(src.run(emit))
    try:
        await asyncio.wait_for(done.wait(), 15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await src.close()
    try:
        assert seen.count("r2") == 2
        assert await store.get_checkpoint(src.scope) == {"key": "n/a.ndjson", "records": 6, "complete": True}
    finally:
        await store.close()


async def test_source_and_sink_through_dropped_connections(moto_server: MotoServer, s3: Any, bucket: str,
                                                           tmp_path: Path) -> None:
    from tests.integration.services import tcp_proxy

    for o in range(20):
        await _put(s3, bucket, f"d/{o:03d}.ndjson", _ndjson([{"id": f"{o}-{i}"} for i in range(50)]))
    key = f"s3-{uuid.uuid4().hex[:8]}"
    with tcp_proxy(moto_server.url, 80) as (proxy, via):
        (tmp_path / "slow.py").write_text(
            "import asyncio\n\nasync def slow(body):\n    await asyncio.sleep(0.002)\n    return body\n")
        flow = make_flow("s3-drop", source("s3", bucket=bucket, prefix="d/", id_field="id", interval=0.05,
                                           **aws(via)),
                         [sink("test-collect", key=key),
                          sink("s3", label="archive", bucket=bucket, key="out/{batch}.{ext}", **aws(via))],
                         steps=[step("python", function="slow:slow")], batch_size=50, base_dir=tmp_path)
        from tests.integration.services.flows import running

        async with running(flow, tmp_path / "state.db") as run:
            for share in (200, 500):
                await run.wait_for(lambda s=share: len(COLLECTED.get(key, [])) >= s, 60, f"{share} records")
                assert proxy.drop() > 0
            await run.wait_for(lambda: len({m.id for m in COLLECTED.get(key, [])}) >= 1000, 60, "all records")
    assert {m.id for m in COLLECTED.pop(key)} == {f"{o}-{i}" for o in range(20) for i in range(50)}
    archived: set[str] = set()
    for k in await _keys(s3, bucket, "out/"):
        archived |= {orjson.loads(x)["id"] for x in (await _get(s3, bucket, k)).splitlines()}
    assert len(archived) == 1000
