"""The mqtt connector against a live MQTT 5 broker (mosquitto)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.integration.services import tcp_proxy
from tests.integration.services.crash import sigkill_mid_stream
from tests.integration.services.flows import COLLECTED, Running, make_flow, running
from tests.integration.services.flows import count_dead as _count_dead

from seamline.connectors.mqtt import MqttSink, MqttSinkConfig, MqttSource, MqttSourceConfig
from seamline.core.component import BuildContext, Delivery
from seamline.core.flow import sink, source, step
from seamline.core.message import Message
from seamline.store.base import DlqFilter

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _ctx(tmp: Path, flow: str = "t") -> BuildContext:
    return BuildContext(flow=flow, base_dir=tmp, store=None, batch_size=100)  # type: ignore[arg-type]


def _msgs(n: int, start: int = 0) -> list[Message]:
    return [Message({"n": i}, id=f"m{i}", correlation_id=f"c{i}") for i in range(start, start + n)]


async def _publish(url: str, topic: str, msgs: list[Message], qos: int = 1) -> None:
    s = MqttSink(MqttSinkConfig(url=url, topic=topic, qos=qos), _ctx(Path.cwd()))
    await s.open()
    try:
        for i in range(0, len(msgs), 100):
            await s.write(msgs[i : i + 100])
    finally:
        await s.close()


async def _end_session(url: str, client_id: str) -> None:
    """Remove a persistent session the test left on the broker."""
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    host_port = url.split("://", 1)[1].rsplit("@", 1)[-1]
    host, _, port = host_port.partition(":")
    client = aiomqtt.Client(host, int(port or 1883), identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
                            clean_start=True, properties=props)
    async with client:
        pass


async def _prepare_session(url: str, client_id: str, topic: str, qos: int = 1) -> None:
    """Create the persistent session (subscription) so messages published before the flow starts are kept."""
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    host_port = url.split("://", 1)[1].rsplit("@", 1)[-1]
    host, _, port = host_port.partition(":")
    client = aiomqtt.Client(host, int(port or 1883), identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
                            clean_start=True, properties=props)
    async with client:
        await client.subscribe(topic, qos=qos)


def _src(run: Running) -> Any:
    return run.engine.runners[0].source if run.engine.runners else None


async def _connected(run: Running) -> None:
    await run.wait_for(lambda: _src(run) is not None and _src(run).connected.is_set(), 15, "the subscription")


@pytest.mark.parametrize("qos", [1, 2])
async def test_send_receive_headers_and_correlation(mqtt_url: str, topic: str, tmp_path: Path, qos: int) -> None:
    cid = f"seamline-test-{uuid.uuid4().hex[:8]}"
    key = f"rt-{cid}"
    msgs = _msgs(300)
    msgs[0].headers = {"traceparent": TRACEPARENT, "tenant": "acme"}
    flow = make_flow(
        "mqtt-rt",
        source("mqtt", url=mqtt_url, topics=[topic], client_id=cid, qos=qos, session_expiry=60),
        [sink("test-collect", key=key)],
    )
    try:
        async with running(flow, tmp_path / "state.db") as run:
            await _connected(run)
            await _publish(mqtt_url, topic, msgs, qos=qos)
            await run.wait_for(lambda: len(COLLECTED.get(key, [])) >= 300, 30, "300 messages")
    finally:
        await _end_session(mqtt_url, cid)
    got = COLLECTED.pop(key)
    assert [m.id for m in got] == [m.id for m in msgs], "one publisher, one topic: order is kept"
    first = got[0]
    assert first.correlation_id == "c0"
    assert first.headers["traceparent"] == TRACEPARENT
    assert first.headers["tenant"] == "acme"
    assert first.headers["mqtt.topic"] == topic
    assert first.body == {"n": 0}
    assert first.content_type == "application/json"


async def test_at_least_once_through_dropped_connection(mqtt_url: str, topic: str, tmp_path: Path) -> None:
    cid = f"seamline-test-{uuid.uuid4().hex[:8]}"
    key = f"drop-{cid}"
    try:
        with tcp_proxy(mqtt_url, 1883) as (proxy, via):
            flow = make_flow(
                "mqtt-drop",
                source("mqtt", url=via, topics=[topic], client_id=cid, session_expiry=60, receive_maximum=20),
                [sink("test-collect", key=key)],
                batch_size=20,
            )
            async with running(flow, tmp_path / "state.db") as run:
                await _connected(run)
                await _publish(mqtt_url, topic, _msgs(200))
                await run.wait_for(lambda: len(COLLECTED.get(key, [])) >= 40, 30, "first messages")
                assert proxy.drop() > 0
                await _publish(mqtt_url, topic, _msgs(200, 200))
                await run.wait_for(lambda: len({m.id for m in COLLECTED.get(key, [])}) >= 400, 30, "all 400")
            assert proxy.accepted >= 2, "the source must have reconnected"
    finally:
        await _end_session(mqtt_url, cid)
    assert {m.id for m in COLLECTED.pop(key)} == {f"m{i}" for i in range(400)}


@pytest.mark.parametrize("qos", [1, 2])
async def test_nack_redelivers(mqtt_url: str, topic: str, tmp_path: Path, qos: int) -> None:
    cid = f"seamline-test-{uuid.uuid4().hex[:8]}"
    src = MqttSource(MqttSourceConfig(url=mqtt_url, topics=[topic], client_id=cid, qos=qos, session_expiry=60),
                     _ctx(tmp_path))
    seen: list[str] = []
    done = asyncio.Event()

    async def emit(batch: list[Delivery]) -> None:
        for d in batch:
            seen.append(d.message.id)
            if d.message.id == "m2" and seen.count("m2") == 1:
                d.nack(True)
            else:
                d.ack()
        if {"m0", "m1", "m3", "m4"} <= set(seen) and seen.count("m2") >= 2:
            done.set()

    task = asyncio.create_task(src.run(emit))
    try:
        await asyncio.wait_for(src.connected.wait(), 10)
        await _publish(mqtt_url, topic, _msgs(5), qos=qos)
        await asyncio.wait_for(done.wait(), 15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await src.close()
        await _end_session(mqtt_url, cid)
    assert seen.count("m2") == 2
    # acknowledgements go out in arrival order: what came after the nacked message is redelivered too
    assert seen.count("m0") == 1 and seen.count("m1") == 1


async def test_poison_goes_to_dlq_and_is_acked(mqtt_url: str, topic: str, tmp_path: Path) -> None:
    import aiomqtt

    cid = f"seamline-test-{uuid.uuid4().hex[:8]}"
    key = f"poison-{cid}"
    msgs = _msgs(20)
    msgs[3] = Message({"n": 3, "poison": True}, id="m3")

    def make() -> Any:
        return make_flow(
            "mqtt-poison",
            source("mqtt", url=mqtt_url, topics=[topic], client_id=cid, session_expiry=60),
            [sink("test-collect", key=key)],
            steps=[step("python", function="tests.integration.services.flows:poison_check")],
        )

    try:
        async with running(make(), tmp_path / "state.db") as run:
            await _connected(run)
            await _publish(mqtt_url, topic, msgs)
            host, _, port = mqtt_url.split("://", 1)[1].partition(":")
            async with aiomqtt.Client(host, int(port or 1883), protocol=aiomqtt.ProtocolVersion.V5) as raw:
                await raw.publish(topic, b"{not json", qos=1)
            await run.wait_for(lambda: len(COLLECTED.get(key, [])) >= 19, 30, "good messages")
            await run.wait_for(lambda: _count_dead(run, "mqtt-poison", 2), 10, "two dead letters")
            dead = await run.store.list_dead(DlqFilter(flow="mqtt-poison"))
        assert {d.msg_id for d in dead} >= {"m3"}
        assert sorted(d.error_code for d in dead) == ["format.json.syntax", "test.poison"]
        assert {m.id for m in COLLECTED.pop(key)} == {f"m{i}" for i in range(20)} - {"m3"}
        # everything was acknowledged: a restart of the session gets nothing again
        async with running(make(), tmp_path / "state.db") as run:
            await _connected(run)
            await _publish(mqtt_url, topic, [Message({"n": 99}, id="marker")])
            await run.wait_for(lambda: len(COLLECTED.get(key, [])) >= 1, 10, "the marker")
        assert [m.id for m in COLLECTED.pop(key)] == ["marker"]
    finally:
        await _end_session(mqtt_url, cid)


async def test_sink_topic_template_and_qos0(mqtt_url: str, topic: str, tmp_path: Path) -> None:
    cid = f"seamline-test-{uuid.uuid4().hex[:8]}"
    key = f"tpl-{cid}"
    flow = make_flow(
        "mqtt-tpl",
        source("mqtt", url=mqtt_url, topics=[f"{topic}/#"], client_id=cid, session_expiry=60),
        [sink("test-collect", key=key)],
    )
    s = MqttSink(MqttSinkConfig(url=mqtt_url, topic=topic + "/{body.region}/{id}", qos=0), _ctx(tmp_path))
    try:
        async with running(flow, tmp_path / "state.db") as run:
            await _connected(run)
            await s.open()
            await s.write([Message({"region": "eu/west"}, id="a1"), Message({"region": "us"}, id="a2")])
            await run.wait_for(lambda: len(COLLECTED.get(key, [])) >= 2, 10, "two messages")
    finally:
        await s.close()
        await _end_session(mqtt_url, cid)
    topics = sorted(m.headers["mqtt.topic"] for m in COLLECTED.pop(key))
    assert topics == [f"{topic}/eu_west/a1", f"{topic}/us/a2"]


def test_sigkill_mid_stream_loses_nothing(mqtt_url: str, topic: str, tmp_path: Path) -> None:
    n = 800  # below mosquitto's default max_queued_messages (1000) for an offline session
    cid = f"seamline-test-{uuid.uuid4().hex[:8]}"
    asyncio.run(_prepare_session(mqtt_url, cid, topic))
    try:
        msgs = [Message({"id": i, "poison": i % 200 == 7}, id=str(i)) for i in range(n)]
        asyncio.run(_publish(mqtt_url, topic, msgs))
        src = (f"source:\n  mqtt: {{url: '{mqtt_url}', topics: ['{topic}'], client_id: {cid}, "
               f"session_expiry: 300s, receive_maximum: 100}}")
        res = sigkill_mid_stream(tmp_path, src, "mqtt-crash", {str(i) for i in range(n)},
                                 {str(i) for i in range(n) if i % 200 == 7})
        assert res.duplicates <= 100 + 50 * 6
    finally:
        asyncio.run(_end_session(mqtt_url, cid))


async def test_graceful_stop_mid_stream_acknowledges_what_was_delivered(mqtt_url: str, topic: str,
                                                                        tmp_path: Path) -> None:
    """A SIGTERM-style stop drains the flow; the acknowledgements of the drain reach the broker before the
    connection closes, so a restart delivers the rest and nothing twice."""
    cid = f"seamline-test-{uuid.uuid4().hex[:8]}"
    key = f"stop-{cid}"
    (tmp_path / "slowmq.py").write_text(
        "import asyncio\n\nasync def slow(body):\n    await asyncio.sleep(0.003)\n    return body\n")

    def make() -> Any:
        return make_flow("mqtt-stop", source("mqtt", url=mqtt_url, topics=[topic], client_id=cid, session_expiry=60,
                                             receive_maximum=100),
                         [sink("test-collect", key=key)], steps=[step("python", function="slowmq:slow")],
                         batch_size=20, base_dir=tmp_path)

    try:
        async with running(make(), tmp_path / "state.db") as run:
            await _connected(run)
            # published with QoS 2: a publish the broker receives twice under load (at-least-once on the
            # publishing leg) would look like a redelivery here; this test is about the consuming side
            await _publish(mqtt_url, topic, _msgs(400), qos=2)
            await run.wait_for(lambda: len(COLLECTED.get(key, [])) >= 60, 30, "the first messages")
        first = len(COLLECTED[key])
        assert first < 400, "the stream finished before the stop"
        async with running(make(), tmp_path / "state.db") as run:
            await run.wait_for(lambda: len({m.id for m in COLLECTED.get(key, [])}) >= 400, 30, "the rest")
    finally:
        await _end_session(mqtt_url, cid)
    ids = [m.id for m in COLLECTED.pop(key)]
    assert sorted(set(ids)) == sorted(f"m{i}" for i in range(400))
    assert len(ids) == 400, f"{len(ids) - 400} delivered twice after a graceful stop"
