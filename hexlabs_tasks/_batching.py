"""Coalesce concurrent calls into batch calls, without waiting to fill a batch.

A caller submits one item and awaits its own result. Items that arrive while a batch call is in flight queue up and
go out together in the next call, up to ``max_size``. A lone item is sent at once, so batching never adds latency
when there is no load; under load, each batch call carries everything that queued during the one before it.
Items are grouped by a key: only items with the same key share a call (same target state, say).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batcher"]

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741
R = TypeVar("R")

# The batch call: the key and its items; a result or an exception per item, in order.
SendBatch = Callable[[K, Sequence[I]], Awaitable[Sequence[R | BaseException]]]


class Batcher(Generic[K, I, R]):
    """Submit items one by one; they are sent ``max_size`` at a time, at most ``max_inflight`` calls at once.

    Args:
        send: the batch call. An exception it raises is given to every item of that batch.
        max_size: the most items in one call.
        max_inflight: the most batch calls in flight at once (across keys).
    """

    def __init__(self, send: SendBatch[K, I, R], *, max_size: int, max_inflight: int = 1) -> None:
        if max_size < 1 or max_inflight < 1:
            raise ValueError("max_size and max_inflight must be at least 1")
        self._send = send
        self.max_size = max_size
        self._slots = asyncio.Semaphore(max_inflight)
        self._queued: dict[K, list[tuple[I, asyncio.Future[R]]]] = {}
        self._drainer: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self.batches = 0  # calls made, for tests and diagnostics

    async def submit(self, key: K, item: I) -> R:
        """Queue an item and wait for its result (or its exception)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(key, []).append((item, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queued:
            await self._slots.acquire()
            if not self._queued:
                self._slots.release()
                return
            key = next(iter(self._queued))
            queued = self._queued[key]
            batch, rest = queued[: self.max_size], queued[self.max_size :]
            if rest:
                # what is left goes behind the other keys, so one busy key does not starve them
                del self._queued[key]
                self._queued[key] = rest
            else:
                del self._queued[key]
            call = asyncio.create_task(self._call(key, batch))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _call(self, key: K, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            self.batches += 1
            try:
                results: Sequence[R | BaseException] = await self._send(key, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch call answered {len(results)} results for {len(batch)} items")
            except Exception as exc:  # every item of the batch gets the call's failure
                results = [exc] * len(batch)
            except BaseException:  # the call itself was cancelled: so are its items
                for _, future in batch:
                    future.cancel()
                raise
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its caller was cancelled
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._slots.release()
