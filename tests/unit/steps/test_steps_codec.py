"""Hostile input through a flow: each gets a stable code, goes to the DLQ, and the process carries on."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seamline import Flow, Message, sink, source, step
from seamline.core.engine import Engine
from seamline.core.errors import SeamlineError
from seamline.store import DlqFilter, open_store
from seamline.testing.memory import channel, reset_channels


@pytest.fixture(autouse=True)
def _channels() -> Iterator[None]:
    reset_channels()
    yield
    reset_channels()


async def run_flow(fl: Flow, state: Path) -> list[Any]:
    await Engine([fl], open_store(str(state)), retry_poll=0.01).run(until_idle=True, idle_horizon=0,
                                                                     install_signals=False)
    store = open_store(str(state))
    await store.open()
    dead = await store.list_dead(DlqFilter())
    await store.close()
    return dead


def flow(*steps: Any) -> Flow:
    return Flow("t", source=source("memory", channel="in"), steps=list(steps),
                sinks=[sink("memory", channel="out", label="out")])


HOSTILE_XML = {
    "xmlbomb.xml": "format.xml.dtd_forbidden",
    "xmlbomb2.xml": "format.xml.dtd_forbidden",
    "quadratic.xml": "format.xml.dtd_forbidden",
    "external.xml": "format.xml.dtd_forbidden",
    "external_file.xml": "format.xml.dtd_forbidden",
    "dtd.xml": "format.xml.dtd_forbidden",
    "cyclic.xml": "format.xml.dtd_forbidden",
}


async def test_hostile_xml_is_dead_lettered_with_its_code(conformance_dir: Path, tmp_path: Path) -> None:
    corpus = conformance_dir / "defusedxml"
    for name in HOSTILE_XML:
        channel("in").put(Message(raw=(corpus / name).read_bytes(), id=name, content_type="application/xml"))
    channel("in").put(Message(raw=(corpus / "simple.xml").read_bytes(), id="ok", content_type="application/xml"))
    dead = await run_flow(flow(step("decode", format="xml", label="parse")), tmp_path / "s.db")
    got = {d.msg_id: d.error_code for d in dead}
    assert set(got) == set(HOSTILE_XML)
    assert all(code.startswith("format.xml.") for code in got.values()), got
    assert all(d.step == "parse" and d.error_class == "fatal" for d in dead)
    assert [m.id for m in channel("out").written] == ["ok"]


async def test_hostile_json_and_csv_are_dead_lettered(tmp_path: Path) -> None:
    cases = {
        "deep": (b"[" * 100_000 + b"]" * 100_000, "json", "format.json.depth"),
        "dupe": (b'{"a": 1, "a": 2}', "json", "format.json.duplicate_key"),
        "nan": (b'{"a": NaN}', "json", "format.json.nan"),
        "bigint": (b'{"a": ' + b"9" * 5000 + b"}", "json", "format.json.big_int"),
        "huge": (b'{"a": "' + b"x" * (2 * 2**20) + b'"}', "json", "format.json.too_large"),
        "badcsv": (b'a,b\n1,"unterminated\n', "csv", "format.csv."),
    }
    for key, (data, fmt, _code) in cases.items():
        channel("in").put(Message(raw=data, id=key, content_type="application/octet-stream",
                                  headers={"fmt": fmt}))
    # one decode step per format, selected by a python step so one flow covers both
    from seamline.steps.codec import DecodeConfig, DecodeStep

    decoders = {
        "json": DecodeStep(DecodeConfig(format="json", max_bytes=2**20), None),  # type: ignore[arg-type]
        "csv": DecodeStep(DecodeConfig(format="csv"), None),  # type: ignore[arg-type]
    }
    fl = flow(step("python", function=lambda m: decoders[m.headers["fmt"]].process(m), label="parse",
                   **{"pass": "message"}))
    dead = await run_flow(fl, tmp_path / "s.db")
    got = {d.msg_id: d.error_code for d in dead}
    for key, (_data, _fmt, code) in cases.items():
        assert got[key].startswith(code), (key, got[key])
    assert channel("out").written == []


async def test_xml_round_trip_and_xslt(tmp_path: Path) -> None:
    (tmp_path / "to-erp.xsl").write_text(
        '<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">'
        '<xsl:template match="/order"><erp-order id="{@id}"><xsl:value-of select="total"/></erp-order>'
        "</xsl:template></xsl:stylesheet>"
    )
    channel("in").put({"order": {"@id": "4711", "total": "12.50"}}, id="o")
    fl = Flow("t", source=source("memory", channel="in"),
              steps=[step("encode", format="xml"), step("xslt", stylesheet="to-erp.xsl"),
                     step("decode", format="xml")],
              sinks=[sink("memory", channel="out")])
    fl.base_dir = tmp_path
    assert await run_flow(fl, tmp_path / "s.db") == []
    assert channel("out").bodies() == [{"erp-order": {"@id": "4711", "#text": "12.50"}}]


@pytest.mark.parametrize("sheet", ["xalan_exec.xsl", "xalan_write.xsl"])
async def test_hostile_stylesheets_are_refused_before_running(conformance_dir: Path, tmp_path: Path,
                                                              sheet: str) -> None:
    shutil.copy(conformance_dir / "defusedxml" / sheet, tmp_path / sheet)
    fl = Flow("t", source=source("memory", channel="in"), steps=[step("xslt", stylesheet=sheet)],
              sinks=[sink("memory", channel="out")])
    fl.base_dir = tmp_path
    with pytest.raises(SeamlineError) as exc:
        await run_flow(fl, tmp_path / "s.db")
    assert exc.value.code.startswith("format.xslt.")
    assert not (tmp_path / "xalan_redirect.txt").exists()


async def test_validate_checks_formats_and_follows_local_refs(tmp_path: Path) -> None:
    """``format`` is checked unless ``formats: false``; a ``$ref`` to a file beside the schema is
    followed; a ``$ref`` to the network is refused when the flow starts, nothing is fetched."""
    import orjson

    (tmp_path / "address.json").write_bytes(orjson.dumps(
        {"type": "object", "required": ["city"], "properties": {"city": {"type": "string", "minLength": 1}}}))
    (tmp_path / "order.json").write_bytes(orjson.dumps({
        "type": "object",
        "properties": {"at": {"type": "string", "format": "date-time"}, "email": {"type": "string", "format": "email"},
                       "addr": {"$ref": "address.json"}},
    }))
    good = {"at": "2026-03-31T23:10:00Z", "email": "ops@example.com", "addr": {"city": "Bonn"}}
    cases = {"good": good, "date": {**good, "at": "31.03.2026"}, "mail": {**good, "email": "ops at example"},
             "city": {**good, "addr": {"city": ""}}}
    for formats, passing in ((True, ["good"]), (False, ["good", "date", "mail"])):
        reset_channels()
        for mid, body in cases.items():
            channel("in").put(body, id=mid)
        fl = flow(step("validate", schema="order.json", formats=formats, label="check"))
        fl.base_dir = tmp_path
        dead = await run_flow(fl, tmp_path / f"s-{formats}.db")
        assert [m.id for m in channel("out").written] == passing, formats
        reasons = {d.msg_id: d.error_message for d in dead}
        assert set(reasons) == set(cases) - set(passing)
        assert "/addr/city" in reasons["city"]
        if formats:
            assert "/at" in reasons["date"] and "/email" in reasons["mail"]

    (tmp_path / "remote.json").write_bytes(orjson.dumps({"$ref": "https://schemas.example.com/order.json"}))
    fl = flow(step("validate", schema="remote.json", label="check"))
    fl.base_dir = tmp_path
    with pytest.raises(SeamlineError) as info:
        await run_flow(fl, tmp_path / "s-remote.db")
    assert info.value.code == "validate.schema_invalid" and "nothing is fetched" in info.value.message


async def test_validate_with_xsd_and_avro(tmp_path: Path) -> None:
    (tmp_path / "order.xsd").write_text(
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"><xs:element name="order"><xs:complexType>'
        '<xs:sequence><xs:element name="total" type="xs:decimal"/></xs:sequence>'
        '<xs:attribute name="id" type="xs:string" use="required"/></xs:complexType></xs:element></xs:schema>'
    )
    channel("in").put(Message(raw=b'<order id="1"><total>9.5</total></order>', id="good",
                              content_type="application/xml"))
    channel("in").put(Message(raw=b'<order><total>abc</total></order>', id="bad", content_type="application/xml"))
    fl = Flow("t", source=source("memory", channel="in"),
              steps=[step("validate", schema="order.xsd", kind="xsd", label="xsd")],
              sinks=[sink("memory", channel="out")])
    fl.base_dir = tmp_path
    dead = await run_flow(fl, tmp_path / "s.db")
    assert [m.id for m in channel("out").written] == ["good"]
    (d,) = dead
    assert d.msg_id == "bad" and d.error_code == "validate.schema" and d.step == "xsd"
    assert "total" in d.error_message or "id" in d.error_message

    reset_channels()
    avro = {"type": "record", "name": "Order", "fields": [{"name": "id", "type": "string"},
                                                         {"name": "total", "type": "double"}]}
    channel("in").put({"id": "a", "total": 1.5}, id="ok")
    channel("in").put({"id": "b", "total": "x"}, id="no")
    fl = flow(step("validate", schema=avro, kind="avro", label="avro"))
    dead = await run_flow(fl, tmp_path / "s2.db")
    assert [m.id for m in channel("out").written] == ["ok"]
    assert [d.msg_id for d in dead] == ["no"]
