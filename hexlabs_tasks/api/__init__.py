"""The HTTP API: a FastAPI app factory over the service layer."""

from __future__ import annotations

from hexlabs_tasks.api._app import create_app

__all__ = ["create_app"]
