"""The machine's speed as a workload sees it: a fixed piece of pure-Python work, timed in CPU time, four times a
second, in a process of its own beside the system under test.

These machines are shared: the same code path can take 30-40% more CPU time in one minute than in the minute
before, for every process at once (seen here: the serve process and the Prefect server, which share no code path
for a read, both used ~1.4x the CPU for the same stream). A phase's median work time, divided by another phase's,
says how much of a before/after ratio the machine alone explains. CPU time, not wall time: waiting for a core is
the system under test's own load and must not be taken out of its latencies.

    python -m bench.speed FILE    appends "<CLOCK_MONOTONIC seconds> <CPU microseconds>" lines to FILE
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from bench.procs import Proc

__all__ = ["EVERY_S", "SpeedProbe", "work"]

EVERY_S = 0.25


def work() -> int:
    """About 2 ms of interpreter work on this machine: arithmetic, a dict, strings (what the servers do most)."""
    seen: dict[int, str] = {}
    total = 0
    for i in range(15000):
        total += i * i % 7
        seen[i % 512] = str(i)
    return total + len(seen)


def main(path: Path) -> None:
    with path.open("a", buffering=1) as out:
        while True:
            started = time.thread_time()
            work()
            used_us = (time.thread_time() - started) * 1e6
            out.write(f"{time.monotonic():.3f} {used_us:.0f}\n")
            time.sleep(EVERY_S)


class SpeedProbe:
    """The probe process (stopped with everything else the run started); :meth:`median_us` of the work over a
    window of ``time.monotonic()``."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "speed.txt"
        self.proc = Proc(
            "speed-probe",
            [sys.executable, "-m", "bench.speed", str(self.path)],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            cwd=workdir,
            log=workdir / "speed.log",
        )

    def median_us(self, start: float, end: float) -> float | None:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return None
        used = []
        for line in lines:
            at, _, us = line.partition(" ")
            try:
                if start <= float(at) <= end:
                    used.append(float(us))
            except ValueError:
                continue
        return round(statistics.median(used), 1) if used else None


if __name__ == "__main__":
    main(Path(sys.argv[1]))
