"""The retry policy: an immutable value of settings, and the pure delays it implies."""

from __future__ import annotations

import dataclasses
import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from massugc_logging.pipeline.retry import (
    RetryPolicy,
    capped_retry_after,
    event_retry_delay,
    overload_delay,
    parse_retry_after,
    probe_delay,
    start_delay,
)


def test_policy_is_an_immutable_value() -> None:
    """A policy cannot be changed in place, so one can be shared by every handler."""
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.backoff_base = 1.0  # type: ignore[misc]


def test_event_backoff_is_exponential_with_full_jitter_and_a_cap() -> None:
    """Delay = rng * min(cap, base * 2**(attempts-1)), from the event's own attempt count."""
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=10.0)
    ceilings = [event_retry_delay(policy, n, lambda: 1.0) for n in range(1, 7)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert event_retry_delay(policy, 3, lambda: 0.5) == 2.0
    assert event_retry_delay(policy, 3, lambda: 0.0) == 0.0
    assert event_retry_delay(policy, 0, lambda: 1.0) == 0.0


def test_probe_spacing_starts_near_a_second_and_grows_to_its_cap() -> None:
    """Probes while the circuit is open: about 1 s first, doubling, capped (in seven
    probes from 1 s to 60 s), jittered within the upper quarter of each step."""
    policy = RetryPolicy(probe_interval=1.0, probe_interval_cap=60.0)
    assert probe_delay(policy, 0, lambda: 0.0) == 1.0
    assert probe_delay(policy, 0, lambda: 1.0) == 0.75
    assert probe_delay(policy, 1, lambda: 0.0) == 2.0
    assert probe_delay(policy, 5, lambda: 0.0) == 32.0
    assert probe_delay(policy, 6, lambda: 0.0) == 60.0
    assert probe_delay(policy, 30, lambda: 0.0) == 60.0
    assert probe_delay(policy, 500, lambda: 1.0) == 45.0


@given(st.lists(st.floats(0.0, 1.0), min_size=20, max_size=20), st.floats(0.1, 600.0))
def test_a_recovered_api_is_found_within_a_third_more_than_the_outage(
        draws: list[float], outage: float) -> None:
    """Whatever the jitter draws, the first probe after an outage (counted from when the
    circuit opened) is late by at most the outage and a third of it plus a second,
    and never by more than the cap: a probe is sent at least three quarters of the way
    through the steps before it."""
    policy = RetryPolicy()
    late = first_probe_after(policy, draws, outage) - outage
    assert 0 <= late <= min(outage * 4 / 3 + policy.probe_interval, policy.probe_interval_cap)


@pytest.mark.parametrize("outage", [10.0, 300.0])
def test_the_outages_of_the_drain_benchmark_are_found_within_their_targets(
        outage: float) -> None:
    """The worst case over the jitter: 10 s late at most after a 10 s outage, 60 s after
    a 5-minute one (each step's shortest spacing, then its longest)."""
    policy = RetryPolicy()
    target = {10.0: 10.0, 300.0: 60.0}[outage]
    for longest_from in range(20):
        draws = [1.0] * longest_from + [0.0] * (20 - longest_from)
        assert first_probe_after(policy, draws, outage) - outage <= target


def first_probe_after(policy: RetryPolicy, draws: list[float], outage: float) -> float:
    """When the first probe after ``outage`` goes, with these jitter draws."""
    sent_at = 0.0
    for probes in range(10_000):
        draw = draws[min(probes, len(draws) - 1)]
        sent_at += probe_delay(policy, probes, lambda: draw)  # noqa: B023 - called at once
        if sent_at >= outage:
            return sent_at
    raise AssertionError("no probe after the outage")


def test_retry_after_is_honoured_within_reason() -> None:
    """The server's Retry-After is the pause, capped by max_retry_after, never negative."""
    policy = RetryPolicy(max_retry_after=100.0)
    assert capped_retry_after(policy, 2.0) == 2.0
    assert capped_retry_after(policy, 10_000.0) == 100.0
    assert capped_retry_after(policy, -5.0) == 0.0


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
    with pytest.raises(ValueError, match="circuit_failure_share"):
        RetryPolicy(circuit_failure_share=0)


def test_the_old_cooldown_setting_is_read_as_the_probe_cap() -> None:
    """A 0.1.0 configuration with circuit_cooldown still loads: it caps the probe spacing."""
    assert RetryPolicy.from_config({"circuit_cooldown": 30}).probe_interval_cap == 30.0


@given(st.integers(min_value=0, max_value=10_000),
       st.floats(min_value=0, max_value=1, exclude_max=True))
def test_delays_are_always_bounded(attempts: int, r: float) -> None:
    """Whatever the count, an event never waits past backoff_cap, a probe past its cap."""
    policy = RetryPolicy()
    assert 0.0 <= event_retry_delay(policy, attempts, lambda: r) <= policy.backoff_cap
    assert 0.0 < probe_delay(policy, attempts, lambda: r) <= policy.probe_interval_cap


@given(st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_a_start_with_a_backlog_waits_up_to_the_spread_and_one_without_none(
        draw: float, backlog: int) -> None:
    """The start delay is uniform over start_spread when events wait, and 0 otherwise."""
    policy = RetryPolicy()
    delay = start_delay(policy, backlog, lambda: draw)
    if backlog == 0:
        assert delay == 0.0
    else:
        assert delay == pytest.approx(draw * policy.start_spread)


@given(st.integers(0, 60), st.floats(0.0, 1.0))
def test_an_overload_pause_lies_in_the_upper_half_of_its_step(steps: int, draw: float) -> None:
    """Wider than a probe's jitter (a fleet that steps back spreads out), never past the
    probe cap."""
    policy = RetryPolicy()
    ceiling = min(policy.probe_interval_cap, policy.probe_interval * 2.0 ** steps)
    assert ceiling / 2 <= overload_delay(policy, steps, lambda: draw) <= ceiling
