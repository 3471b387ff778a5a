"""Benchmark: the REST sink alone next to a plain aiohttp loop posting the same messages.

A local target (``bench/_target.py``: raw asyncio, in a child process) answers 201 to every POST.
Every side posts the same N JSON messages with an ``Idempotency-Key`` header
and the same number of requests in flight:

* ``plain``: an aiohttp loop (the baseline);
* ``sink``: the ``http`` sink component alone, written to in batches of 500 by
  two writers as the runtime's two workers do (the sink keeps no order with
  requests in parallel, so batches overlap and its in-flight limit holds across
  them); rate limiter, egress guard, header checks, response size limit and
  status classification included -- the goal (>= 0.8x) is about this one;
* ``engine``: a whole engine run, memory source -> ``http`` sink, with the
  journal, store commits and acknowledgements on top (for reference: the
  runtime's own cost is what ``bench/pipeline.py`` measures).

Prints msgs/s for each, the ratios, and checks the target got every message.

    python bench/http_sink.py [--n 20000] [--inflight 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, method: str = "GET") -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with opener.open(req, timeout=10) as r:
        return orjson.loads(r.read())


def messages(n: int) -> list[dict]:
    return [{"id": f"m-{i}", "customer": {"id": f"C{i % 5000:05d}", "name": f"Customer {i}"},
             "amount": round(i * 1.37, 2), "currency": "EUR", "lines": [{"sku": f"S{i % 97}", "qty": 1 + i % 3}]}
            for i in range(n)]


async def plain(url: str, bodies: list[dict], inflight: int) -> float:
    import aiohttp

    items = iter(bodies)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight)) as s:
        async def worker() -> None:
            for b in items:
                async with s.post(url, data=orjson.dumps(b), headers={
                        "Content-Type": "application/json", "Idempotency-Key": b["id"]}) as r:
                    await r.read()
                    if r.status >= 300:
                        raise RuntimeError(f"HTTP {r.status}")

        await asyncio.gather(*(worker() for _ in range(inflight)))
    return time.perf_counter() - t0


async def seamline(url: str, bodies: list[dict], inflight: int, state: Path) -> float:
    from seamline.core.engine import Engine
    from seamline.core.flow import Flow, sink, source
    from seamline.store.sqlite import SqliteStore
    from seamline.testing.memory import channel, reset_channels

    reset_channels()
    ch = channel("bench-in")
    for b in bodies:
        ch.put(b, id=b["id"])
    fl = Flow("bench", source=source("memory", channel="bench-in"),
              sinks=[sink("http", url=url, max_in_flight=inflight, egress={"allow_loopback": True})])
    engine = Engine([fl], SqliteStore(state))
    t0 = time.perf_counter()
    result = await engine.run(until_idle=True, idle_horizon=0, install_signals=False)
    elapsed = time.perf_counter() - t0
    if not result.ok or result.stats["bench"].delivered != len(bodies):
        raise RuntimeError(f"seamline run incomplete: {result.stats['bench'].as_dict()} {result.errors}")
    return elapsed


async def sink_alone(url: str, bodies: list[dict], inflight: int, batch: int = 500) -> float:
    from seamline.connectors.http._components import HttpSink, HttpSinkConfig
    from seamline.core.component import BuildContext
    from seamline.core.message import Message

    msgs = [Message(b, id=b["id"]) for b in bodies]
    sink = HttpSink(HttpSinkConfig(url=url, max_in_flight=inflight, egress={"allow_loopback": True}),
                    BuildContext(flow="bench", base_dir=Path.cwd(), store=None))  # type: ignore[arg-type]
    await sink.open()
    batches = iter([msgs[i:i + batch] for i in range(0, len(msgs), batch)])

    async def writer() -> None:  # as the runtime's workers do: a new batch while one is in flight
        for b in batches:
            await sink.write(b)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(2)))
        return time.perf_counter() - t0
    finally:
        await sink.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--inflight", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        from _target import serve

        serve(args.serve)
        return 0
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                call(base + "/count")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        bodies = messages(args.n)
        best = {"plain": float("inf"), "sink": float("inf"), "engine": float("inf")}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for side in ("plain", "sink", "engine"):
                    call(base + "/reset", "POST")
                    if side == "plain":
                        t = asyncio.run(plain(base + "/ingest", bodies, args.inflight))
                    elif side == "sink":
                        t = asyncio.run(sink_alone(base + "/ingest", bodies, args.inflight))
                    else:
                        t = asyncio.run(seamline(base + "/ingest", bodies, args.inflight, Path(tmp) / f"s{r}.db"))
                    best[side] = min(best[side], t)
                    got = call(base + "/count")["count"]
                    if got != args.n:
                        raise RuntimeError(f"{side}: the target received {got} of {args.n}")
                    print(f"round {r + 1} {side:>8}: {args.n / t:8.0f} msgs/s ({t:.2f} s)", flush=True)
        rate = {k: args.n / v for k, v in best.items()}
        print(f"\nplain aiohttp loop     : {rate['plain']:8.0f} msgs/s")
        print(f"seamline http sink     : {rate['sink']:8.0f} msgs/s  ratio {rate['sink'] / rate['plain']:.2f}x "
              f"(goal >= 0.8x)")
        print(f"whole engine with sink : {rate['engine']:8.0f} msgs/s  ratio {rate['engine'] / rate['plain']:.2f}x "
              f"(journal, store, acks on top)")
        print(f"n={args.n}, in flight={args.inflight}, cpus={os.cpu_count()}")
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
