"""Celery 5 with the Redis broker on 127.0.0.1:6379: ``apply_async(eta=...)``, one worker with the threads pool
and 50 threads (I/O-bound work; prefork would start processes), a queue of its own per start."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime

from bench.procs import REPO, Proc, rss_mb, wait_log
from bench.systems import System, TaskSpec

__all__ = ["CelerySystem"]

BROKER = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/0")


class CelerySystem(System):
    name = "celery"
    label = "Celery + Redis"
    db = None
    notes = "1 worker, --pool threads -c 50, default prefetch; apply_async(eta=...); Redis 127.0.0.1:6379"

    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self.proc: Proc | None = None
        self.app = None

    async def start(self) -> None:
        self.queue = f"bench-{uuid.uuid4().hex[:8]}"
        os.environ["BENCH_CELERY_QUEUE"] = self.queue
        os.environ["BENCH_CELERY_BROKER"] = BROKER
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = Proc(
            self.name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.systems.celery_app",
                "worker",
                "--pool",
                "threads",
                "-c",
                "50",
                "-Q",
                self.queue,
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"{self.queue}@bench",
            ],
            env=env,
            cwd=REPO,
            log=self.workdir / f"{self.queue}.log",
        )
        await asyncio.to_thread(wait_log, self.proc, "ready.", timeout=60)
        import importlib

        module = importlib.import_module("bench.systems.celery_app")
        module.app.conf.task_default_queue = self.queue
        self.task = module.call

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=20)
            self.proc = None
        try:
            import redis

            client = redis.Redis.from_url(BROKER)
            client.delete(self.queue, f"{self.queue}\x06\x163", f"{self.queue}\x06\x166", f"{self.queue}\x06\x169")
            client.close()
        except Exception:
            pass

    async def submit(self, task: TaskSpec) -> None:
        eta = datetime.fromtimestamp(task.due_ms / 1000, tz=UTC)
        self.task.apply_async(args=[self.ctx.target_url + task.path], eta=eta, queue=self.queue)

    def rss(self) -> dict[str, float | None]:
        return {"worker": rss_mb(self.proc.pid) if self.proc else None}

    def versions(self) -> dict[str, str]:
        import subprocess

        import celery

        out = {"celery": celery.__version__}
        try:
            info = subprocess.run(["redis-cli", "INFO", "server"], capture_output=True, text=True, timeout=5).stdout
            out["redis-server"] = next(
                line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("redis_version")
            )
        except Exception:
            pass
        return out
