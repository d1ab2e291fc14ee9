"""One attempt of one claimed task, from request to recorded outcome: shared by the worker and the flow.

The worker (many tasks in one event loop) and the Prefect flow in ``flows/`` (one task per flow run, for stock
Prefect workers) both drive this: perform the request, ask the retry policy what follows, and record the attempt
and the task's new status in one compare-and-set that only succeeds if the caller still holds the attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.exc import SQLAlchemyError

from hexlabs_tasks._exceptions import ServiceUnavailable
from hexlabs_tasks._models import RequestSpec, RetryPolicy, TaskStatus
from hexlabs_tasks._performer import AttemptResult, perform
from hexlabs_tasks._prefect import AWAITING_RETRY, COMPLETED, FAILED
from hexlabs_tasks._retry import Decision, Verdict, decide
from hexlabs_tasks._store import Finish, Store, now_ms, task_event
from hexlabs_tasks._tables import AttemptRow, EventRow, TaskRow

__all__ = ["AttemptOutcome", "attempt_line", "execute_attempt", "outcome_events", "outcome_values", "spec_of"]

_EXCERPT = 1024
_RECORD_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)
logger = logging.getLogger("hexlabs_tasks.worker")
_PREFECT_STATE = {Verdict.COMPLETED: COMPLETED, Verdict.FAILED: FAILED, Verdict.RETRY: AWAITING_RETRY}


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What an attempt led to. ``row`` is None when the caller no longer held the attempt (deleted, taken over)."""

    row: TaskRow | None
    decision: Decision
    result: AttemptResult
    number: int


def spec_of(row: TaskRow) -> RequestSpec:
    """The request a row describes."""
    return RequestSpec(
        url=row.url,
        method=row.method,
        headers=row.headers,
        params=row.params,
        body=row.body,
        timeout=row.timeout,
    )


def outcome_values(row: TaskRow, decision: Decision, now: int, last_response: dict[str, Any] | None) -> dict[str, Any]:
    """The columns a decision changes on the task."""
    values: dict[str, Any] = {
        "updated_at": now,
        "attempt_started_at": None,
        "prefect_owed": _PREFECT_STATE[decision.verdict],
    }
    if last_response is not None:
        values["last_response"] = last_response
    if decision.verdict is Verdict.COMPLETED:
        values.update(status=TaskStatus.COMPLETED.value, due_at=None, completed_at=now, last_error=None)
    elif decision.verdict is Verdict.FAILED:
        values.update(status=TaskStatus.FAILED.value, due_at=None, completed_at=now, last_error=decision.reason)
    else:
        values.update(
            status=TaskStatus.RUNNING.value,
            due_at=now + round(decision.delay * 1000),
            last_error=decision.reason,
        )
    return values


def outcome_events(row: TaskRow, attempt: AttemptRow, decision: Decision, now: int) -> list[EventRow]:
    """The stream events of a finished attempt: ``attempt_finished``, then ``completed`` or ``failed`` if final."""
    status = {Verdict.COMPLETED: "completed", Verdict.FAILED: "failed"}.get(decision.verdict, TaskStatus.RUNNING.value)
    events = [
        task_event(
            row.id,
            "attempt_finished",
            status,
            now,
            {
                "attempt": attempt.number,
                "httpStatus": attempt.status,
                "error": attempt.error,
                "durationMs": attempt.duration_ms,
            },
        ),
    ]
    if decision.verdict is not Verdict.RETRY:
        events.append(
            task_event(row.id, status, status, now, {"error": decision.reason} if status == "failed" else None)
        )
    return events


def attempt_line(row: TaskRow, number: int, result: AttemptResult, decision: Decision) -> str:
    """The attempt as one log line for the Prefect UI; the query string, headers and body are left out."""
    parts = urlsplit(row.url)
    where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path or '/'}"
    got = f"HTTP {result.status}" if result.status is not None else (result.error or "no response")
    if decision.verdict is Verdict.RETRY:
        then = f"retrying in {decision.delay:.3g} s"
    elif decision.verdict is Verdict.COMPLETED:
        then = "completed"
    else:
        then = f"failed: {decision.reason}"
    return f"attempt {number}: {row.method.upper()} {where} -> {got} in {result.duration_ms} ms; {then}"


async def execute_attempt(
    store: Store,
    row: TaskRow,
    *,
    http: httpx.AsyncClient,
    owner: str,
    clock: Callable[[], int] = now_ms,
    rand: Callable[[], float] = random.random,
    record: Callable[[Finish], Awaitable[TaskRow | None]] | None = None,
) -> AttemptOutcome:
    """Perform the attempt ``row`` was claimed for and record it; never raises for the request's failures.

    ``record`` writes the outcome (default: :meth:`Store.finish_attempt`; the worker batches many into one
    transaction).
    """
    number = row.attempts
    started = row.attempt_started_at or clock()
    result = await perform(http, spec_of(row))
    finished = clock()
    decision = decide(
        RetryPolicy.model_validate(row.retry_policy),
        attempt=number,
        retries=row.retries,
        status=result.status,
        error=result.error,
        retry_after=result.retry_after,
        now=datetime.fromtimestamp(finished / 1000, tz=UTC),
        rand=rand,
    )
    attempt = AttemptRow(
        task_id=row.id,
        generation=row.generation,
        number=number,
        started_at=started,
        finished_at=finished,
        status=result.status,
        error=result.error
        if result.status is None
        else (None if decision.verdict is Verdict.COMPLETED else decision.reason),
        duration_ms=result.duration_ms,
        response_excerpt=result.body[:_EXCERPT] if result.status is not None else None,
    )
    values = outcome_values(row, decision, finished, result.last_response())
    events = outcome_events(row, attempt, decision, finished)
    # The request has been sent: its outcome must be recorded, or the lease would expire and the task be performed
    # again. A failing write is retried (the lease is still renewed meanwhile) before giving up.
    finish = Finish(task_id=row.id, owner=owner, attempt=attempt, values=values, events=tuple(events))
    for delay in (*_RECORD_RETRY_DELAYS, None):
        try:
            if record is not None:
                new_row = await record(finish)
            else:
                new_row = await store.finish_attempt(
                    task_id=row.id, owner=owner, attempt=attempt, values=values, events=events
                )
            break
        except (ServiceUnavailable, SQLAlchemyError, OSError, TimeoutError) as exc:
            if delay is None:
                raise
            logger.warning("recording attempt %d of task %s failed (%s); trying again", number, row.id, exc)
            await asyncio.sleep(delay)
    return AttemptOutcome(row=new_row, decision=decision, result=result, number=number)
