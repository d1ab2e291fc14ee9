"""Freezing a started process's objects out of the garbage collector's full passes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from hexlabs_tasks._gc import freeze_startup_objects


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_objects_alive_at_startup_are_no_longer_walked_by_collections() -> None:
    kept = _Node()
    assert any(o is kept for o in gc.get_objects())  # tracked: every full collection walks it

    frozen = freeze_startup_objects()

    assert frozen >= 1
    assert frozen == gc.get_freeze_count()
    assert not any(o is kept for o in gc.get_objects())  # in the permanent generation now
    assert kept.other is None  # and still alive


def test_garbage_left_by_startup_is_collected_not_frozen_for_ever() -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a reference cycle: only the collector frees it
    gone = weakref.ref(a)
    del a, b

    freeze_startup_objects()

    assert gone() is None


def test_what_comes_after_the_freeze_is_collected_as_usual() -> None:
    freeze_startup_objects()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b

    gc.collect()

    assert gone() is None
