"""The Python SDK: ``Tasks`` (sync) and ``AsyncTasks`` (async), the Python twins of the JavaScript ``$tasks``.

Everything that does no I/O lives in :class:`BaseTasks`: building each request, validating input with the same
models the server uses, parsing answers and mapping errors, and the ``wait`` loop, written once as a generator
that yields "send this" or "sleep this long". The twins only send and sleep.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx

from hexlabs_tasks import __version__
from hexlabs_tasks._events import EventStreamParser, TaskEvent
from hexlabs_tasks._exceptions import (
    ERRORS_BY_CODE,
    HexlabsTasksError,
    ServiceUnavailable,
    TaskValidationError,
    WaitTimeout,
)
from hexlabs_tasks._models import Attempt, Task, TaskCreate, TaskPage, TaskStatus, TaskUpdate
from hexlabs_tasks._validation import validate

__all__ = ["AsyncTasks", "BaseTasks", "Tasks"]

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
# A live stream waits for events as long as it takes (the server sends a comment every 15 s); the rest is bounded.
STREAM_TIMEOUT = httpx.Timeout(connect=10, read=None, write=10, pool=10)
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 5.0


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One HTTP exchange: the request, and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        code, message, details = error["code"], error["message"], error.get("details") or []
    except (ValueError, KeyError, TypeError):
        code, message, details = "", response.text[:500] or response.reason_phrase, []
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        cls = ServiceUnavailable if response.status_code >= 500 else HexlabsTasksError
    raise cls(f"{message} (HTTP {response.status_code})", details=details)


def _task(response: httpx.Response) -> Task:
    _raise_for(response)
    return Task.model_validate(response.json())


def _tasks(response: httpx.Response) -> list[Task]:
    _raise_for(response)
    return [Task.model_validate(t) for t in response.json()["data"]]


def _none(response: httpx.Response) -> None:
    _raise_for(response)


def _page(response: httpx.Response) -> TaskPage:
    _raise_for(response)
    return TaskPage.model_validate(response.json())


def _attempts(response: httpx.Response) -> list[Attempt]:
    _raise_for(response)
    return [Attempt.model_validate(a) for a in response.json()["data"]]


class BaseTasks:
    """Configuration and every step that does no I/O, shared by both clients.

    Args:
        base_url: the API, default ``HEXLABS_TASKS_URL`` or ``http://127.0.0.1:8000``.
        token: the bearer token, default ``HEXLABS_TASKS_TOKEN``.
        timeout: seconds for one HTTP exchange with the API.
    """

    def __init__(self, base_url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        self._base_url = base_url
        self._token = token
        self.timeout = timeout

    @property
    def base_url(self) -> str:
        """The API's address (read from the environment at first use when not given)."""
        return (self._base_url or os.environ.get("HEXLABS_TASKS_URL") or DEFAULT_URL).rstrip("/")

    def _headers(self) -> dict[str, str]:
        token = self._token if self._token is not None else os.environ.get("HEXLABS_TASKS_TOKEN")
        headers = {"User-Agent": f"hexlabs-tasks-python/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    # -- the calls -------------------------------------------------------------------------------------------

    def _create(self, task: TaskCreate | Mapping[str, Any], idempotency_key: str | None) -> _Call[Task]:
        body = validate(TaskCreate, task).to_wire()
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return _Call("POST", "/api/tasks", _task, json=body, headers=headers)

    def _chain(self, tasks: Sequence[TaskCreate | Mapping[str, Any]]) -> _Call[builtins.list[Task]]:
        bodies = [validate(TaskCreate, task, prefix=f"tasks.{n}").to_wire() for n, task in enumerate(tasks)]
        return _Call("POST", "/api/tasks/chain", _tasks, json={"tasks": bodies})

    def _read(self, task_id: str) -> _Call[Task]:
        return _Call("GET", f"/api/tasks/{_id(task_id)}", _task)

    def _update(self, task_id: str, changes: TaskUpdate | Mapping[str, Any]) -> _Call[Task]:
        if isinstance(changes, Mapping) and changes.get("status", "pending") != "pending":
            raise TaskValidationError(
                "only {'status': 'pending'} may be sent, to queue a task again",
                details=[{"field": "status", "message": "only 'pending' may be sent"}],
            )
        patch = validate(TaskUpdate, changes)
        body = patch.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return _Call("PATCH", f"/api/tasks/{_id(task_id)}", _task, json=body)

    def _delete(self, task_id: str) -> _Call[None]:
        return _Call("DELETE", f"/api/tasks/{_id(task_id)}", _none)

    def _list(self, status: str | TaskStatus | None, limit: int, cursor: str | None) -> _Call[TaskPage]:
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = TaskStatus(status).value
        if cursor:
            params["cursor"] = cursor
        return _Call("GET", "/api/tasks", _page, params=params)

    def _attempts(self, task_id: str) -> _Call[builtins.list[Attempt]]:
        return _Call("GET", f"/api/tasks/{_id(task_id)}/attempts", _attempts)

    def _wait(self, task_id: str, timeout: float, poll: float) -> Generator[_Call[Task] | float, Task | None, Task]:
        """Read until final: yields a call (sent back its Task) or a sleep in seconds (sent back None)."""
        deadline = time.monotonic() + timeout
        delay = min(0.1, poll)
        while True:
            task = yield self._read(task_id)
            assert task is not None
            if task.is_final:
                return task
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"task {task_id} is still {task.status.value} after {timeout:g} s")
            yield min(delay, left)
            delay = min(delay * 2, poll)

    def _request(self, client: httpx.Client | httpx.AsyncClient, call: _Call[Any]) -> httpx.Request:
        return client.build_request(
            call.method,
            call.path,
            json=call.json,
            params=call.params,
            headers={**self._headers(), **(call.headers or {})},
        )

    def _watch(
        self,
        task_id: str | None,
        status: str | Sequence[str] | None,
        last_event_id: int | None,
        reconnect: bool,
    ) -> _Watch:
        if last_event_id is not None and (isinstance(last_event_id, bool) or last_event_id < 0):
            raise TaskValidationError(
                "last_event_id is the id of an event (a non-negative integer)",
                details=[{"field": "last_event_id", "message": "must be a non-negative integer"}],
            )
        return _Watch(
            self._headers(),
            _watch_params(task_id, status),
            last_event_id=last_event_id,
            reconnect=reconnect,
            base_url=self.base_url,
        )


class _Watch:
    """The part of ``watch`` that does no I/O: the request, reading the stream, and when to reconnect.

    A dropped connection (after the first one opened) is reopened with ``Last-Event-ID`` set to the last id
    seen, after 0.5 s, doubling up to 5 s while it keeps failing; so nothing is missed that the server's window
    still holds. An answer that is an error (401, 422) ends the watch with the matching exception, as does a
    first connection that fails: a wrong URL or token is reported, not retried for ever.
    """

    def __init__(
        self,
        headers: dict[str, str],
        params: dict[str, str],
        *,
        last_event_id: int | None,
        reconnect: bool,
        base_url: str,
    ) -> None:
        self.headers = {**headers, "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        self.params = params
        self.parser = EventStreamParser(last_event_id)
        self.reconnect = reconnect
        self.base_url = base_url
        self.opened_once = False
        self._delay = RECONNECT_FIRST

    def request(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The next connection's request, resuming after the last event seen."""
        headers = dict(self.headers)
        if self.parser.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.parser.last_event_id)
        return client.build_request("GET", "/api/events", params=self.params, headers=headers, timeout=STREAM_TIMEOUT)

    def opened(self, response: httpx.Response) -> bool:
        """Whether to read this answer (its body already read if it is an error); False: reconnect.

        Raises:
            HexlabsTasksError: the server refused the watch (the matching subclass).
        """
        if response.is_success:
            self.opened_once = True
            self._delay = RECONNECT_FIRST
            self.parser.reset()
            return True
        if response.status_code >= 500 and self.reconnect and self.opened_once:
            return False  # a restarting server or database: try again
        _raise_for(response)
        raise HexlabsTasksError(f"unexpected answer {response.status_code} to the event stream")  # pragma: no cover

    def feed(self, text: str) -> builtins.list[TaskEvent]:
        """The events completed by this piece of the stream."""
        return self.parser.feed(text)

    def dropped(self, error: Exception | None) -> float | None:
        """The connection ended (``error`` if it broke): seconds to wait before reconnecting, or None to stop.

        Raises:
            ServiceUnavailable: it broke, and reconnecting is off or no connection ever opened.
        """
        if not self.reconnect or not self.opened_once:
            if error is not None:
                raise _unavailable(self.base_url, error) from error
            return None
        delay, self._delay = self._delay, min(self._delay * 2, RECONNECT_MAX)
        return delay


def _watch_params(task_id: str | None, status: str | Sequence[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    if task_id is not None:
        params["taskId"] = _id(task_id)
    if status is not None:
        given = [status] if isinstance(status, str) else list(status)
        wanted = [part.strip() for value in given for part in str(value).split(",") if part.strip()]
        allowed = [s.value for s in TaskStatus]
        unknown = [s for s in wanted if s not in allowed]
        if unknown:
            message = f"unknown status {', '.join(map(repr, unknown))}; one of {', '.join(allowed)}"
            raise TaskValidationError(f"status: {message}", details=[{"field": "status", "message": message}])
        if wanted:
            params["status"] = ",".join(dict.fromkeys(wanted))
    return params


def _id(task_id: str) -> str:
    if not isinstance(task_id, str) or not task_id or "/" in task_id:
        raise TaskValidationError("a task id is a non-empty string", details=[{"field": "id", "message": "invalid"}])
    return task_id


def _unavailable(base_url: str, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(f"cannot reach hexlabs-tasks at {base_url}: {exc}")


class Tasks(BaseTasks):
    """The synchronous client.

    Example:
        >>> client = Tasks(base_url="http://127.0.0.1:8000")
        >>> task = client.create({"request": {"url": "https://example.com/hook", "method": "post"},
        ...                       "performAt": now_ms + 600_000})  # doctest: +SKIP
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout=timeout)
        self._transport = transport
        self._client: httpx.Client | None = None

    def _send(self, call: _Call[T]) -> T:
        client = self._http()
        try:
            response = client.send(self._request(client, call))
        except httpx.TransportError as exc:
            raise _unavailable(self.base_url, exc) from exc
        return call.parse(response)

    def create(self, task: TaskCreate | Mapping[str, Any], *, idempotency_key: str | None = None) -> Task:
        """Create a task (a dict in camelCase or snake_case, or a :class:`TaskCreate`).

        Raises:
            TaskValidationError: the task breaks a rule (checked before sending, and by the server).
            TaskConflict: the idempotency key was used with another body.
        """
        return self._send(self._create(task, idempotency_key))

    def chain(self, tasks: Sequence[TaskCreate | Mapping[str, Any]]) -> builtins.list[Task]:
        """Create tasks that run one after another: each depends on the one before (and on its own ``dependsOn``).

        Raises:
            TaskValidationError: a task breaks a rule, or a dependency does not exist.
        """
        return self._send(self._chain(tasks))

    def read(self, task_id: str) -> Task:
        """Read a task. Raises TaskNotFound."""
        return self._send(self._read(task_id))

    def update(self, task_id: str, changes: TaskUpdate | Mapping[str, Any]) -> Task:
        """Replace top-level fields of a pending task; ``{"status": "pending"}`` queues a finished one again.

        Raises:
            TaskNotFound, TaskConflict (the task is running), TaskValidationError.
        """
        return self._send(self._update(task_id, changes))

    def delete(self, task_id: str) -> None:
        """Delete a task; a pending task's request is never performed. Raises TaskNotFound."""
        self._send(self._delete(task_id))

    def list(self, status: str | TaskStatus | None = None, limit: int = 100, cursor: str | None = None) -> TaskPage:
        """A page of tasks, oldest ``performAt`` first; pass ``page.next_cursor`` for the next one."""
        return self._send(self._list(status, limit, cursor))

    def attempts(self, task_id: str) -> builtins.list[Attempt]:
        """Every attempt of a task, oldest first."""
        return self._send(self._attempts(task_id))

    def wait(self, task_id: str, timeout: float = 60.0, *, poll_interval: float = 0.5) -> Task:
        """Wait until the task is completed, failed or cancelled, and return it.

        Raises:
            WaitTimeout: it is not final after ``timeout`` seconds.
        """
        plan = self._wait(task_id, timeout, poll_interval)
        sent: Task | None = None
        try:
            while True:
                step = plan.send(sent)
                if isinstance(step, _Call):
                    sent = self._send(step)
                else:
                    time.sleep(step)
                    sent = None
        except StopIteration as done:
            result: Task = done.value
            return result

    def watch(
        self,
        *,
        task_id: str | None = None,
        status: str | Sequence[str] | None = None,
        last_event_id: int | None = None,
        reconnect: bool = True,
    ) -> Generator[TaskEvent, None, None]:
        """Iterate over task changes as they happen (``GET /api/events``), until you stop iterating.

        Args:
            task_id: only this task's events.
            status: only events after which the task has one of these statuses (a status, a list, or
                comma-separated).
            last_event_id: resume after this event (``event.id``); None starts from now.
            reconnect: reopen a dropped connection, resuming after the last event seen; when False the
                iteration ends when the server closes the stream.

        Yields:
            Each event, in order. One of type ``gap`` (``event.is_gap``) says events were lost while away:
            read the tasks you follow again.

        Raises:
            TaskValidationError: a bad filter or id (at once, before anything is sent), or the server refused it.
            AuthenticationError: the token is missing or wrong.
            ServiceUnavailable: the API cannot be reached (at the first connection, or at any with
                ``reconnect=False``).

        Example:
            >>> for event in client.watch(task_id=task.id):  # doctest: +SKIP
            ...     print(event.type, event.status)
            ...     if event.type in ("completed", "failed", "cancelled", "deleted"):
            ...         break
        """
        return self._stream(self._watch(task_id, status, last_event_id, reconnect))

    def _stream(self, plan: _Watch) -> Generator[TaskEvent, None, None]:
        client = self._http()
        while True:
            error: Exception | None = None
            try:
                response = client.send(plan.request(client), stream=True)
                try:
                    if not response.is_success:
                        response.read()
                    if plan.opened(response):
                        for text in response.iter_text():
                            yield from plan.feed(text)
                finally:
                    response.close()
            except httpx.TransportError as exc:
                error = exc
            delay = plan.dropped(error)
            if delay is None:
                return
            time.sleep(delay)

    def _http(self) -> httpx.Client:
        if self._client is None or str(self._client.base_url).rstrip("/") != self.base_url:
            self._client = httpx.Client(base_url=self.base_url, timeout=self.timeout, transport=self._transport)
        return self._client

    def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class AsyncTasks(BaseTasks):
    """The asynchronous client: the same methods as :class:`Tasks`, as coroutines."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout=timeout)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def _send(self, call: _Call[T]) -> T:
        client = self._http()
        try:
            response = await client.send(self._request(client, call))
        except httpx.TransportError as exc:
            raise _unavailable(self.base_url, exc) from exc
        return call.parse(response)

    async def create(self, task: TaskCreate | Mapping[str, Any], *, idempotency_key: str | None = None) -> Task:
        """Create a task; see :meth:`Tasks.create`."""
        return await self._send(self._create(task, idempotency_key))

    async def chain(self, tasks: Sequence[TaskCreate | Mapping[str, Any]]) -> builtins.list[Task]:
        """Create tasks that run one after another; see :meth:`Tasks.chain`."""
        return await self._send(self._chain(tasks))

    async def read(self, task_id: str) -> Task:
        """Read a task; see :meth:`Tasks.read`."""
        return await self._send(self._read(task_id))

    async def update(self, task_id: str, changes: TaskUpdate | Mapping[str, Any]) -> Task:
        """Update a task; see :meth:`Tasks.update`."""
        return await self._send(self._update(task_id, changes))

    async def delete(self, task_id: str) -> None:
        """Delete a task; see :meth:`Tasks.delete`."""
        await self._send(self._delete(task_id))

    async def list(
        self, status: str | TaskStatus | None = None, limit: int = 100, cursor: str | None = None
    ) -> TaskPage:
        """A page of tasks; see :meth:`Tasks.list`."""
        return await self._send(self._list(status, limit, cursor))

    async def attempts(self, task_id: str) -> builtins.list[Attempt]:
        """Every attempt of a task; see :meth:`Tasks.attempts`."""
        return await self._send(self._attempts(task_id))

    async def wait(self, task_id: str, timeout: float = 60.0, *, poll_interval: float = 0.5) -> Task:
        """Wait until the task is final; see :meth:`Tasks.wait`."""
        plan = self._wait(task_id, timeout, poll_interval)
        sent: Task | None = None
        try:
            while True:
                step = plan.send(sent)
                if isinstance(step, _Call):
                    sent = await self._send(step)
                else:
                    await asyncio.sleep(step)
                    sent = None
        except StopIteration as done:
            result: Task = done.value
            return result

    def watch(
        self,
        *,
        task_id: str | None = None,
        status: str | Sequence[str] | None = None,
        last_event_id: int | None = None,
        reconnect: bool = True,
    ) -> AsyncGenerator[TaskEvent, None]:
        """Iterate over task changes as they happen; see :meth:`Tasks.watch`.

        Example:
            >>> async for event in client.watch(task_id=task.id):  # doctest: +SKIP
            ...     print(event.type, event.status)
        """
        return self._stream(self._watch(task_id, status, last_event_id, reconnect))

    async def _stream(self, plan: _Watch) -> AsyncGenerator[TaskEvent, None]:
        client = self._http()
        while True:
            error: Exception | None = None
            try:
                response = await client.send(plan.request(client), stream=True)
                try:
                    if not response.is_success:
                        await response.aread()
                    if plan.opened(response):
                        async for text in response.aiter_text():
                            for event in plan.feed(text):
                                yield event
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                error = exc
            delay = plan.dropped(error)
            if delay is None:
                return
            await asyncio.sleep(delay)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or str(self._client.base_url).rstrip("/") != self.base_url:
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, transport=self._transport)
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()
