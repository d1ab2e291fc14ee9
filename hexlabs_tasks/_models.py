"""The task on the wire: pydantic models in camelCase JSON with snake_case attributes.

``TaskCreate`` and ``TaskUpdate`` are what callers send; ``Task`` is what they read back, every default filled in.
Every rule of the contract's field tables is enforced here, so the API, the SDK and the CLI share one definition.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic.alias_generators import to_camel

__all__ = [
    "DEFAULT_RETRY_ON",
    "FINAL_STATUSES",
    "Attempt",
    "Backoff",
    "HttpMethod",
    "LastResponse",
    "RequestSpec",
    "RetryPolicy",
    "Task",
    "TaskCreate",
    "TaskPage",
    "TaskStatus",
    "TaskUpdate",
    "to_unix_ms",
]

DEFAULT_RETRY_ON: tuple[int, ...] = (408, 425, 429, 500, 502, 503, 504)
MAX_PERFORM_AT_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class TaskStatus(StrEnum):
    """Where a task is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class HttpMethod(StrEnum):
    """The HTTP methods a task may use; stored lowercase."""

    GET = "get"
    POST = "post"
    PUT = "put"
    DELETE = "delete"
    PATCH = "patch"
    HEAD = "head"
    OPTIONS = "options"


class Backoff(StrEnum):
    """How the delay between attempts grows."""

    EXPONENTIAL = "exponential"
    LINEAR = "linear"
    FIXED = "fixed"


def to_unix_ms(value: datetime) -> int:
    """Unix milliseconds of a timezone-aware datetime.

    Raises:
        ValueError: the datetime is naive, so the instant it names is ambiguous.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a datetime must be timezone-aware (for example datetime.now(timezone.utc))")
    return math.floor(value.timestamp() * 1000)


def _unix_ms(value: Any) -> Any:
    """Accept Unix ms as an integer (or an integral float, as JavaScript may send) or an aware datetime."""
    if isinstance(value, datetime):
        return to_unix_ms(value)
    if isinstance(value, bool):
        raise ValueError("must be Unix time in milliseconds, not a boolean")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number of milliseconds")
        return int(value)
    return value


UnixMs = Annotated[StrictInt, Field(ge=0, le=MAX_PERFORM_AT_MS)]
PerformAt = Annotated[UnixMs, BeforeValidator(_unix_ms)]
Dependencies = Annotated[list[StrictStr], AfterValidator(lambda ids: list(dict.fromkeys(ids))), Field(max_length=1000)]
Retries = Annotated[StrictInt, Field(ge=0, le=100)]
ParamValue = StrictBool | StrictInt | StrictFloat | StrictStr
Number = StrictFloat  # JSON numbers only (ints accepted): no "5" strings, no booleans


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in Python; both accepted on input."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",
        use_enum_values=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready camelCase dict of this model."""
        return self.model_dump(mode="json", by_alias=True)


class RequestSpec(_Wire):
    """The HTTP request a task performs."""

    url: StrictStr = Field(description="Absolute http or https URL.", max_length=8192)
    method: HttpMethod = Field(description="get, post, put, delete, patch, head or options; any case.")
    headers: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    params: dict[StrictStr, ParamValue] = Field(
        default_factory=dict, description="Added to the query string; booleans as true / false."
    )
    body: JsonValue = Field(
        default=None,
        description="Objects and arrays are sent as JSON, strings as they are; not sent for get and head.",
    )
    timeout: Number = Field(default=30.0, gt=0, le=900, description="Seconds for one attempt.")

    @field_validator("url")
    @classmethod
    def _absolute_http_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"is not a valid URL: {exc}") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http or https URL")
        if any(ch in value for ch in "\r\n\t "):
            raise ValueError("must not contain whitespace")
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _lowercase_method(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP token")
            if "\r" in header_value or "\n" in header_value or "\0" in header_value:
                raise ValueError(f"header {name!r} has a line break or NUL in its value")
        return value

    @field_validator("params")
    @classmethod
    def _finite_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, param in value.items():
            if isinstance(param, float) and not math.isfinite(param):
                raise ValueError(f"param {name!r} must be a finite number")
        return value


class RetryPolicy(_Wire):
    """When and how soon a failed attempt is tried again."""

    backoff: Backoff = Backoff.EXPONENTIAL
    initial_delay: Number = Field(default=1.0, ge=0, le=86_400, description="Seconds before the first retry.")
    max_delay: Number = Field(default=3600, ge=0, le=30 * 86_400, description="Cap on any delay, seconds.")
    multiplier: Number = Field(default=2.0, ge=1, le=100, description="Growth factor for exponential backoff.")
    jitter: Number = Field(default=0.1, ge=0, le=1, description="Spread each delay by ± this fraction.")
    retry_on: list[Annotated[StrictInt, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_ON),
        description="Response statuses that are retried; any other non-2xx fails the task at once.",
    )


class TaskCreate(_Wire):
    """What a caller sends to create a task."""

    request: RequestSpec
    perform_at: PerformAt = Field(description="Unix ms; a time in the past means as soon as possible.")
    retries: Retries = 3
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    depends_on: Dependencies = Field(default_factory=list)
    status: Literal["pending"] = "pending"


class TaskUpdate(_Wire):
    """A partial create body: the top-level fields given replace the stored ones.

    ``status`` may only be ``"pending"``: on a failed, completed or cancelled task it queues the task again.
    """

    request: RequestSpec | None = None
    perform_at: PerformAt | None = None
    retries: Retries | None = None
    retry_policy: RetryPolicy | None = None
    depends_on: Dependencies | None = None
    status: Literal["pending"] | None = None

    @field_validator("request", "perform_at", "retries", "retry_policy", "depends_on", "status", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may be left out, but not null")
        return value


class LastResponse(_Wire):
    """The response of the last attempt that got one."""

    model_config = ConfigDict(extra="ignore")

    status: int
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = ""
    duration_ms: int = 0


class Task(_Wire):
    """A task as read back: every input field with its default, plus what the system tracks."""

    model_config = ConfigDict(extra="ignore")

    id: str
    request: RequestSpec
    perform_at: int
    retries: int
    retry_policy: RetryPolicy
    depends_on: list[str] = Field(default_factory=list)
    status: TaskStatus
    attempts: int = 0
    last_response: LastResponse | None = None
    last_error: str | None = None
    next_attempt_at: int | None = None
    flow_run_id: str | None = None
    created_at: int
    updated_at: int
    completed_at: int | None = None

    @property
    def is_final(self) -> bool:
        """True once the task is completed, failed or cancelled."""
        return self.status in FINAL_STATUSES


class Attempt(_Wire):
    """One attempt of a task, as ``GET /api/tasks/{id}/attempts`` lists it."""

    model_config = ConfigDict(extra="ignore")

    number: int
    started_at: int
    finished_at: int | None
    status: int | None = Field(description="The HTTP status; null when no response came.")
    error: str | None
    duration_ms: int | None


class TaskPage(_Wire):
    """One page of a listing."""

    model_config = ConfigDict(extra="ignore")

    data: list[Task]
    next_cursor: str | None = None
