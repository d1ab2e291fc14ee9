"""The retry policy, a pure function: delays, verdicts, jitter and Retry-After, clock and rand pinned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from hexlabs_tasks._models import DEFAULT_RETRY_ON, Backoff, RetryPolicy
from hexlabs_tasks._retry import Decision, Verdict, backoff_delay, decide, parse_retry_after

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def policy(**overrides: Any) -> RetryPolicy:
    """A policy without jitter unless a test asks for it, so delays are exact."""
    return RetryPolicy(**{"jitter": 0.0, **overrides})


def http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


def never_random() -> float:
    raise AssertionError("rand must not be called here")


# -- backoff -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        (Backoff.EXPONENTIAL, [2.0, 6.0, 18.0, 54.0]),
        (Backoff.LINEAR, [2.0, 4.0, 6.0, 8.0]),
        (Backoff.FIXED, [2.0, 2.0, 2.0, 2.0]),
    ],
)
def test_backoff_delays_for_retries_one_to_four(backoff: Backoff, expected: list[float]) -> None:
    rules = policy(backoff=backoff, initial_delay=2.0, multiplier=3.0)
    assert [backoff_delay(rules, n) for n in range(1, 5)] == pytest.approx(expected)


@pytest.mark.parametrize("backoff", list(Backoff))
def test_decide_uses_the_backoff_delay_of_the_attempt_number(backoff: Backoff) -> None:
    rules = policy(backoff=backoff, initial_delay=2.0, multiplier=3.0)
    delays = [decide(rules, attempt=n, retries=10, status=503).delay for n in range(1, 5)]
    assert delays == pytest.approx([backoff_delay(rules, n) for n in range(1, 5)])


def test_default_policy_doubles_from_one_second() -> None:
    rules = policy()
    assert [backoff_delay(rules, n) for n in range(1, 5)] == pytest.approx([1.0, 2.0, 4.0, 8.0])


@pytest.mark.parametrize("backoff", list(Backoff))
def test_backoff_is_capped_at_max_delay(backoff: Backoff) -> None:
    rules = policy(backoff=backoff, initial_delay=10.0, multiplier=10.0, max_delay=25.0)
    assert backoff_delay(rules, 1) == 10.0
    assert backoff_delay(rules, 4) == (10.0 if backoff is Backoff.FIXED else 25.0)


def test_fixed_backoff_above_max_delay_is_capped() -> None:
    assert backoff_delay(policy(backoff=Backoff.FIXED, initial_delay=100.0, max_delay=30.0), 1) == 30.0


def test_huge_retry_number_with_exponential_backoff_is_capped_not_an_overflow() -> None:
    rules = policy(initial_delay=1.0, multiplier=100.0, max_delay=3600.0)
    assert backoff_delay(rules, 10_000) == 3600.0
    assert decide(rules, attempt=10_000, retries=100_000, status=503).delay == 3600.0


def test_backoff_delay_rejects_retry_number_zero() -> None:
    with pytest.raises(ValueError, match="1-based"):
        backoff_delay(policy(), 0)


# -- jitter --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rand_value", "factor"),
    [(0.0, 0.75), (0.5, 1.0), (0.999_999_999, 1.25)],
)
def test_jitter_spreads_the_delay_within_plus_minus_jitter(rand_value: float, factor: float) -> None:
    rules = policy(initial_delay=8.0, jitter=0.25)
    decision = decide(rules, attempt=1, retries=3, status=503, rand=lambda: rand_value)
    assert decision.verdict is Verdict.RETRY
    assert decision.delay == pytest.approx(8.0 * factor, rel=1e-6)


def test_jitter_stays_within_bounds_over_many_draws() -> None:
    rules = policy(initial_delay=10.0, jitter=0.3)
    draws = [i / 1000 for i in range(1000)]
    delays = [decide(rules, attempt=1, retries=3, status=500, rand=lambda d=d: d).delay for d in draws]
    assert min(delays) == pytest.approx(7.0)
    assert max(delays) < 13.0
    assert all(7.0 <= d < 13.0 for d in delays)


def test_jitter_applies_after_the_max_delay_cap() -> None:
    rules = policy(initial_delay=100.0, max_delay=10.0, jitter=0.5)
    assert decide(rules, attempt=3, retries=3, status=503, rand=lambda: 0.0).delay == pytest.approx(5.0)


def test_zero_jitter_does_not_draw_a_random_number() -> None:
    decision = decide(policy(jitter=0.0), attempt=1, retries=3, status=503, rand=never_random)
    assert decision.delay == 1.0


def test_full_jitter_never_gives_a_negative_delay() -> None:
    decision = decide(policy(jitter=1.0), attempt=1, retries=3, status=503, rand=lambda: 0.0)
    assert decision.delay == 0.0


# -- verdicts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_completes_the_task(status: int) -> None:
    decision = decide(policy(), attempt=1, retries=3, status=status, rand=never_random)
    assert decision == Decision(Verdict.COMPLETED, delay=0.0, reason=f"HTTP {status}")


def test_2xx_completes_even_on_the_last_attempt_and_even_if_listed_in_retry_on() -> None:
    decision = decide(policy(retry_on=[200]), attempt=4, retries=3, status=200)
    assert decision.verdict is Verdict.COMPLETED


@pytest.mark.parametrize("status", DEFAULT_RETRY_ON)
def test_status_in_retry_on_is_retried_while_attempts_remain(status: int) -> None:
    for attempt in (1, 2, 3):
        decision = decide(policy(), attempt=attempt, retries=3, status=status)
        assert decision.verdict is Verdict.RETRY
        assert decision.delay > 0
        assert f"HTTP {status}" in decision.reason


def test_status_in_retry_on_fails_once_retries_are_used_up() -> None:
    decision = decide(policy(), attempt=4, retries=3, status=503)
    assert decision.verdict is Verdict.FAILED
    assert decision.delay == 0.0
    assert "HTTP 503" in decision.reason
    assert "gave up after 4 attempts" in decision.reason


def test_zero_retries_gives_up_after_one_attempt() -> None:
    decision = decide(policy(), attempt=1, retries=0, status=500)
    assert decision.verdict is Verdict.FAILED
    assert "gave up after 1 attempt" in decision.reason


def test_custom_retry_on_is_honoured() -> None:
    rules = policy(retry_on=[418])
    assert decide(rules, attempt=1, retries=3, status=418).verdict is Verdict.RETRY
    assert decide(rules, attempt=1, retries=3, status=503).verdict is Verdict.FAILED


@pytest.mark.parametrize("status", [404, 400, 401, 403, 410, 422, 501, 302, 301, 304, 100])
def test_status_not_in_retry_on_fails_at_once(status: int) -> None:
    decision = decide(policy(), attempt=1, retries=3, status=status, rand=never_random)
    assert decision.verdict is Verdict.FAILED
    assert decision.delay == 0.0
    assert f"HTTP {status}" in decision.reason
    assert "not in retryOn" in decision.reason


def test_status_not_in_retry_on_ignores_retry_after() -> None:
    decision = decide(policy(), attempt=1, retries=3, status=404, retry_after="5", now=NOW)
    assert decision.verdict is Verdict.FAILED


@pytest.mark.parametrize("retry_on", [[], list(DEFAULT_RETRY_ON), [418]])
def test_network_error_is_always_retried_whatever_retry_on_says(retry_on: list[int]) -> None:
    rules = policy(retry_on=retry_on)
    decision = decide(rules, attempt=1, retries=3, status=None, error="could not connect: refused")
    assert decision.verdict is Verdict.RETRY
    assert decision.delay == 1.0
    assert "could not connect" in decision.reason


def test_timeout_is_retried_then_gives_up_naming_the_error() -> None:
    rules = policy(retry_on=[])
    error = "timed out after 5 s"
    assert decide(rules, attempt=2, retries=2, status=None, error=error).verdict is Verdict.RETRY
    decision = decide(rules, attempt=3, retries=2, status=None, error=error)
    assert decision.verdict is Verdict.FAILED
    assert decision.reason == "timed out after 5 s; gave up after 3 attempts"


def test_network_error_without_words_still_has_a_reason() -> None:
    decision = decide(policy(), attempt=1, retries=0, status=None)
    assert decision.verdict is Verdict.FAILED
    assert "no response" in decision.reason


def test_retry_reason_says_how_long_until_the_next_attempt() -> None:
    decision = decide(policy(initial_delay=2.0), attempt=1, retries=3, status=503)
    assert decision.reason == "HTTP 503; retrying in 2 s"


# -- Retry-After ---------------------------------------------------------------------------------------------


def test_retry_after_seconds_overrides_backoff() -> None:
    rules = policy()
    decision = decide(rules, attempt=1, retries=3, status=429, retry_after="120", now=NOW, rand=never_random)
    assert decision.verdict is Verdict.RETRY
    assert decision.delay == 120.0


def test_retry_after_is_not_jittered() -> None:
    rules = policy(jitter=0.5)
    decision = decide(rules, attempt=1, retries=3, status=429, retry_after="10", now=NOW, rand=lambda: 0.0)
    assert decision.delay == 10.0


def test_retry_after_http_date_overrides_backoff() -> None:
    header = http_date(NOW + timedelta(seconds=90))
    decision = decide(policy(), attempt=1, retries=3, status=503, retry_after=header, now=NOW)
    assert decision.verdict is Verdict.RETRY
    assert decision.delay == pytest.approx(90.0)


@pytest.mark.parametrize("header", ["7200", http_date(NOW + timedelta(hours=2))])
def test_retry_after_is_capped_at_max_delay(header: str) -> None:
    decision = decide(policy(max_delay=60.0), attempt=1, retries=3, status=503, retry_after=header, now=NOW)
    assert decision.delay == 60.0


@pytest.mark.parametrize("header", ["soon", "1.5", "-5", "", "   ", "Thursday sometime"])
def test_garbage_retry_after_falls_back_to_the_computed_delay(header: str) -> None:
    rules = policy(initial_delay=3.0)
    decision = decide(rules, attempt=2, retries=3, status=503, retry_after=header, now=NOW)
    assert decision.verdict is Verdict.RETRY
    assert decision.delay == 6.0


def test_retry_after_http_date_in_the_past_gives_zero_delay() -> None:
    header = http_date(NOW - timedelta(minutes=5))
    decision = decide(policy(), attempt=1, retries=3, status=503, retry_after=header, now=NOW)
    assert decision.verdict is Verdict.RETRY
    assert decision.delay == 0.0


def test_retry_after_zero_seconds_retries_at_once() -> None:
    assert decide(policy(), attempt=1, retries=3, status=503, retry_after="0", now=NOW).delay == 0.0


def test_retry_after_does_not_extend_retries() -> None:
    decision = decide(policy(), attempt=4, retries=3, status=503, retry_after="1", now=NOW)
    assert decision.verdict is Verdict.FAILED


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("30", 30.0),
        (" 30 ", 30.0),
        ("0", 0.0),
        ("garbage", None),
        (http_date(NOW + timedelta(seconds=45)), 45.0),
        ("Sun, 01 Jun 2025 12:00:45 GMT", 45.0),
        ("Sun, 01 Jun 2025 11:00:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


def test_retry_after_with_non_ascii_digits_falls_back_instead_of_raising() -> None:
    decision = decide(policy(), attempt=1, retries=3, status=503, retry_after="²", now=NOW)
    assert decision.delay == 1.0
