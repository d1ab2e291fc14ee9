"""The live event stream without I/O: the event model, the Server-Sent Events codec, and the read cursor.

``GET /api/events`` sends each change of a task as one SSE message::

    id: 42
    event: attempt_finished
    data: {"id":42,"type":"attempt_finished","taskId":"4f0c...","status":"running","at":1764770000123,...}

:func:`encode_sse` writes such messages (the server), :class:`EventStreamParser` reads them back incrementally
(both SDK twins), and :class:`EventCursor` decides which rows of the event log the server may send yet: event ids
come from a database sequence, and on PostgreSQL a transaction can commit after another that took a later id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from hexlabs_tasks._models import TaskStatus, _Wire

__all__ = [
    "EVENT_TYPES",
    "GAP",
    "EventCursor",
    "EventStreamParser",
    "SSEDecoder",
    "ServerSentEvent",
    "TaskEvent",
    "encode_sse",
    "sse_comment",
    "sse_message",
]

EVENT_TYPES: tuple[str, ...] = (
    "created",
    "updated",
    "running",
    "attempt_finished",
    "completed",
    "failed",
    "cancelled",
    "deleted",
)
GAP = "gap"
"""The type of the message that says events were lost: the client resumed from an id older than the window."""


class TaskEvent(_Wire):
    """One change in a task's life, as the live stream sends it.

    Attributes:
        id: the event's position in the stream; increasing; pass it back as ``Last-Event-ID`` to resume.
        type: created, updated, running, attempt_finished, completed, failed, cancelled or deleted; ``gap`` when
            events were lost (then ``task_id`` is None and ``data`` says what was lost).
        task_id: the task the event is about.
        status: the task's status after the change; None for deleted (and gap).
        at: Unix ms of the change.
        data: more about the change: ``{"attempt"}`` for running; ``{"attempt", "httpStatus", "error",
            "durationMs"}`` for attempt_finished; ``{"error"}`` for failed; None for most others.
    """

    model_config = ConfigDict(extra="ignore")

    id: int = Field(ge=0)
    type: str = Field(
        description="created, updated, running, attempt_finished, completed, failed, cancelled, deleted; "
        "gap when events were lost."
    )
    task_id: str | None = None
    status: TaskStatus | None = None
    at: int
    data: dict[str, Any] | None = None

    @property
    def is_gap(self) -> bool:
        """True for the message that says events were lost (re-read the tasks you follow)."""
        return self.type == GAP


# -- writing -------------------------------------------------------------------------------------------------------


def sse_message(
    data: str | None = None, *, event: str | None = None, id: int | str | None = None, retry: int | None = None
) -> str:
    """One SSE message: the given fields, ``data`` split over as many ``data:`` lines as it has lines."""
    lines = []
    if retry is not None:
        lines.append(f"retry: {int(retry)}")
    if id is not None:
        lines.append(f"id: {_single_line(str(id), 'id')}")
    if event is not None:
        lines.append(f"event: {_single_line(event, 'event')}")
    if data is not None:
        lines.extend(f"data: {line}" for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return "\n".join(lines) + "\n\n"


def sse_comment(text: str = "") -> str:
    """An SSE comment (``: text``), which clients ignore; sent to keep idle connections open."""
    return "".join(f": {line}\n" for line in (text.splitlines() or [""])) + "\n"


def encode_sse(event: TaskEvent) -> str:
    """The SSE message of one event: ``id``, ``event`` (its type) and ``data`` (the event as compact JSON)."""
    payload = json.dumps(event.to_wire(), separators=(",", ":"), ensure_ascii=False)
    return sse_message(payload, event=event.type, id=event.id)


def _single_line(value: str, field: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"an SSE {field} field cannot hold a line break or NUL: {value!r}")
    return value


# -- reading -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched SSE message.

    Attributes:
        event: the ``event:`` field, ``message`` when none was given.
        data: the ``data:`` lines joined with newlines.
        id: the last event id in effect when it was dispatched (ids carry over to later messages), or "".
        retry: the reconnection delay in ms most recently announced, or None.
    """

    event: str
    data: str
    id: str
    retry: int | None


class SSEDecoder:
    """An incremental ``text/event-stream`` decoder, as the HTML standard describes EventSource's.

    Feed it text as it arrives, in chunks of any size (a line, or a CRLF, may be split between chunks); it returns
    the messages completed so far. Comments (``: keep-alive``) are skipped, ``data:`` lines are joined with
    newlines, ``retry:`` sets :attr:`retry`, and ``id:`` sets :attr:`last_event_id` once its message ends, even a
    message without data, so a client resumes from the right place.
    """

    def __init__(self) -> None:
        self.last_event_id = ""
        self.retry: int | None = None
        self._line = ""
        self._skip_lf = False
        self._started = False
        self._reset_message()

    def _reset_message(self) -> None:
        self._data: list[str] = []
        self._event = ""
        self._id_buffer: str | None = None

    def reset(self) -> None:
        """Forget a partly received line and message (the connection dropped); keep the last id and retry."""
        self._line = ""
        self._skip_lf = False
        self._started = False
        self._reset_message()

    def feed(self, text: str) -> list[ServerSentEvent]:
        """Decode the next piece of the stream; the messages it completed, in order."""
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")
        messages: list[ServerSentEvent] = []
        start = 0
        if self._skip_lf and text.startswith("\n"):
            start = 1
        self._skip_lf = False
        length = len(text)
        while start < length:
            cr, lf = text.find("\r", start), text.find("\n", start)
            if cr == -1 and lf == -1:
                self._line += text[start:]
                break
            end = lf if cr == -1 or (lf != -1 and lf < cr) else cr
            line, self._line = self._line + text[start:end], ""
            message = self.feed_line(line)
            if message is not None:
                messages.append(message)
            start = end + 1
            if text[end] == "\r":
                if start < length and text[start] == "\n":
                    start += 1
                elif start == length:
                    self._skip_lf = True  # a CRLF may be split between this chunk and the next
        return messages

    def feed_line(self, line: str) -> ServerSentEvent | None:
        """Decode one whole line (without its line break); the message it completed, if it was a blank line."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if self._id_buffer is not None:
            self.last_event_id = self._id_buffer
        data, event = self._data, self._event
        self._reset_message()
        if not data:
            return None
        return ServerSentEvent(event=event or "message", data="\n".join(data), id=self.last_event_id, retry=self.retry)


class EventStreamParser:
    """Reads ``GET /api/events`` incrementally: text in, :class:`TaskEvent` out.

    Messages whose data is not an event (another server's messages, say) are skipped rather than fatal, so a
    long-running watcher survives them.

    Args:
        last_event_id: where the reader starts; updated from each message's ``id``.
    """

    def __init__(self, last_event_id: int | None = None) -> None:
        self.decoder = SSEDecoder()
        self.last_event_id = last_event_id

    @property
    def retry(self) -> int | None:
        """The reconnection delay (ms) the server last announced."""
        return self.decoder.retry

    def reset(self) -> None:
        """Forget a partly received message (before reading a new connection); keep the last event id."""
        self.decoder.reset()

    def feed(self, text: str) -> list[TaskEvent]:
        """The events completed by the next piece of the stream."""
        events = []
        for message in self.decoder.feed(text):
            event = self._event(message)
            if event is not None:
                events.append(event)
        self._sync_id()
        return events

    def feed_line(self, line: str) -> TaskEvent | None:
        """The event completed by one whole line, if any."""
        message = self.decoder.feed_line(line)
        self._sync_id()
        return self._event(message) if message is not None else None

    def _sync_id(self) -> None:
        value = self.decoder.last_event_id
        if value.isascii() and value.isdigit():
            self.last_event_id = int(value)

    @staticmethod
    def _event(message: ServerSentEvent) -> TaskEvent | None:
        try:
            payload = json.loads(message.data)
        except ValueError:
            return None
        if not isinstance(payload, dict):
            return None
        if message.id.isascii() and message.id.isdigit():
            payload.setdefault("id", int(message.id))
        payload.setdefault("type", message.event)
        try:
            return TaskEvent.model_validate(payload)
        except ValidationError:
            return None


# -- the server's read position ------------------------------------------------------------------------------------


class EventCursor:
    """Which of the event rows just read the stream may send yet, so that none is skipped.

    Ids come from a sequence: on SQLite writers take turns, so ids become visible in order; on PostgreSQL a
    transaction may commit after another that took a later id, and a rolled-back one leaves a hole for ever. So a
    hole in the ids read holds back what follows it until it fills or has stayed open for ``settle`` seconds.
    Holes left by pruning the window are the caller's to report (see :meth:`advance`).

    Args:
        position: the id of the last event sent (0 for none).
        settle: how long a hole may stay open before it is taken as permanent; 0 where ids commit in order.
    """

    def __init__(self, position: int, *, settle: float) -> None:
        self.position = position
        self.settle = settle
        self._holes: dict[int, float] = {}  # the id just after a hole -> when the hole was first seen

    def advance(self, ids: Sequence[int], now: float) -> tuple[int, tuple[int, int] | None]:
        """Take in the ids read after :attr:`position`, ascending.

        Returns:
            How many of them, from the first, may be sent now (:attr:`position` moves past them), and the hole
            ``(first, last)`` skipped right after the old position, if one was: only that one can be a stretch
            the window pruned.
        """
        previous = self.position
        for event_id in ids:
            if event_id > previous + 1:
                self._holes.setdefault(event_id, now)
            previous = event_id
        ready = 0
        skipped: tuple[int, int] | None = None
        for event_id in ids:
            expected = self.position + 1
            if event_id > expected:
                if now - self._holes[event_id] < self.settle:
                    break
                if ready == 0:
                    skipped = (expected, event_id - 1)
            self.position = event_id
            ready += 1
        self._holes = {k: v for k, v in self._holes.items() if k > self.position}
        return ready, skipped
