"""``hexlabs-tasks serve``: the embedded default (SQLite, its own Prefect server), as a user starts and stops it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import free_port, wait_until
from support import HttpTarget

from hexlabs_tasks import Tasks
from hexlabs_tasks._serve import SQLITE_PREFECT_CONCURRENCY, with_sqlite_prefect
from hexlabs_tasks._settings import Settings

pytestmark = pytest.mark.e2e


class Serve:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.prefect_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / f"serve-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HEXLABS_TASKS_", "PREFECT_API_URL", "PREFECT_API_DATABASE"))
        }
        env["HEXLABS_TASKS_HOME"] = str(self.home)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hexlabs_tasks",
                    "serve",
                    "--port",
                    str(self.port),
                    "--prefect-port",
                    str(self.prefect_port),
                ],
                env=env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(self._ready, timeout=180, interval=0.2, what=f"serve to start (log {self.log})")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.output()}")
        return "Press Ctrl-C to stop." in self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, as a user would press it, and wait for everything to stop."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Kill serve and what it started: its Prefect server runs in a session of its own, so a killed serve
        would leave it running."""
        if self.process is None or self.process.poll() is not None:
            return
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.kill()
        self.process.wait(10)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(children, timeout=10)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True


def test_serve_runs_everything_stops_on_ctrl_c_and_reuses_its_data(
    tmp_path: Path, target: HttpTarget, path: str
) -> None:
    home = tmp_path
    first = Serve(home)
    try:
        first.start()
        banner = first.output()
        assert first.url in banner
        assert f"{first.url}/docs" in banner
        prefect_ui = f"http://127.0.0.1:{first.prefect_port}"
        assert prefect_ui in banner
        assert httpx.get(prefect_ui, timeout=10).status_code == 200  # the Prefect UI is served
        assert httpx.get(f"{first.url}/docs", timeout=10).status_code == 200
        assert "startup objects of the Prefect server" in (home / "prefect-server.log").read_text()  # frozen

        with Tasks(base_url=first.url) as client:
            task = client.create(
                {
                    "request": {"url": target.url_for(path), "method": "post", "body": {"a": 1}},
                    "performAt": time.time_ns() // 1_000_000,
                }
            )
            done = client.wait(task.id, timeout=30, poll_interval=0.1)
        assert done.status == "completed"
        assert len(target.received(path)) == 1
        assert (home / "tasks.db").exists()

        assert first.interrupt() == 0
        assert not _answers(f"{first.url}/healthz")
        assert not _answers(f"http://127.0.0.1:{first.prefect_port}/api/health")  # the Prefect child is gone too
    finally:
        first.kill()

    second = Serve(home)  # the same home: the same data
    try:
        second.start()
        with Tasks(base_url=second.url) as client:
            again = client.read(task.id)
        assert (again.status, again.flow_run_id) == ("completed", task.flow_run_id)
        run = httpx.get(f"http://127.0.0.1:{second.prefect_port}/api/flow_runs/{task.flow_run_id}", timeout=10)
        assert run.json()["state"]["type"] == "COMPLETED"  # Prefect kept its data under the same home
        assert second.interrupt() == 0
    finally:
        second.kill()


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    home = tmp_path
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXLABS_TASKS_")}
    env["HEXLABS_TASKS_HOME"] = str(home)
    result = subprocess.run(
        [sys.executable, "-m", "hexlabs_tasks", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "without a token" in result.stderr
    assert not (home / "prefect").exists()  # nothing was started


def test_serve_s_own_sqlite_prefect_gets_one_prefect_call_at_a_time_unless_the_user_chose() -> None:
    assert with_sqlite_prefect(Settings(port=8001)).prefect_concurrency == SQLITE_PREFECT_CONCURRENCY == 1
    assert with_sqlite_prefect(Settings(port=8001)).port == 8001
    assert with_sqlite_prefect(Settings(prefect_concurrency=6)).prefect_concurrency == 6


def test_serve_keeps_a_prefect_concurrency_set_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXLABS_TASKS_PREFECT_CONCURRENCY", "4")
    assert with_sqlite_prefect(Settings()).prefect_concurrency == 4
