"""The Prefect bridge: the one module that talks to Prefect.

Everything else speaks in tasks; this module turns that into flow runs of the one deployment: it registers the
deployment, creates one scheduled flow run per task (named after the task, tagged ``hexlabs-tasks``, the task id
its only parameter), moves and cancels runs, mirrors each attempt into the run's states and log lines, and reads
runs back. Prefect errors are translated to :class:`ServiceUnavailable` here.

The number of API writes is kept at the floor (see PREFECT_NOTES): create, Running, and the final state per
attempt cycle, with log lines batched into one call per flush. Under load the writes are also batched: creates that
arrive together go out as one ``create_flow_run/bulk`` call (one server transaction for up to 100 runs: half the
server CPU per run, a third of the time on SQLite), and Running, Completed, Failed and Cancelled states as
``bulk_set_state`` calls of up to 50 runs. A lone call is sent at once (see :mod:`hexlabs_tasks._batching`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import LogCreate
from prefect.client.schemas.objects import FlowRun, State
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import AwaitingRetry, Cancelled, Completed, Failed, Running, Scheduled, to_state_create

from hexlabs_tasks._batching import Batcher
from hexlabs_tasks._exceptions import ServiceUnavailable
from hexlabs_tasks.deployments import DEPLOYMENT_NAME, DESCRIPTION, ENTRYPOINT, FLOW_NAME, TAG

__all__ = ["PrefectBridge", "RunState", "chain_tags", "resolve_prefect_api_url"]

logger = logging.getLogger("hexlabs_tasks.prefect")
T = TypeVar("T")

# The states the bridge sets, by the name the store records in ``prefect_owed``.
RunState = str
RUNNING, COMPLETED, FAILED, CANCELLED, AWAITING_RETRY, SCHEDULED = (
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "AWAITING_RETRY",
    "SCHEDULED",
)
# States that carry nothing per run but a message: many runs can be moved to one in a single call.
_BULK_STATES = frozenset({RUNNING, COMPLETED, FAILED, CANCELLED})
BULK_CREATE_LIMIT = 100  # the server's limit for create_flow_run/bulk
BULK_STATE_LIMIT = 50  # the server's limit for bulk_set_state
_PARAMETER_SCHEMA = {
    "title": "Parameters",
    "type": "object",
    "properties": {"task_id": {"title": "task_id", "type": "string", "position": 0}},
    "required": ["task_id"],
}


def resolve_prefect_api_url(configured: str | None, prefect_port: int) -> str:
    """The Prefect API to use: the configured one, else ``PREFECT_API_URL``, else the local server's."""
    if configured:
        return configured
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or f"http://127.0.0.1:{prefect_port}/api"


def chain_tags(chain_id: str | None, step: int) -> list[str]:
    """The Prefect tags of a task in a chain: ``chain:<first task id>`` and ``chain-step:<n>`` (1-based)."""
    return [] if chain_id is None else [f"chain:{chain_id}", f"chain-step:{step}"]


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _missing_endpoint(exc: ServiceUnavailable) -> bool:
    """Whether a call failed because the server does not have that endpoint (an older Prefect).

    A missing route answers 404 "Not Found" (or 405); a missing deployment answers 404 with its own words.
    """
    cause = exc.__cause__
    if not isinstance(cause, PrefectHTTPStatusError):
        return False
    status = cause.response.status_code
    if status == 405:
        return True
    with contextlib.suppress(ValueError, AttributeError):
        return status == 404 and cause.response.json().get("detail") == "Not Found"
    return False


async def _done(value: T) -> T:
    return value


def _state(kind: RunState, *, message: str | None = None, at_ms: int | None = None) -> State[Any]:
    if kind == RUNNING:
        return Running(message=message)
    if kind == COMPLETED:
        return Completed(message=message)
    if kind == FAILED:
        return Failed(message=message)
    if kind == CANCELLED:
        return Cancelled(message=message)
    when = _at(at_ms) if at_ms is not None else datetime.now(UTC)
    if kind == AWAITING_RETRY:
        return AwaitingRetry(scheduled_time=when, message=message)
    if kind == SCHEDULED:
        return Scheduled(scheduled_time=when, message=message)
    raise ValueError(f"unknown run state {kind!r}")


class PrefectBridge:
    """One Prefect API client, shared by everything in a process.

    Args:
        api_url: the Prefect API, for example ``http://127.0.0.1:4200/api``.
        concurrency: Prefect API calls in flight at once; more only queues inside the server.
    """

    bulk_create_path = "/deployments/{id}/create_flow_run/bulk"
    bulk_state_path = "/flow_runs/bulk_set_state"

    def __init__(self, api_url: str, *, concurrency: int = 8) -> None:
        self.api_url = api_url
        self._client: PrefectClient | None = None
        self._limit = asyncio.Semaphore(concurrency)
        self._deployment_id: UUID | None = None
        self._logs: list[LogCreate] = []
        self._creates: Batcher[UUID, dict[str, Any], str] = Batcher(
            self._create_batch, max_size=BULK_CREATE_LIMIT, max_inflight=2
        )
        self._states: Batcher[tuple[RunState, str | None], str, bool] = Batcher(
            self._state_batch, max_size=BULK_STATE_LIMIT, max_inflight=2
        )
        self._bulk = True  # the server has the bulk endpoints (Prefect 3.5 and later); False after a 404

    async def __aenter__(self) -> PrefectBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the client's connection pool."""
        if self._client is None:
            client = PrefectClient(self.api_url, httpx_settings={"timeout": httpx.Timeout(30.0)})
            await client.__aenter__()
            self._client = client

    async def close(self) -> None:
        """Send buffered log lines and close the client."""
        if self._client is not None:
            try:
                await self.flush_logs()
            except ServiceUnavailable as exc:
                logger.warning("dropping %d Prefect log lines: %s", len(self._logs), exc)
            await self._client.__aexit__(None, None, None)
            self._client = None

    @property
    def client(self) -> PrefectClient:
        if self._client is None:
            raise RuntimeError("PrefectBridge.start() has not been called")
        return self._client

    async def _call(self, what: str, make: Callable[[], Any]) -> Any:
        async with self._limit:
            try:
                return await make()
            except ObjectNotFound:
                raise
            except (httpx.HTTPError, PrefectHTTPStatusError, OSError) as exc:
                raise ServiceUnavailable(f"Prefect API at {self.api_url} failed to {what}: {exc}") from exc

    # -- deployment and runs ---------------------------------------------------------------------------------

    async def healthy(self) -> bool:
        """Whether the Prefect API answers its health check."""
        try:
            response = await self.client._client.get("/health")
            return response.status_code == 200
        except (httpx.HTTPError, OSError):
            return False

    async def ensure_deployment(self) -> UUID:
        """Find the deployment, or register the flow and the deployment if there is none, and return its id.

        An existing deployment is left as it is: it may have been attached to a work pool with
        ``prefect deploy`` (deployments/prefect.yaml) for stock Prefect workers, and re-registering would detach it.
        """
        if self._deployment_id is None:
            try:
                found = await self._call(
                    "read the deployment",
                    lambda: self.client.read_deployment_by_name(f"{FLOW_NAME}/{DEPLOYMENT_NAME}"),
                )
                self._deployment_id = found.id
            except ObjectNotFound:
                flow_id = await self._call("register the flow", lambda: self.client.create_flow_from_name(FLOW_NAME))
                self._deployment_id = await self._call(
                    "register the deployment",
                    lambda: self.client.create_deployment(
                        flow_id=flow_id,
                        name=DEPLOYMENT_NAME,
                        entrypoint=ENTRYPOINT,
                        description=DESCRIPTION,
                        tags=[TAG],
                        parameter_openapi_schema=_PARAMETER_SCHEMA,
                        enforce_parameter_schema=False,
                    ),
                )
        return self._deployment_id

    async def create_run(self, task_id: str, *, generation: int, at_ms: int, tags: Sequence[str] = ()) -> str:
        """Create the task's flow run, scheduled at ``at_ms``; the same (task, generation) gives the same run.

        ``tags`` are added to ``hexlabs-tasks`` (a chain's tags, so its runs can be found together and in order).
        Concurrent calls are sent together as one bulk create.
        """
        deployment_id = await self.ensure_deployment()
        run = {
            "name": task_id,
            "parameters": {"task_id": task_id},
            "state": to_state_create(Scheduled(scheduled_time=_at(at_ms))).model_dump(mode="json", exclude_unset=True),
            "tags": [TAG, *tags],
            "idempotency_key": f"hexlabs-tasks:{task_id}:{generation}",
        }
        return await self._creates.submit(deployment_id, run)

    async def _create_batch(self, deployment_id: UUID, runs: Sequence[dict[str, Any]]) -> list[str | BaseException]:
        results = await self._bulk_post("create flow runs", self.bulk_create_path.format(id=deployment_id), runs)
        if results is None:
            results = [{} for _ in runs]
        # A run the bulk call did not create (on SQLite: "database is locked", which the bulk endpoint reports per
        # run instead of answering 503 as the single one does) is created again alone, where the client retries.
        # The idempotency key makes a second creation of the same run impossible.
        return list(
            await asyncio.gather(
                *(
                    _done(str(result["flow_run_id"]))
                    if result.get("status") == "CREATED" and result.get("flow_run_id")
                    else self._create_one(deployment_id, run)
                    for run, result in zip(runs, results, strict=True)
                ),
                return_exceptions=True,
            )
        )

    async def _bulk_post(self, what: str, path: str, body: Any) -> list[dict[str, Any]] | None:
        """POST to a bulk endpoint and return its results; None if the server has no bulk endpoints (then or before)."""
        if not self._bulk:
            return None
        try:
            response = await self._call(what, lambda: self.client._client.post(path, json=body))
        except ServiceUnavailable as exc:
            if not _missing_endpoint(exc):
                raise
            self._bulk = False
            logger.info("this Prefect server has no bulk endpoints; sending one call per flow run")
            return None
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    async def _create_one(self, deployment_id: UUID, run: dict[str, Any]) -> str:
        created: FlowRun = await self._call(
            "create a flow run",
            lambda: self.client.create_flow_run_from_deployment(
                deployment_id,
                parameters=run["parameters"],
                state=State.model_validate(run["state"]),
                name=run["name"],
                tags=run["tags"],
                idempotency_key=run["idempotency_key"],
            ),
        )
        return str(created.id)

    async def set_state(
        self, flow_run_id: str, kind: RunState, *, message: str | None = None, at_ms: int | None = None
    ) -> None:
        """Move a run to a state, forced: the task store has already decided, Prefect records it.

        Concurrent moves to the same state and message are sent together as one bulk call.
        """
        if kind in _BULK_STATES and self._bulk:
            if not await self._states.submit((kind, message), flow_run_id):
                logger.warning("flow run %s is gone from Prefect; not setting %s", flow_run_id, kind)
            return
        await self._set_one(flow_run_id, kind, message=message, at_ms=at_ms)

    async def _set_one(
        self, flow_run_id: str, kind: RunState, *, message: str | None = None, at_ms: int | None = None
    ) -> bool:
        state = _state(kind, message=message, at_ms=at_ms)
        try:
            await self._call(
                f"set a flow run {kind.lower()}",
                lambda: self.client.set_flow_run_state(UUID(flow_run_id), state, force=True),
            )
        except ObjectNotFound:
            logger.warning("flow run %s is gone from Prefect; not setting %s", flow_run_id, kind)
            return False
        return True

    async def _state_batch(
        self, key: tuple[RunState, str | None], flow_run_ids: Sequence[str]
    ) -> list[bool | BaseException]:
        """Set one state on many runs; per run, whether Prefect had it."""
        kind, message = key
        body = {
            "flow_runs": {"id": {"any_": list(flow_run_ids)}},
            "state": to_state_create(_state(kind, message=message)).model_dump(mode="json", exclude_unset=True),
            "force": True,
            "limit": BULK_STATE_LIMIT,
        }
        results = await self._bulk_post(f"set flow runs {kind.lower()}", self.bulk_state_path, body)
        by_run = {str(r["flow_run_id"]): r for r in results or ()}

        def one(run_id: str) -> Awaitable[bool]:
            if results is not None:
                result = by_run.get(run_id)
                if result is None:
                    return _done(False)  # missing from a bulk answer: Prefect has no such run
                if result.get("status") == "ACCEPT":
                    return _done(True)
            # Not moved by the bulk call (a lock on SQLite is reported per run, not answered 503 as the single
            # call does, which the client retries): moved alone.
            return self._set_one(run_id, kind, message=message)

        return list(await asyncio.gather(*(one(run_id) for run_id in flow_run_ids), return_exceptions=True))

    async def add_tags(self, flow_run_id: str, tags: Sequence[str]) -> None:
        """Add tags to an existing run (a task that became the first of a chain)."""
        run = await self.read_run(flow_run_id)
        merged = list(dict.fromkeys([*run.tags, *tags]))
        await self._call("tag a flow run", lambda: self.client.update_flow_run(UUID(flow_run_id), tags=merged))

    async def delete_run(self, flow_run_id: str) -> None:
        """Remove a run (used to undo a creation whose task could not be stored)."""
        with contextlib.suppress(ObjectNotFound):
            await self._call("delete a flow run", lambda: self.client.delete_flow_run(UUID(flow_run_id)))

    async def read_run(self, flow_run_id: str) -> FlowRun:
        """The run as Prefect has it."""
        run: FlowRun = await self._call("read a flow run", lambda: self.client.read_flow_run(UUID(flow_run_id)))
        return run

    # -- log lines -------------------------------------------------------------------------------------------

    def log(self, flow_run_id: str, message: str, *, level: int = logging.INFO) -> None:
        """Queue a log line for the run; :meth:`flush_logs` sends the queue in one call."""
        self._logs.append(
            LogCreate(
                name="hexlabs_tasks.worker",
                level=level,
                message=message,
                timestamp=datetime.now(UTC),
                flow_run_id=UUID(flow_run_id),
            )
        )

    async def flush_logs(self) -> int:
        """Send queued log lines in one call; on failure they stay queued (bounded) for the next flush."""
        if not self._logs:
            return 0
        batch, self._logs = self._logs, []
        try:
            await self._call("write log lines", lambda: self.client.create_logs(batch))
        except ServiceUnavailable:
            self._logs = (batch + self._logs)[-10_000:]
            raise
        return len(batch)
