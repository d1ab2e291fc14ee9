"""The live stream's pure parts (hexlabs_tasks/_events.py): the SSE codec both ways, and the server's read cursor."""

from __future__ import annotations

import pytest

from hexlabs_tasks import TaskEvent, TaskStatus
from hexlabs_tasks._events import (
    EventCursor,
    EventStreamParser,
    SSEDecoder,
    encode_sse,
    sse_comment,
    sse_message,
)

EVENTS = [
    TaskEvent(id=1, type="created", task_id="abc", status=TaskStatus.PENDING, at=1764770000000),
    TaskEvent(id=2, type="running", task_id="abc", status=TaskStatus.RUNNING, at=1764770000100, data={"attempt": 1}),
    TaskEvent(
        id=3,
        type="attempt_finished",
        task_id="abc",
        status=TaskStatus.RUNNING,
        at=1764770000200,
        data={"attempt": 1, "httpStatus": 503, "error": "line one\nline two\r\n", "durationMs": 12},
    ),
    TaskEvent(id=7, type="deleted", task_id="abc", status=None, at=1764770000300),
]


def stream_of(events: list[TaskEvent]) -> str:
    return sse_message(retry=1000, id=0) + sse_comment("keep-alive").join(encode_sse(e) for e in events)


# -- writing -------------------------------------------------------------------------------------------------------


def test_encode_sse_writes_id_event_and_one_line_of_camel_case_json() -> None:
    text = encode_sse(EVENTS[1])
    assert text == (
        "id: 2\n"
        "event: running\n"
        'data: {"id":2,"type":"running","taskId":"abc","status":"running","at":1764770000100,"data":{"attempt":1}}\n'
        "\n"
    )


def test_line_breaks_inside_the_event_stay_escaped_in_one_data_line() -> None:
    text = encode_sse(EVENTS[2])
    assert text.count("\n") == 4
    assert "\r" not in text


def test_sse_message_splits_multi_line_data_and_refuses_line_breaks_in_fields() -> None:
    assert sse_message("a\nb\r\nc", event="x") == "event: x\ndata: a\ndata: b\ndata: c\n\n"
    assert sse_message(retry=1000, id=5) == "retry: 1000\nid: 5\n\n"
    assert sse_comment("keep-alive") == ": keep-alive\n\n"
    with pytest.raises(ValueError, match="line break"):
        sse_message("x", id="1\n2")
    with pytest.raises(ValueError, match="line break"):
        sse_message("x", event="a\rb")


# -- reading -------------------------------------------------------------------------------------------------------


def test_round_trip() -> None:
    parser = EventStreamParser()
    assert parser.feed(stream_of(EVENTS)) == EVENTS
    assert parser.last_event_id == 7
    assert parser.retry == 1000


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 64])
def test_round_trip_in_pieces_of_any_size(size: int) -> None:
    text = stream_of(EVENTS)
    parser = EventStreamParser()
    got = [event for start in range(0, len(text), size) for event in parser.feed(text[start : start + size])]
    assert got == EVENTS


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
def test_every_line_break_of_the_standard_is_understood_even_split_between_pieces(newline: str) -> None:
    text = stream_of(EVENTS).replace("\n", newline)
    for size in (1, 2, 3, len(text)):
        parser = EventStreamParser()
        got = [event for start in range(0, len(text), size) for event in parser.feed(text[start : start + size])]
        assert got == EVENTS, size


def test_a_partial_line_waits_for_the_rest() -> None:
    parser = EventStreamParser()
    text = encode_sse(EVENTS[0])
    assert parser.feed(text[:20]) == []
    assert parser.feed(text[20:-1]) == []  # the blank line that ends the message has not arrived
    assert parser.feed(text[-1:]) == [EVENTS[0]]


def test_multi_line_data_is_joined_with_newlines() -> None:
    decoder = SSEDecoder()
    (message,) = decoder.feed("event: note\ndata: first\ndata:second\ndata\ndata:  indented\n\n")
    assert message.event == "note"
    assert message.data == "first\nsecond\n\n indented"  # one space after the colon is dropped, no more

    parser = EventStreamParser()
    text = 'id: 9\nevent: created\ndata: {"id": 9,\ndata:  "taskId": "t",\ndata: "status": "pending", "at": 5}\n\n'
    assert parser.feed(text) == [TaskEvent(id=9, type="created", task_id="t", status=TaskStatus.PENDING, at=5)]


def test_comments_and_keep_alives_are_skipped() -> None:
    parser = EventStreamParser()
    assert parser.feed(": keep-alive\n\n:\n\n") == []
    text = ": before\n" + encode_sse(EVENTS[0]).replace("event:", ": inside\nevent:")
    assert parser.feed(text) == [EVENTS[0]]


def test_retry_sets_the_reconnection_delay_and_a_bad_one_is_ignored() -> None:
    decoder = SSEDecoder()
    assert decoder.feed("retry: 2500\n\n") == []
    assert decoder.retry == 2500
    decoder.feed("retry: soon\n\nretry: -1\n\n")
    assert decoder.retry == 2500


def test_an_id_without_data_moves_the_resume_point_without_an_event() -> None:
    parser = EventStreamParser(last_event_id=3)
    assert parser.feed("retry: 1000\nid: 41\n\n") == []
    assert parser.last_event_id == 41


def test_ids_carry_over_and_the_event_field_names_the_type_when_the_json_does_not() -> None:
    decoder = SSEDecoder()
    first, second = decoder.feed("id: 12\ndata: a\n\ndata: b\n\n")
    assert (first.id, second.id) == ("12", "12")  # as EventSource: the last id stays in effect
    parser = EventStreamParser()
    (event,) = parser.feed('id: 12\nevent: failed\ndata: {"taskId": "t", "status": "failed", "at": 1}\n\n')
    assert (event.id, event.type) == (12, "failed")


def test_messages_that_are_not_events_are_skipped() -> None:
    parser = EventStreamParser()
    text = 'data: hello\n\ndata: [1, 2]\n\ndata: {"id": "x"}\n\n' + encode_sse(EVENTS[0])
    assert parser.feed(text) == [EVENTS[0]]


def test_a_leading_byte_order_mark_is_dropped() -> None:
    parser = EventStreamParser()
    assert parser.feed("\ufeff" + encode_sse(EVENTS[0])) == [EVENTS[0]]


def test_reset_forgets_a_half_received_message_but_not_the_last_id() -> None:
    parser = EventStreamParser()
    parser.feed(encode_sse(EVENTS[0]))
    parser.feed(encode_sse(EVENTS[1])[:-5])  # the connection drops mid-message
    parser.reset()
    assert parser.last_event_id == 1
    assert parser.feed(encode_sse(EVENTS[2])) == [EVENTS[2]]


def test_feed_line_takes_whole_lines() -> None:
    parser = EventStreamParser()
    lines = encode_sse(EVENTS[3]).split("\n")[:-1]
    got = [parser.feed_line(line) for line in lines]
    assert got == [None, None, None, EVENTS[3]]


def test_a_gap_message_is_an_event_without_a_task() -> None:
    gap = TaskEvent(id=40, type="gap", at=1, data={"lastEventId": 3, "resumedAfter": 40})
    (got,) = EventStreamParser().feed(encode_sse(gap))
    assert got.is_gap and got.task_id is None and got.status is None
    assert got.data == {"lastEventId": 3, "resumedAfter": 40}


# -- the server's read cursor --------------------------------------------------------------------------------------


def test_cursor_moves_past_ids_in_order() -> None:
    cursor = EventCursor(10, settle=3)
    assert cursor.advance([11, 12, 13], now=0) == (3, None)
    assert cursor.position == 13
    assert cursor.advance([], now=1) == (0, None)


def test_cursor_holds_back_what_follows_a_hole_until_it_fills() -> None:
    cursor = EventCursor(10, settle=3)
    assert cursor.advance([11, 13, 14], now=0) == (1, None)  # 12 is still being committed
    assert cursor.position == 11
    assert cursor.advance([12, 13, 14], now=0.2) == (3, None)
    assert cursor.position == 14


def test_cursor_skips_a_hole_that_stays_open_past_the_settle_time() -> None:
    cursor = EventCursor(10, settle=3)
    assert cursor.advance([13], now=0) == (0, None)
    assert cursor.advance([13], now=2.9) == (0, None)
    assert cursor.advance([13, 14], now=3.0) == (2, (11, 12))
    assert cursor.position == 14


def test_cursor_times_each_hole_from_when_it_was_first_seen() -> None:
    cursor = EventCursor(0, settle=3)
    assert cursor.advance([2, 4], now=0) == (0, None)  # holes before 2 and before 4, both seen now
    assert cursor.advance([2, 4, 5], now=3) == (3, (1, 1))  # both settled together; only the first is reported


def test_cursor_without_settle_skips_holes_at_once() -> None:
    cursor = EventCursor(5, settle=0)
    assert cursor.advance([90, 91], now=0) == (2, (6, 89))
    assert cursor.position == 91
