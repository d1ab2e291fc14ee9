"""Run the benchmark: every system, one after another, on this machine, in one invocation.

    python bench/run.py                 # the full set (long: see docs/performance.md)
    python bench/run.py --quick         # < 3 min, indicative only
    python bench/run.py --systems hexlabs-pg,celery --workloads burst,steady

Writes bench/results/latest.json (``--out``) and docs/performance.md + docs/performance.png (``--no-report`` to
skip). Every process it starts is stopped by PID at the end, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import workloads as wl  # noqa: E402
from bench.procs import pg_available, stop_all  # noqa: E402
from bench.systems import SYSTEMS, Ctx, make_system  # noqa: E402

WORKLOADS = ("burst", "retries", "steady", "scale")
# --quick runs on PostgreSQL when it answers: Prefect on SQLite creates runs at 1-7/s under concurrent writers
# (lock stalls retried after 2, 4, 8 s), which alone would take the quick run past 3 minutes
QUICK_SYSTEMS = ("floor-pg", "hexlabs-pg", "celery")
QUICK_SYSTEMS_NO_PG = ("floor-sqlite", "hexlabs-sqlite", "celery")
# floor before hexlabs on each server (floor sees no hexlabs runs; hexlabs runs scale on servers of its own)
ORDER = ("floor-sqlite", "flow-serve", "process-worker", "hexlabs-sqlite", "floor-pg", "hexlabs-pg", "celery")


def machine() -> dict[str, Any]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "cpu": model,
        "kernel": platform.release(),
    }


def versions() -> dict[str, str]:
    import importlib.metadata as md
    import subprocess

    out = {"python": platform.python_version()}
    for dist in ("prefect", "hexlabs-tasks", "celery", "redis", "httpx", "uvicorn", "sqlalchemy", "asyncpg"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    try:
        info = subprocess.run(["redis-cli", "INFO", "server"], capture_output=True, text=True, timeout=5).stdout
        for line in info.splitlines():
            if line.startswith("redis_version"):
                out["redis-server"] = line.split(":", 1)[1].strip()
    except Exception:
        pass
    try:
        import asyncpg

        from bench.procs import PG_ADMIN

        async def pg() -> str:
            connection = await asyncpg.connect(PG_ADMIN, timeout=3)
            try:
                return str(await connection.fetchval("SHOW server_version"))
            finally:
                await connection.close()

        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from inside the driver's event loop
            out["postgresql"] = pool.submit(asyncio.run, pg()).result(timeout=10)
    except Exception:
        pass
    return out


def _ladder(name: str, sizes: wl.Sizes, slow: bool) -> list[float]:
    if slow:
        return sizes.ladder_slow
    if name.startswith("floor"):
        return sizes.ladder_floor
    if name == "celery":
        return sizes.ladder_celery
    return sizes.ladder


def _start_profiles(system: Any, ctx: Ctx, seconds: int, label: str = "") -> None:
    """py-spy (sampling, --nonblocking) on the system's processes for ``seconds``, collapsed stacks, one file per
    process (and per ``label``: the steady workload, or each phase of scale)."""
    import shutil

    from bench.procs import Proc

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = ctx.workdir / "profiles"
    out.mkdir(exist_ok=True)
    for part, pid in system.profile_targets().items():
        Proc(
            f"py-spy-{part}",
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                "50",
                "--nonblocking",
                "--subprocesses",
                "--format",
                "raw",
                "-o",
                str(out / f"{system.name}-{part}{label}.txt"),
            ],
            env=dict(os.environ),
            cwd=ctx.workdir,
            log=out / f"{system.name}-{part}{label}.log",
        )
    print(f"    profiling {list(system.profile_targets())} for {seconds} s into {out}", flush=True)


async def run_system(
    name: str, ctx: Ctx, target: wl.Target, sizes: wl.Sizes, wanted: list[str], profile: int = 0
) -> dict[str, Any]:
    system = make_system(name, ctx)
    record: dict[str, Any] = {**system.describe(), "workloads": {}, "errors": []}
    started = time.monotonic()
    print(f"== {name}: starting", flush=True)
    try:
        await system.start()
        record["start_s"] = round(time.monotonic() - started, 1)
        warm = await wl.warmup(system, target)
        record["warmup"] = warm
        rate = warm["create"]["per_s"] or 5.0
        ran_any = False
        for workload in WORKLOADS:
            if workload not in wanted or workload not in system.workloads:
                continue
            if workload == "scale" and system.slow:
                continue  # creating 10,000 runs with run_deployment alone takes minutes; see docs/performance.md
            if workload == "scale" and name.startswith("floor"):
                continue  # the scale targets are the product's; 10,000 bare creates on SQLite alone take ~15 min
            print(f"  {name}: {workload}", flush=True)
            t0 = time.monotonic()
            try:
                if workload == "burst":
                    n = sizes.burst_slow if system.slow else sizes.burst
                    result = await wl.burst(system, target, n, rate)
                elif workload == "retries":
                    n = sizes.retries_slow if system.slow else sizes.retries
                    result = await wl.retries(system, target, n, rate)
                elif workload == "steady":
                    if profile and hasattr(system, "profile_targets"):
                        _start_profiles(system, ctx, profile)
                    result = await wl.steady_ladder(
                        system, target, _ladder(name, sizes, system.slow), sizes.steady_seconds, sizes.steady_lead
                    )
                else:
                    # two fresh stacks side by side, each on a Prefect server of its own (workloads.scale); not in
                    # --quick, where starting them would take a third of its three minutes
                    twin = None if ctx.quick else await system.duet()
                    if twin is not None:
                        await asyncio.gather(wl.warmup(system, target), wl.warmup(twin, target))
                        print(f"    {name} and its twin ready in {time.monotonic() - t0:.1f} s", flush=True)
                    elif ran_any and not ctx.quick:
                        await system.restart()  # a clean system: no backlog, memory from a fresh start
                        await wl.warmup(system, target)
                    on_phase = None
                    if profile and hasattr(system, "profile_targets"):

                        def on_phase(phase: str, seconds: float, system: Any = system) -> None:
                            _start_profiles(system, ctx, min(profile, int(seconds)), f"-scale-{phase}")

                    try:
                        result = await wl.scale(
                            system,
                            target,
                            sizes.scale_pending,
                            sizes.scale_rate,
                            sizes.scale_seconds,
                            sizes.steady_lead,
                            on_phase=on_phase,
                            twin=twin,
                            after_seconds=sizes.scale_after_seconds if twin is not None else None,
                        )
                    finally:
                        if twin is not None:
                            await system.end_duet(twin)
                result["wall_s"] = round(time.monotonic() - t0, 1)
                record["workloads"][workload] = result
                ran_any = True
                print(f"  {name}: {workload} done in {result['wall_s']} s: {_brief(workload, result)}", flush=True)
            except Exception as exc:
                traceback.print_exc()
                record["errors"].append(f"{workload}: {type(exc).__name__}: {exc}"[:500])
            await system.quiet()
        await _final_check(system, target, record)
        record["rss_end_mb"] = system.rss()
        record["versions"] = system.versions()
    except Exception as exc:
        traceback.print_exc()
        record["errors"].append(f"{type(exc).__name__}: {exc}"[:500])
    finally:
        try:
            await system.stop()
        except Exception as exc:
            record["errors"].append(f"stop: {exc}"[:300])
    record["wall_s"] = round(time.monotonic() - started, 1)
    return record


async def _final_check(system: Any, target: wl.Target, record: dict[str, Any]) -> None:
    """Steady runs that ran away left tasks unperformed when measured: give them a last chance, then count."""
    steady = record["workloads"].get("steady")
    if not steady:
        return
    deadline = time.monotonic() + 60
    for run in steady["runs"]:
        paths = run.pop("paths", [])
        prefix = run.pop("prefix", "")
        if run["check"]["lost"] and paths:
            got = await wl.wait_for(
                target, system, prefix, dict.fromkeys(paths, 1), timeout=max(1.0, deadline - time.monotonic())
            )
            run["check_final"] = wl.check_counts(got, dict.fromkeys(paths, 1))
        else:
            run["check_final"] = run["check"]


def _brief(workload: str, result: dict[str, Any]) -> str:
    if workload == "burst":
        return f"{result.get('per_s')} tasks/s, lateness {result['lateness']}, check {result['check']}"
    if workload == "retries":
        return f"{result['completed']}/{result['n']} done, attempts {result['attempts']}/{result['expected_attempts']}"
    if workload == "steady":
        return f"max sustainable {result['max_sustainable']}/s, p99<1s up to {result['max_p99_under_1s']}/s"
    return (
        f"p99 ratio {result['p99_ratio']}, create p99 ratio {result['create_p99_ratio']}, "
        f"rss {result['rss_with_pending_mb']}"
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = wl.Sizes(args.quick)
    for k, v in args.size or []:
        setattr(sizes, k, type(getattr(sizes, k))(v))
    default: tuple[str, ...] = ORDER
    if args.quick:
        default = QUICK_SYSTEMS if pg_available() else QUICK_SYSTEMS_NO_PG
    names = [s for s in (args.systems.split(",") if args.systems else default) if s]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    names.sort(key=ORDER.index)
    wanted = args.workloads.split(",") if args.workloads else list(WORKLOADS)
    skipped: dict[str, str] = {}
    if any(n.endswith("-pg") for n in names) and not pg_available():
        skipped.update({n: "PostgreSQL not reachable on 127.0.0.1:5432" for n in names if n.endswith("-pg")})
        names = [n for n in names if not n.endswith("-pg")]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hexlabs-bench-"))
    os.environ["PREFECT_HOME"] = str(workdir / "driver-prefect-home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": args.quick,
            "machine": machine(),
            "versions": versions(),
            "sizes": sizes.as_dict(),
            "systems_requested": names,
            "skipped": skipped,
            "workdir": str(workdir),
            "command": " ".join(["python bench/run.py", *sys.argv[1:]]),
        },
        "systems": {},
    }
    print(f"workdir {workdir}; systems {names}; workloads {wanted}", flush=True)
    if args.quick:
        print("--quick: small workloads; the numbers are indicative only", flush=True)
    from bench.speed import SpeedProbe

    ctx = Ctx(workdir=workdir, target_url="", quick=args.quick, speed=SpeedProbe(workdir))
    target = wl.Target(workdir)
    ctx.target_url = target.url
    try:
        for name in names:
            results["systems"][name] = await run_system(name, ctx, target, sizes, wanted, args.profile)
            results["meta"]["prefect_server_start_s"] = {k: round(v, 1) for k, v in ctx.server_start_s.items()}
            _write(results, args.out)
    finally:
        await target.close()
        ctx.close()
    return results


def _write(results: dict[str, Any], out: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small workloads; floor, hexlabs (PostgreSQL if reachable, else SQLite) and Celery; "
        "< 3 min, indicative only",
    )
    parser.add_argument("--systems", help=f"comma-separated, of: {', '.join(SYSTEMS)}")
    parser.add_argument("--workloads", help=f"comma-separated, of: {', '.join(WORKLOADS)}")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.json"))
    parser.add_argument("--doc", default=str(REPO / "docs" / "performance.md"))
    parser.add_argument("--png", default=str(REPO / "docs" / "performance.png"))
    parser.add_argument("--no-report", action="store_true", help="write the JSON only")
    parser.add_argument("--workdir", help="where logs and databases go (default: a new temp dir)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="py-spy the hexlabs worker, API and Prefect server for this long from the steady start, and from "
        "the start of each scale phase",
    )
    parser.add_argument(
        "--size",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="override a workload size, e.g. --size burst 200 (see bench/workloads.py Sizes)",
    )
    args = parser.parse_args()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    try:
        results = asyncio.run(main_async(args))
    except KeyboardInterrupt:
        print("interrupted; stopping everything", flush=True)
        stop_all()
        raise SystemExit(130) from None
    finally:
        stop_all()
    results["meta"]["wall_s"] = round(time.monotonic() - started, 1)
    _write(results, args.out)
    print(f"wrote {args.out} ({results['meta']['wall_s']} s)", flush=True)
    if not args.no_report:
        from bench.report import write_report

        write_report(results, Path(args.doc), Path(args.png))
        print(f"wrote {args.doc} and {args.png}", flush=True)


if __name__ == "__main__":
    main()
