"""The workloads: burst, steady, scale, retries. Each one submits tasks to a system and reads the target.

Lateness is the request's arrival at the target minus the task's due time (``performAt``), both ``time.time()``
on this one machine. "Nothing lost, nothing twice" is checked on every workload by counting the requests per
task path at the target: each task has a path of its own.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.procs import Proc, free_port, wait_http
from bench.systems import System, TaskSpec, now_ms
from bench.target import expected_attempts

__all__ = ["Sizes", "Target", "burst", "retries", "scale", "steady_ladder", "warmup"]

REPO = Path(__file__).resolve().parent.parent


class Sizes:
    """Workload sizes: the issue's (full) or --quick's."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.burst = 100 if quick else 500
        self.burst_slow = 20 if quick else 60  # stock Prefect runners: ~1 run/s
        self.steady_seconds = 5.0 if quick else 60.0
        self.steady_lead = 2.0 if quick else 5.0
        self.ladder = [2.0, 5.0] if quick else [2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0]
        self.ladder_slow = [0.5] if quick else [0.25, 0.5, 1.0, 2.0]
        self.ladder_floor = [10.0] if quick else [5.0, 10.0, 20.0, 40.0, 80.0]
        self.ladder_celery = [5.0, 20.0] if quick else [5.0, 20.0, 50.0, 100.0, 200.0, 400.0]
        self.scale_pending = 200 if quick else 10_000
        # p99 of each phase is read off rate * seconds tasks: 300 in the full run, so it is not a single sample
        self.scale_rate = 2.0 if quick else 5.0
        self.scale_seconds = 4.0 if quick else 60.0
        # the duet's after phase, where the target is judged: 900 samples per kind, so that a p99 rests on its top 9
        self.scale_after_seconds = 4.0 if quick else 180.0
        self.retries = 30 if quick else 200
        self.retries_slow = 10 if quick else 30

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


# -- the target ----------------------------------------------------------------------------------------------


class Target:
    """bench/target.py in its own process."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc(
            "target",
            [sys.executable, "-m", "bench.target", "--port", str(self.port)],
            env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
            cwd=REPO,
            log=workdir / "target.log",
        )
        wait_http(f"{self.url}/_health", timeout=30, proc=self.proc, what="the target")
        self.http = httpx.AsyncClient(base_url=self.url, timeout=60)

    async def arrivals(self, prefix: str) -> dict[str, list[float]]:
        response = await self.http.get("/_arrivals", params={"prefix": prefix})
        response.raise_for_status()
        data: dict[str, list[float]] = response.json()
        return data

    async def fail(self, prefix: str, rate: float, seed: str) -> None:
        (await self.http.post("/_config", json={"prefix": prefix, "fail_rate": rate, "seed": seed})).raise_for_status()

    async def close(self) -> None:
        await self.http.aclose()
        self.proc.stop(timeout=5)


# -- statistics ----------------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (nearest rank)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(values: Sequence[float]) -> dict[str, Any]:
    """p50 / p99 / max / mean in seconds, of values in ms."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    return {
        "n": len(values),
        "p50": round(pct(values, 50) / 1000, 3),  # type: ignore[operator]
        "p99": round(pct(values, 99) / 1000, 3),  # type: ignore[operator]
        "max": round(max(values) / 1000, 3),
        "mean": round(sum(values) / len(values) / 1000, 3),
    }


def check_counts(arrivals: dict[str, list[float]], expected: dict[str, int]) -> dict[str, Any]:
    """Tasks with fewer requests than expected (lost), more (performed twice), and requests to unknown paths."""
    lost = [p for p, n in expected.items() if len(arrivals.get(p, [])) < n]
    twice = [p for p, n in expected.items() if len(arrivals.get(p, [])) > n]
    unknown = [p for p in arrivals if p not in expected]
    return {
        "lost": len(lost),
        "twice": len(twice),
        "unknown": len(unknown),
        "examples": (lost[:3] + twice[:3] + unknown[:3]),
    }


async def _arrivals(target: Target, system: System, prefix: str) -> dict[str, list[float]]:
    own = system.own_arrivals(prefix)
    return own if own is not None else await target.arrivals(prefix)


async def wait_for(
    target: Target, system: System, prefix: str, expected: dict[str, int], timeout: float
) -> dict[str, list[float]]:
    """Poll until every path got its expected number of requests, or ``timeout`` s; then a short grace period to
    catch duplicates."""
    deadline = time.monotonic() + timeout
    while True:
        got = await _arrivals(target, system, prefix)
        if all(len(got.get(p, [])) >= n for p, n in expected.items()):
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(0.5)
    return await _arrivals(target, system, prefix)


# -- submitting ----------------------------------------------------------------------------------------------


async def _timed_submit(system: System, task: TaskSpec, latencies: list[float], errors: list[str]) -> bool:
    """Create one task, recording its latency (ms) or its error; whether it was created."""
    started = time.perf_counter()
    try:
        await system.submit(task)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:200])
        return False
    latencies.append((time.perf_counter() - started) * 1000)
    return True


async def submit_all(system: System, tasks: Sequence[TaskSpec], concurrency: int) -> dict[str, Any]:
    """Create all tasks, ``concurrency`` at a time; how long it took and each create's latency."""
    limit = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors: list[str] = []

    async def one(task: TaskSpec) -> None:
        async with limit:
            await _timed_submit(system, task, latencies, errors)

    started = time.perf_counter()
    await asyncio.gather(*(one(t) for t in tasks))
    elapsed = time.perf_counter() - started
    return {
        "n": len(tasks),
        "seconds": round(elapsed, 3),
        "per_s": round(len(tasks) / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": _ms_summary(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "finished_at": now_ms(),
    }


def _ms_summary(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(pct(values, 50), 1),  # type: ignore[arg-type]
        "p99": round(pct(values, 99), 1),  # type: ignore[arg-type]
        "max": round(max(values), 1),
    }


async def stream(
    system: System,
    tasks: Sequence[TaskSpec],
    lead: float,
    *,
    probe_every: float | None = None,
    max_inflight: int = 64,
) -> dict[str, Any]:
    """Create each task ``lead`` seconds before it is due, as a steady producer would; optionally read a task back
    every ``probe_every`` seconds meanwhile, to measure the API's read latency. The raw latencies are returned too
    (``create_samples``, ``read_samples``), for the scale workload's confidence intervals."""
    latencies: list[float] = []
    reads: list[float] = []
    errors: list[str] = []
    late = 0
    created_at: dict[str, float] = {}
    limit = asyncio.Semaphore(max_inflight)
    jobs: list[asyncio.Task[None]] = []

    async def one(task: TaskSpec) -> None:
        nonlocal late
        async with limit:
            if not await _timed_submit(system, task, latencies, errors):
                return
            created_at[task.path] = now_ms()
            if created_at[task.path] > task.due_ms:
                late += 1

    done = asyncio.Event()

    async def prober() -> None:
        while not done.is_set():
            try:
                value = await system.read_probe()
                if value is not None:
                    reads.append(value)
            except Exception as exc:
                errors.append(f"read: {type(exc).__name__}: {exc}"[:200])
            await asyncio.sleep(probe_every or 0.5)

    probing = asyncio.create_task(prober()) if probe_every else None
    for task in tasks:
        wait = (task.due_ms - lead * 1000 - now_ms()) / 1000
        if wait > 0:
            await asyncio.sleep(wait)
        jobs.append(asyncio.create_task(one(task)))
    await asyncio.gather(*jobs)
    done.set()
    if probing is not None:
        await probing
    return {
        "create_ms": _ms_summary(latencies),
        "read_ms": _ms_summary(reads),
        "created_after_due": late,
        "errors": len(errors),
        "error_examples": errors[:3],
        "created_at": created_at,
        "create_samples": latencies,
        "read_samples": reads,
    }


def _run_id() -> str:
    return uuid.uuid4().hex[:6]


# -- workloads -----------------------------------------------------------------------------------------------


async def warmup(system: System, target: Target) -> dict[str, Any]:
    """Tasks due now: the first few warm connection pools, the next ones measure how fast creates go (to size
    the lead of the burst and retries workloads, whose tasks must all exist before they are due)."""
    prefix = f"/warm/{system.name}/{_run_id()}/"
    cold = [TaskSpec(f"{prefix}c{i}", now_ms()) for i in range(4)]
    await submit_all(system, cold, system.create_concurrency)
    timed = [TaskSpec(f"{prefix}{i}", now_ms()) for i in range(16)]
    created = await submit_all(system, timed, system.create_concurrency)
    expected = {t.path: 1 for t in [*cold, *timed]}
    got = await wait_for(target, system, prefix, expected, timeout=120)
    return {"create": created, "arrived": sum(1 for p in expected if got.get(p))}


async def burst(system: System, target: Target, n: int, create_rate: float) -> dict[str, Any]:
    """``n`` tasks all due at one instant, created beforehand."""
    prefix = f"/b/{system.name}/{_run_id()}/"
    completed = getattr(system, "prefect_completed", None)
    base = completed() if completed is not None else None
    lead = min(max(4.0, 1.3 * n / max(create_rate, 1.0) + 2.0), 60.0 if n <= 100 else 120.0)
    print(f"    burst of {n}: create rate estimate {create_rate:.1f}/s, due in {lead:.0f} s", flush=True)
    due = now_ms() + lead * 1000
    tasks = [TaskSpec(f"{prefix}{i}", due) for i in range(n)]
    created = await submit_all(system, tasks, system.create_concurrency)
    created["after_due"] = created["finished_at"] > due
    timeout = 60 + n * (2.5 if system.slow else 0.3) + max(0.0, (due - now_ms()) / 1000)
    got = await wait_for(target, system, prefix, {t.path: 1 for t in tasks}, timeout=timeout)
    firsts = [times[0] for times in got.values() if times]
    lateness = [t - due for t in firsts]
    result: dict[str, Any] = {
        "n": n,
        "create": created,
        "lead_s": round(lead, 1),
        "lateness": summary_ms(lateness),
        "check": check_counts(got, {t.path: 1 for t in tasks}),
    }
    if firsts:
        last = max(firsts)
        result["last_arrival_s"] = round((last - due) / 1000, 3)
        result["per_s"] = round(len(firsts) / max((last - due) / 1000, 0.001), 1)
    done_of = getattr(system, "own_done", None)
    if done_of is not None:  # the floor: done is when Completed was acknowledged (after every Running)
        deadline = time.monotonic() + timeout
        while len(done_of(prefix)) < n and time.monotonic() < deadline:  # noqa: ASYNC110 (filled by the system)
            await asyncio.sleep(0.1)
        done = [times[0] for times in done_of(prefix).values() if times]
        if done:
            result["last_arrival_s"] = round((max(done) - due) / 1000, 3)
            result["per_s"] = round(len(done) / max((max(done) - due) / 1000, 0.001), 1)
            result["throughput_basis"] = "Completed acknowledged"
    if completed is not None and base is not None:  # hexlabs: how long until Prefect shows every run Completed
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            total = completed()
            if total is not None and total >= base + n:
                result["prefect_all_completed_s"] = round((now_ms() - due) / 1000, 1)
                break
            await asyncio.sleep(0.5)
    return result


def _steady_tasks(prefix: str, rate: float, seconds: float, lead: float) -> list[TaskSpec]:
    start = now_ms() + (lead + 1.0) * 1000
    count = max(1, int(rate * seconds))
    return [TaskSpec(f"{prefix}{i}", start + i * 1000 / rate) for i in range(count)]


def _steady_result(tasks: Sequence[TaskSpec], got: dict[str, list[float]], created: dict[str, Any]) -> dict[str, Any]:
    created_at = created.pop("created_at", {})
    lateness = [got[t.path][0] - t.due_ms for t in tasks if got.get(t.path)]
    # the worker's part alone: tasks whose create call returned before they were due
    in_time = [got[t.path][0] - t.due_ms for t in tasks if got.get(t.path) and created_at.get(t.path, 0) <= t.due_ms]
    quarter = max(1, len(tasks) // 4)
    first = [got[t.path][0] - t.due_ms for t in tasks[:quarter] if got.get(t.path)]
    last = [got[t.path][0] - t.due_ms for t in tasks[-quarter:] if got.get(t.path)]
    stats = summary_ms(lateness)
    p50_first, p50_last = pct(first, 50), pct(last, 50)
    growing = p50_first is not None and p50_last is not None and p50_last - p50_first > 1000
    complete = len(lateness) == len(tasks)
    return {
        "lateness": stats,
        "lateness_created_in_time": summary_ms(in_time),
        "p50_first_quarter": round(p50_first / 1000, 3) if p50_first is not None else None,
        "p50_last_quarter": round(p50_last / 1000, 3) if p50_last is not None else None,
        "sustainable": bool(complete and not growing and stats["p99"] is not None and stats["p99"] < 5.0),
        "check": check_counts(got, {t.path: 1 for t in tasks}),
    }


async def steady_one(system: System, target: Target, rate: float, seconds: float, lead: float) -> dict[str, Any]:
    prefix = f"/s/{system.name}/{_run_id()}/"
    tasks = _steady_tasks(prefix, rate, seconds, lead)
    created = await stream(system, tasks, lead)
    del created["create_samples"], created["read_samples"]  # the summaries are enough here
    # a runaway backlog is not waited for long: the ladder stops there (the final check waits for it)
    got = await wait_for(target, system, prefix, {t.path: 1 for t in tasks}, timeout=max(15.0, seconds / 2))
    return {
        "rate": rate,
        "n": len(tasks),
        "seconds": seconds,
        **_steady_result(tasks, got, created),
        "create": created,
        "prefix": prefix,
        "paths": [t.path for t in tasks],
    }


async def steady_ladder(
    system: System, target: Target, rates: Sequence[float], seconds: float, lead: float
) -> dict[str, Any]:
    """Rates in increasing order until lateness runs away (not all done, p99 ≥ 5 s, or p50 growing by > 1 s)."""
    runs = []
    for rate in rates:
        result = await steady_one(system, target, rate, seconds, lead)
        runs.append(result)
        print(
            f"    steady {rate:g}/s: p50 {result['lateness']['p50']} s, p99 {result['lateness']['p99']} s, "
            f"sustainable {result['sustainable']}",
            flush=True,
        )
        if not result["sustainable"]:
            break
        await system.quiet()
    sustainable = [r["rate"] for r in runs if r["sustainable"]]
    under_1s = [
        r["rate"]
        for r in runs
        if r["lateness"]["p99"] is not None and r["lateness"]["p99"] < 1.0 and r["check"]["lost"] == 0
    ]
    return {
        "runs": runs,
        "max_sustainable": max(sustainable) if sustainable else None,
        "max_p99_under_1s": max(under_1s) if under_1s else None,
        "ladder_topped_out": bool(runs) and runs[-1]["sustainable"],
    }


async def retries(system: System, target: Target, n: int, create_rate: float) -> dict[str, Any]:
    """``n`` tasks against paths failing ~50% of attempts (503); each must end with exactly the attempts the
    target's rule implies (first success, retries=20, 0.5 s apart)."""
    run = _run_id()
    prefix = f"/r/{system.name}/{run}/"
    seed = f"seed-{run}"
    await target.fail(prefix, 0.5, seed)
    lead = min(max(3.0, 1.3 * n / max(create_rate, 1.0) + 2.0), 60.0 if n <= 100 else 120.0)
    due = now_ms() + lead * 1000
    tasks = [TaskSpec(f"{prefix}{i}", due, retries=20, retry_delay=0.5) for i in range(n)]
    expected = {t.path: expected_attempts(seed, t.path, 0.5, 21) for t in tasks}
    created = await submit_all(system, tasks, system.create_concurrency)
    timeout = 90 + n * (3.0 if system.slow else 0.3) + lead
    got = await wait_for(target, system, prefix, expected, timeout=timeout)
    await asyncio.sleep(2.0)  # a late extra attempt would show now
    got = await target.arrivals(prefix)
    check = check_counts(got, expected)
    completed = sum(1 for p, k in expected.items() if len(got.get(p, [])) >= k)
    last = max((times[-1] for times in got.values() if times), default=due)
    return {
        "n": n,
        "create": created,
        "completed": completed,
        "attempts": sum(len(v) for v in got.values()),
        "expected_attempts": sum(expected.values()),
        "wrong_count": check["lost"] + check["twice"],
        "all_done_s": round((last - due) / 1000, 2),
        "check": check,
    }


SCALE_PROBE_EVERY = 0.1  # reads per phase: enough (600 in 60 s) for a p99 that is not one outlier
BOOTSTRAP_ROUNDS = 2000


def ratio_interval(
    before: Sequence[float], after: Sequence[float], q: float, *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> list[float] | None:
    """A 95% bootstrap interval for pct(after, q) / pct(before, q): how far the ratio moves by chance alone.

    A p99 from a few hundred samples rests on its top few values, so one hiccup of a shared machine can move it by
    tens of percent; the interval shows whether a ratio above 1 is a change or that noise.
    """
    if len(before) < 20 or len(after) < 20:
        return None
    import random

    rng = random.Random(seed)
    ratios = []
    for _ in range(rounds):
        b = pct(rng.choices(before, k=len(before)), q)
        a = pct(rng.choices(after, k=len(after)), q)
        if b and a is not None:
            ratios.append(a / b)
    ratios.sort()
    return [round(ratios[int(0.025 * len(ratios))], 2), round(ratios[int(0.975 * len(ratios)) - 1], 2)]


async def scale(
    system: System,
    target: Target,
    pending: int,
    rate: float,
    seconds: float,
    lead: float,
    on_phase: Callable[[str, float], None] | None = None,
    twin: System | None = None,
    after_seconds: float | None = None,
) -> dict[str, Any]:
    """A steady stream with no pending tasks (before), then ``pending`` tasks created due a day from now, then the
    same stream again (after): lateness, API create/read latency and memory.

    With a ``twin`` (an identical stack, started the same way, on a Prefect server of its own) this is a duet: the
    same stream goes to both stacks at the same time, and only ``system`` gets the pending tasks. The after phase
    then compares the two side by side, under the same machine at the same moment; the before phase shows how far
    two identical stacks measure apart (the method's own noise). Without one, after is compared with before, which
    on a shared machine includes whatever the machine did in between (``machine_ratio``)."""
    run = _run_id()
    stacks = [system] if twin is None else [system, twin]
    samples: dict[str, dict[str, dict[str, list[float]]]] = {s.name: {} for s in stacks}

    async def one_stack(stack: System, name: str, offset_ms: float, length: float) -> dict[str, Any]:
        prefix = f"/sc/{stack.name}/{run}/{name}/"
        tasks = [TaskSpec(t.path, t.due_ms + offset_ms) for t in _steady_tasks(prefix, rate, length, lead)]
        created = await stream(stack, tasks, lead, probe_every=SCALE_PROBE_EVERY)
        got = await wait_for(target, stack, prefix, {t.path: 1 for t in tasks}, timeout=30)
        samples[stack.name][name] = {
            "lateness": [got[t.path][0] - t.due_ms for t in tasks if got.get(t.path)],
            "create": created.pop("create_samples"),
            "read": created.pop("read_samples"),
        }
        return {**_steady_result(tasks, got, created), "create": created}

    async def phase(name: str, length: float) -> list[dict[str, Any]]:
        if on_phase is not None:
            on_phase(name, length + lead)  # e.g. a profiler over the phase
        cpu_start, started = [s.cpu() for s in stacks], time.monotonic()
        # the twin's stream runs half a period behind: one stream of 2 x rate over the machine, not two in step
        results = await asyncio.gather(*(one_stack(s, name, i * 500 / rate, length) for i, s in enumerate(stacks)))
        ended = time.monotonic()
        speed = system.ctx.speed.median_us(started, ended) if system.ctx.speed else None
        for stack, result, used in zip(stacks, results, cpu_start, strict=True):
            cpu_end = stack.cpu()
            # share of one core each part used over the phase: where a change in latency comes from
            result["cpu_cores"] = {
                part: round((cpu_end[part] - value) / (ended - started), 3)  # type: ignore[operator]
                for part, value in used.items()
                # (a part whose processes exited meanwhile, such as PostgreSQL backends, cannot be counted)
                if value is not None and cpu_end.get(part) is not None and cpu_end[part] >= value  # type: ignore[operator]
            }
            result["rss_mb"] = stack.rss()
            result["machine_work_us"] = speed
        return results

    for stack in stacks:
        await stack.quiet()
    rss_start = system.rss()
    before = await phase("before", seconds)
    far = now_ms() + 86_400_000
    pending_prefix = f"/sc/{system.name}/{run}/pending/"
    created = await submit_all(
        system, [TaskSpec(f"{pending_prefix}{i}", far + i) for i in range(pending)], system.create_concurrency
    )
    created.pop("finished_at", None)
    await system.quiet()
    rss_pending = system.rss()
    print(f"    {len(stacks)} stack(s): before phase and {pending:,} pending created", flush=True)
    after = await phase("after", after_seconds or seconds)
    early = len(await _arrivals(target, system, pending_prefix))
    kinds = ("lateness", "create", "read")

    def compare(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict[str, Any]:
        """a against b: p50 and p99 ratios per kind, with 95% bootstrap intervals of the p99 ratios."""

        def ratio(kind: str, q: float) -> float | None:
            x, y = pct(b[kind], q), pct(a[kind], q)
            return round(y / x, 2) if x and y is not None else None

        return {
            "p99": {kind: ratio(kind, 99) for kind in kinds},
            "p50": {kind: ratio(kind, 50) for kind in kinds},
            "p99_intervals": {kind: ratio_interval(b[kind], a[kind], 99) for kind in kinds},
        }

    mine = samples[system.name]
    over_time = compare(mine["after"], mine["before"])
    speeds = before[0]["machine_work_us"], after[0]["machine_work_us"]
    out: dict[str, Any] = {
        "pending": pending,
        "rate": rate,
        "seconds": {"before": seconds, "after": after_seconds or seconds},
        "create_pending": created,
        "before": before[0],
        "after": after[0],
        "rss_start_mb": rss_start,
        "rss_with_pending_mb": rss_pending,
        "performed_early": early,
        # this stack after against before: the comparison without a twin
        "after_vs_before": over_time,
        # the same fixed work's CPU time after/before: how much slower the machine itself got (bench/speed.py)
        "machine_ratio": round(speeds[1] / speeds[0], 2) if speeds[0] and speeds[1] else None,
    }
    judged = over_time
    if twin is not None:
        theirs = samples[twin.name]
        out["twin"] = {"name": twin.name, "before": before[1], "after": after[1]}
        # two identical stacks, neither with pending tasks: how far apart they measure by themselves
        out["twin_before"] = compare(mine["before"], theirs["before"])
        # the duet: with 10,000 pending against none, at the same time
        judged = out["twin_after"] = compare(mine["after"], theirs["after"])
    out["judged_by"] = "twin_after" if twin is not None else "after_vs_before"
    out["p99_ratio"] = judged["p99"]["lateness"]
    out["create_p99_ratio"] = judged["p99"]["create"]
    out["read_p99_ratio"] = judged["p99"]["read"]
    out["p50_ratios"] = judged["p50"]
    out["p99_ratio_intervals"] = judged["p99_intervals"]
    out["samples_ms"] = {
        stack: {
            phase: {kind: [round(v, 1) for v in values] for kind, values in by_kind.items()}
            for phase, by_kind in by_phase.items()
        }
        for stack, by_phase in samples.items()
    }
    return out
