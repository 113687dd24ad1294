"""The fleet simulation (benchmarks/fleet.py): its API model, its determinism, and that the
simulated clients run the delivery engine's own decision code."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import fleet_clients  # noqa: E402
import fleet_sim  # noqa: E402
from fleet_api import DELIVERED, REFUSED, ApiModel, Window  # noqa: E402

import massugc_logging.pipeline.delivery  # noqa: E402
from massugc_logging.outcome import OutcomeKind  # noqa: E402
from massugc_logging.pipeline import decisions  # noqa: E402

#: A small fleet with a short time line: seconds to run, every scenario still in it.
SMALL = fleet_sim.FleetSettings(clients=60, warmup=60.0, outage=240.0, degraded_for=180.0,
                                restart_backlog_min=4.0, observe=600.0)
FIELDS = ("events", "requests", "lost", "live_requests_per_event", "peak_load_x_capacity",
          "overload_seconds", "recovery_goodput_share", "drain_ratio", "p99_delay_s",
          "probes_per_client_per_min_down", "max_in_flight_per_client",
          "slowest_to_median_drain")


# -- the API model -------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=20.0, allow_nan=False), min_size=1,
                max_size=400),
       st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=30))
def test_the_api_model_serves_at_most_its_capacity_and_accounts_for_every_request(
        arrivals: list[float], capacity: int, queue: int) -> None:
    """Whatever arrives: every request is served, rejected or refused, exactly once; no
    second serves more than the capacity; the queue never holds more than its bound."""
    api = ApiModel(capacity=float(capacity), queue_seconds=queue / capacity, rtt=0.1,
                   outages=(Window(5.0, 7.0),))
    finished: list[float] = []
    for t in sorted(arrivals):
        done, replied, outcome = api.answer(t)
        assert replied >= done >= t
        if outcome is DELIVERED:
            finished.append(done)
            assert not api.is_down(t)
        elif outcome is REFUSED:
            assert api.is_down(t)
            assert replied == pytest.approx(t + 0.05)
        else:
            assert outcome.status == 503
    assert api.arrived == len(arrivals) == api.served + api.rejected + api.refused
    assert api.served == len(finished)
    assert api.longest_queue <= queue
    for start in finished:
        in_one_second = sum(1 for d in finished if start <= d < start + 1.0)
        assert in_one_second <= capacity + 1


def test_a_full_queue_is_answered_503_at_once_and_costs_no_capacity() -> None:
    """Room for 0.2 s of capacity: one in service and two waiting; the rest are refused
    with 503 (and the Retry-After configured) without using the server."""
    api = ApiModel(capacity=10.0, queue_seconds=0.2, rtt=0.0, retry_after=3.0)
    answers = [api.answer(0.0) for _ in range(5)]
    assert [o.status for _, _, o in answers] == [200, 200, 200, 503, 503]
    assert answers[3][2].retry_after == 3.0 and answers[3][1] == 0.0
    assert [round(done, 3) for done, _, _ in answers[:3]] == [0.1, 0.2, 0.3]


def test_a_degraded_window_serves_its_share_of_the_capacity() -> None:
    api = ApiModel(capacity=30.0, queue_seconds=1000.0, rtt=0.0,
                   degraded=(Window(0.0, 100.0, 1.0 / 3.0),))
    finished = [api.answer(t / 100.0)[0] for t in range(3000)]  # 100 requests/s for 30 s
    assert sum(1 for d in finished if 10.0 <= d < 20.0) == pytest.approx(100, abs=1)


def test_a_degraded_api_queues_fewer_requests() -> None:
    """The queue is bounded in time: at a third of the capacity it holds a third as many."""
    healthy = ApiModel(capacity=30.0, queue_seconds=1.0, rtt=0.0)
    degraded = ApiModel(capacity=30.0, queue_seconds=1.0, rtt=0.0,
                        degraded=(Window(0.0, 100.0, 1.0 / 3.0),))
    for api in (healthy, degraded):
        for _ in range(100):
            api.answer(0.0)
    assert (healthy.served, degraded.served) == (31, 11)
    assert api.capacity_at(50.0) == pytest.approx(10.0) and api.capacity_at(150.0) == 30.0


# -- the simulated clients use the engine's code ---------------------------------------


def test_the_default_client_is_the_delivery_engine_settling_through_the_decision_core(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No copy of the retry, circuit or concurrency logic: the default client is the
    engine itself, and each answer it gets goes through decisions.on_outcome."""
    calls: list[OutcomeKind] = []
    real = decisions.on_outcome

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[2].kind)
        return real(*args, **kwargs)

    monkeypatch.setattr(massugc_logging.pipeline.delivery, "on_outcome", counting)
    client = fleet_sim.make_client("default", lambda: 0.0, random.Random(1), SMALL)
    assert isinstance(client, fleet_clients.EngineClient)
    assert isinstance(client.engine, massugc_logging.pipeline.delivery.DeliveryEngine)

    figures, _ = fleet_sim.run("outage", "default", dataclasses.replace(SMALL, clients=20))
    assert len(calls) == figures.requests > figures.events
    assert OutcomeKind.TRANSIENT in calls and OutcomeKind.DELIVERED in calls


# -- the runs ------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_figures_and_another_seed_other_figures() -> None:
    first, trace = fleet_sim.run("outage", "default", SMALL)
    again, trace_again = fleet_sim.run("outage", "default", SMALL)
    other, _ = fleet_sim.run("outage", "default", dataclasses.replace(SMALL, seed=2))
    assert first == again and trace == trace_again
    assert other != first


@pytest.mark.parametrize("name", fleet_sim.SCENARIOS)
def test_every_policy_delivers_every_event_in_every_scenario(name: str) -> None:
    for policy in fleet_sim.POLICIES:
        figures, trace = fleet_sim.run(name, policy, SMALL)
        assert figures.lost == 0 and figures.undelivered == 0, (name, policy)
        assert figures.delivered == figures.events
        assert sum(trace.offered) == figures.requests == figures.served + (
            figures.rejected_503 + figures.refused)


def test_while_the_api_is_down_the_engine_probes_politely_and_the_naive_client_does_not() -> None:
    by_policy = {p: fleet_sim.run("outage", p, SMALL)[0] for p in fleet_sim.POLICIES}
    engine, naive = by_policy["default"], by_policy["naive"]
    assert engine.max_in_flight_per_client_down == 1
    assert engine.probes_per_client_per_min_down is not None
    assert naive.probes_per_client_per_min_down is not None
    assert engine.probes_per_client_per_min_down < 5 < naive.probes_per_client_per_min_down
    assert engine.retry_amplification < naive.retry_amplification


def test_a_fleet_restarted_with_a_backlog_spreads_its_start() -> None:
    """Every client starts at once holding minutes of events: the engine's spread start
    and retry budget keep the peak a fraction of what clients that all send at once
    offer, and it still delivers everything."""
    by_policy = {p: fleet_sim.run("restart", p, SMALL)[0] for p in fleet_sim.POLICIES}
    engine, naive = by_policy["default"], by_policy["naive"]
    assert engine.lost == 0 and engine.undelivered == 0
    assert engine.peak_load_x_capacity * 3 < naive.peak_load_x_capacity


def test_a_restart_in_the_middle_of_an_outage_keeps_probing_at_the_remembered_pace() -> None:
    """The fleet restarts while the API is down: the new processes pick up the circuit
    from the spool, so connection attempts while down stay near those of a fleet that
    did not restart, instead of starting again from one-second probes."""
    steady = fleet_sim.run("outage", "default", SMALL)[0]
    restarted = fleet_sim.run("restart_outage", "default", SMALL)[0]
    assert steady.probes_per_client_per_min_down is not None
    assert restarted.probes_per_client_per_min_down is not None
    assert restarted.probes_per_client_per_min_down < steady.probes_per_client_per_min_down * 1.2
    assert restarted.lost == 0 and restarted.undelivered == 0


@pytest.mark.slow
@pytest.mark.once
@pytest.mark.timeout(300)
def test_the_quick_run_prints_every_scenario_and_policy_as_json() -> None:
    """What CI runs: ``--quick --json`` completes and reports every figure the issue names."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "fleet.py"), "--quick", "--json"],
                          capture_output=True, text=True, timeout=300, check=True,
                          stdin=subprocess.DEVNULL)
    report = json.loads(done.stdout)
    assert set(report["scenarios"]) == set(fleet_sim.SCENARIOS)
    for by_policy in report["scenarios"].values():
        assert set(by_policy) == set(fleet_sim.POLICIES)
        for figures in by_policy.values():
            assert set(FIELDS) <= set(figures)
            assert figures["lost"] == 0
    assert {row["figure"] for row in report["targets"]} >= {
        "live_requests_per_event", "probes_per_client_per_min_down", "drain_ratio"}
    assert {row["scenario"] for row in report["targets"]} >= {"restart", "restart_outage"}
