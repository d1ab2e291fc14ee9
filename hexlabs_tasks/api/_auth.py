"""Bearer-token auth for every ``/api`` call, when a token is configured."""

from __future__ import annotations

import secrets

from fastapi import Request

from hexlabs_tasks._exceptions import AuthenticationError

__all__ = ["require_token"]


async def require_token(request: Request) -> None:
    """Check ``Authorization: Bearer <token>`` against the configured token (a no-op without one)."""
    token: str | None = request.app.state.token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
        raise AuthenticationError("missing or wrong bearer token (Authorization: Bearer <token>)")
