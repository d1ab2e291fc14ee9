"""hexlabs-tasks: scheduled HTTP requests with retries, one Prefect flow run per task.

The public surface: the SDK clients (``Tasks``, ``AsyncTasks``, and ``tasks``, a ready client configured from
the environment), the models, and the exception tree. Importing this package does not import Prefect.
"""

from __future__ import annotations

__version__ = "0.1.0"

from hexlabs_tasks._client import AsyncTasks, Tasks
from hexlabs_tasks._events import TaskEvent
from hexlabs_tasks._exceptions import (
    AuthenticationError,
    HexlabsTasksError,
    PayloadTooLarge,
    ServiceUnavailable,
    TaskConflict,
    TaskNotFound,
    TaskValidationError,
    WaitTimeout,
)
from hexlabs_tasks._models import (
    Attempt,
    LastResponse,
    RequestSpec,
    RetryPolicy,
    Task,
    TaskCreate,
    TaskPage,
    TaskStatus,
    TaskUpdate,
)

tasks = Tasks()
"""A ready client configured from ``HEXLABS_TASKS_URL`` and ``HEXLABS_TASKS_TOKEN``: the twin of ``$tasks``."""

__all__ = [
    "AsyncTasks",
    "Attempt",
    "AuthenticationError",
    "HexlabsTasksError",
    "LastResponse",
    "PayloadTooLarge",
    "RequestSpec",
    "RetryPolicy",
    "ServiceUnavailable",
    "Task",
    "TaskConflict",
    "TaskCreate",
    "TaskEvent",
    "TaskNotFound",
    "TaskPage",
    "TaskStatus",
    "TaskUpdate",
    "TaskValidationError",
    "Tasks",
    "WaitTimeout",
    "__version__",
    "tasks",
]
