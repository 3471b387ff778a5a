"""The conformance suite against MQTT 5 (mosquitto).

MQTT keeps messages only for subscriptions that exist, so the backend
creates the flow's persistent session (client id derived from the topic)
before it publishes. The suite publishes its whole backlog (1,500 messages)
before the engine starts; a stock mosquitto keeps at most 1,000 messages for
an offline session and drops the rest, so the suite runs against a mosquitto
of its own with that limit lifted (``max_queued_messages 0``) and persistence
on — which also gives the broker-restart case. The connector's own tests in
``tests/integration/mqtt`` use the shared broker (``SEAMLINE_MQTT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.integration.brokers.broker_services import TcpProxy
from tests.integration.conformance.harness import (
    Backend,
    BrokerControl,
    Collected,
    ConformanceSuite,
    WireMessage,
)
from tests.integration.services import PrivateMosquitto, require

from seamline.connectors.wire import CONTENT_TYPE_HEADER, CORRELATION_HEADER, MESSAGE_ID_HEADER


def _host_port(url: str) -> tuple[str, int]:
    hp = url.split("://", 1)[1].rsplit("@", 1)[-1].split("/", 1)[0]
    host, _, port = hp.partition(":")
    return host or "127.0.0.1", int(port or 1883)


def _client(url: str, client_id: str | None = None, *, expiry: int | None = None, clean: bool = True) -> Any:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = None
    if expiry is not None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
    host, port = _host_port(url)
    return aiomqtt.Client(host, port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
                          clean_start=clean, properties=props, timeout=10)


def from_mqtt(m: Any) -> WireMessage:
    props = m.properties
    headers = {str(k): str(v) for k, v in ((getattr(props, "UserProperty", None) or []) if props else [])}
    mid = headers.pop(MESSAGE_ID_HEADER, "")
    corr = headers.pop(CORRELATION_HEADER, None)
    headers.pop(CONTENT_TYPE_HEADER, None)
    payload = m.payload if isinstance(m.payload, bytes | bytearray) else str(m.payload).encode()
    return WireMessage(id=mid, body=bytes(payload), headers=headers, correlation_id=corr)


class MqttBackend(Backend):
    name = "mqtt"
    order = "total"

    def __init__(self, url: str, engine_url: str | None = None, sessions: set[str] | None = None) -> None:
        self.url = url
        self.engine_url = engine_url or url
        self.sessions: set[str] = sessions if sessions is not None else set()

    @staticmethod
    def client_id(channel: str) -> str:
        return "conf-" + hashlib.sha1(channel.encode()).hexdigest()[:16]

    async def new_channel(self, tag: str) -> str:
        return f"conf/{tag}-{uuid.uuid4().hex[:10]}"

    async def _session(self, channel: str) -> None:
        """Create the flow's persistent session, so messages published before it starts are kept."""
        cid = self.client_id(channel)
        if cid in self.sessions:
            return
        async with _client(self.url, cid, expiry=600) as c:
            await c.subscribe(channel, qos=1)
        self.sessions.add(cid)

    async def publish(self, channel: str, messages: Sequence[WireMessage]) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        await self._session(channel)
        async with _client(self.url) as c:
            c.pending_calls_threshold = 1000
            for i in range(0, len(messages), 50):
                calls = []
                for m in messages[i : i + 50]:
                    props = Properties(PacketTypes.PUBLISH)
                    user = [(MESSAGE_ID_HEADER, m.id), *m.headers.items()]
                    if m.correlation_id:
                        user.append((CORRELATION_HEADER, m.correlation_id))
                    props.UserProperty = user
                    props.ContentType = "application/json"
                    calls.append(c.publish(channel, m.body, qos=1, properties=props))
                await asyncio.gather(*calls)

    @contextlib.asynccontextmanager
    async def collect(self, channel: str) -> AsyncIterator[Collected]:
        import aiomqtt

        out = Collected()
        cid = f"conf-collect-{uuid.uuid4().hex[:10]}"
        ready = asyncio.Event()

        async def reader() -> None:
            clean = True
            while True:
                try:
                    async with _client(self.url, cid, expiry=600, clean=clean) as c:
                        clean = False
                        await c.subscribe(channel, qos=1)
                        ready.set()
                        async for m in c.messages:
                            out.add([from_mqtt(m)])
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.3)  # the broker restarts: the session keeps what we miss

        task = asyncio.create_task(reader())
        try:
            await asyncio.wait_for(ready.wait(), 20)
            yield out
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.sessions.add(cid)

    def source_config(self, channel: str, *, group: str) -> dict[str, Any]:
        return {"url": self.engine_url, "topics": [channel], "client_id": self.client_id(channel),
                "session_expiry": "600s", "qos": 1, "linger": "20ms"}

    def sink_config(self, channel: str) -> dict[str, Any]:
        return {"url": self.engine_url, "topic": channel, "qos": 1, "publish_timeout": "5s"}

    @contextlib.asynccontextmanager
    async def behind_proxy(self) -> AsyncIterator[tuple[Backend, Any]]:
        host, port = _host_port(self.url)
        proxy = TcpProxy(host, port)
        proxy.start()
        try:
            yield MqttBackend(self.url, f"mqtt://127.0.0.1:{proxy.port}", self.sessions), proxy
        finally:
            proxy.close()

    @contextlib.asynccontextmanager
    async def private_broker(self, tmp: Path) -> AsyncIterator[tuple[Backend, BrokerControl]]:
        broker = PrivateMosquitto(tmp)
        await asyncio.to_thread(broker.start)
        try:
            yield MqttBackend(broker.url), _Control(broker)
        finally:
            await asyncio.to_thread(broker.stop)

    async def aclose(self) -> None:
        for cid in self.sessions:
            with contextlib.suppress(Exception):
                async with _client(self.url, cid, expiry=0):
                    pass
        self.sessions.clear()


class _Control(BrokerControl):
    def __init__(self, broker: PrivateMosquitto) -> None:
        self.broker = broker

    def stop(self) -> None:
        self.broker.stop()

    def start(self) -> None:
        self.broker.start()


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMosquitto]:
    require("mqtt")  # the same broker software as the shared service
    broker = PrivateMosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class TestMqttConformance(ConformanceSuite):
    @pytest.fixture
    async def backend(self, mosquitto: PrivateMosquitto) -> AsyncIterator[MqttBackend]:
        b = MqttBackend(mosquitto.url)
        yield b
        await b.aclose()
