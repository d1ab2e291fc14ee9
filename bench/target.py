"""The HTTP target every system sends its requests to: a raw ASGI app served by uvicorn in its own process.

It records, per path, the arrival time (Unix ms, float) of every request, in memory, and answers 200, or 503 for
the attempts a path's fail rule says should fail. The driver reads the records over HTTP::

    GET  /_arrivals?prefix=/b/run1/   -> {"/b/run1/0": [t1, t2], ...}   arrival times per path
    POST /_config  {"prefix": "/r/", "fail_rate": 0.5, "seed": "x"}     fail rule for paths under a prefix
    GET  /_health

Which attempts fail is a pure function of (seed, path, attempt number) (:func:`fails`), so the driver knows the
exact attempt count each task must end with. Pitfalls avoided (PREFECT_NOTES): a real ASGI server (no listen
backlog of 5, no Nagle stalls), its own process (the driver's CPU does not delay arrivals), a big backlog.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from typing import Any

__all__ = ["expected_attempts", "fails", "main"]


def fails(seed: str, path: str, attempt: int, fail_rate: float) -> bool:
    """Whether attempt ``attempt`` (1-based) of ``path`` fails under a rule (deterministic, ~fail_rate of them)."""
    digest = hashlib.blake2b(f"{seed}|{path}|{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fail_rate


def expected_attempts(seed: str, path: str, fail_rate: float, max_attempts: int) -> int:
    """How many attempts a task on ``path`` makes: up to and including its first success, at most ``max_attempts``."""
    for attempt in range(1, max_attempts + 1):
        if not fails(seed, path, attempt, fail_rate):
            return attempt
    return max_attempts


class Recorder:
    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = {}
        self.rules: list[tuple[str, float, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        now = time.time() * 1000
        path: str = scope["path"]
        if path.startswith("/_"):
            await self._control(scope, path, body, send)
            return
        times = self.arrivals.setdefault(path, [])
        times.append(now)
        status = 200
        for prefix, rate, seed in self.rules:
            if path.startswith(prefix) and fails(seed, path, len(times), rate):
                status = 503
                break
        await _reply(send, status, b"ok" if status == 200 else b"try again")

    async def _control(self, scope: dict[str, Any], path: str, body: bytes, send: Any) -> None:
        if path == "/_health":
            await _reply(send, 200, b"ok")
        elif path == "/_arrivals":
            query = scope["query_string"].decode()
            prefix = ""
            for part in query.split("&"):
                if part.startswith("prefix="):
                    from urllib.parse import unquote

                    prefix = unquote(part[len("prefix=") :])
            data = {p: t for p, t in self.arrivals.items() if p.startswith(prefix)}
            await _reply(send, 200, json.dumps(data).encode(), "application/json")
        elif path == "/_config":
            rule = json.loads(body)
            self.rules.append((rule["prefix"], float(rule["fail_rate"]), str(rule.get("seed", ""))))
            await _reply(send, 200, b"ok")
        else:
            await _reply(send, 404, b"no such control path")


async def _reply(send: Any, status: int, body: bytes, content_type: str = "text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


app = Recorder()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="the benchmark's HTTP target")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
        lifespan="off",
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
