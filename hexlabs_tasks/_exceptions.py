"""The exceptions of hexlabs-tasks, with one root.

    HexlabsTasksError                     every error this package raises
    ├── TaskNotFound (LookupError)        404: no task with that id
    ├── TaskConflict                      409: a running task, or an idempotency key reused with another body
    ├── TaskValidationError (ValueError)  422: the input breaks a rule of the contract; ``details`` name the fields
    ├── PayloadTooLarge (ValueError)      413: the request body is over the limit
    ├── AuthenticationError               401: a token is configured and the call lacks it or has another
    ├── ServiceUnavailable (ConnectionError)
    │                                     503: the service, its database or Prefect cannot be reached
    └── WaitTimeout (TimeoutError)        ``wait()`` ran out of time before the task finished

Lower-level errors (httpx, SQLAlchemy, Prefect) are translated where they cross into this package, with
``raise ... from exc`` so the cause stays visible.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AuthenticationError",
    "HexlabsTasksError",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "TaskConflict",
    "TaskNotFound",
    "TaskValidationError",
    "WaitTimeout",
]


class HexlabsTasksError(Exception):
    """Root of every error raised by hexlabs-tasks.

    Attributes:
        message: what went wrong, in words.
        details: a list of machine-readable details (for validation errors, one per field).
    """

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[dict[str, Any]] = details or []

    def to_dict(self) -> dict[str, Any]:
        """The contract's error body: ``{"error": {"code", "message", "details"}}``."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class TaskNotFound(HexlabsTasksError, LookupError):
    """No task has the given id (or it was deleted)."""

    status_code = 404
    code = "not_found"


class TaskConflict(HexlabsTasksError):
    """The change conflicts with the task's state, or an idempotency key was reused with another body."""

    status_code = 409
    code = "conflict"


class TaskValidationError(HexlabsTasksError, ValueError):
    """The input breaks a rule of the contract; ``details`` name the offending fields."""

    status_code = 422
    code = "validation_error"


class PayloadTooLarge(HexlabsTasksError, ValueError):
    """The request body is larger than the configured limit."""

    status_code = 413
    code = "payload_too_large"


class AuthenticationError(HexlabsTasksError):
    """A token is configured and the call lacks it or carries another."""

    status_code = 401
    code = "unauthorized"


class ServiceUnavailable(HexlabsTasksError, ConnectionError):
    """The service, its database or the Prefect API could not be reached."""

    status_code = 503
    code = "service_unavailable"


class WaitTimeout(HexlabsTasksError, TimeoutError):
    """``wait()`` ran out of time before the task reached a final status."""

    status_code = 504
    code = "timeout"


ERRORS_BY_CODE: dict[str, type[HexlabsTasksError]] = {
    cls.code: cls
    for cls in (
        TaskNotFound,
        TaskConflict,
        TaskValidationError,
        PayloadTooLarge,
        AuthenticationError,
        ServiceUnavailable,
        WaitTimeout,
    )
}
