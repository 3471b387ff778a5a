"""The fault server, checked from the outside with a real aiohttp client."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import pytest

from seamline.core.clock import ManualClock
from seamline.testing import (
    Every,
    FaultServer,
    FaultServerClient,
    HalfWritten,
    Hang,
    Latency,
    ReceivedRequest,
    Reset,
    Respond,
    Sequence,
    Times,
    behaviour_from_dict,
)


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with FaultServer() as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def statuses(http: aiohttp.ClientSession, url: str, n: int) -> list[int]:
    result = []
    for _ in range(n):
        async with http.get(url) as resp:
            await resp.read()
            result.append(resp.status)
    return result


class TestResponses:
    async def test_default_is_200(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        assert server.url.startswith("http://127.0.0.1:") and server.port > 0
        assert await statuses(http, server.url_for("/anything"), 2) == [200, 200]

    async def test_respond_with_status_headers_and_json(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script("/orders", Respond(503, headers={"Retry-After": "7"}), Respond(201, json={"id": 42}))
        async with http.post(server.url_for("/orders"), json={"n": 1}) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "7"
        async with http.post(server.url_for("/orders"), json={"n": 2}) as resp:
            assert resp.status == 201
            assert resp.headers["Content-Type"].startswith("application/json")
            assert await resp.json() == {"id": 42}

    async def test_text_and_bytes_bodies(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script("/t", Respond(200, body="hello"), Respond(200, body=b"\x00\x01", content_type="x/bin"))
        async with http.get(server.url_for("/t")) as resp:
            assert await resp.text() == "hello"
        async with http.get(server.url_for("/t")) as resp:
            assert await resp.read() == b"\x00\x01"
            assert resp.headers["Content-Type"] == "x/bin"

    async def test_sequence_then_default(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script("/x", Sequence([Respond(503), Respond(500)]), default=Respond(201))
        assert await statuses(http, server.url_for("/x"), 4) == [503, 500, 201, 201]

    async def test_n_times_then(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script("/x", Times(3, Respond(429, headers={"Retry-After": "1"})), default=Respond(204))
        assert await statuses(http, server.url_for("/x"), 5) == [429, 429, 429, 204, 204]

    async def test_every_nth(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script("/x", default=Every(3, Respond(500)))
        assert await statuses(http, server.url_for("/x"), 6) == [200, 200, 500, 200, 200, 500]

    async def test_nested_combinators(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script("/x", Sequence([Times(2, Respond(502)), Respond(503)]), Respond(504))
        assert await statuses(http, server.url_for("/x"), 5) == [502, 502, 503, 504, 200]

    async def test_path_scripts_win_over_the_wildcard(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script(None, default=Respond(503))
        server.script("/healthy", default=Respond(200))
        server.set_default(Respond(418))  # only reached when no script applies
        assert await statuses(http, server.url_for("/healthy"), 1) == [200]
        assert await statuses(http, server.url_for("/other"), 1) == [503]

    async def test_replace_drops_the_old_script(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script("/x", Respond(500), Respond(500), default=Respond(500))
        server.script("/x", Respond(202), replace=True)
        assert await statuses(http, server.url_for("/x"), 2) == [202, 200]


class TestFaults:
    async def test_latency(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script("/slow", Latency(0.2, Respond(202)))
        start = time.monotonic()
        async with http.get(server.url_for("/slow")) as resp:
            assert resp.status == 202
        assert time.monotonic() - start >= 0.2

    async def test_hang_makes_the_client_time_out(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script("/hang", Hang())
        with pytest.raises(asyncio.TimeoutError):
            async with http.get(server.url_for("/hang"), timeout=aiohttp.ClientTimeout(total=0.2)):
                pass
        assert server.count("/hang") == 1
        assert server.received("/hang")[0].behaviour == Hang()

    async def test_closing_the_server_drops_hung_requests(self, http: aiohttp.ClientSession) -> None:
        srv = FaultServer(default=Hang())
        await srv.start()
        request = asyncio.create_task(http.post(srv.url_for("/hang")))  # POST: aiohttp won't retry it
        await srv.wait_for(1)
        start = time.monotonic()
        await srv.close()
        assert time.monotonic() - start < 1.5
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await request

    async def test_reset_drops_the_connection(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script("/reset", Reset())
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            async with http.post(server.url_for("/reset"), data=b"payload"):
                pass
        assert server.received_bodies("/reset") == [b"payload"]
        assert server.received("/reset")[0].behaviour == Reset()
        assert await statuses(http, server.url_for("/reset"), 1) == [200]  # the server lives on

    async def test_aiohttp_retries_an_idempotent_request_once_after_a_reset(
        self, server: FaultServer, http: aiohttp.ClientSession
    ) -> None:
        # Pinned because it matters for delivery counts: the aiohttp client resends
        # GET/PUT/DELETE once on a dropped connection, so the target sees it twice.
        server.script("/r", Reset(), Reset())
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            async with http.put(server.url_for("/r"), data=b"x"):
                pass
        assert server.received_bodies("/r") == [b"x", b"x"]

    async def test_half_written_body(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script("/half", HalfWritten())
        async with http.get(server.url_for("/half")) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == "1000"
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()


class TestRecording:
    async def test_every_detail_of_a_request(self, http: aiohttp.ClientSession) -> None:
        clock = ManualClock(start=1_234.5)
        async with FaultServer(clock=clock) as srv:
            srv.script("/orders", Respond(503))
            async with http.post(
                srv.url_for("/orders?page=2&tag=a&tag=b"),
                data=b'{"id": 1}',
                headers={"Idempotency-Key": "msg-1", "Content-Type": "application/json"},
            ) as resp:
                assert resp.status == 503
            (rec,) = srv.received()
        assert (rec.method, rec.path) == ("POST", "/orders")
        assert rec.query == {"page": ["2"], "tag": ["a", "b"]}
        assert rec.header("idempotency-key") == "msg-1"
        assert rec.body == b'{"id": 1}' and rec.json() == {"id": 1} and rec.text == '{"id": 1}'
        assert rec.timestamp == 1_234.5
        assert rec.behaviour == Respond(503)

    async def test_count_bodies_clear_and_wait(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        for i in range(3):
            async with http.put(server.url_for(f"/p{i % 2}"), json={"i": i}):
                pass
        assert server.count() == 3 and server.count("/p0") == 2
        assert server.received_json("/p0") == [{"i": 0}, {"i": 2}]
        assert server.received_bodies("/p1") == [b'{"i": 1}']
        assert len(await server.wait_for(3)) == 3
        with pytest.raises(TimeoutError, match="3 of 4"):
            await server.wait_for(4, timeout=0.05)
        server.clear()
        assert server.count() == 0

    async def test_reset_forgets_scripts_and_records(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        server.script("/x", default=Respond(500))
        await statuses(http, server.url_for("/x"), 1)
        server.reset()
        assert server.count() == 0
        assert await statuses(http, server.url_for("/x"), 1) == [200]


class TestAdminApi:
    async def test_script_and_inspect_over_http(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        script = {
            "path": "/orders",
            "behaviours": [{"type": "times", "n": 2, "behaviour": {"type": "respond", "status": 503}}],
            "default": {"type": "respond", "status": 201, "json": {"ok": True}},
        }
        async with http.post(server.url_for("/_fault/script"), json=script) as resp:
            assert resp.status == 200
        async with http.post(server.url_for("/orders"), data=b"\xff\x00") as resp:
            assert resp.status == 503
        assert await statuses(http, server.url_for("/orders"), 2) == [503, 201]
        async with http.get(server.url_for("/_fault/received"), params={"path": "/orders"}) as resp:
            data = await resp.json()
        first = ReceivedRequest.from_dict(data["requests"][0])
        assert first.body == b"\xff\x00" and data["requests"][0]["body_text"] is None
        assert first.behaviour == Respond(503)
        async with http.get(server.url_for("/_fault/count")) as resp:
            assert (await resp.json()) == {"count": 3}  # admin calls are not recorded
        async with http.post(server.url_for("/_fault/clear")) as resp:
            assert resp.status == 200
        assert server.count() == 0

    async def test_bad_scripts_are_refused(self, server: FaultServer, http: aiohttp.ClientSession) -> None:
        for body in (b"not json", b'{"path": "/x", "behaviours": [{"type": "explode"}]}', b"[1]"):
            async with http.post(server.url_for("/_fault/script"), data=body) as resp:
                assert resp.status == 400
                assert "error" in await resp.json()
        async with http.get(server.url_for("/_fault/nope")) as resp:
            assert resp.status == 404
        assert server.count() == 0


class TestBehaviourJson:
    @pytest.mark.parametrize(
        "behaviour",
        [
            Respond(503, headers={"Retry-After": "7"}),
            Respond(201, json={"a": [1, 2]}),
            Respond(200, body="text", content_type="text/csv"),
            Respond(200, body=b"\x00\xff"),
            Latency(0.5),
            Latency(1.5, HalfWritten(status=502)),
            Hang(),
            Reset(),
            HalfWritten(content_length=50, body=b"abc", headers={"X-A": "1"}),
        ],
    )
    def test_actions_round_trip(self, behaviour: Respond) -> None:
        assert behaviour_from_dict(json.loads(json.dumps(behaviour.to_dict()))) == behaviour

    def test_combinators_round_trip(self) -> None:
        original = Sequence([Times(2, Reset()), Every(3, Respond(500), otherwise=Respond(204))])
        rebuilt = behaviour_from_dict(original.to_dict())
        assert rebuilt.to_dict() == original.to_dict()
        assert [rebuilt.next_action() for _ in range(5)] == [Reset(), Reset(), Respond(204), Respond(204), Respond(500)]

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            ({"type": "explode"}, "unknown behaviour type 'explode'"),
            ({"status": 200}, "with a 'type'"),
            ({"type": "latency"}, "needs the field 'seconds'"),
            (
                {"type": "latency", "seconds": 1, "then": {"type": "times", "n": 1, "behaviour": {"type": "hang"}}},
                "'then' must be a plain behaviour",
            ),
            ({"type": "respond", "headers": ["x"]}, "'headers' must be an object"),
            ({"type": "times", "n": -1, "behaviour": {"type": "hang"}}, "n >= 0"),
        ],
    )
    def test_errors_say_what_is_wrong(self, data: object, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            behaviour_from_dict(data)


def _get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_thread_mode_with_the_admin_client() -> None:
    with FaultServer() as srv:
        client = FaultServerClient(srv.url)
        client.script("/x", Respond(503), default=Respond(202))
        assert [_get(srv.url_for("/x")) for _ in range(3)] == [503, 202, 202]
        assert srv.wait_for_sync(3, "/x")[0].behaviour == Respond(503)
        assert client.count("/x") == 3
        assert [r.behaviour for r in client.received()] == [Respond(503), Respond(202), Respond(202)]
        assert client.received_bodies("/x") == [b"", b"", b""]
        client.clear()
        assert srv.count() == 0
        client.reset()
        assert _get(srv.url_for("/x")) == 200
        port = srv.port
    with pytest.raises(RuntimeError, match="not running"):
        _ = srv.port
    assert port > 0


def test_runs_as_a_separate_process() -> None:
    script = json.dumps({"path": "/x", "behaviours": [{"type": "respond", "status": 503}]})
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamline.testing.faultserver", "--port", "0", "--script", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("faultserver listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1].strip()
        assert [_get(url + "/x"), _get(url + "/x")] == [503, 200]
        assert FaultServerClient(url).count("/x") == 2
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
