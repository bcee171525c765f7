"""Retry policies: backoff arithmetic and the decision after a failed attempt."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import squidmesh as sm


class Flaky(ConnectionError):
    pass


def test_exponential_backoff_doubles_then_caps() -> None:
    backoff = sm.Backoff.exponential(min=1, max=10)
    assert [backoff.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_exponential_backoff_scales_with_min() -> None:
    backoff = sm.Backoff.exponential(min=0.5, max=100)
    assert [backoff.delay(n) for n in range(1, 5)] == [0.5, 1, 2, 4]


def test_exponential_backoff_survives_huge_attempt_numbers() -> None:
    assert sm.Backoff.exponential(min=1, max=10).delay(10_000) == 10


def test_fixed_backoff_is_constant() -> None:
    backoff = sm.Backoff.fixed(3)
    assert [backoff.delay(n) for n in range(1, 6)] == [3, 3, 3, 3, 3]


@pytest.mark.parametrize(("low", "high"), [(-1, 10), (5, 1)], ids=["negative-min", "max-below-min"])
def test_invalid_exponential_backoff(low: float, high: float) -> None:
    with pytest.raises(sm.DefinitionError, match="min"):
        sm.Backoff.exponential(min=low, max=high)


def test_invalid_fixed_backoff() -> None:
    with pytest.raises(sm.DefinitionError, match="seconds"):
        sm.Backoff.fixed(-1)


@pytest.mark.parametrize("attempts", [0, -1, 1.5])
def test_retry_needs_at_least_one_attempt(attempts: int) -> None:
    with pytest.raises(sm.DefinitionError, match="max_attempts"):
        sm.Retry(max_attempts=attempts)


def test_default_retry_tries_once() -> None:
    decision = sm.Retry().decide(1, retryable=True)
    assert (decision.retry, decision.reason) == (False, "exhausted")


def test_decide_retries_with_backoff_until_exhausted() -> None:
    policy = sm.Retry(max_attempts=3, backoff=sm.Backoff.exponential(min=1, max=10))

    first = policy.decide(1, retryable=True)
    second = policy.decide(2, retryable=True)
    third = policy.decide(3, retryable=True)

    assert (first.retry, first.delay) == (True, 1)
    assert (second.retry, second.delay) == (True, 2)
    assert (third.retry, third.reason) == (False, "exhausted")


def test_decide_without_backoff_retries_immediately() -> None:
    decision = sm.Retry(max_attempts=2).decide(1, retryable=True)
    assert (decision.retry, decision.delay) == (True, 0)


def test_non_retryable_error_stops_at_once() -> None:
    policy = sm.Retry(max_attempts=5, backoff=sm.Backoff.fixed(1))
    decision = policy.decide(1, retryable=False)
    assert (decision.retry, decision.reason) == (False, "non_retryable")


def test_requested_delay_replaces_backoff() -> None:
    policy = sm.Retry(max_attempts=5, backoff=sm.Backoff.exponential(min=1, max=10))
    decision = policy.decide(3, retryable=True, requested_delay=42)
    assert (decision.retry, decision.delay) == (True, 42)


def test_requested_delay_does_not_extend_max_attempts() -> None:
    decision = sm.Retry(max_attempts=2).decide(2, retryable=True, requested_delay=5)
    assert (decision.retry, decision.reason) == (False, "exhausted")


def test_is_non_retryable_matches_listed_types_and_subclasses() -> None:
    policy = sm.Retry(max_attempts=3, non_retryable=(ConnectionError, KeyError))

    assert policy.is_non_retryable(ConnectionError())
    assert policy.is_non_retryable(Flaky())
    assert policy.is_non_retryable(KeyError("k"))
    assert not policy.is_non_retryable(ValueError())
    assert not policy.is_non_retryable(OSError())
    assert not sm.Retry().is_non_retryable(ConnectionError())


def test_non_retryable_accepts_a_list() -> None:
    policy = sm.Retry(non_retryable=[KeyError])  # type: ignore[arg-type]
    assert policy.non_retryable == (KeyError,)
    assert policy.is_non_retryable(KeyError())


def test_retry_policy_serializes_to_json() -> None:
    policy = sm.Retry(
        max_attempts=3, backoff=sm.Backoff.exponential(min=1, max=10), non_retryable=(Flaky,)
    )
    assert policy.to_json() == {
        "max_attempts": 3,
        "backoff": {"kind": "exponential", "min": 1.0, "max": 10.0},
        "non_retryable": [f"{__name__}.Flaky"],
    }
    assert sm.Backoff.from_json(policy.to_json()["backoff"]) == policy.backoff


@given(
    low=st.floats(min_value=0, max_value=1_000, allow_nan=False),
    extra=st.floats(min_value=0, max_value=100_000, allow_nan=False),
    n=st.integers(min_value=1, max_value=500),
)
def test_exponential_delay_is_monotonic_and_capped(low: float, extra: float, n: int) -> None:
    backoff = sm.Backoff.exponential(min=low, max=low + extra)
    assert backoff.delay(n) <= backoff.delay(n + 1)
    assert backoff.delay(n) <= backoff.max
    assert backoff.delay(1) == min(low, backoff.max)
