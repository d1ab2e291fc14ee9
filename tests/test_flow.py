"""The flow in flows/ run the stock-Prefect way: Prefect's own engine executes the task's flow run.

``python -m prefect.engine <flow-run-id>`` is what a stock process worker runs for each flow run, so these tests
show that a stock Prefect worker gives the same result as ``hexlabs-tasks worker``: the request performed, the
task completed or failed in the store, the flow run Completed or Failed with a log line per attempt.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from conftest import Stack, StackFactory
from support import HttpTarget, Reply

pytestmark = pytest.mark.e2e


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(scope="module")
def no_worker_stack(make_stack: StackFactory) -> Stack:
    """An API with no hexlabs worker: only Prefect's engine performs these tasks."""
    return make_stack(workers=0)


def run_with_prefect_engine(stack: Stack, flow_run_id: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "PREFECT__FLOW_RUN_ID": flow_run_id}
    return subprocess.run(
        [sys.executable, "-m", "prefect.engine", flow_run_id],
        env=env,
        cwd=stack.workdir,
        capture_output=True,
        text=True,
        timeout=180,
    )


def flow_run(stack: Stack, flow_run_id: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{stack.prefect_api_url}/flow_runs/{flow_run_id}").json()
    return data


def run_logs(stack: Stack, flow_run_id: str) -> list[str]:
    response = httpx.post(
        f"{stack.prefect_api_url}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC"},
    )
    return [entry["message"] for entry in response.json()]


def test_prefect_engine_runs_the_flow_to_completion_with_retries(
    no_worker_stack: Stack, target: HttpTarget, path: str
) -> None:
    target.respond(path, Reply(503), Reply(200, body=b"done"))
    with no_worker_stack.client() as client:
        task = client.create(
            {
                "request": {"url": target.url_for(path), "method": "put", "body": {"n": 1}},
                "performAt": now_ms(),
                "retryPolicy": {"initialDelay": 0.2, "jitter": 0},
            }
        )
        assert task.flow_run_id
        result = run_with_prefect_engine(no_worker_stack, task.flow_run_id)
        assert result.returncode == 0, result.stderr[-3000:]
        done = client.read(task.id)
    assert (done.status, done.attempts) == ("completed", 2)
    assert done.last_response is not None and done.last_response.body == "done"
    assert [r.method for r in target.received(path)] == ["PUT", "PUT"]
    run = flow_run(no_worker_stack, task.flow_run_id)
    assert run["state"]["type"] == "COMPLETED"
    messages = run_logs(no_worker_stack, task.flow_run_id)
    assert any(m.startswith("attempt 1: PUT") and "HTTP 503" in m for m in messages)
    assert any(m.startswith("attempt 2: PUT") and "HTTP 200" in m for m in messages)


def test_prefect_engine_ends_the_flow_run_failed_when_the_task_fails(
    no_worker_stack: Stack, target: HttpTarget, path: str
) -> None:
    target.respond(path, Reply(404))
    with no_worker_stack.client() as client:
        task = client.create({"request": {"url": target.url_for(path), "method": "post"}, "performAt": now_ms()})
        assert task.flow_run_id
        run_with_prefect_engine(no_worker_stack, task.flow_run_id)
        done = client.read(task.id)
    assert (done.status, done.attempts) == ("failed", 1)
    assert flow_run(no_worker_stack, task.flow_run_id)["state"]["type"] == "FAILED"
    assert len(target.received(path)) == 1


def test_prefect_engine_on_a_deleted_task_performs_nothing(
    no_worker_stack: Stack, target: HttpTarget, path: str
) -> None:
    with no_worker_stack.client() as client:
        task = client.create({"request": {"url": target.url_for(path), "method": "post"}, "performAt": now_ms()})
        assert task.flow_run_id
        client.delete(task.id)
    run_with_prefect_engine(no_worker_stack, task.flow_run_id)
    assert target.received(path) == []
    assert flow_run(no_worker_stack, task.flow_run_id)["state"]["type"] == "CANCELLED"
