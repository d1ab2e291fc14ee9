"""``GET /api/events``: the live stream of task changes, as Server-Sent Events.

Every change is a row of the event log, written in the same transaction as the change by whichever process made
it (this API, another API process, a worker), so the stream reads the table rather than memory: it sends what
came after ``Last-Event-ID`` that the window still holds, then polls for new rows while the client listens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import SQLAlchemyError

from hexlabs_tasks._events import GAP, EventCursor, TaskEvent, encode_sse, sse_comment, sse_message
from hexlabs_tasks._exceptions import HexlabsTasksError, TaskValidationError
from hexlabs_tasks._models import TaskStatus
from hexlabs_tasks._store import Store, now_ms
from hexlabs_tasks._tables import EventRow
from hexlabs_tasks.api._auth import require_token

__all__ = ["POLL_SECONDS", "events_router", "parse_statuses"]

logger = logging.getLogger("hexlabs_tasks.api.events")

POLL_SECONDS = 0.2  # how often an open stream looks for new events
KEEP_ALIVE_SECONDS = 15.0  # a comment after this long without a message, so proxies keep the connection open
RETRY_MS = 1000  # the reconnection delay the stream announces to EventSource clients
_BATCH = 500
# How long a hole in the ids may stay open before it is taken as a rolled-back transaction (PostgreSQL only: on
# SQLite writers take turns, so an id never becomes visible before a smaller one).
_SETTLE_SECONDS = 3.0

_STATUSES = tuple(s.value for s in TaskStatus)

events_router = APIRouter(
    prefix="/api",
    tags=["events"],
    dependencies=[Depends(require_token)],
    responses={
        401: {"description": "unauthorized"},
        422: {"description": "validation_error"},
        503: {"description": "service_unavailable"},
    },
)


def parse_statuses(values: Sequence[str] | None) -> frozenset[str]:
    """The statuses of ``?status=a&status=b`` or ``?status=a,b``; empty for no filter.

    Raises:
        TaskValidationError: one is not a task status.
    """
    found = {part.strip() for value in values or () for part in value.split(",") if part.strip()}
    unknown = sorted(found - set(_STATUSES))
    if unknown:
        message = f"unknown status {', '.join(map(repr, unknown))}; one of {', '.join(_STATUSES)}"
        raise TaskValidationError(f"status: {message}", details=[{"field": "status", "message": message}])
    return frozenset(found)


def _event_id(value: str | None, field: str) -> int | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        message = "must be the id of an event this stream sent (a non-negative integer)"
        raise TaskValidationError(f"{field}: {message}", details=[{"field": field, "message": message}])
    return int(text)


@events_router.get(
    "/events",
    summary="Live stream of task changes (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "A text/event-stream: one message per change (`id`, `event` = its type, `data` = the "
            "event as JSON), a `gap` message when events were lost, and a comment every 15 s.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def stream_events(
    request: Request,
    task_id: Annotated[
        str | None, Query(alias="taskId", max_length=64, description="Only the events of this task.")
    ] = None,
    status: Annotated[
        list[str] | None,
        Query(description="Only events after which the task has one of these statuses (repeat, or comma-separate)."),
    ] = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume after this event (EventSource sends it).")
    ] = None,
    last_event_id_query: Annotated[
        str | None, Query(alias="lastEventId", description="As Last-Event-ID, for clients that cannot set headers.")
    ] = None,
) -> StreamingResponse:
    """Each change of a task as one message: created, updated, running, attempt_finished, completed, failed,
    cancelled, deleted. Without ``Last-Event-ID`` the stream starts now; with it, it first sends what the client
    missed, as far as the window of recent events reaches, and a ``gap`` message when that is not far enough.
    """
    statuses = parse_statuses(status)
    # The header wins: an EventSource opened with ?lastEventId= sends the header, newer, when it reconnects.
    requested = _event_id(last_event_id, "Last-Event-ID")
    if requested is None:
        requested = _event_id(last_event_id_query, "lastEventId")
    store: Store = request.app.state.service.store
    window: int = request.app.state.events_window
    oldest, newest = await store.event_bounds()

    position, gap = newest, None
    if requested is not None:
        position = requested
        if requested > newest:
            position = newest
            why = f"Last-Event-ID {requested} is newer than the newest event ({newest}): the event log was reset"
            gap = _gap(requested, newest, window, why)
        elif oldest and requested < oldest - 1:
            position = oldest - 1
            gap = _gap(requested, position, window, f"events after {requested} are no longer kept")
    opening = sse_message(retry=RETRY_MS, id=position) + (encode_sse(gap) if gap else "")
    stream = _stream(
        request,
        store,
        opening=opening,
        cursor=EventCursor(position, settle=0.0 if store.is_sqlite else _SETTLE_SECONDS),
        task_id=task_id,
        statuses=statuses,
        window=window,
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _gap(requested: int, resumed_after: int, window: int, why: str) -> TaskEvent:
    return TaskEvent(
        id=resumed_after,
        type=GAP,
        at=now_ms(),
        data={
            "lastEventId": requested,
            "resumedAfter": resumed_after,
            "window": window,
            "message": f"{why}; changes were missed, so read the tasks you follow again "
            f"(the server keeps the newest {window} events)",
        },
    )


def _task_event(row: EventRow) -> TaskEvent:
    assert row.id is not None
    return TaskEvent(id=row.id, type=row.type, task_id=row.task_id, status=row.status, at=row.at, data=row.data)


def _wanted(row: EventRow, task_id: str | None, statuses: frozenset[str]) -> bool:
    return (task_id is None or row.task_id == task_id) and (not statuses or row.status in statuses)


async def _stream(
    request: Request,
    store: Store,
    *,
    opening: str,
    cursor: EventCursor,
    task_id: str | None,
    statuses: frozenset[str],
    window: int,
) -> AsyncIterator[str]:
    stopping: asyncio.Event = request.app.state.events_stopping
    yield opening
    last_sent = time.monotonic()
    while not stopping.is_set() and not await request.is_disconnected():
        try:
            # Unfiltered, so the cursor sees every id and can tell a hole from an event of another task. Shielded:
            # a client that hangs up cancels this generator, and a query cut short could spoil its pooled connection.
            rows = await asyncio.shield(store.events_after(cursor.position, limit=_BATCH))
            ready, skipped = cursor.advance([row.id for row in rows if row.id is not None], time.monotonic())
            messages: list[str] = []
            if skipped is not None:
                oldest, _ = await asyncio.shield(store.event_bounds())
                if oldest > skipped[0]:  # pruned from the window, not a rolled-back write
                    messages.append(encode_sse(_gap(skipped[0] - 1, skipped[1], window, "events were pruned")))
            messages.extend(encode_sse(_task_event(row)) for row in rows[:ready] if _wanted(row, task_id, statuses))
        except (HexlabsTasksError, SQLAlchemyError) as exc:
            # The client reconnects with the last id it got and loses nothing; say why here.
            logger.warning("closing an event stream: the event log cannot be read (%s)", exc)
            return
        now = time.monotonic()
        if messages:
            yield "".join(messages)
            last_sent = now
        elif now - last_sent >= KEEP_ALIVE_SECONDS:
            yield sse_comment("keep-alive")
            last_sent = now
        if ready < _BATCH:  # caught up: wait for more
            await asyncio.sleep(POLL_SECONDS)
