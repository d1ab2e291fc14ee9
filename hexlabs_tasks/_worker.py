"""The worker: performs due tasks, many at once in one event loop, and mirrors them into Prefect.

How it keeps the contract's promises:

- **Due tasks are found without writing.** Each turn reads the earliest due time of an unheld task and sleeps
  until then (at most ``poll_interval``); it writes only to claim.
- **Two workers never perform the same attempt.** A claim is one ``UPDATE ... RETURNING`` in the store whose
  condition (due, unheld, active) a second worker cannot also meet.
- **Waiting for a retry holds no slot and survives a restart.** Between attempts the task is only a due time in
  the database; any worker picks it up when it is due.
- **A dead worker leaves nothing stuck.** A running attempt carries a lease the worker renews; a lease that
  expires means its worker died: the attempt is recorded as interrupted and retried by the policy. Tasks whose
  Prefect state failed to arrive are re-sent. Both happen at start and then periodically.
- **A task deleted mid-attempt is let go.** Renewing leases tells the worker which of its tasks vanished; their
  requests are cancelled.
- **Stopping is clean.** The worker stops claiming, lets running attempts finish for ``shutdown_grace`` seconds,
  then cancels the rest and gives them back, uncounted, to be performed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from hexlabs_tasks._batching import Batcher
from hexlabs_tasks._exceptions import ServiceUnavailable
from hexlabs_tasks._executor import AttemptOutcome, attempt_line, execute_attempt, outcome_events, outcome_values
from hexlabs_tasks._models import RetryPolicy
from hexlabs_tasks._performer import new_http_client
from hexlabs_tasks._prefect import AWAITING_RETRY, RUNNING, SCHEDULED, PrefectBridge
from hexlabs_tasks._retry import Verdict, decide
from hexlabs_tasks._store import Finish, Store, now_ms
from hexlabs_tasks._tables import AttemptRow, TaskRow

__all__ = ["Worker"]

logger = logging.getLogger("hexlabs_tasks.worker")
FIRST_CLAIM = 8  # tasks taken by the first claim of a burst
MAX_CLAIM = 200  # tasks taken by one claim at most
RECORD_BATCH = 50  # finished attempts recorded in one transaction at most


class Worker:
    """Performs due tasks from a store, mirroring them into Prefect through a bridge.

    Args:
        store: the task store.
        bridge: the Prefect bridge; None runs without Prefect (tests of the worker alone).
        concurrency: attempts in flight at once.
        poll_interval: longest sleep between looks for due tasks, seconds.
        lease_seconds: how long a claim holds without renewal; a dead worker's attempts wait this long.
        shutdown_grace: seconds running attempts may finish after a stop is asked.
        worker_id: a name for this worker, stored on the tasks it holds.
        clock: Unix ms now (injectable for tests).
        rand: jitter source for the retry policy.
    """

    def __init__(
        self,
        *,
        store: Store,
        bridge: PrefectBridge | None,
        concurrency: int = 100,
        poll_interval: float = 0.2,
        lease_seconds: float = 30.0,
        shutdown_grace: float = 10.0,
        worker_id: str | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], int] = now_ms,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.bridge = bridge
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease_ms = round(lease_seconds * 1000)
        self.shutdown_grace = shutdown_grace
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.rand = rand
        self._http = http
        self._own_http = http is None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._attempt_of: dict[str, int] = {}
        self._dropped: set[str] = set()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._delivered: dict[str, str] = {}
        self._mirrors: set[asyncio.Task[None]] = set()
        # Outcomes that finish together are recorded in one transaction: one commit per batch, not per attempt.
        self._records: Batcher[None, Finish, TaskRow | None] = Batcher(
            self._record_batch, max_size=RECORD_BATCH, max_inflight=2
        )
        self.performed = 0

    def wake(self) -> None:
        """Look for due tasks now (called by an API in the same process after a change)."""
        self._wake.set()

    # -- the main loop ---------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then shut down cleanly."""
        if self._http is None:
            self._http = new_http_client(max_connections=self.concurrency)
        background = [
            asyncio.create_task(self._every(self.lease_ms / 3000, self._renew_leases, stop), name="leases"),
            asyncio.create_task(self._every(max(1.0, self.lease_ms / 2000), self._recover, stop), name="recover"),
            asyncio.create_task(self._every(0.5, self._flush, stop), name="flush"),
        ]
        try:
            await self._recover()
            await self._loop(stop)
        finally:
            await self._shutdown()
            if self._mirrors:
                await asyncio.wait(set(self._mirrors), timeout=max(self.shutdown_grace, 5.0))
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._flush()
            if self._own_http and self._http is not None:
                await self._http.aclose()
                self._http = None

    async def _loop(self, stop: asyncio.Event) -> None:
        claim_step = FIRST_CLAIM
        while not stop.is_set():
            timeout = self.poll_interval
            free = self.concurrency - len(self._inflight)
            try:
                if free > 0:
                    next_due = await self.store.next_due_at()
                    now = self.clock()
                    if next_due is not None and next_due <= now:
                        # A burst is claimed in growing steps (8, 16, 32, ...): the first requests start after a
                        # small claim instead of waiting for one big one; a short claim starts the ramp again.
                        limit = min(free, claim_step, MAX_CLAIM)
                        rows = await self.store.claim_due(
                            owner=self.worker_id, now=now, lease_until=now + self.lease_ms, limit=limit
                        )
                        for row in rows:
                            self._start(row)
                        if len(rows) == limit:
                            claim_step = min(claim_step * 2, MAX_CLAIM)
                            continue
                        claim_step = FIRST_CLAIM
                    elif next_due is not None:
                        timeout = min(timeout, (next_due - now) / 1000)
                else:
                    self._slot_freed.clear()
            except ServiceUnavailable as exc:
                logger.warning("task store unavailable: %s", exc)
                timeout = max(timeout, 1.0)
            except Exception:
                # Whatever else the store raised (a statement the database aborted, a driver error) ends this
                # turn, not the worker: a loop that stopped here would leave every due task stranded.
                logger.exception("looking for due tasks failed; trying again in 1 s")
                timeout = max(timeout, 1.0)
            await self._sleep(stop, timeout, slot_wait=free <= 0)

    async def _sleep(self, stop: asyncio.Event, timeout: float, *, slot_wait: bool) -> None:
        events = [stop.wait(), self._wake.wait()]
        if slot_wait:
            events.append(self._slot_freed.wait())
        waiters = [asyncio.ensure_future(e) for e in events]
        try:
            await asyncio.wait(waiters, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._wake.clear()

    async def _every(self, seconds: float, job: Callable[[], object], stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=seconds)
            try:
                await job()  # type: ignore[misc]
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker housekeeping failed; will try again")

    # -- one attempt -----------------------------------------------------------------------------------------

    def _start(self, row: TaskRow) -> None:
        self._attempt_of[row.id] = row.attempts
        task = asyncio.create_task(self._attempt(row), name=f"attempt:{row.id}:{row.attempts}")
        self._inflight[row.id] = task

        def _done(_: asyncio.Task[None]) -> None:
            self._inflight.pop(row.id, None)
            self._attempt_of.pop(row.id, None)
            self._slot_freed.set()

        task.add_done_callback(_done)

    async def _attempt(self, row: TaskRow) -> None:
        assert self._http is not None
        running: asyncio.Task[None] | None = None
        if self.bridge is not None and row.flow_run_id:
            # Mark the run Running beside the request, not before it: the request's timing comes first.
            running = self._background(self._mirror(row.flow_run_id, RUNNING))
        try:
            outcome = await execute_attempt(
                self.store,
                row,
                http=self._http,
                owner=self.worker_id,
                clock=self.clock,
                rand=self.rand,
                record=self._record,
            )
        except asyncio.CancelledError:
            if row.id in self._dropped:
                self._dropped.discard(row.id)
                logger.info("task %s was deleted during its attempt; request cancelled", row.id)
                return
            raise
        except Exception:
            logger.exception("attempt of task %s failed unexpectedly; its lease will expire and it is retried", row.id)
            return
        self.performed += 1
        if outcome.row is not None:
            # The slot is free once the attempt is recorded; Prefect hears of it in the background, in order.
            self._background(self._mirror_outcome(outcome, after=running))

    async def _record(self, finish: Finish) -> TaskRow | None:
        return await self._records.submit(None, finish)

    async def _record_batch(self, _: None, finishes: Sequence[Finish]) -> list[TaskRow | Exception | None]:
        return await self.store.finish_attempts(finishes)

    def _background(self, job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(job)
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)
        return task

    async def _mirror(
        self, flow_run_id: str, kind: str, *, message: str | None = None, at_ms: int | None = None
    ) -> None:
        assert self.bridge is not None
        try:
            await self.bridge.set_state(flow_run_id, kind, message=message, at_ms=at_ms)
        except ServiceUnavailable as exc:
            logger.warning("could not set flow run %s %s: %s", flow_run_id, kind, exc)
            raise

    async def _mirror_outcome(self, outcome: AttemptOutcome, *, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            with contextlib.suppress(ServiceUnavailable):
                await after  # Running before the final state
        row = outcome.row
        if self.bridge is None or row is None or not row.flow_run_id or row.prefect_owed is None:
            return
        self.bridge.log(
            row.flow_run_id,
            attempt_line(row, outcome.number, outcome.result, outcome.decision),
            level=logging.INFO if outcome.decision.verdict is not Verdict.FAILED else logging.ERROR,
        )
        await self._deliver(row)
        if outcome.decision.verdict is Verdict.FAILED:
            await self._deliver_owed(min_age_ms=0)  # the dependents this failure cancelled
        elif outcome.decision.verdict is Verdict.COMPLETED:
            self.wake()  # dependents this completion released may be due now

    async def _deliver(self, row: TaskRow) -> None:
        """Send the state a row owes Prefect; remember it for one batched ``settle`` write."""
        assert self.bridge is not None and row.flow_run_id and row.prefect_owed
        owed = row.prefect_owed
        at_ms = row.due_at if owed in (AWAITING_RETRY, SCHEDULED) else None
        message = row.last_error if owed != "COMPLETED" else None
        with contextlib.suppress(ServiceUnavailable):
            await self._mirror(row.flow_run_id, owed, message=message, at_ms=at_ms)
            self._delivered[row.id] = owed

    # -- housekeeping ----------------------------------------------------------------------------------------

    async def _renew_leases(self) -> None:
        ids = list(self._inflight)
        if not ids:
            return
        now = self.clock()
        held = await self.store.renew_leases(owner=self.worker_id, task_ids=ids, lease_until=now + self.lease_ms)
        for task_id in ids:
            if task_id not in held and task_id in self._inflight:
                self._dropped.add(task_id)
                self._inflight[task_id].cancel()

    async def _recover(self) -> None:
        """Take over attempts whose worker died, and re-send Prefect states that did not arrive."""
        now = self.clock()
        for row in await self.store.expired_leases(now=now):
            if row.id in self._inflight:
                continue
            await self._recover_one(row, now)
        # A safety net for chains: release or cancel any waiting task whose dependencies already ended.
        await self.store.recheck_waiting(None, now)
        await self._deliver_owed(min_age_ms=5_000)

    async def _deliver_owed(self, *, min_age_ms: int) -> None:
        """Send Prefect the states rows still owe it (older than ``min_age_ms``: the usual path had its chance)."""
        if self.bridge is None:
            return
        now = self.clock()
        for row in await self.store.owed_to_prefect():
            if row.lease_owner is None and row.flow_run_id and row.updated_at <= now - min_age_ms:
                await self._deliver(row)

    async def _recover_one(self, row: TaskRow, now: int) -> None:
        number = row.attempts
        error = f"the worker performing attempt {number} stopped before it finished ({row.lease_owner})"
        decision = decide(
            RetryPolicy.model_validate(row.retry_policy),
            attempt=number,
            retries=row.retries,
            error=error,
            now=datetime.fromtimestamp(now / 1000, tz=UTC),
            rand=self.rand,
        )
        attempt = AttemptRow(
            task_id=row.id,
            generation=row.generation,
            number=number,
            started_at=row.attempt_started_at or now,
            finished_at=now,
            status=None,
            error=error,
            duration_ms=None,
        )
        recovered = await self.store.finish_attempt(
            task_id=row.id,
            owner=row.lease_owner or "",
            attempt=attempt,
            values=outcome_values(row, decision, now, None),
            expired_before=now,
            events=outcome_events(row, attempt, decision, now),
        )
        if recovered is not None:
            logger.warning("took over task %s from a dead worker: %s", row.id, decision.reason)
            if self.bridge is not None and recovered.flow_run_id:
                self.bridge.log(
                    recovered.flow_run_id,
                    f"attempt {number}: {error}; {decision.reason}",
                    level=logging.WARNING,
                )
                await self._deliver(recovered)
            self.wake()

    async def _flush(self) -> None:
        if self.bridge is not None:
            with contextlib.suppress(ServiceUnavailable):
                await self.bridge.flush_logs()
        if self._delivered:
            delivered, self._delivered = self._delivered, {}
            await self.store.settle_prefect(delivered)

    async def _shutdown(self) -> None:
        if not self._inflight:
            return
        logger.info("waiting up to %.0f s for %d running attempts", self.shutdown_grace, len(self._inflight))
        _, pending = await asyncio.wait(list(self._inflight.values()), timeout=self.shutdown_grace)
        if not pending:
            return
        attempts = dict(self._attempt_of)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        now = self.clock()
        for task_id, number in attempts.items():
            if await self.store.release(task_id=task_id, owner=self.worker_id, attempts=number, due_at=now):
                logger.info("gave task %s back unperformed", task_id)
