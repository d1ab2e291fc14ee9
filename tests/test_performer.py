"""One attempt of a task's request, performed with httpx against a real HTTP server (support.HttpTarget)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from support import HttpTarget, Received, Reply

from hexlabs_tasks import __version__
from hexlabs_tasks._models import LastResponse, RequestSpec
from hexlabs_tasks._performer import BODY_EXCERPT_LIMIT, AttemptResult, new_http_client, perform


@pytest.fixture(scope="module")
def running_target() -> Iterator[HttpTarget]:
    with HttpTarget() as target:
        yield target


@pytest.fixture
def target(running_target: HttpTarget) -> HttpTarget:
    running_target.reset()
    return running_target


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_http_client() as http:
        yield http


def spec(url: str, method: str = "post", **fields: Any) -> RequestSpec:
    return RequestSpec.model_validate({"url": url, "method": method, **fields})


async def perform_once(
    client: httpx.AsyncClient, target: HttpTarget, path: str, method: str = "post", **fields: Any
) -> tuple[AttemptResult, Received]:
    """Perform the request and return what came back and the one request the target got."""
    result = await perform(client, spec(target.url_for(path), method, **fields))
    received = target.received()
    assert len(received) == 1, f"expected exactly one request, got {received}"
    return result, received[0]


# -- what the target receives --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "post", "put", "delete", "patch", "head", "options"])
async def test_method_is_sent_upper_case(client: httpx.AsyncClient, target: HttpTarget, method: str) -> None:
    result, received = await perform_once(client, target, "/m", method)
    assert received.method == method.upper()
    assert received.path == "/m"
    assert result.status == 200
    assert result.error is None


async def test_method_in_any_case_is_sent_upper_case(client: httpx.AsyncClient, target: HttpTarget) -> None:
    _, received = await perform_once(client, target, "/m", "PaTcH")
    assert received.method == "PATCH"


async def test_headers_are_sent_as_given(client: httpx.AsyncClient, target: HttpTarget) -> None:
    headers = {"X-Source": "billing", "Authorization": "Bearer secret", "X-Empty": ""}
    _, received = await perform_once(client, target, "/h", "get", headers=headers)
    assert received.headers["x-source"] == "billing"
    assert received.headers["authorization"] == "Bearer secret"
    assert received.headers["x-empty"] == ""
    assert received.headers["user-agent"] == f"hexlabs-tasks/{__version__}"
    assert received.headers["host"] == f"127.0.0.1:{target.port}"


async def test_a_callers_user_agent_wins(client: httpx.AsyncClient, target: HttpTarget) -> None:
    _, received = await perform_once(client, target, "/h", "get", headers={"User-Agent": "mine/1"})
    assert received.headers["user-agent"] == "mine/1"


async def test_params_are_added_to_the_query_string(client: httpx.AsyncClient, target: HttpTarget) -> None:
    params = {"page": 2, "q": "x y&z", "dry": True, "wet": False, "ratio": 2.0, "pi": 2.5, "neg": -3}
    _, received = await perform_once(client, target, "/p", "get", params=params)
    assert received.query_params == {
        "page": ["2"],
        "q": ["x y&z"],
        "dry": ["true"],
        "wet": ["false"],
        "ratio": ["2"],
        "pi": ["2.5"],
        "neg": ["-3"],
    }


async def test_params_are_merged_with_a_query_already_in_the_url(client: httpx.AsyncClient, target: HttpTarget) -> None:
    _, received = await perform_once(client, target, "/p?a=1&b=two", "get", params={"page": 2, "dry": True})
    assert received.query_params == {"a": ["1"], "b": ["two"], "page": ["2"], "dry": ["true"]}
    assert received.query.startswith("a=1&b=two&")


async def test_url_query_is_kept_when_there_are_no_params(client: httpx.AsyncClient, target: HttpTarget) -> None:
    _, received = await perform_once(client, target, "/p?a=1&a=2&empty=", "get")
    assert received.query == "a=1&a=2&empty="


async def test_no_params_means_no_query_string(client: httpx.AsyncClient, target: HttpTarget) -> None:
    _, received = await perform_once(client, target, "/p", "get")
    assert received.query == ""


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "options"])
@pytest.mark.parametrize("payload", [{"some": "payload", "n": [1, 2.5, None]}, [1, "two", {"three": True}]])
async def test_object_and_array_bodies_are_sent_as_json(
    client: httpx.AsyncClient, target: HttpTarget, method: str, payload: Any
) -> None:
    _, received = await perform_once(client, target, "/b", method, body=payload)
    assert received.headers["content-type"] == "application/json"
    assert received.json() == payload
    assert received.headers["content-length"] == str(len(received.body))


async def test_json_body_keeps_non_ascii_text(client: httpx.AsyncClient, target: HttpTarget) -> None:
    _, received = await perform_once(client, target, "/b", body={"name": "Zoë ✓"})
    assert json.loads(received.body.decode("utf-8")) == {"name": "Zoë ✓"}


@pytest.mark.parametrize("text", ["hello=world&x=1", '{"looks": "like json"}', "Zoë ✓", ""])
async def test_string_body_is_sent_as_it_is(client: httpx.AsyncClient, target: HttpTarget, text: str) -> None:
    _, received = await perform_once(client, target, "/b", body=text)
    assert received.body == text.encode("utf-8")
    assert received.headers.get("content-type") != "application/json"


@pytest.mark.parametrize(
    ("payload", "raw"),
    [({"a": 1}, b'{"a":1}'), ("a=1&b=2", b"a=1&b=2")],
)
@pytest.mark.parametrize("header_name", ["Content-Type", "content-type", "CONTENT-TYPE"])
async def test_a_callers_content_type_wins(
    client: httpx.AsyncClient, target: HttpTarget, payload: Any, raw: bytes, header_name: str
) -> None:
    headers = {header_name: "application/x-www-form-urlencoded"}
    _, received = await perform_once(client, target, "/b", headers=headers, body=payload)
    assert received.headers["content-type"] == "application/x-www-form-urlencoded"
    assert received.body == raw


@pytest.mark.parametrize("method", ["get", "head"])
@pytest.mark.parametrize("payload", [{"a": 1}, [1], "text"])
async def test_no_body_is_sent_for_get_and_head(
    client: httpx.AsyncClient, target: HttpTarget, method: str, payload: Any
) -> None:
    _, received = await perform_once(client, target, "/b", method, body=payload)
    assert received.body == b""
    assert "content-type" not in received.headers
    assert received.headers.get("content-length", "0") == "0"
    assert "transfer-encoding" not in received.headers


async def test_a_null_body_is_not_sent(client: httpx.AsyncClient, target: HttpTarget) -> None:
    _, received = await perform_once(client, target, "/b", "post")
    assert received.body == b""
    assert "content-type" not in received.headers


# -- what comes back -----------------------------------------------------------------------------------------


async def test_redirect_is_not_followed(client: httpx.AsyncClient, target: HttpTarget) -> None:
    target.respond("/old", Reply(302, headers={"Location": target.url_for("/new")}, body=b""))
    result, received = await perform_once(client, target, "/old", "get")
    assert result.status == 302
    assert result.headers["location"] == target.url_for("/new")
    assert received.path == "/old"
    assert target.received("/new") == []


async def test_status_headers_and_body_come_back(client: httpx.AsyncClient, target: HttpTarget) -> None:
    target.respond("/r", Reply(201, headers={"X-Reply": "yes", "Content-Type": "text/plain"}, body="created ✓"))
    result, _ = await perform_once(client, target, "/r")
    assert result.status == 201
    assert result.headers["x-reply"] == "yes"
    assert result.body == "created ✓"
    assert result.error is None


@pytest.mark.parametrize("status", [400, 404, 418, 500, 503])
async def test_error_statuses_are_results_not_exceptions(
    client: httpx.AsyncClient, target: HttpTarget, status: int
) -> None:
    target.respond("/e", Reply(status, body=b"nope"))
    result, _ = await perform_once(client, target, "/e")
    assert result.status == status
    assert result.body == "nope"
    assert result.error is None


async def test_body_excerpt_is_cut_at_64_kib(client: httpx.AsyncClient, target: HttpTarget) -> None:
    assert BODY_EXCERPT_LIMIT == 64 * 1024
    target.respond("/big", Reply(200, body=b"a" * (200 * 1024)))
    result, _ = await perform_once(client, target, "/big", "get")
    assert result.status == 200
    assert result.body == "a" * BODY_EXCERPT_LIMIT


async def test_body_of_exactly_64_kib_is_kept_whole(client: httpx.AsyncClient, target: HttpTarget) -> None:
    target.respond("/edge", Reply(200, body=b"b" * BODY_EXCERPT_LIMIT))
    result, _ = await perform_once(client, target, "/edge", "get")
    assert result.body == "b" * BODY_EXCERPT_LIMIT


async def test_client_is_reusable_after_a_cut_body(client: httpx.AsyncClient, target: HttpTarget) -> None:
    target.respond("/big", Reply(200, body=b"a" * (200 * 1024)))
    await perform(client, spec(target.url_for("/big"), "get"))
    result = await perform(client, spec(target.url_for("/small"), "get"))
    assert result.status == 200
    assert result.body == "ok"


async def test_retry_after_is_exposed(client: httpx.AsyncClient, target: HttpTarget) -> None:
    target.respond("/busy", Reply(503, headers={"Retry-After": "7"}), Reply(200))
    busy = await perform(client, spec(target.url_for("/busy")))
    assert busy.status == 503
    assert busy.retry_after == "7"
    fine = await perform(client, spec(target.url_for("/busy")))
    assert fine.status == 200
    assert fine.retry_after is None


async def test_last_response_has_status_headers_body_and_duration(
    client: httpx.AsyncClient, target: HttpTarget
) -> None:
    target.respond("/lr", Reply(202, headers={"X-Reply": "yes"}, body=b"accepted", delay=0.2))
    result, _ = await perform_once(client, target, "/lr")
    last = result.last_response()
    assert last is not None
    assert last.keys() == {"status", "headers", "body", "durationMs"}
    assert last["status"] == 202
    assert last["headers"]["x-reply"] == "yes"
    assert last["body"] == "accepted"
    assert isinstance(last["durationMs"], int)
    assert 200 <= last["durationMs"] < 5000
    assert last["durationMs"] == result.duration_ms
    assert LastResponse.model_validate(last).to_wire() == last


# -- failures without a response -----------------------------------------------------------------------------


async def test_hanging_target_times_out_after_the_specs_timeout(client: httpx.AsyncClient, target: HttpTarget) -> None:
    target.respond("/hang", Reply(hang=True))
    started = time.monotonic()
    result = await perform(client, spec(target.url_for("/hang"), timeout=0.5))
    elapsed = time.monotonic() - started
    assert result.status is None
    assert result.error is not None
    assert "timed out" in result.error
    assert 0.45 <= elapsed < 2.0
    assert 450 <= result.duration_ms < 2000
    assert result.last_response() is None
    assert result.retry_after is None
    assert len(target.received("/hang")) == 1


async def test_timeout_bounds_a_slow_body_as_a_whole(client: httpx.AsyncClient, target: HttpTarget) -> None:
    target.respond("/slow", Reply(200, delay=1.5))
    result = await perform(client, spec(target.url_for("/slow"), timeout=0.5))
    assert result.status is None
    assert result.error is not None
    assert "timed out" in result.error


async def test_closed_port_cannot_connect(client: httpx.AsyncClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await perform(client, spec(f"http://127.0.0.1:{port}/hook", timeout=5))
    assert result.status is None
    assert result.error is not None
    assert "could not connect" in result.error
    assert result.last_response() is None


# -- the target itself ---------------------------------------------------------------------------------------


def test_target_replies_in_order_and_repeats_the_last(target: HttpTarget) -> None:
    target.respond("/s", Reply(500), Reply(429, headers={"Retry-After": "1"}), Reply(200, body=b"done"))
    with httpx.Client() as http:
        answers = [http.get(target.url_for("/s")) for _ in range(5)]
        other = http.post(target.url_for("/unscripted?x=1"), content=b"hi")
    assert [a.status_code for a in answers] == [500, 429, 200, 200, 200]
    assert answers[1].headers["retry-after"] == "1"
    assert answers[4].text == "done"
    assert (other.status_code, other.text) == (200, "ok")
    assert len(target.received("/s")) == 5
    (posted,) = target.received("/unscripted")
    assert (posted.method, posted.query, posted.query_params, posted.body) == (
        "POST",
        "x=1",
        {"x": ["1"]},
        b"hi",
    )
    assert abs(posted.arrived_at_ms - time.time_ns() // 1_000_000) < 5000


async def test_target_respond_fn_counts_requests_per_path(target: HttpTarget) -> None:
    target.respond_fn("/half", lambda received, n: Reply(500 if n % 2 else 200, body=f"{n} {received.method}"))
    async with httpx.AsyncClient() as http:
        answers = [await http.put(target.url_for("/half")) for _ in range(4)]
    assert [(a.status_code, a.text) for a in answers] == [
        (500, "1 PUT"),
        (200, "2 PUT"),
        (500, "3 PUT"),
        (200, "4 PUT"),
    ]
    assert len(await target.await_for(4, "/half", timeout=1)) == 4


def test_target_wait_for_times_out_with_assertion_error(target: HttpTarget) -> None:
    with httpx.Client() as http:
        http.get(target.url_for("/one"))
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"expected at least 2 request\(s\) to /one.*got 1: \[GET /one\]"):
        target.wait_for(2, "/one", timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 2.0
    assert len(target.wait_for(1, "/one", timeout=0.2)) == 1


def test_target_stop_does_not_hang_on_a_hanging_reply() -> None:
    target = HttpTarget().start()
    target.respond("/hang", Reply(hang=True))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(httpx.get, target.url_for("/hang"), timeout=30)
        target.wait_for(1, "/hang", timeout=5)
        started = time.monotonic()
        target.stop()
        assert time.monotonic() - started < 5.0
        assert not target.running
        assert pending.result(timeout=5).status_code == 503
