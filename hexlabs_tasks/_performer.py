"""Performs one attempt of a task's HTTP request with httpx, exactly as the contract describes it.

Params go on the query string (booleans as ``true`` / ``false``, as JavaScript sends them); object and array
bodies are sent as JSON, strings as they are, nothing for get and head; one attempt is bounded by the task's
timeout as a whole (connect, send, wait and read); redirects are not followed. The response body is read only up
to the excerpt limit, so a huge answer costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from hexlabs_tasks import __version__
from hexlabs_tasks._models import HttpMethod, RequestSpec

__all__ = ["BODY_EXCERPT_LIMIT", "AttemptResult", "build_request", "new_http_client", "perform"]

BODY_EXCERPT_LIMIT = 64 * 1024
USER_AGENT = f"hexlabs-tasks/{__version__}"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt got: a response (status, headers, body excerpt) or an error in words."""

    status: int | None
    duration_ms: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    error: str | None = None

    @property
    def retry_after(self) -> str | None:
        """The response's ``Retry-After`` header, if any."""
        for name, value in self.headers.items():
            if name.lower() == "retry-after":
                return value
        return None

    def last_response(self) -> dict[str, Any] | None:
        """The task's ``lastResponse`` for this attempt (None when no response came)."""
        if self.status is None:
            return None
        return {
            "status": self.status,
            "headers": self.headers,
            "body": self.body,
            "durationMs": self.duration_ms,
        }


def new_http_client(*, max_connections: int = 100) -> httpx.AsyncClient:
    """One client per worker: its connection pool is reused by every attempt (a new client costs ~30 ms)."""
    return httpx.AsyncClient(
        follow_redirects=False,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
    )


def _param_text(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # as JavaScript's String(2.0) gives "2"
    return str(value)


def build_request(client: httpx.AsyncClient, spec: RequestSpec) -> httpx.Request:
    """The httpx request a task's spec describes."""
    headers = dict(spec.headers)
    has_content_type = any(name.lower() == "content-type" for name in headers)
    content: bytes | None = None
    if spec.body is not None and spec.method not in (HttpMethod.GET, HttpMethod.HEAD):
        if isinstance(spec.body, str):
            content = spec.body.encode()
            if not has_content_type:
                headers["Content-Type"] = "text/plain; charset=utf-8"
        else:
            content = json.dumps(spec.body, separators=(",", ":"), ensure_ascii=False).encode()
            if not has_content_type:
                headers["Content-Type"] = "application/json"
    url = httpx.URL(spec.url)
    if spec.params:  # merged with any query the URL already has, not replacing it
        url = url.copy_merge_params({name: _param_text(value) for name, value in spec.params.items()})
    return client.build_request(
        spec.method.value.upper(),
        url,
        headers=headers,
        content=content,
        timeout=httpx.Timeout(spec.timeout),
    )


def _joined_headers(headers: httpx.Headers) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in headers.multi_items():
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined


async def _read_excerpt(response: httpx.Response) -> str:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():  # decompressed; stop once the excerpt is full
        chunks.append(chunk)
        size += len(chunk)
        if size >= BODY_EXCERPT_LIMIT:
            break
    raw = b"".join(chunks)[:BODY_EXCERPT_LIMIT]
    return raw.decode(response.encoding or "utf-8", errors="replace")


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return f"timed out after {timeout:g} s ({type(exc).__name__})"
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return f"could not connect: {detail}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server broke the HTTP exchange: {detail}"
    return f"{type(exc).__name__}: {detail}"


async def perform(client: httpx.AsyncClient, spec: RequestSpec) -> AttemptResult:
    """Send the request once and describe what came back; never raises for network errors or timeouts."""
    started = time.perf_counter()
    try:
        request = build_request(client, spec)
        async with asyncio.timeout(spec.timeout):
            response = await client.send(request, stream=True)
            try:
                body = await _read_excerpt(response)
            finally:
                await response.aclose()
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        return AttemptResult(
            status=None,
            duration_ms=round((time.perf_counter() - started) * 1000),
            error=_describe(exc, spec.timeout),
        )
    return AttemptResult(
        status=response.status_code,
        duration_ms=round((time.perf_counter() - started) * 1000),
        headers=_joined_headers(response.headers),
        body=body,
    )
