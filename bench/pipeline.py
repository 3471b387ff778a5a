"""Benchmark: file (NDJSON orders) -> map -> file, through seamline and by hand.

Both sides read the same input, parse it, apply the same mapping and write
NDJSON; the script checks that the outputs are equal, then prints msgs/s
for each and the ratio. seamline runs twice per round: in one process, and
with ``settings.workers`` (``--workers``, default 2) worker processes running
the mapping. Each seamline side runs in a fresh process, as ``seamline run``
would start, warmed up on the input's first 2,000 orders before the timed run
(a worker forked from a process that had just run the other side was about
25 % slower per message). With ``--rss N`` it also runs N messages through seamline (one
process) in a child process and reports its peak RSS.

    python bench/pipeline.py [--n 200000] [--rounds 5] [--workers 2] [--rss 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _machine  # bench/: the machine probe printed next to the figures
import orjson

EXPR = (
    "{'order_id': id, 'customer': {'id': customer.id, 'name': customer.name}, "
    "'status': $uppercase(status), 'currency': currency, "
    "'total': $sum(lines.(qty * price)), 'items': $count(lines), "
    "'skus': lines.sku}"
)


def hand_map(o: dict) -> dict:  # the hand-written equivalent of EXPR
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


def make_orders(path: Path, n: int) -> None:
    rnd = random.Random(42)
    with path.open("wb") as f:
        for i in range(n):
            lines = [
                {"sku": f"SKU-{rnd.randint(1000, 9999)}", "qty": rnd.randint(1, 5),
                 "price": rnd.randint(100, 99999) / 100,
                 "description": "Widget " + "x" * rnd.randint(5, 30)}
                for _ in range(rnd.randint(1, 5))
            ]
            o = {
                "id": f"SO-{i}", "status": rnd.choice(["new", "paid", "shipped"]), "currency": "EUR",
                "created_at": "2026-03-27T10:00:00Z",
                "customer": {"id": f"C{rnd.randint(1, 5000):05d}", "name": "Customer " + str(rnd.randint(1, 5000)),
                             "email": f"c{i}@example.com"},
                "lines": lines,
            }
            f.write(orjson.dumps(o) + b"\n")


def run_hand(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    with src.open("rb") as fin, dst.open("wb") as fout:
        buf = []
        for line in fin:
            buf.append(orjson.dumps(hand_map(orjson.loads(line))) + b"\n")
            if len(buf) >= 500:
                fout.write(b"".join(buf))
                buf.clear()
        fout.write(b"".join(buf))
    return time.perf_counter() - t0


FLOW = """
flow: bench
source: {{file: {{path: {src}, format: ndjson, id_field: id}}}}
steps:
  - map: {{expression: "{expr}"}}
sinks:
  - file: {{path: {dst}, fsync: false}}
settings: {{batch_size: 1000, concurrency: 2, queue: 4, journal: {journal}, workers: {workers}}}
"""


def flow_file(tmp: Path, src: Path, dst: Path, workers: int = 0) -> Path:
    f = tmp / "bench.yaml"
    journal = os.environ.get("BENCH_JOURNAL", "hops")
    f.write_text(FLOW.format(src=src, dst=dst, expr=EXPR.replace('"', '\\"'), journal=journal, workers=workers))
    return f


async def _run_engine(flow_path: Path, state: Path) -> None:
    from seamline.config.loader import load_flows
    from seamline.core.engine import Engine
    from seamline.store import open_store

    flows = load_flows(flow_path)
    await Engine(flows, open_store(str(state))).run(until_idle=True, idle_horizon=0, install_signals=False)


def run_seamline(tmp: Path, src: Path, dst: Path, workers: int = 0) -> float:
    f = flow_file(tmp, src, dst, workers)
    t0 = time.perf_counter()
    asyncio.run(_run_engine(f, tmp / f"state-{time.time_ns()}.db"))
    return time.perf_counter() - t0


def run_side(tmp: Path, src: Path, dst: Path, workers: int) -> float:
    """One seamline side in a fresh process, as ``seamline run`` would start; seconds of the timed run."""
    out = subprocess.run([sys.executable, __file__, "--side", str(tmp), str(src), str(dst), str(workers)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _side(tmp: Path, src: Path, dst: Path, workers: int) -> float:
    """Warm up on the input's first 2,000 orders (imports, the mapping's compilation: a long-running
    engine has them behind it), then time the whole input."""
    warm = tmp / f"warm-{os.getpid()}.ndjson"
    with src.open("rb") as f:
        warm.write_bytes(b"".join(line for _, line in zip(range(2000), f, strict=False)))
    run_seamline(tmp, warm, tmp / f"warm-out-{os.getpid()}.ndjson", workers)
    return run_seamline(tmp, src, dst, workers)


def _peak_rss_mb() -> int:
    """This process's peak resident memory in MB.

    On Linux the high-water mark of this process image (``VmHWM``): ``ru_maxrss`` survives
    ``execve`` and would report the parent's size at the fork if that was larger.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rss", type=int, default=0, help="also measure peak RSS at this many messages")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per side, taken in turns")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the second seamline side")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--side", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        tmp = Path(a.child[0])
        run_seamline(tmp, Path(a.child[1]), tmp / "rss-out.ndjson")
        print(_peak_rss_mb())
        return
    if a.side:
        print(_side(Path(a.side[0]), Path(a.side[1]), Path(a.side[2]), int(a.side[3])))
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src = tmp / "orders.ndjson"
        make_orders(src, a.n)
        size = src.stat().st_size
        print(f"input: {a.n} orders, {size / a.n:.0f} bytes each on average")
        print(_machine.describe())
        # alternate the sides to share the machine's noise fairly; each side's best round counts
        hand_t, eng_t, par_t = [], [], []
        # each side starts once the files the one before wrote are on disk: their writeback would
        # otherwise take CPU from it (the first hand round was the only one without)
        for i in range(a.rounds):
            os.sync()
            hand_t.append(run_hand(src, tmp / f"hand-{i}.ndjson"))
            os.sync()
            eng_t.append(run_side(tmp, src, tmp / f"engine-{i}.ndjson", 0))
            os.sync()
            par_t.append(run_side(tmp, src, tmp / f"workers-{i}.ndjson", a.workers))
        hand_out = (tmp / "hand-0.ndjson").read_bytes().splitlines()
        for name in ("engine-0", "workers-0"):
            out = (tmp / f"{name}.ndjson").read_bytes().splitlines()
            assert len(hand_out) == len(out) == a.n, (name, len(hand_out), len(out))
            assert [orjson.loads(x) for x in hand_out] == [orjson.loads(x) for x in out], name
        h, e, p = min(hand_t), min(eng_t), min(par_t)
        print(f"hand-written loop          : {a.n / h:>10,.0f} msgs/s")
        print(f"seamline, one process      : {a.n / e:>10,.0f} msgs/s  ratio {h / e:.2f}x  (journal, checkpoints, DLQ)")
        print(f"seamline, workers: {a.workers:<8d}: {a.n / p:>10,.0f} msgs/s  ratio {h / p:.2f}x  (the same)")
        print("rounds (hand / one process / workers, msgs/s): " + ", ".join(
            f"{a.n / x:,.0f} / {a.n / y:,.0f} / {a.n / z:,.0f}" for x, y, z in zip(hand_t, eng_t, par_t, strict=True)))
        print("goal >= 0.5x")
        if a.rss:
            # peak RSS must not grow with the input: compare a tenth of it with all of it
            for n in (a.rss // 10, a.rss):
                big = tmp / f"big-{n}.ndjson"
                make_orders(big, n)
                out = subprocess.run([sys.executable, __file__, "--child", str(tmp), str(big)], capture_output=True,
                                     text=True, check=True)
                print(f"peak RSS at {n:>9,} messages: {out.stdout.strip()} MB (goal: flat, < 200 MB)")
                big.unlink()


if __name__ == "__main__":
    main()
