"""A real HTTP server to perform tasks against: records every request and answers as a test scripts it.

It is uvicorn serving a small hand-written ASGI app on 127.0.0.1, on a free port, in a background thread, so
the code under test meets a real socket, real HTTP parsing and real timing, as a user's webhook would::

    with HttpTarget() as target:
        target.respond("/hook", Reply(503, headers={"Retry-After": "1"}), Reply(200))
        ...  # make something send to target.url_for("/hook")
        first, second = target.wait_for(2, "/hook")

Scripts are per path: successive requests consume the replies in order and the last one repeats forever; an
unscripted path answers 200 ``ok``. ``Reply(hang=True)`` never answers (until the client goes away or the
target stops), ``Reply(delay=...)`` answers late, and :meth:`HttpTarget.respond_fn` computes a reply per
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

import uvicorn

__all__ = ["HttpTarget", "Received", "Reply"]

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]

_POLL = 0.01  # seconds between checks in wait_for / await_for
_TICK = 0.05  # seconds between stop-flag checks while a reply hangs or waits


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the target got it.

    Attributes:
        method: upper-case, as on the wire.
        path: the decoded path, without the query string.
        query: the raw query string (no leading ``?``).
        query_params: the query string parsed, every value a list (blank values kept).
        headers: header names lowercased; repeated headers joined with ", ".
        body: the raw body.
        arrived_at_ms: Unix ms when the body had been fully received.
    """

    method: str
    path: str
    query: str
    query_params: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    arrived_at_ms: int

    def json(self) -> Any:
        """The body parsed as JSON."""
        import json

        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Reply:
    """How the target answers one request.

    Attributes:
        status: the HTTP status.
        headers: response headers (a Content-Length is added unless given).
        body: the response body (a str is sent UTF-8 encoded).
        delay: seconds to wait before answering.
        hang: never answer: wait until the client disconnects or the target stops.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str = b"ok"
    delay: float = 0.0
    hang: bool = False


ReplyFn = Callable[[Received, int], Reply]


class _Script:
    """Replies consumed in order, the last one repeating."""

    def __init__(self, replies: tuple[Reply, ...]) -> None:
        self.replies = replies
        self.used = 0

    def next(self) -> Reply:
        reply = self.replies[min(self.used, len(self.replies) - 1)]
        self.used += 1
        return reply


class HttpTarget:
    """A real HTTP server on 127.0.0.1 that records requests and answers as scripted.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. Thread-safe: tests read and script it
    from their own thread (or event loop) while the server runs in its own.
    """

    def __init__(self, *, stop_timeout: float = 10.0) -> None:
        self._stop_timeout = stop_timeout
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._counts: dict[str, int] = {}
        self._scripts: dict[str, _Script | ReplyFn] = {}
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, *, timeout: float = 10.0) -> HttpTarget:
        """Bind a free port and serve in a background thread; return once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the target is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            interface="asgi3",  # a bound method defeats uvicorn's auto-detection
            proxy_headers=False,
            access_log=False,
            # Bounds stop(): requests still running this long after a stop are cancelled.
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        # uvicorn (0.55) skips signal capture outside the main thread by itself (Server.capture_signals checks
        # threading.main_thread()), so nothing needs switching off for it to run in this thread.
        self._stopping.clear()
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"http-target-{port}", daemon=True
        )
        self._server, self._thread, self._port = server, thread, port
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                self._server = self._thread = None
                sock.close()
                raise RuntimeError("the target's server thread died while starting")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the target did not start within {timeout} s")
            time.sleep(_POLL)
        return self

    def stop(self) -> None:
        """Stop the server and join its thread; hanging and delayed replies are abandoned.

        Raises:
            RuntimeError: the server thread did not end within the stop timeout.
        """
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.should_exit = True
        thread.join(self._stop_timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(self._stop_timeout)
        self._server = self._thread = None
        if thread.is_alive():
            raise RuntimeError(f"the target's server thread did not stop within {2 * self._stop_timeout} s")

    def __enter__(self) -> HttpTarget:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True between start and stop."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        """The port the server listens on."""
        if self._port is None:
            raise RuntimeError("the target has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, path: str) -> str:
        """The absolute URL of ``path`` (which may carry a query string) on this target."""
        return f"{self.url}/{path.lstrip('/')}"

    # -- scripting --------------------------------------------------------------------------------

    def respond(self, path: str, *replies: Reply) -> None:
        """Answer successive requests to ``path`` with ``replies`` in order; the last one repeats forever."""
        if not replies:
            raise ValueError("respond() needs at least one Reply")
        with self._lock:
            self._scripts[path] = _Script(replies)

    def respond_fn(self, path: str, fn: ReplyFn) -> None:
        """Answer each request to ``path`` with ``fn(received, n)``, n the 1-based count of requests to it."""
        with self._lock:
            self._scripts[path] = fn

    def reset(self) -> None:
        """Forget every recorded request and every script."""
        with self._lock:
            self._received.clear()
            self._counts.clear()
            self._scripts.clear()

    # -- inspection -------------------------------------------------------------------------------

    def received(self, path: str | None = None) -> list[Received]:
        """A copy of the requests received so far, oldest first, only those to ``path`` if given."""
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 10.0) -> list[Received]:
        """Block until at least ``count`` requests (to ``path``) arrived; return them all.

        Raises:
            AssertionError: they did not arrive within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            got = self.received(path)
            if len(got) >= count:
                return got
            if time.monotonic() >= deadline:
                raise AssertionError(self._shortfall(count, path, timeout, got))
            time.sleep(_POLL)

    async def await_for(self, count: int, path: str | None = None, timeout: float = 10.0) -> list[Received]:
        """The async twin of :meth:`wait_for`; polls with ``asyncio.sleep``, so the event loop runs on."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.received(path)
            if len(got) >= count:
                return got
            if time.monotonic() >= deadline:
                raise AssertionError(self._shortfall(count, path, timeout, got))
            await asyncio.sleep(_POLL)

    @staticmethod
    def _shortfall(count: int, path: str | None, timeout: float, got: list[Received]) -> str:
        where = f"to {path}" if path is not None else "in all"
        shown = ", ".join(f"{r.method} {r.path}{'?' + r.query if r.query else ''}" for r in got[:20])
        more = f" and {len(got) - 20} more" if len(got) > 20 else ""
        return f"expected at least {count} request(s) {where} within {timeout:g} s, got {len(got)}: [{shown}{more}]"

    # -- the ASGI app ----------------------------------------------------------------------------------------

    async def _app(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        arrived_at_ms = time.time_ns() // 1_000_000
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        query = scope["query_string"].decode("latin-1")
        received = Received(
            method=scope["method"],
            path=scope["path"],
            query=query,
            query_params=parse_qs(query, keep_blank_values=True),
            headers=headers,
            body=b"".join(chunks),
            arrived_at_ms=arrived_at_ms,
        )
        reply, fn = Reply(), None
        with self._lock:
            self._received.append(received)
            n = self._counts[received.path] = self._counts.get(received.path, 0) + 1
            script = self._scripts.get(received.path)
            if isinstance(script, _Script):
                reply = script.next()
            else:
                fn = script
        if fn is not None:
            try:
                reply = fn(received, n)
            except Exception as exc:  # a broken respond_fn should show in the test, not kill the server
                reply = Reply(500, body=f"respond_fn raised {exc!r}")
        await self._answer(reply, receive, send)

    async def _answer(self, reply: Reply, receive: _Receive, send: _Send) -> None:
        if reply.hang or reply.delay > 0:
            outcome = await self._idle(receive, None if reply.hang else reply.delay)
            if outcome == "disconnected":  # nobody left to answer
                return
            if outcome == "stopping":
                await self._send(send, Reply(503, body=b"the target is stopping"))
                return
        await self._send(send, reply)

    async def _idle(self, receive: _Receive, seconds: float | None) -> str:
        """Wait ``seconds`` (forever if None), checking for a stop and for the client going away.

        Returns:
            "elapsed", "stopping" or "disconnected".
        """
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        # After the body, uvicorn's receive() blocks until the client disconnects.
        waiter: asyncio.Future[_Message] = asyncio.ensure_future(receive())
        try:
            while not self._stopping.is_set():
                step = _TICK if deadline is None else min(_TICK, deadline - loop.time())
                if step <= 0:
                    return "elapsed"
                done, _ = await asyncio.wait({waiter}, timeout=step)
                if done:
                    if waiter.result()["type"] == "http.disconnect":
                        return "disconnected"
                    waiter = asyncio.ensure_future(receive())
            return "stopping"
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter

    @staticmethod
    async def _send(send: _Send, reply: Reply) -> None:
        body = reply.body.encode() if isinstance(reply.body, str) else reply.body
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in reply.headers.items()]
        if not any(name == b"content-length" for name, _ in headers):
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
