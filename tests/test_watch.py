"""``watch()`` in both SDK twins against a scripted transport (reconnects, Last-Event-ID, errors), and the table of
``hexlabs-tasks watch``. The real stream, end to end, is in test_events.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import date, datetime

import httpx
import pytest
from rich.console import Console

from hexlabs_tasks import (
    AsyncTasks,
    AuthenticationError,
    ServiceUnavailable,
    TaskEvent,
    Tasks,
    TaskStatus,
    TaskValidationError,
)
from hexlabs_tasks._events import encode_sse, sse_message
from hexlabs_tasks.cli import WatchRow, apply_event, render_table

SSE = {"content-type": "text/event-stream; charset=utf-8"}


def event(
    event_id: int, type_: str = "updated", status: TaskStatus | None = TaskStatus.PENDING, **data: int
) -> TaskEvent:
    at = 1_764_770_000_000 + event_id
    return TaskEvent(id=event_id, type=type_, task_id="t1", status=status, at=at, data=data or None)


def body(*events: TaskEvent, start: int = 0) -> bytes:
    return (sse_message(retry=1000, id=start) + "".join(encode_sse(e) for e in events)).encode()


Handler = Callable[[httpx.Request], httpx.Response]


def scripted(*answers: Callable[[httpx.Request], httpx.Response]) -> tuple[list[httpx.Request], Handler]:
    """A handler that gives each answer in turn (the last one repeats) and records the requests."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1](request)

    return seen, handle


def sync_client(handler: Handler) -> Tasks:
    return Tasks(base_url="http://tasks.test", token="secret", transport=httpx.MockTransport(handler))


def take(stream: Iterator[TaskEvent], n: int) -> list[TaskEvent]:
    got = []
    for item in stream:
        got.append(item)
        if len(got) == n:
            break
    return got


def test_watch_sends_the_filters_and_the_token_and_yields_events() -> None:
    seen, handler = scripted(lambda _: httpx.Response(200, headers=SSE, content=body(event(1), event(2))))
    with sync_client(handler) as client:
        got = list(client.watch(task_id="t1", status=["pending", "running,completed"], reconnect=False))
    assert [e.id for e in got] == [1, 2]
    (request,) = seen
    assert request.url.path == "/api/events"
    assert request.url.params["taskId"] == "t1"
    assert request.url.params["status"] == "pending,running,completed"
    assert request.headers["authorization"] == "Bearer secret"
    assert request.headers["accept"] == "text/event-stream"
    assert "last-event-id" not in request.headers


def test_a_dropped_connection_resumes_after_the_last_event_seen() -> None:
    def broken(_: httpx.Request) -> httpx.Response:
        def chunks() -> Iterator[bytes]:
            yield body(event(1), event(2))
            yield b"id: 3\nevent: upd"  # half a message, then the connection breaks
            raise httpx.ReadError("connection reset")

        return httpx.Response(200, headers=SSE, content=chunks())

    seen, handler = scripted(
        broken,
        lambda _: httpx.Response(200, headers=SSE, content=body(event(3), start=2)),  # ends cleanly
        lambda _: httpx.Response(200, headers=SSE, content=body(event(4), start=3)),
    )
    with sync_client(handler) as client:
        got = take(client.watch(), 4)
    assert [e.id for e in got] == [1, 2, 3, 4]
    assert [r.headers.get("last-event-id") for r in seen] == [None, "2", "3"]


def test_the_given_last_event_id_is_sent_and_an_id_only_message_moves_it() -> None:
    seen, handler = scripted(
        lambda _: httpx.Response(200, headers=SSE, content=sse_message(retry=1000, id=17).encode()),
        lambda _: httpx.Response(200, headers=SSE, content=body(event(18), start=17)),
    )
    with sync_client(handler) as client:
        assert take(client.watch(last_event_id=5), 1)[0].id == 18
    assert [r.headers.get("last-event-id") for r in seen] == ["5", "17"]


def test_without_reconnect_the_iteration_ends_with_the_stream_and_a_break_is_an_error() -> None:
    def broken(_: httpx.Request) -> httpx.Response:
        def chunks() -> Iterator[bytes]:
            yield body(event(1))
            raise httpx.RemoteProtocolError("peer closed connection")

        return httpx.Response(200, headers=SSE, content=chunks())

    with sync_client(scripted(broken)[1]) as client:
        stream = client.watch(reconnect=False)
        assert next(stream).id == 1
        with pytest.raises(ServiceUnavailable, match="peer closed"):
            next(stream)


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [(401, "unauthorized", AuthenticationError), (422, "validation_error", TaskValidationError)],
)
def test_a_refused_watch_raises_the_matching_error(status: int, code: str, error: type[Exception]) -> None:
    answer = {"error": {"code": code, "message": "no", "details": []}}
    seen, handler = scripted(lambda _: httpx.Response(status, json=answer))
    with sync_client(handler) as client, pytest.raises(error):
        next(client.watch())
    assert len(seen) == 1  # not retried


def test_an_unreachable_api_at_the_first_connection_is_an_error_not_a_retry_for_ever() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    seen, handler = scripted(refuse)
    with sync_client(handler) as client, pytest.raises(ServiceUnavailable, match="cannot reach"):
        next(client.watch())
    assert len(seen) == 1


def test_a_server_error_after_the_first_connection_is_retried() -> None:
    seen, handler = scripted(
        lambda _: httpx.Response(200, headers=SSE, content=body(event(1))),
        lambda _: httpx.Response(503, json={"error": {"code": "service_unavailable", "message": "db", "details": []}}),
        lambda _: httpx.Response(200, headers=SSE, content=body(event(2), start=1)),
    )
    with sync_client(handler) as client:
        assert [e.id for e in take(client.watch(), 2)] == [1, 2]
    assert [r.headers.get("last-event-id") for r in seen] == [None, "1", "1"]


def test_bad_filters_are_refused_before_sending() -> None:
    seen, handler = scripted(lambda _: httpx.Response(200, headers=SSE, content=body()))
    with sync_client(handler) as client:
        with pytest.raises(TaskValidationError, match="unknown status 'done'"):
            client.watch(status="pending,done")  # at the call, not at the first iteration
        with pytest.raises(TaskValidationError):
            client.watch(last_event_id=-1)
        with pytest.raises(TaskValidationError):
            AsyncTasks(base_url="http://tasks.test").watch(task_id="a/b")
    assert seen == []


async def test_async_watch_resumes_like_the_sync_one() -> None:
    seen, handler = scripted(
        lambda _: httpx.Response(200, headers=SSE, content=body(event(1), event(2))),
        lambda _: httpx.Response(200, headers=SSE, content=body(event(3), start=2)),
    )
    got: list[TaskEvent] = []
    async with AsyncTasks(base_url="http://tasks.test", transport=httpx.MockTransport(handler)) as client:
        stream = client.watch(task_id="t1")
        async for item in stream:
            got.append(item)
            if len(got) == 3:
                break
        await stream.aclose()
    assert [e.id for e in got] == [1, 2, 3]
    assert [r.headers.get("last-event-id") for r in seen] == [None, "2"]
    assert all(r.url.params["taskId"] == "t1" for r in seen)


# -- the CLI's table -----------------------------------------------------------------------------------------------


def plain(table: object, width: int = 160) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def test_events_bring_rows_up_to_date() -> None:
    rows = {"t1": WatchRow("t1", "pending", 0, "", 1)}
    apply_event(rows, event(2, "running", TaskStatus.RUNNING, attempt=1))
    assert rows["t1"] == WatchRow("t1", "running", 1, "running (attempt 1)", 1_764_770_000_002)
    apply_event(rows, event(3, "attempt_finished", TaskStatus.COMPLETED, attempt=1, httpStatus=200))
    assert (rows["t1"].status, rows["t1"].last_event) == ("completed", "attempt 1 finished: HTTP 200")
    apply_event(rows, event(4, "updated", TaskStatus.PENDING))  # queued again
    assert (rows["t1"].status, rows["t1"].attempts) == ("pending", 0)
    new = TaskEvent(id=5, type="created", task_id="t2", status=TaskStatus.PENDING, at=9)
    apply_event(rows, new)
    assert rows["t2"] == WatchRow("t2", "pending", 0, "created", 9)
    apply_event(rows, TaskEvent(id=6, type="deleted", task_id="t1", at=10))
    assert list(rows) == ["t2"]


def test_render_table_shows_the_most_recent_change_first() -> None:
    at = int(datetime(2026, 12, 3, 14, 5, 9).timestamp() * 1000)
    rows = [
        WatchRow("older", "completed", 1, "completed", at - 86_400_000),
        WatchRow("newest", "running", 2, "running (attempt 2)", at),
        WatchRow("listed", "pending", 0, "", None),
    ]
    text = plain(render_table(rows, today=date(2026, 12, 3)))
    (header,) = [line for line in text.splitlines() if line.startswith("┃")]
    assert [c.strip() for c in header.split("┃")[1:-1]] == ["id", "status", "attempts", "last event", "time"]
    lines = [line for line in text.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in lines] == ["newest", "older", "listed"]
    assert "running (attempt 2)" in lines[0] and "14:05:09" in lines[0]
    assert "2026-12-02 14:05" in lines[1]
    assert "3 tasks" in text


def test_render_table_filters_by_status_and_limits_rows() -> None:
    rows = [WatchRow(f"t{n}", "pending" if n % 2 else "failed", 0, "", n) for n in range(10)]
    text = plain(render_table(rows, statuses=["pending"], limit=2))
    assert "t9" in text and "t7" in text
    assert "t5" not in text and "t8" not in text
    assert "showing 2 of 5 tasks" in text


def test_render_table_of_nothing() -> None:
    assert "0 tasks" in plain(render_table([]))


def test_events_json_is_what_the_server_sends() -> None:
    # The table reads data["attempt"] and data["httpStatus"]: the names the worker writes.
    payload = json.loads(encode_sse(event(1, "attempt_finished", attempt=2, httpStatus=503)).split("data: ")[1])
    assert payload["data"] == {"attempt": 2, "httpStatus": 503}
