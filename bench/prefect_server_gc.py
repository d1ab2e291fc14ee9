"""What freezing the Prefect server's startup objects changes, measured as a duet.

Two identical hexlabs-tasks stacks start fresh, side by side: one on a stock ``prefect server start``, one on
``python -m hexlabs_tasks.prefect_server`` (the same server with its startup objects frozen, as ``serve`` starts
it). They take the same steady stream at the same time, half a period apart, in two phases; each phase compares
create and read latency through the hexlabs API and start lateness at the target, frozen against stock.

    python bench/prefect_server_gc.py                   # both databases, 5 tasks/s, phases of 60 s and 180 s
    python bench/prefect_server_gc.py --db pg --seconds 120

Writes ``bench/results/prefect_server_gc.json`` and prints the markdown table that docs/prefect.md quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import workloads as wl  # noqa: E402
from bench.procs import pg_available  # noqa: E402
from bench.run import machine, versions  # noqa: E402
from bench.speed import SpeedProbe  # noqa: E402
from bench.systems import Ctx  # noqa: E402
from bench.systems.hexlabs import HexlabsPg, HexlabsSqlite  # noqa: E402

KINDS = ("create", "read", "lateness")


async def duet(db: str, ctx: Ctx, target: wl.Target, rate: float, seconds: float, after: float) -> dict[str, Any]:
    """The two stacks on ``db``, through the scale workload's duet with nothing pending: only their servers differ."""
    cls = HexlabsPg if db == "pg" else HexlabsSqlite
    frozen, stock = cls(ctx, f"{cls.name}-frozen"), cls(ctx, f"{cls.name}-stock")
    frozen.server_key, stock.server_key = f"{db}-frozen", f"{db}-stock"
    await asyncio.gather(
        asyncio.to_thread(ctx.prefect, db, frozen.server_key),
        asyncio.to_thread(ctx.prefect, db, stock.server_key, stock=True),
    )
    await asyncio.gather(frozen.start(), stock.start())
    try:
        for stack in (frozen, stock):
            await wl.warmup(stack, target)
        result = await wl.scale(frozen, target, 0, rate, seconds, 2.0, twin=stock, after_seconds=after)
    finally:
        await asyncio.gather(frozen.stop(), stock.stop())
        for key in (frozen.server_key, stock.server_key):
            await asyncio.to_thread(ctx.drop_prefect, key)
    phases = {}
    for phase, compared in (("first", "twin_before"), ("second", "twin_after")):
        mine = result["before" if phase == "first" else "after"]
        theirs = result["twin"]["before" if phase == "first" else "after"]
        phases[phase] = {
            "seconds": result["seconds"]["before" if phase == "first" else "after"],
            "frozen": _summary(mine),
            "stock": _summary(theirs),
            "frozen_vs_stock": result[compared],
        }
    return {"db": db, "rate": rate, "phases": phases, "samples_ms": result["samples_ms"]}


def _summary(stack: dict[str, Any]) -> dict[str, Any]:
    lateness = {k: round(v * 1000, 1) for k, v in stack["lateness"].items() if k in ("p50", "p99", "max")}
    return {
        "create_ms": stack["create"]["create_ms"],
        "read_ms": stack["create"]["read_ms"],
        "lateness_ms": {"n": stack["lateness"]["n"], **lateness},
        "cpu_cores": stack.get("cpu_cores"),
        "lost": stack["check"]["lost"],
        "twice": stack["check"]["twice"],
    }


def _cells(summary: dict[str, Any]) -> str:
    return f"{summary['p50']} / {summary['p99']} / {summary['max']}"


def table(results: dict[str, Any]) -> str:
    """Markdown: per database and phase, p50 / p99 / max of each kind on both servers, and the p99 ratio."""
    lines = [
        "| database, phase | kind | stock `prefect server start`: p50 / p99 / max (ms) | "
        "`hexlabs_tasks.prefect_server`: p50 / p99 / max (ms) | p99 frozen / stock (95% interval) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for db, run in results["duets"].items():
        for phase, p in run["phases"].items():
            for kind in KINDS:
                stock, frozen = (_cells(p[side][f"{kind}_ms"]) for side in ("stock", "frozen"))
                ratio = p["frozen_vs_stock"]["p99"][kind]
                interval = p["frozen_vs_stock"]["p99_intervals"][kind]
                span = f" ({interval[0]}–{interval[1]})" if interval else ""
                label = f"{db}, {phase} {p['seconds']:.0f} s"
                lines.append(f"| {label} | {kind} | {stock} | {frozen} | {ratio}×{span} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    dbs = [d for d in args.db.split(",") if d]
    if "pg" in dbs and not pg_available():
        print("PostgreSQL not reachable on 127.0.0.1:5432: pg skipped", flush=True)
        dbs.remove("pg")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hexlabs-bench-gc-"))
    os.environ["PREFECT_HOME"] = str(workdir / "driver-prefect-home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "versions": versions(),
            "command": " ".join(["python bench/prefect_server_gc.py", *sys.argv[1:]]),
            "workdir": str(workdir),
        },
        "duets": {},
    }
    print(f"workdir {workdir}; databases {dbs}", flush=True)
    ctx = Ctx(workdir=workdir, target_url="", quick=False, speed=SpeedProbe(workdir))
    target = wl.Target(workdir)
    ctx.target_url = target.url
    try:
        for db in dbs:
            print(f"== {db}: stock and frozen Prefect servers, {args.rate}/s", flush=True)
            results["duets"][db] = await duet(db, ctx, target, args.rate, args.first, args.seconds)
    finally:
        await target.close()
        ctx.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="pg,sqlite", help="databases, comma-separated (default: pg,sqlite)")
    parser.add_argument("--rate", type=float, default=5.0, help="tasks per second to each stack (default 5)")
    parser.add_argument("--first", type=float, default=60.0, help="the first phase's seconds (default 60)")
    parser.add_argument("--seconds", type=float, default=180.0, help="the second phase's seconds (default 180)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "prefect_server_gc.json"))
    parser.add_argument("--workdir", help="where logs go (default: a new temporary directory)")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(table(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
