"""The batcher: concurrent submissions share calls, a lone one goes at once, failures reach every caller."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from hexlabs_tasks._batching import Batcher


class Recorder:
    """A batch call that records what it was sent and can be held open until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def send(self, key: str, items: Sequence[int]) -> list[int | BaseException]:
        self.calls.append((key, list(items)))
        self.entered.set()
        await self.gate.wait()
        return [ValueError(f"odd {item}") if item % 2 else item * 10 for item in items]


async def test_a_lone_item_is_sent_at_once_in_a_call_of_its_own() -> None:
    recorder = Recorder()
    batcher: Batcher[str, int, int] = Batcher(recorder.send, max_size=10)
    assert await asyncio.wait_for(batcher.submit("k", 2), timeout=1) == 20
    assert recorder.calls == [("k", [2])]


async def test_items_that_queue_behind_a_call_in_flight_go_out_together() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    batcher: Batcher[str, int, int] = Batcher(recorder.send, max_size=10, max_inflight=1)
    first = asyncio.create_task(batcher.submit("k", 0))
    await asyncio.wait_for(recorder.entered.wait(), timeout=1)
    rest = [asyncio.create_task(batcher.submit("k", n)) for n in (2, 4, 6)]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, *rest), timeout=1) == [0, 20, 40, 60]
    assert recorder.calls == [("k", [0]), ("k", [2, 4, 6])]


async def test_a_batch_never_exceeds_max_size_and_keys_never_share_a_call() -> None:
    recorder = Recorder()
    batcher: Batcher[str, int, int] = Batcher(recorder.send, max_size=3, max_inflight=2)
    jobs = [batcher.submit("a" if n < 14 else "b", n) for n in range(0, 20, 2)]
    assert await asyncio.wait_for(asyncio.gather(*jobs), timeout=1) == [n * 10 for n in range(0, 20, 2)]
    assert all(len(items) <= 3 for _, items in recorder.calls)
    assert sorted(item for key, items in recorder.calls if key == "a" for item in items) == [0, 2, 4, 6, 8, 10, 12]
    assert sorted(item for key, items in recorder.calls if key == "b" for item in items) == [14, 16, 18]


async def test_a_per_item_exception_reaches_only_that_item() -> None:
    recorder = Recorder()
    batcher: Batcher[str, int, int] = Batcher(recorder.send, max_size=10)
    results = await asyncio.gather(batcher.submit("k", 1), batcher.submit("k", 2), return_exceptions=True)
    assert isinstance(results[0], ValueError)
    assert str(results[0]) == "odd 1"
    assert results[1] == 20


async def test_a_failed_call_fails_every_item_of_its_batch_and_later_items_still_go() -> None:
    calls = 0

    async def flaky(key: str, items: Sequence[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("server down")
        return list(items)

    batcher: Batcher[str, int, int] = Batcher(flaky, max_size=10)
    results = await asyncio.gather(batcher.submit("k", 1), batcher.submit("k", 2), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    assert await asyncio.wait_for(batcher.submit("k", 3), timeout=1) == 3


async def test_a_call_answering_the_wrong_number_of_results_is_an_error_for_each_item() -> None:
    async def short(key: str, items: Sequence[int]) -> list[int | BaseException]:
        return []

    batcher: Batcher[str, int, int] = Batcher(short, max_size=10)
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        await asyncio.wait_for(batcher.submit("k", 1), timeout=1)


async def test_a_cancelled_caller_does_not_break_its_batch() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    batcher: Batcher[str, int, int] = Batcher(recorder.send, max_size=10, max_inflight=1)
    first = asyncio.create_task(batcher.submit("k", 0))
    await asyncio.wait_for(recorder.entered.wait(), timeout=1)
    second, third = asyncio.create_task(batcher.submit("k", 2)), asyncio.create_task(batcher.submit("k", 4))
    await asyncio.sleep(0)
    second.cancel()
    recorder.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, third), timeout=1) == [0, 40]
    assert second.cancelled()


def test_sizes_below_one_are_refused() -> None:
    async def send(key: str, items: Sequence[int]) -> list[int | BaseException]:
        return list(items)

    with pytest.raises(ValueError, match="at least 1"):
        Batcher(send, max_size=0)
