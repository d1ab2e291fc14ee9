"""The HTTP API's contract against the real API process: errors, auth, idempotency, limits, listing.

Every malformed call must answer the contract's error shape and leave the store and Prefect untouched.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from conftest import Stack, StackFactory

pytestmark = pytest.mark.e2e


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def valid(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request": {"url": "http://127.0.0.1:9/never", "method": "post", "body": {"a": 1}},
        "performAt": now_ms() + 3_600_000,
    }
    for key, value in changes.items():
        where = body
        *parents, leaf = key.split(".")
        for parent in parents:
            where = where.setdefault(parent, {})
        if value is _DROP:
            where.pop(leaf, None)
        else:
            where[leaf] = value
    return body


_DROP = object()

# One broken rule per case: (the change, the field the error must name).
BROKEN = [
    ({"request": _DROP}, "request"),
    ({"request.url": _DROP}, "request.url"),
    ({"request.url": "ftp://example.com/x"}, "request.url"),
    ({"request.url": "/relative/path"}, "request.url"),
    ({"request.method": _DROP}, "request.method"),
    ({"request.method": "fetch"}, "request.method"),
    ({"request.headers": {"X-A": 1}}, "request.headers.X-A"),
    ({"request.headers": {"bad name": "x"}}, "request.headers"),
    ({"request.params": {"a": {"nested": 1}}}, "request.params.a"),
    ({"request.timeout": 0}, "request.timeout"),
    ({"request.timeout": 901}, "request.timeout"),
    ({"performAt": _DROP}, "performAt"),
    ({"performAt": "tomorrow"}, "performAt"),
    ({"performAt": -1}, "performAt"),
    ({"retries": -1}, "retries"),
    ({"retries": 101}, "retries"),
    ({"retryPolicy": {"backoff": "random"}}, "retryPolicy.backoff"),
    ({"retryPolicy": {"jitter": 2}}, "retryPolicy.jitter"),
    ({"retryPolicy": {"retryOn": [99]}}, "retryPolicy.retryOn.0"),
    ({"status": "running"}, "status"),
    ({"unknownField": 1}, "unknownField"),
]


def counts(stack: Stack) -> tuple[int, int]:
    """(tasks in the store, flow runs of the deployment in Prefect)."""
    tasks = len(httpx.get(f"{stack.url}/api/tasks", params={"limit": 1000}, headers=auth(stack)).json()["data"])
    runs = httpx.post(
        f"{stack.prefect_api_url}/flow_runs/count", json={"flow_runs": {"tags": {"all_": ["hexlabs-tasks"]}}}
    ).json()
    return tasks, int(runs)


def auth(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token}"} if stack.token else {}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert isinstance(error["details"], list)
    return error


@pytest.fixture(scope="module")
def api(make_stack: StackFactory) -> Stack:
    """An API process with no worker: nothing it stores is ever performed (all tasks are an hour away)."""
    return make_stack(workers=0)


@pytest.mark.parametrize(("change", "field"), BROKEN, ids=[f for _, f in BROKEN])
def test_each_broken_rule_is_a_422_naming_the_field_and_stores_nothing(
    api: Stack, change: dict[str, Any], field: str
) -> None:
    before = counts(api)
    rest = httpx.post(f"{api.url}/api/tasks", json=valid(**change))
    error = assert_error(rest, 422, "validation_error")
    assert field in {d["field"] for d in error["details"]}, error
    seed = httpx.post(f"{api.url}/api/hexlabs", json={"service": "tasks", "action": "create", "data": valid(**change)})
    error = assert_error(seed, 422, "validation_error")
    assert any(field in d["field"] for d in error["details"]), error
    assert counts(api) == before


def test_malformed_json_and_non_object_bodies_are_422(api: Stack) -> None:
    before = counts(api)
    for content in (b"{not json", b"[1, 2]", b"null"):
        for url in (f"{api.url}/api/tasks", f"{api.url}/api/hexlabs?service=tasks"):
            response = httpx.post(url, content=content, headers={"Content-Type": "application/json"})
            assert_error(response, 422, "validation_error")
    assert counts(api) == before


def test_seed_unknown_service_or_action_is_422(api: Stack) -> None:
    error = assert_error(
        httpx.post(f"{api.url}/api/hexlabs?service=mail", json={"action": "create"}), 422, "validation_error"
    )
    assert error["details"][0]["field"] == "service"
    error = assert_error(
        httpx.post(f"{api.url}/api/hexlabs", json={"service": "tasks", "action": "explode"}), 422, "validation_error"
    )
    assert error["details"][0]["field"] == "action"
    assert_error(
        httpx.post(f"{api.url}/api/hexlabs", json={"service": "tasks", "action": "read"}), 422, "validation_error"
    )


def test_unknown_ids_are_404_everywhere(api: Stack) -> None:
    missing = uuid.uuid4().hex
    assert_error(httpx.get(f"{api.url}/api/tasks/{missing}"), 404, "not_found")
    assert_error(httpx.patch(f"{api.url}/api/tasks/{missing}", json={"retries": 1}), 404, "not_found")
    assert_error(httpx.delete(f"{api.url}/api/tasks/{missing}"), 404, "not_found")
    assert_error(httpx.get(f"{api.url}/api/tasks/{missing}/attempts"), 404, "not_found")
    for action in ("read", "delete"):
        assert_error(
            httpx.post(f"{api.url}/api/hexlabs?service=tasks", json={"action": action, "id": missing}), 404, "not_found"
        )


def test_create_read_update_delete_through_the_seed_endpoint(api: Stack) -> None:
    url = f"{api.url}/api/hexlabs?service=tasks"
    created = httpx.post(url, json={"action": "create", "data": valid(retries=2)})
    assert created.status_code == 201
    task = created.json()["data"]
    assert (task["status"], task["retries"], task["attempts"], task["lastResponse"]) == ("pending", 2, 0, None)
    assert task["retryPolicy"] == {
        "backoff": "exponential",
        "initialDelay": 1.0,
        "maxDelay": 3600.0,
        "multiplier": 2.0,
        "jitter": 0.1,
        "retryOn": [408, 425, 429, 500, 502, 503, 504],
    }
    assert task["request"]["timeout"] == 30
    updated = httpx.post(url, json={"action": "update", "id": task["id"], "data": {"retries": 7}}).json()["data"]
    assert (updated["retries"], updated["flowRunId"]) == (7, task["flowRunId"])
    listed = httpx.post(url, json={"action": "list", "data": {"status": "pending", "limit": 1000}}).json()
    assert task["id"] in {t["id"] for t in listed["data"]}
    deleted = httpx.post(url, json={"action": "delete", "id": task["id"]})
    assert deleted.json() == {"data": {"id": task["id"], "deleted": True}}
    assert_error(httpx.post(url, json={"action": "read", "id": task["id"]}), 404, "not_found")


def test_update_with_a_status_other_than_pending_is_422_and_changes_nothing(api: Stack) -> None:
    task = httpx.post(f"{api.url}/api/tasks", json=valid()).json()
    for status in ("completed", "running", "cancelled", "failed"):
        assert_error(
            httpx.patch(f"{api.url}/api/tasks/{task['id']}", json={"status": status, "retries": 9}),
            422,
            "validation_error",
        )
    after = httpx.get(f"{api.url}/api/tasks/{task['id']}").json()
    assert (after["status"], after["retries"]) == ("pending", 3)
    assert_error(httpx.patch(f"{api.url}/api/tasks/{task['id']}", json={"retries": 500}), 422, "validation_error")
    assert httpx.get(f"{api.url}/api/tasks/{task['id']}").json()["retries"] == 3


def test_idempotency_key_same_body_returns_the_first_task_and_another_body_is_409(api: Stack) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = valid()
    first = httpx.post(f"{api.url}/api/tasks", json=body, headers=key)
    assert first.status_code == 201
    before = counts(api)
    again = httpx.post(f"{api.url}/api/tasks", json=body, headers=key)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = httpx.post(f"{api.url}/api/tasks", json=valid(retries=1), headers=key)
    assert_error(other, 409, "conflict")
    assert counts(api) == before


def test_body_over_the_limit_is_413_and_stores_nothing(api: Stack) -> None:
    before = counts(api)
    huge = valid(**{"request.body": "x" * (1024 * 1024 + 10)})
    assert_error(httpx.post(f"{api.url}/api/tasks", json=huge), 413, "payload_too_large")
    assert counts(api) == before


def test_list_pages_oldest_perform_at_first(api: Stack) -> None:
    base = now_ms() + 7_200_000
    ids = [httpx.post(f"{api.url}/api/tasks", json=valid(performAt=base + n)).json()["id"] for n in (3, 1, 2)]
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "status": "pending", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{api.url}/api/tasks", params=params).json()
        seen += page["data"]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    times = [t["performAt"] for t in seen]
    assert times == sorted(times)
    assert [t["id"] for t in seen if t["id"] in ids] == [ids[1], ids[2], ids[0]]
    assert_error(httpx.get(f"{api.url}/api/tasks", params={"limit": 0}), 422, "validation_error")
    assert_error(httpx.get(f"{api.url}/api/tasks", params={"limit": 1001}), 422, "validation_error")
    assert_error(httpx.get(f"{api.url}/api/tasks", params={"status": "nope"}), 422, "validation_error")
    assert_error(httpx.get(f"{api.url}/api/tasks", params={"cursor": "!!"}), 422, "validation_error")


def test_health_and_openapi_are_served(api: Stack) -> None:
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    paths = httpx.get(f"{api.url}/openapi.json").json()["paths"]
    assert {"/api/tasks", "/api/tasks/{task_id}", "/api/tasks/{task_id}/attempts", "/api/hexlabs"} <= set(paths)
    assert httpx.get(f"{api.url}/docs").status_code == 200


def test_with_a_token_every_api_call_needs_it(make_stack: StackFactory) -> None:
    secured = make_stack(workers=0, token="s3cret-token")
    assert httpx.get(f"{secured.url}/healthz").status_code == 200  # no auth on health
    before = counts(secured)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
        assert_error(httpx.post(f"{secured.url}/api/tasks", json=valid(), headers=headers), 401, "unauthorized")
        assert_error(
            httpx.post(f"{secured.url}/api/hexlabs?service=tasks", json={"action": "list"}, headers=headers),
            401,
            "unauthorized",
        )
        assert_error(httpx.get(f"{secured.url}/api/tasks", headers=headers), 401, "unauthorized")
    assert counts(secured) == before
    ok = httpx.post(f"{secured.url}/api/tasks", json=valid(), headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 201
    with secured.client() as client:
        assert client.read(ok.json()["id"]).id == ok.json()["id"]


def test_without_a_token_the_server_refuses_a_non_loopback_address(api: Stack) -> None:
    import subprocess
    import sys

    env = {**api.env, "HEXLABS_TASKS_HOST": "0.0.0.0"}
    env.pop("HEXLABS_TASKS_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "hexlabs_tasks", "api"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=api.workdir,
    )
    assert result.returncode != 0
    assert "without a token" in result.stderr
