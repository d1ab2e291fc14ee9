"""The retry policy as a pure function: no I/O, no clock, no randomness of its own.

Given the policy, the attempt that just ended and what it got (a response status or an error), :func:`decide`
says whether the task is completed, failed, or tried again, and after how long. The performer, the worker and
the Prefect flow only drive it. The clock (for ``Retry-After`` dates) and the random source (for jitter) are
arguments, so tests pin both.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from hexlabs_tasks._models import Backoff, RetryPolicy

__all__ = ["Decision", "Verdict", "backoff_delay", "decide", "parse_retry_after"]


class Verdict(StrEnum):
    """What happens to the task after an attempt."""

    COMPLETED = "completed"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :func:`decide`.

    Attributes:
        verdict: completed, retry or failed.
        delay: seconds until the next attempt (0 unless the verdict is retry).
        reason: why, in words; becomes the task's ``lastError`` when it fails.
    """

    verdict: Verdict
    delay: float = 0.0
    reason: str = ""


def backoff_delay(policy: RetryPolicy, retry_number: int) -> float:
    """The delay before retry ``retry_number`` (1-based), capped at ``maxDelay``, before jitter."""
    if retry_number < 1:
        raise ValueError("retry_number is 1-based")
    if policy.backoff is Backoff.EXPONENTIAL:
        # A huge power overflows the float; that only means the cap applies.
        try:
            delay = policy.initial_delay * policy.multiplier ** (retry_number - 1)
        except OverflowError:
            delay = float("inf")
    elif policy.backoff is Backoff.LINEAR:
        delay = policy.initial_delay * retry_number
    else:
        delay = policy.initial_delay
    return min(delay, policy.max_delay)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds that a ``Retry-After`` header asks to wait: delta-seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def decide(
    policy: RetryPolicy,
    *,
    attempt: int,
    retries: int,
    status: int | None = None,
    error: str | None = None,
    retry_after: str | None = None,
    now: datetime | None = None,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Decide what follows an attempt.

    Args:
        policy: the task's retry policy.
        attempt: the number of the attempt that just ended, 1-based.
        retries: how many extra attempts the task allows after the first.
        status: the response's HTTP status, or None when no response came.
        error: why no response came (a network error or a timeout), in words.
        retry_after: the response's ``Retry-After`` header, if any.
        now: the current time, for ``Retry-After`` dates (defaults to the system clock).
        rand: a source of floats in [0, 1) for jitter.

    Returns:
        The verdict, the delay before the next attempt, and the reason in words.
    """
    if status is not None and 200 <= status < 300:
        return Decision(Verdict.COMPLETED, reason=f"HTTP {status}")
    if status is None:
        what = error or "no response"
    elif status in policy.retry_on:
        what = f"HTTP {status}"
    else:
        return Decision(Verdict.FAILED, reason=f"HTTP {status}, which is not retried (not in retryOn)")
    if attempt > retries:
        tried = "1 attempt" if attempt == 1 else f"{attempt} attempts"
        return Decision(Verdict.FAILED, reason=f"{what}; gave up after {tried}")

    override = parse_retry_after(retry_after, now or datetime.now(UTC)) if status is not None else None
    if override is not None:
        delay = min(override, policy.max_delay)
    else:
        base = backoff_delay(policy, attempt)
        delay = base * (1 + policy.jitter * (2 * rand() - 1)) if policy.jitter else base
    delay = max(0.0, delay)
    return Decision(Verdict.RETRY, delay=delay, reason=f"{what}; retrying in {delay:.3g} s")
