"""Benchmark: the cost of the resilience machinery on the happy path.

The same flow (file -> map -> file) runs twice in one process, alternating:
once plain, once with a per-sink retry policy, a circuit breaker, a rate
limit far above the achieved rate, a bulkhead and a timeout. Prints msgs/s
for both and the overhead (goal: < 10 %).

    python bench/resilience.py [--n 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import EXPR, make_orders

PLAIN = """
flow: plain
source: {{file: {{path: {src}, format: ndjson, id_field: id}}}}
steps:
  - map: {{expression: "{expr}"}}
sinks:
  - file: {{path: {dst}, fsync: false, timeout: null}}
settings: {{batch_size: 1000, journal: edges}}
"""

GUARDED = """
flow: guarded
source: {{file: {{path: {src}, format: ndjson, id_field: id}}}}
steps:
  - map: {{expression: "{expr}"}}
sinks:
  - file:
      path: {dst}
      fsync: false
      timeout: 30s
      concurrency: 4
      retry: {{max_attempts: 8, initial: 200ms, max: 30s}}
      breaker: {{failure_threshold: 5, cool_down: 30s}}
      rate_limit: {{rate: 100000000/s, burst: 1000}}
settings: {{batch_size: 1000, journal: edges}}
on_error:
  retry: {{max_attempts: 5, initial: 100ms, max: 10s, max_elapsed: 1h}}
"""


async def _run(path: Path, state: Path) -> None:
    from seamline.config.loader import load_flows
    from seamline.core.engine import Engine
    from seamline.store import open_store

    await Engine(load_flows(path), open_store(str(state))).run(until_idle=True, idle_horizon=0,
                                                                install_signals=False)


def once(tmp: Path, template: str, src: Path, tag: str) -> float:
    dst = tmp / f"{tag}-{time.time_ns()}.ndjson"
    f = tmp / f"{tag}.yaml"
    f.write_text(template.format(src=src, dst=dst, expr=EXPR.replace('"', '\\"')))
    t0 = time.perf_counter()
    asyncio.run(_run(f, tmp / f"{tag}-{time.time_ns()}.db"))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src = tmp / "orders.ndjson"
        make_orders(src, a.n)
        plain, guarded = [], []
        for _ in range(a.rounds):
            plain.append(once(tmp, PLAIN, src, "plain"))
            guarded.append(once(tmp, GUARDED, src, "guarded"))
        p, g = a.n / min(plain), a.n / min(guarded)
        print(f"without resilience machinery : {p:>10,.0f} msgs/s")
        print(f"with retry+breaker+rate limit: {g:>10,.0f} msgs/s")
        print(f"overhead                     : {(1 - g / p) * 100:.1f} % (goal < 10 %)")


if __name__ == "__main__":
    main()
