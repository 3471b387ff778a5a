"""What the machine gives a benchmark right now: one core's speed and how much a second process adds.

The ratios of ``pipeline.py`` and ``brokers.py`` compare a one-process hand-written loop with
seamline running on several processes (the engine and its workers). The ratio therefore depends on
the machine as much as on seamline: on two real cores the workers run beside the engine, on a
second core that is busy elsewhere (or a sibling hyper-thread of the first) they mostly take turns.
The benchmarks print this probe next to their figures so that two runs can be compared.
"""

from __future__ import annotations

import subprocess
import sys
import time

__all__ = ["describe"]

_SPIN = "\n".join([
    "import time",
    "t = time.perf_counter()",
    "x = 0",
    "for i in range(3_000_000):",
    "    x += i",
    "print(time.perf_counter() - t)",
])


def _spin(n: int) -> list[float]:
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return [float(p.communicate()[0]) for p in procs]


def describe() -> str:
    """One line: a fixed loop's time in one process, and the speed-up of two processes at once
    (2.0 = two whole cores; 1.0 = none)."""
    one = min(min(_spin(1)) for _ in range(3))
    both = min(max(_spin(2)) for _ in range(3))
    time.sleep(0.2)
    return (f"machine: a fixed loop takes {one * 1000:.0f} ms in one process; two processes at once "
            f"get {2 * one / both:.2f}x the work done (2.00 = two whole cores)")


if __name__ == "__main__":
    print(describe())
