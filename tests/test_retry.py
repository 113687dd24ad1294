"""The retry policy: an immutable value with backoff, jitter, a circuit and Retry-After."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from massugc_logging.retry import RetryPolicy, parse_retry_after


def test_increment_returns_a_new_policy_and_leaves_the_old_one_alone() -> None:
    """Policies are values: increment() never mutates."""
    policy = RetryPolicy()
    after = policy.increment()
    assert policy.failures == 0 and after.failures == 1
    assert after.reset().failures == 0


def test_healthy_policy_has_no_delay() -> None:
    """No failures, no wait."""
    assert RetryPolicy().next_delay(rng=lambda: 0.99) == 0.0


def test_backoff_is_exponential_with_full_jitter_and_a_cap() -> None:
    """Delay = rng * min(cap, base * 2**(n-1))."""
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=10.0, circuit_threshold=100)
    ceilings = []
    for _ in range(6):
        policy = policy.increment()
        ceilings.append(policy.next_delay(rng=lambda: 1.0))
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.next_delay(rng=lambda: 0.5) == 5.0
    assert policy.next_delay(rng=lambda: 0.0) == 0.0


def test_circuit_opens_after_the_threshold_and_waits_the_cooldown() -> None:
    """Repeated transient failures open the circuit for a cool-down."""
    policy = RetryPolicy(circuit_threshold=3, circuit_cooldown=30.0)
    for _ in range(3):
        policy = policy.increment()
    assert policy.circuit_open
    assert 30.0 <= policy.next_delay(rng=lambda: 0.5) <= 33.0
    assert not policy.reset().circuit_open


def test_retry_after_is_a_floor_capped_by_max_retry_after() -> None:
    """The server's Retry-After is honoured, within reason."""
    policy = RetryPolicy(max_retry_after=100.0).increment()
    assert policy.next_delay(retry_after=2.0, rng=lambda: 0.0) == 2.0
    assert policy.next_delay(retry_after=10_000.0, rng=lambda: 0.0) == 100.0


def test_retry_after_parses_seconds_and_http_dates() -> None:
    """Both forms of the header; a past date is zero."""
    now = 1_700_000_000.0
    assert parse_retry_after("2", now) == 2.0
    assert parse_retry_after(" 120 ", now) == 120.0
    future = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(future, now) == pytest.approx(30.0, abs=1.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now) == 0.0


@given(st.one_of(st.none(), st.text(max_size=60)))
def test_malformed_retry_after_is_tolerated(value: object) -> None:
    """Any header value parses to None or a non-negative number, never an exception."""
    result = parse_retry_after(value, 1_700_000_000.0)  # type: ignore[arg-type]
    assert result is None or result >= 0


def test_from_config_coerces_yaml_scalars_and_rejects_unknown_settings() -> None:
    """YAML gives strings and ints; unknown keys are named in the error."""
    policy = RetryPolicy.from_config({"backoff_base": "0.1", "circuit_threshold": "4"})
    assert policy.backoff_base == 0.1 and policy.circuit_threshold == 4
    with pytest.raises(ValueError, match="backof"):
        RetryPolicy.from_config({"backof": 1})
    with pytest.raises(ValueError, match="circuit_threshold"):
        RetryPolicy(circuit_threshold=0)


@given(st.integers(min_value=0, max_value=200), st.floats(min_value=0, max_value=1,
                                                          exclude_max=True))
def test_delay_is_always_bounded(failures: int, r: float) -> None:
    """Whatever the failure count, the delay never exceeds the larger of cap and cool-down."""
    policy = RetryPolicy(failures=failures)
    delay = policy.next_delay(rng=lambda: r)
    assert 0.0 <= delay <= max(policy.backoff_cap, policy.circuit_cooldown * 1.1)
