"""The live event stream end to end: the API and a worker as processes, a real Prefect server and HTTP target.

Events are written by whichever process makes the change (the API for created, updated and deleted; the worker
for running, attempt_finished, completed and failed), so these tests also show the stream reading across
processes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx
import pytest
from conftest import Stack, StackFactory, wait_until
from support import HttpTarget, Reply

from hexlabs_tasks import AsyncTasks, AuthenticationError, TaskEvent, Tasks
from hexlabs_tasks._events import EventStreamParser

pytestmark = pytest.mark.e2e

LIFE = ["created", "running", "attempt_finished", "running", "attempt_finished", "completed"]
TOKEN = "events-token"
WINDOW = 100


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def auth(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token}"} if stack.token else {}


def flaky_task(target: HttpTarget, path: str, perform_at: int) -> dict[str, Any]:
    """A task that gets 503, then 200 after 0.2 s."""
    target.respond(path, Reply(503), Reply(200))
    return {
        "request": {"url": target.url_for(path), "method": "post", "body": {"n": 1}},
        "performAt": perform_at,
        "retries": 3,
        "retryPolicy": {"backoff": "fixed", "initialDelay": 0.2, "jitter": 0},
    }


def pending_task(target: HttpTarget, path: str) -> dict[str, Any]:
    return {"request": {"url": target.url_for(path), "method": "get"}, "performAt": now_ms() + 3_600_000}


class RawStream:
    """``GET /api/events`` read with plain httpx, as any SSE client would; the opening message is read at once."""

    def __init__(self, stack: Stack, *, params: Any = None, headers: dict[str, str] | None = None) -> None:
        self.client = httpx.Client(base_url=stack.url, timeout=httpx.Timeout(10, read=20))
        request = self.client.build_request(
            "GET", "/api/events", params=params, headers={**auth(stack), **(headers or {})}
        )
        self.response = self.client.send(request, stream=True)
        self.parser = EventStreamParser()
        self.events: list[TaskEvent] = []
        self._lines = self.response.iter_lines()
        assert self.response.status_code == 200, self.response.read()
        assert self.response.headers["content-type"].startswith("text/event-stream")
        # The first message is `retry` and the `id` the stream starts after.
        self._read(lambda: self._line == "" and self.parser.last_event_id is not None, timeout=10)
        assert self.parser.last_event_id is not None
        self.opening: int = self.parser.last_event_id

    def _read(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._line: str | None = None
        while not done():
            if time.monotonic() > deadline:
                got = [(e.id, e.type, e.task_id) for e in self.events]
                raise AssertionError(f"timed out after {timeout} s; events so far: {got}")
            self._line = next(self._lines)
            event = self.parser.feed_line(self._line)
            if event is not None:
                self.events.append(event)

    def until(self, done: Callable[[list[TaskEvent]], bool], timeout: float = 20) -> list[TaskEvent]:
        """Read until ``done(events)``; every event read so far."""
        self._read(lambda: done(self.events), timeout)
        return self.events

    def close(self) -> None:
        self.response.close()
        self.client.close()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def position(stack: Stack) -> int:
    """The id of the newest event now: where a stream opened now starts."""
    with RawStream(stack) as stream:
        return stream.opening


def of_task(events: list[TaskEvent], task_id: str) -> list[TaskEvent]:
    return [e for e in events if e.task_id == task_id]


def ends_with(task_id: str, *types: str) -> Callable[[list[TaskEvent]], bool]:
    return lambda events: any(e.task_id == task_id and e.type in types for e in events)


async def collect(
    client: AsyncTasks,
    done: Callable[[list[TaskEvent]], bool],
    *,
    timeout: float = 20,
    into: list[TaskEvent] | None = None,
    **watch: Any,
) -> list[TaskEvent]:
    """Iterate over ``client.watch(**watch)`` until ``done(events)``, within ``timeout``; the stream is closed.

    ``into`` receives the events as they come, for a caller that watches the progress.
    """
    got: list[TaskEvent] = into if into is not None else []
    stream = client.watch(**watch)
    try:
        async with asyncio.timeout(timeout):
            async for event in stream:
                got.append(event)
                if done(got):
                    return got
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s; got {[(e.id, e.type) for e in got]}") from None
    finally:
        await stream.aclose()
    raise AssertionError(f"the stream ended; got {[(e.id, e.type) for e in got]}")


def watch_until(stack: Stack, done: Callable[[list[TaskEvent]], bool], **watch: Any) -> list[TaskEvent]:
    async def run() -> list[TaskEvent]:
        async with stack.async_client() as client:
            return await collect(client, done, **watch)

    return asyncio.run(run())


def assert_in_order(events: list[TaskEvent], task_id: str, after: int) -> None:
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)), f"ids not increasing or repeated: {ids}"
    assert ids[0] > after
    assert all(e.task_id == task_id for e in events)
    ats = [e.at for e in events]
    assert ats == sorted(ats)
    assert all(abs(at - now_ms()) < 120_000 for at in ats)


def assert_life(events: list[TaskEvent]) -> None:
    assert [e.type for e in events] == LIFE
    assert [e.status.value if e.status else None for e in events] == [
        "pending",
        "running",
        "running",
        "running",
        "completed",
        "completed",
    ]
    running_1, finished_1, running_2, finished_2 = events[1:5]
    assert running_1.data == {"attempt": 1}
    assert finished_1.data is not None and finished_1.data["attempt"] == 1 and finished_1.data["httpStatus"] == 503
    assert running_2.data == {"attempt": 2}
    assert finished_2.data is not None and finished_2.data["attempt"] == 2 and finished_2.data["httpStatus"] == 200
    assert finished_2.data["durationMs"] >= 0 and finished_2.data["error"] is None


# -- a task's life, live and resumed -------------------------------------------------------------------------------


def test_stream_delivers_a_tasks_life_in_order(stack: Stack, client: Tasks, target: HttpTarget, path: str) -> None:
    with RawStream(stack) as live:  # no Last-Event-ID: from now on
        task = client.create(flaky_task(target, path, now_ms()))
        events = of_task(live.until(ends_with(task.id, "completed", "failed")), task.id)
    assert_life(events)
    assert_in_order(events, task.id, after=live.opening)

    # The SDK, resuming from where the live stream started, gets the same events, filtered to the task.
    replayed = watch_until(stack, ends_with(task.id, "completed"), task_id=task.id, last_event_id=live.opening)
    assert replayed == events


def test_reconnecting_with_last_event_id_gets_exactly_the_missed_events(
    stack: Stack, client: Tasks, target: HttpTarget, path: str
) -> None:
    start = position(stack)
    task = client.create(pending_task(target, path))
    (created,) = watch_until(stack, ends_with(task.id, "created"), task_id=task.id, last_event_id=start)
    assert (created.type, created.task_id, created.status) == ("created", task.id, "pending")

    # Away: the task changes three times.
    client.update(task.id, {"retries": 5})
    client.update(task.id, {"performAt": now_ms() + 7_200_000})
    client.delete(task.id)

    missed = watch_until(stack, ends_with(task.id, "deleted"), task_id=task.id, last_event_id=created.id)
    assert [(e.type, e.status) for e in missed] == [("updated", "pending"), ("updated", "pending"), ("deleted", None)]
    assert_in_order(missed, task.id, after=created.id)

    # The same with the header itself, and with ?lastEventId= for EventSource clients that cannot set headers.
    for params, headers in (
        ({"taskId": task.id}, {"Last-Event-ID": str(created.id)}),
        ({"taskId": task.id, "lastEventId": str(created.id)}, {}),
    ):
        with RawStream(stack, params=params, headers=headers) as again:
            assert again.opening == created.id
            assert again.until(ends_with(task.id, "deleted")) == missed, (params, headers)


def test_status_filter(stack: Stack, client: Tasks, target: HttpTarget, path: str) -> None:
    start = position(stack)
    task = client.create(flaky_task(target, path, now_ms()))
    events = watch_until(
        stack, ends_with(task.id, "completed"), task_id=task.id, status=["running", "completed"], last_event_id=start
    )
    assert [(e.type, e.status) for e in events] == [
        ("running", "running"),
        ("attempt_finished", "running"),
        ("running", "running"),
        ("attempt_finished", "completed"),
        ("completed", "completed"),
    ]
    # Repeated or comma-separated, over plain HTTP.
    params = [("taskId", task.id), ("status", "pending"), ("status", "failed,completed"), ("lastEventId", start)]
    with RawStream(stack, params=params) as raw:
        got = raw.until(ends_with(task.id, "completed"))
    assert [e.type for e in got] == ["created", "attempt_finished", "completed"]


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_concurrent_changes_each_arrive_once_and_in_order(
    database: str, stack: Stack, make_stack: StackFactory, target: HttpTarget, path: str, request: Any
) -> None:
    # On PostgreSQL, concurrent transactions may commit out of id order: the stream must still miss none.
    if database == "postgres":
        stack = make_stack(database_url=request.getfixturevalue("postgres_database")(), workers=1)
    bodies = [
        {"request": {"url": target.url_for(f"{path}/{n}"), "method": "post"}, "performAt": now_ms()} for n in range(30)
    ]

    async def create_all() -> set[str]:
        async with stack.async_client() as client:
            return {task.id for task in await asyncio.gather(*(client.create(body) for body in bodies))}

    with RawStream(stack) as live:
        ids = asyncio.run(create_all())
        events = live.until(lambda got: sum(e.type == "completed" and e.task_id in ids for e in got) == len(ids), 60)
    ours = [e for e in events if e.task_id in ids]
    assert [e.id for e in events] == sorted({e.id for e in events})  # increasing, none twice
    for task_id in ids:
        assert [e.type for e in of_task(ours, task_id)] == ["created", "running", "attempt_finished", "completed"]

    # Resuming from where the live stream started gives the same events.
    replayed = watch_until(
        stack, lambda got: len([e for e in got if e.task_id in ids]) >= len(ours), last_event_id=live.opening
    )
    assert [e for e in replayed if e.task_id in ids] == ours


def test_bad_filters_and_ids_are_a_422_in_the_error_shape(stack: Stack) -> None:
    for params, headers, field in (
        ({"status": "pending,done"}, {}, "status"),
        ({}, {"Last-Event-ID": "abc"}, "Last-Event-ID"),
        ({"lastEventId": "-1"}, {}, "lastEventId"),
    ):
        response = httpx.get(f"{stack.url}/api/events", params=params, headers=headers, timeout=10)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert [d["field"] for d in error["details"]] == [field]


def test_a_last_event_id_from_another_event_log_gets_a_gap_first(stack: Stack) -> None:
    with RawStream(stack, headers={"Last-Event-ID": str(10**12)}) as stream:
        gap = stream.until(bool)[0]
    assert gap.is_gap and gap.task_id is None
    assert gap.data is not None and gap.data["lastEventId"] == 10**12
    assert gap.id == gap.data["resumedAfter"] == stream.opening < 10**12  # the newest event: it goes on from there


def test_cli_watch_shows_tasks_live_and_ctrl_c_exits_0(
    stack: Stack, client: Tasks, target: HttpTarget, path: str, tmp_path: Any
) -> None:
    listed = client.create(pending_task(target, path + "/listed"))
    controller, terminal = pty.openpty()
    env = {**os.environ, "HEXLABS_TASKS_URL": stack.url, "COLUMNS": "200", "LINES": "60", "TERM": "xterm"}
    env.pop("HEXLABS_TASKS_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "hexlabs_tasks", "watch"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        cwd=tmp_path,
    )
    os.close(terminal)
    screen = bytearray()

    def shows(task_id: str, status: str) -> bool:
        """Whether a row of the table, as drawn since the last clear, shows the task with that status."""
        while select.select([controller], [], [], 0.05)[0]:
            try:
                screen.extend(os.read(controller, 65536))
            except OSError:  # the terminal closed: the process ended
                break
        if process.poll() is not None:
            raise AssertionError(f"watch exited with {process.returncode}: {screen.decode(errors='replace')}")
        return any(task_id in line and status in line for line in screen.decode(errors="replace").splitlines())

    try:
        wait_until(lambda: shows(listed.id, "pending"), timeout=30, what="the listed task on the screen")
        task = client.create(flaky_task(target, path, now_ms()))
        screen.clear()
        wait_until(lambda: shows(task.id, "completed"), timeout=30, what="the new task, completed, on the screen")
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        os.close(controller)


# -- auth, the window, and reconnecting across an API restart -------------------------------------------------------


@pytest.fixture(scope="module")
def secured(make_stack: StackFactory) -> Stack:
    """A stack with a token and a small event window."""
    return make_stack(workers=1, token=TOKEN, env={"HEXLABS_TASKS_EVENTS_WINDOW": str(WINDOW)})


def test_the_stream_needs_the_token(secured: Stack) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.get(f"{secured.url}/api/events", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    with RawStream(secured) as stream:  # with the token
        assert stream.opening >= 0

    async def without_token() -> None:
        async with AsyncTasks(base_url=secured.url, token="") as client:
            await collect(client, bool)

    with pytest.raises(AuthenticationError):
        asyncio.run(without_token())


async def test_the_sdk_reconnects_after_the_api_restarts_and_misses_nothing(
    secured: Stack, target: HttpTarget, path: str
) -> None:
    async with secured.async_client() as client:
        # More events than the window holds, so the restarted API prunes some (it prunes at start).
        filler = await client.create(pending_task(target, path + "/filler"))
        for retries in itertools.islice(itertools.cycle(range(10)), WINDOW + 10):
            await client.update(filler.id, {"retries": retries})
        start = await asyncio.to_thread(position, secured)
        task = await client.create(flaky_task(target, path, now_ms() + 3000))
        got: list[TaskEvent] = []
        watcher = asyncio.create_task(
            collect(client, ends_with(task.id, "completed"), timeout=90, into=got, task_id=task.id, last_event_id=start)
        )
        try:
            await wait_for(lambda: bool(got) or watcher.done(), timeout=10)  # connected: it has the created event
            assert [e.type for e in got] == ["created"]
            api = secured.api
            assert api is not None
            killed_at = now_ms()
            await asyncio.to_thread(secured.stop, api, signal.SIGKILL)  # the connection drops, no goodbye
            # The worker performs the task while the API is down; its events wait in the table.
            received = await target.await_for(2, path, timeout=20)
            assert received[0].arrived_at_ms > killed_at
            await asyncio.to_thread(secured.start_api)
            events = await watcher
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    assert_life(events)
    assert_in_order(events, task.id, after=start)

    # The restarted API pruned the window: a client resuming from before it is told it missed events.
    def told_of_a_gap() -> TaskEvent | None:
        with RawStream(secured, headers={"Last-Event-ID": "0"}) as stream:
            first = stream.until(bool)[0]
            return first if first.is_gap else None

    gap = await asyncio.to_thread(wait_until, told_of_a_gap, timeout=20, what="a gap event")
    assert gap.data is not None
    assert gap.data["lastEventId"] == 0 and gap.data["window"] == WINDOW
    assert gap.data["resumedAfter"] == gap.id > 0


async def wait_for(condition: Callable[[], Any], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s")
        await asyncio.sleep(0.05)
