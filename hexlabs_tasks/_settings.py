"""Settings read from the environment (prefix ``HEXLABS_TASKS_``), used at the edges: CLI, server, worker.

Library classes (``Tasks``, ``Store``, ``Worker``...) take explicit keyword arguments instead; only the code that
starts things reads settings.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Everything configurable, each field an environment variable ``HEXLABS_TASKS_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="HEXLABS_TASKS_", extra="ignore")

    home: Path = Field(
        default=Path("~/.hexlabs-tasks"),
        description="Where serve keeps the SQLite database and the local Prefect server's data.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the task store; SQLite under home when unset. "
        "postgresql://user:pass@host/db is accepted and driven with asyncpg.",
    )
    token: SecretStr | None = Field(
        default=None, description="When set, every /api call needs 'Authorization: Bearer <token>'."
    )
    url: str = Field(default="http://127.0.0.1:8000", description="Where the SDK and the CLI find the API.")
    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the API listens on.")
    prefect_port: int = Field(default=4200, ge=1, le=65535, description="Port of the Prefect server serve starts.")
    prefect_api_url: str | None = Field(
        default=None,
        description="Prefect API to use; falls back to PREFECT_API_URL, then to the server serve starts.",
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="Largest accepted request body.")
    worker_concurrency: int = Field(default=100, ge=1, le=10_000, description="Attempts one worker runs at once.")
    poll_interval: float = Field(
        default=0.2, gt=0, le=60, description="Seconds between a worker's looks for due tasks."
    )
    lease_seconds: float = Field(
        default=30.0,
        ge=2,
        le=3600,
        description="A worker's hold on a running attempt; renewed while it runs, so a dead worker's attempts "
        "are taken over after at most this long.",
    )
    shutdown_grace: float = Field(
        default=10.0, ge=0, le=600, description="Seconds a stopping worker lets running attempts finish."
    )
    prefect_concurrency: int = Field(
        default=8, ge=1, le=200, description="Prefect API calls one process makes at once."
    )
    events_window: int = Field(
        default=10_000,
        ge=100,
        le=10_000_000,
        description="How many of the most recent task events the API keeps, so that a client of the live stream "
        "(GET /api/events) that reconnects with Last-Event-ID gets what it missed; older ones are pruned every "
        "minute.",
    )

    @property
    def resolved_home(self) -> Path:
        """``home`` with ``~`` expanded."""
        return self.home.expanduser()

    def resolved_database_url(self) -> str:
        """The task store's URL: the configured one, or SQLite under ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.resolved_home / 'tasks.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment; tests call ``get_settings.cache_clear()``."""
    return Settings()
