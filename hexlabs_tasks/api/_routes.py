"""The HTTP routes: REST under ``/api/tasks`` and the seed-compatible ``POST /api/hexlabs``.

Both are thin: they parse, call the one :class:`TaskService`, and shape the answer. Neither holds a rule.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from hexlabs_tasks._exceptions import TaskValidationError
from hexlabs_tasks._models import Attempt, Task, TaskCreate, TaskPage, TaskStatus
from hexlabs_tasks._service import TaskService
from hexlabs_tasks.api._auth import require_token

__all__ = ["health_router", "seed_router", "tasks_router"]

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text}
    for code, text in (
        (401, "unauthorized"),
        (404, "not_found"),
        (409, "conflict"),
        (413, "payload_too_large"),
        (422, "validation_error"),
        (503, "service_unavailable"),
    )
}


def service_of(request: Request) -> TaskService:
    service: TaskService = request.app.state.service
    return service


Service = Annotated[TaskService, Depends(service_of)]

tasks_router = APIRouter(prefix="/api/tasks", tags=["tasks"], dependencies=[Depends(require_token)], responses=_ERRORS)
seed_router = APIRouter(
    prefix="/api", tags=["seed-compatible"], dependencies=[Depends(require_token)], responses=_ERRORS
)
health_router = APIRouter(tags=["health"])


def _json(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status)


def _page(page: TaskPage) -> dict[str, Any]:
    return {"data": [t.to_wire() for t in page.data], "nextCursor": page.next_cursor}


@tasks_router.post("", status_code=201, response_model=Task, summary="Create a task")
async def create_task(
    service: Service, task: Annotated[TaskCreate, Body()], idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """Store a task and schedule its flow run at ``performAt``. A replayed ``Idempotency-Key`` answers 200."""
    created, new = await service.create(task, idempotency_key=idempotency_key)
    return _json(created.to_wire(), 201 if new else 200)


@tasks_router.post("/chain", status_code=201, summary="Create tasks that run one after another")
async def create_chain(
    service: Service,
    body: Annotated[
        dict[str, Any],
        Body(
            openapi_examples={
                "two steps": {
                    "value": {
                        "tasks": [
                            {"request": {"url": "https://example.com/a", "method": "post"}, "performAt": 0},
                            {"request": {"url": "https://example.com/b", "method": "post"}, "performAt": 0},
                        ]
                    }
                }
            }
        ),
    ],
) -> JSONResponse:
    """``{"tasks": [task, ...]}``: each task depends on the one before. All are created, or none."""
    unknown = sorted(set(body) - {"tasks"})
    if unknown:
        raise TaskValidationError(
            f"unknown fields: {', '.join(unknown)}", details=[{"field": f, "message": "unknown field"} for f in unknown]
        )
    created = await service.chain(body.get("tasks"))
    return _json({"data": [t.to_wire() for t in created]}, 201)


@tasks_router.get("", response_model=TaskPage, summary="List tasks, oldest performAt first")
async def list_tasks(
    service: Service,
    status: TaskStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> JSONResponse:
    return _json(_page(await service.list(status=status.value if status else None, limit=limit, cursor=cursor)))


@tasks_router.get("/{task_id}", response_model=Task, summary="Read a task")
async def read_task(service: Service, task_id: str) -> JSONResponse:
    return _json((await service.read(task_id)).to_wire())


@tasks_router.patch("/{task_id}", response_model=Task, summary="Update a pending task, or queue a finished one again")
async def update_task(
    service: Service,
    task_id: str,
    patch: Annotated[
        dict[str, Any],
        Body(
            openapi_examples={
                "move": {"value": {"performAt": 1764770000000}},
                "requeue": {"value": {"status": "pending"}},
            }
        ),
    ],
) -> JSONResponse:
    return _json((await service.update(task_id, patch)).to_wire())


@tasks_router.delete("/{task_id}", status_code=204, summary="Delete a task (cancels its flow run)")
async def delete_task(service: Service, task_id: str) -> Response:
    await service.delete(task_id)
    return Response(status_code=204)


@tasks_router.get("/{task_id}/attempts", summary="Every attempt of a task, oldest first")
async def task_attempts(service: Service, task_id: str) -> JSONResponse:
    attempts: list[Attempt] = await service.attempts(task_id)
    return _json({"data": [a.to_wire() for a in attempts]})


_ACTIONS = ("create", "read", "update", "delete", "list", "chain")


def _bad(field: str, message: str) -> TaskValidationError:
    return TaskValidationError(f"{field}: {message}", details=[{"field": field, "message": message}])


@seed_router.post(
    "/hexlabs",
    summary="The seed-compatible endpoint of the JavaScript $tasks SDK",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["action"],
                        "properties": {
                            "service": {"type": "string", "enum": ["tasks"]},
                            "action": {"type": "string", "enum": list(_ACTIONS)},
                            "id": {"type": "string"},
                            "data": {"type": "object"},
                        },
                    }
                }
            },
        }
    },
)
async def seed(
    request: Request,
    service: Service,
    idempotency_key: IdempotencyKey = None,
    service_name: Annotated[str | None, Query(alias="service")] = None,
) -> Response:
    """``{"action": "create" | "read" | "update" | "delete" | "list", "id"?, "data"?}`` in ``service=tasks``."""
    try:
        body = json.loads(await request.body() or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad("body", f"is not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise _bad("body", "must be a JSON object")
    name = service_name if service_name is not None else body.get("service")
    if name != "tasks":
        raise _bad("service", f"unknown service {name!r}; this server has 'tasks'" if name else "is required (tasks)")
    action = body.get("action")
    if action not in _ACTIONS:
        raise _bad("action", f"unknown action {action!r}; one of {', '.join(_ACTIONS)}")
    unknown = sorted(set(body) - {"service", "action", "id", "data"})
    if unknown:
        raise TaskValidationError(
            f"unknown fields: {', '.join(unknown)}",
            details=[{"field": f, "message": "unknown field"} for f in unknown],
        )
    data = body.get("data")
    task_id = body.get("id")
    if action in ("read", "update", "delete") and (not isinstance(task_id, str) or not task_id):
        raise _bad("id", "is required and must be a string")
    task_id = str(task_id)

    if action == "create":
        created, new = await service.create(_object(data), idempotency_key=idempotency_key)
        return _json({"data": created.to_wire()}, 201 if new else 200)
    if action == "chain":
        chain = _object(data)
        extra = sorted(set(chain) - {"tasks"})
        if extra:
            raise TaskValidationError(
                f"unknown chain fields: {', '.join(extra)}",
                details=[{"field": f"data.{f}", "message": "unknown field"} for f in extra],
            )
        return _json({"data": [t.to_wire() for t in await service.chain(chain.get("tasks"))]}, 201)
    if action == "read":
        return _json({"data": (await service.read(task_id)).to_wire()})
    if action == "update":
        return _json({"data": (await service.update(task_id, _object(data))).to_wire()})
    if action == "delete":
        await service.delete(task_id)
        return _json({"data": {"id": task_id, "deleted": True}})
    query = _object(data if data is not None else {})
    extra = sorted(set(query) - {"status", "limit", "cursor"})
    if extra:
        raise TaskValidationError(
            f"unknown list fields: {', '.join(extra)}",
            details=[{"field": f"data.{f}", "message": "unknown field"} for f in extra],
        )
    limit = query.get("limit", 100)
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise _bad("data.limit", "must be an integer between 1 and 1000")
    status, cursor = query.get("status"), query.get("cursor")
    if status is not None and not isinstance(status, str):
        raise _bad("data.status", "must be a string")
    if cursor is not None and not isinstance(cursor, str):
        raise _bad("data.cursor", "must be a string")
    return _json(_page(await service.list(status=status, limit=limit, cursor=cursor)))


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _bad("data", "is required and must be a JSON object")
    return data


@health_router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
