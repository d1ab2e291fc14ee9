"""The CLI's own logic: durations, and what `wait` prints and exits with (the API answered by respx)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx
from click.testing import CliRunner

from hexlabs_tasks.cli import main, parse_duration

API = "http://api.test"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("250ms", timedelta(milliseconds=250)),
    ],
)
def test_durations_are_parsed(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "5x", "1h 30"])
def test_malformed_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def task(status: str) -> dict[str, Any]:
    return {
        "id": "t1",
        "request": {"url": "https://x.example/", "method": "get"},
        "performAt": 1,
        "retries": 3,
        "retryPolicy": {},
        "status": status,
        "attempts": 1,
        "createdAt": 1,
        "updatedAt": 1,
    }


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
@respx.mock
def test_wait_prints_the_final_task_and_exits_0_whatever_its_status(status: str) -> None:
    respx.get(f"{API}/api/tasks/t1").mock(return_value=httpx.Response(200, json=task(status)))
    result = CliRunner().invoke(main, ["--api-url", API, "wait", "t1", "--timeout", "5"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == status


@respx.mock
def test_wait_that_runs_out_of_time_exits_1_with_the_error_json() -> None:
    respx.get(f"{API}/api/tasks/t1").mock(return_value=httpx.Response(200, json=task("running")))
    result = CliRunner().invoke(main, ["--api-url", API, "wait", "t1", "--timeout", "0.3"])
    assert result.exit_code == 1
    assert json.loads(result.stderr)["error"]["code"] == "timeout"


def test_create_with_both_at_and_in_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        main,
        [
            "--api-url",
            API,
            "create",
            "--url",
            "https://x.example/",
            "--method",
            "get",
            "--at",
            "2030-01-01T00:00:00Z",
            "--in",
            "5m",
        ],
    )
    assert result.exit_code == 2
    assert "not both" in result.output


@respx.mock
def test_an_api_error_is_printed_as_its_json_and_exits_1() -> None:
    body = {"error": {"code": "not_found", "message": "no task with id 'nope'", "details": []}}
    respx.get(f"{API}/api/tasks/nope").mock(return_value=httpx.Response(404, json=body))
    result = CliRunner().invoke(main, ["--api-url", API, "read", "nope"])
    assert result.exit_code == 1
    assert json.loads(result.stderr)["error"]["code"] == "not_found"
