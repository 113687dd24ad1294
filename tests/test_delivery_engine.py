"""The delivery engine driven deterministically: a memory outbox, a scripted send and a
fake clock; no socket, no thread, no sleep."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import replace
from typing import Callable, Optional

import pytest

from massugc_logging.diagnostics import Topic
from massugc_logging.outcome import Outcome, OutcomeKind
from massugc_logging.pipeline.decisions import Mode
from massugc_logging.pipeline.delivery import DeliveryEngine, DeliveryWorkers
from massugc_logging.pipeline.retry import RetryPolicy
from massugc_logging.pipeline.spool import MemorySpool, Settlement, SpooledEvent

OK = Outcome(OutcomeKind.DELIVERED, 200)
UNAVAILABLE = Outcome(OutcomeKind.TRANSIENT, 503, reason="unavailable")
DOWN = Outcome(OutcomeKind.TRANSIENT, None, reason="connection refused")
REFUSED = Outcome(OutcomeKind.AUTH, 401, reason="invalid_api_key")


class Clock:
    """Virtual wall-clock seconds, moved only by the test."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class ScriptedApi:
    """A ``send`` whose answer is a function of the request number and the time."""

    def __init__(self, clock: Clock, answer: Callable[[int, float, str], Outcome]) -> None:
        self.clock = clock
        self.answer = answer
        self.requests: list[tuple[float, str, Outcome]] = []

    def __call__(self, event: SpooledEvent) -> Outcome:
        outcome = self.answer(len(self.requests), self.clock.now, event.event_id)
        self.requests.append((self.clock.now, event.event_id, outcome))
        return outcome

    def delivered(self) -> Counter[str]:
        return Counter(eid for _, eid, o in self.requests if o.delivered)


def make(n: int, answer: Callable[[int, float, str], Outcome], *, max_in_flight: int = 4,
         policy: Optional[RetryPolicy] = None) -> tuple[DeliveryEngine, ScriptedApi, Clock,
                                                          MemorySpool]:
    clock = Clock()
    outbox = MemorySpool(max_events=100_000)
    outbox.add([(f"e{i}", b"{}", clock.now + i * 1e-3) for i in range(n)], clock.now)
    api = ScriptedApi(clock, answer)
    engine = DeliveryEngine(outbox, api, policy=policy, max_in_flight=max_in_flight,
                            clock=clock, rng=random.Random(7).random)
    return engine, api, clock, outbox


def drive(engine: DeliveryEngine, clock: Clock, *, until: float = 3600.0) -> None:
    """Send what may go now, then jump the clock to the next wake, until nothing is left."""
    end = clock.now + until
    while clock.now < end:
        engine.pump()
        wake = engine.next_wake()
        if wake is None:
            return
        clock.now = max(clock.now, wake)


def test_every_third_request_failing_delays_only_those_events() -> None:
    """A flaky API: every event delivered exactly once, quickly, and never a pause of all."""
    engine, api, clock, outbox = make(300, lambda n, t, e: UNAVAILABLE if n % 3 == 2 else OK)
    start = clock.now
    modes = []
    engine._on_settled = lambda e, o, a: modes.append(engine.state.mode)
    drive(engine, clock)
    assert api.delivered() == Counter({f"e{i}": 1 for i in range(300)})
    assert outbox.pending_count() == 0
    assert set(modes) == {Mode.SENDING}
    assert clock.now - start < 5.0  # the slowest event waited a few short backoffs


def test_an_outage_opens_the_circuit_and_probes_one_at_a_time_then_recovers_fast() -> None:
    """Down for ten minutes, then up: a few requests open the circuit, probes come one at a
    time at growing spacing (never over the cap), the first success reopens sending and
    the backlog drains; nothing lost, nothing twice."""
    recovery = Clock().now + 600.0
    engine, api, clock, _ = make(
        100, lambda n, t, e: OK if t >= recovery else
        Outcome(OutcomeKind.TRANSIENT, reason="connection refused"))
    drive(engine, clock)
    failures = [t for t, _, o in api.requests if not o.delivered]
    first_success = min(t for t, _, o in api.requests if o.delivered)
    assert len(failures) < 40  # about 1 probe per 45 s once at the cap
    gaps = [b - a for a, b in zip(failures[5:], failures[6:])]
    assert max(gaps) <= RetryPolicy().probe_interval_cap
    assert first_success - recovery <= RetryPolicy().probe_interval_cap
    assert api.delivered() == Counter({f"e{i}": 1 for i in range(100)})


def test_a_short_outage_is_found_within_seconds_of_recovery() -> None:
    """Down (refusing connections) for 10 s: the first event after recovery goes within
    10 s of it, whatever the jitter draws."""
    recovery = Clock().now + 10.0
    engine, api, clock, _ = make(
        20, lambda n, t, e: OK if t >= recovery else DOWN)
    drive(engine, clock)
    first_success = min(t for t, _, o in api.requests if o.delivered)
    assert first_success - recovery <= 10.0


def test_requests_in_flight_start_at_one_grow_to_max_and_halve_on_failure() -> None:
    """Slow start, additive increase, multiplicative decrease, observed through take()."""
    engine, _, clock, _ = make(200, lambda n, t, e: OK)

    def take_all() -> list[SpooledEvent]:
        taken = []
        while (event := engine.take()) is not None:
            taken.append(event)
        return taken

    widths = []
    for _ in range(8):
        batch = take_all()
        widths.append(len(batch))
        for event in batch:
            engine.settle(event, OK)
        clock.now += 0.01
    assert widths[0] == 1 and max(widths) == 4 and widths == sorted(widths)
    batch = take_all()
    assert len(batch) == 4
    for event in batch[1:]:
        engine.settle(event, OK)
    engine.settle(batch[0], UNAVAILABLE)
    clock.now += 1.0
    assert len(take_all()) == 2


def test_retry_after_stops_every_request_for_that_long() -> None:
    """429 with Retry-After: 2: nothing is sent for two seconds, then all is delivered."""
    limited = Outcome(OutcomeKind.TRANSIENT, 429, retry_after=2.0, reason="rate_limited")
    engine, api, clock, _ = make(10, lambda n, t, e: limited if n == 0 else OK)
    drive(engine, clock)
    times = [t for t, _, _ in api.requests]
    assert times[1] - times[0] >= 2.0
    assert api.delivered() == Counter({f"e{i}": 1 for i in range(10)})


def test_a_refused_key_holds_everything_until_a_new_key() -> None:
    """401: one request, then nothing; after key_changed() everything goes."""
    key_ok = {"value": False}
    engine, api, clock, _ = make(10, lambda n, t, e: OK if key_ok["value"] else REFUSED)
    engine.pump()
    assert len(api.requests) == 1 and engine.status() == "auth_paused"
    clock.now += 60
    engine.pump()
    assert len(api.requests) == 1
    key_ok["value"] = True
    engine.key_changed()
    drive(engine, clock)
    assert api.delivered() == Counter({f"e{i}": 1 for i in range(10)})


def test_a_poison_event_backs_off_alone() -> None:
    """One event always failing does not hold the others back, and its own attempts
    come further and further apart."""
    engine, api, clock, outbox = make(
        50, lambda n, t, e: UNAVAILABLE if e == "e0" else OK,
        policy=RetryPolicy(backoff_base=1.0))
    drive(engine, clock, until=120)
    others = [t for t, eid, _ in api.requests if eid != "e0"]
    poison = [t for t, eid, _ in api.requests if eid == "e0"]
    assert len(others) == 49 and max(others) - clock.now < 120
    assert max(others) < poison[2]  # the others were all through before its third attempt
    assert outbox.pending_count() == 1


def test_a_permanent_rejection_is_dead_lettered_and_never_sent_again() -> None:
    """422 on one event: dead-lettered, the others delivered, no second attempt."""
    rejected = Outcome(OutcomeKind.PERMANENT, 422, reason="validation_error")
    engine, api, clock, outbox = make(5, lambda n, t, e: rejected if n == 0 else OK)
    drive(engine, clock)
    assert [eid for _, eid, _ in api.requests].count("e0") == 1
    assert [d.event_id for d in outbox.dead_letters()] == ["e0"]
    assert engine.counters.snapshot()["dead_lettered"] == 1


def test_a_hold_sends_nothing() -> None:
    """With no key configured the engine hands nothing out and reports held."""
    engine, api, _, _ = make(3, lambda n, t, e: OK)
    engine.set_hold(Mode.NO_KEY)
    assert api.requests == []
    assert engine.pump() == 0 and engine.status() == "held"
    engine.key_changed()
    assert engine.pump() == 3


def test_after_stop_late_outcomes_leave_the_event_for_the_next_run() -> None:
    """An answer arriving after stop() is not recorded: the event stays in the outbox."""
    engine, _, _, outbox = make(1, lambda n, t, e: OK)
    event = engine.take()
    assert event is not None
    engine.stop()
    engine.settle(event, OK)
    assert outbox.pending_count() == 1 and engine.take() is None


def test_a_wall_clock_set_back_an_hour_delays_nothing() -> None:
    """The engine decides by its own (monotonic) clock; the outbox keeps due times on the
    wall clock. With the wall clock set back an hour between a failure and the retry, the
    event goes after its own backoff, not an hour later."""
    mono, wall = Clock(500.0), Clock()
    outbox = MemorySpool(schedule_horizon=61.0)
    outbox.add([("e0", b"{}", wall.now)], wall.now)
    api = ScriptedApi(mono, lambda n, now, eid: UNAVAILABLE if n == 0 else OK)
    engine = DeliveryEngine(outbox, api, clock=mono, wall=wall, rng=lambda: 0.999)
    engine.settle(engine.take(), api(outbox.pending()[0]))  # the first attempt fails
    wall.now -= 3600.0
    mono.now += 0.02  # a little over its backoff (at most 10 ms)
    wake = engine.next_wake()
    assert wake is not None and wake <= mono.now
    assert engine.pump() == 1
    assert api.delivered() == Counter({"e0": 1})


def test_a_pause_survives_a_restart_neither_sooner_nor_later() -> None:
    """A Retry-After pause remembered in the outbox: a new engine on it (a restarted
    process) sends nothing before the pause ends and sends at once after."""
    mono, wall = Clock(10.0), Clock()
    outbox = MemorySpool()
    outbox.add([("e0", b"{}", wall.now), ("e1", b"{}", wall.now + 1)], wall.now)
    limited = Outcome(OutcomeKind.TRANSIENT, 429, retry_after=120.0, reason="slow down")
    first = DeliveryEngine(outbox, lambda e: limited, clock=mono, wall=wall,
                           rng=lambda: 0.5, memory_key="https://api")
    event = first.take()
    assert event is not None
    first.settle(event, limited)
    first.stop()
    wall.now += 30.0  # the process restarts 30 s later, with a new monotonic clock
    mono2 = Clock(0.0)
    api = ScriptedApi(mono2, lambda n, now, eid: OK)
    second = DeliveryEngine(outbox, api, clock=mono2, wall=wall, rng=lambda: 0.5,
                            memory_key="https://api")
    second.recall(outbox.recall("https://api", wall.now)["health"])
    assert second.take() is None
    wake = second.next_wake()
    assert wake is not None and abs(wake - 90.0) < 0.5  # 120 s pause, 30 s of it gone
    mono2.now, wall.now = 89.0, wall.now + 89.0
    assert second.pump() == 0  # a second early: still paused
    mono2.now, wall.now = 90.0, wall.now + 1.0
    assert second.pump() == 2
    assert [at for at, _, _ in api.requests] == [90.0, 90.0]


def test_a_start_with_a_backlog_waits_a_random_moment_then_drains() -> None:
    """A process that starts with events kept: nothing goes before its spread delay (at
    most start_spread), then everything, each once."""
    engine, api, clock, outbox = make(20, lambda n, t, e: OK, policy=RetryPolicy())
    start = clock.now
    engine.spread_start(outbox.pending_count())
    assert engine.take() is None
    wake = engine.next_wake()
    assert wake is not None and start < wake <= start + engine.policy.start_spread
    drive(engine, clock)
    assert api.delivered() == Counter({f"e{i}": 1 for i in range(20)})
    assert min(at for at, _, _ in api.requests) == wake


def test_no_backlog_no_wait_and_a_flush_ends_the_wait() -> None:
    """Nothing kept: the first event goes at once. Kept: a flush (end_start_delay) sends
    at once too."""
    engine, _, clock, outbox = make(0, lambda n, t, e: OK)
    engine.spread_start(outbox.pending_count())
    outbox.add([("late", b"{}", clock.now)], clock.now)
    assert engine.pump() == 1
    engine, api, clock, outbox = make(3, lambda n, t, e: OK)
    engine.spread_start(outbox.pending_count())
    assert engine.pump() == 0
    engine.end_start_delay()
    assert engine.pump() == 3 and len(api.requests) == 3


def test_a_remembered_pause_is_not_lengthened_by_the_spread() -> None:
    """A restarted process that remembers a Retry-After pause sends when it ends, not a
    spread delay after: the memory already says when."""
    mono, wall = Clock(0.0), Clock()
    outbox = MemorySpool()
    outbox.add([("e0", b"{}", wall.now)], wall.now)
    outbox.remember("https://api", "health", json.dumps({
        "mode": "rate_limited", "resume_in": 5.0, "written_at": wall.now}), wall.now + 60)
    api = ScriptedApi(mono, lambda n, now, eid: OK)
    engine = DeliveryEngine(outbox, api, clock=mono, wall=wall, rng=lambda: 0.99,
                            memory_key="https://api")
    engine.recall(outbox.recall("https://api", wall.now)["health"])
    engine.spread_start(outbox.pending_count())
    assert engine.next_wake() == pytest.approx(5.0)


class CountingOutbox(MemorySpool):
    """A memory outbox that counts the calls that change it."""

    def __init__(self) -> None:
        super().__init__(max_events=100_000)
        self.writes: Counter[str] = Counter()

    def settle(self, settlement: Settlement, now: float) -> None:
        self.writes["settle"] += 1
        super().settle(settlement, now)

    def remember(self, api_url: str, name: str, value: str, until: float) -> None:
        self.writes["remember"] += 1
        super().remember(api_url, name, value, until)


def test_queries_only_read_and_outcomes_are_written_by_commands() -> None:
    """next_wake, quiet, status and holds change nothing, in the engine or the outbox;
    the outcomes gathered reach the outbox when a command (record_settled) writes them,
    and until then the queries count them as written."""
    clock = Clock()
    outbox = CountingOutbox()
    outbox.add([(f"e{i}", b"{}", clock.now) for i in range(3)], clock.now)
    api = ScriptedApi(clock, lambda n, t, e: UNAVAILABLE if e == "e2" else OK)
    engine = DeliveryEngine(outbox, api, clock=clock, rng=lambda: 0.5,
                            memory_key="http://127.0.0.1:9")
    for _ in range(3):
        event = engine.take()
        assert event is not None
        engine.settle(event, api(event))
    before = (dict(outbox.writes), outbox.pending_count(), engine.state, engine.status())
    for _ in range(3):
        wake = engine.next_wake()
        assert not engine.quiet()
        engine.holds()
        engine.status()
    assert (dict(outbox.writes), outbox.pending_count(), engine.state, engine.status()) == before
    assert outbox.pending_count() == 3  # two delivered, not yet written
    assert wake is not None and wake > clock.now  # e2's backoff, counted though unwritten
    assert before[3] == "backing_off"  # so is the status: no "idle" until the worker writes
    engine.record_settled()
    assert outbox.writes["settle"] == 1 and outbox.pending_count() == 1
    assert engine.status() == "backing_off"


def test_an_idle_worker_leaves_the_write_to_the_request_still_in_flight() -> None:
    """While another request is in flight, a worker that goes idle writes nothing: the
    outcomes are written in one transaction when the last request settles (or once
    ``SETTLE_BATCH`` are waiting), not in one small transaction per idle turn, which
    is what slowed a flaky API's drain."""
    clock = Clock()
    outbox = CountingOutbox()
    outbox.add([(f"e{i}", b"{}", clock.now) for i in range(3)], clock.now)
    api = ScriptedApi(clock, lambda n, t, e: OK)
    engine = DeliveryEngine(outbox, api, clock=clock, rng=lambda: 0.5, max_in_flight=4)
    engine.state = replace(engine.state, limit=4.0)  # past the first round of successes
    first, second = engine.take(), engine.take()
    assert first is not None and second is not None
    engine.settle(first, api(first))
    engine.record_settled()  # the idle turn of the worker that sent ``first``
    assert outbox.writes["settle"] == 0 and engine.status() == "sending"
    engine.settle(second, api(second))
    engine.record_settled()  # nothing in flight now: written, both in one
    assert outbox.writes["settle"] == 1 and outbox.pending_count() == 1


def test_at_rest_only_when_nothing_is_in_flight_and_nothing_leased_may_go() -> None:
    """The hint that wakes a drain's waiter: not while a request is in flight, nor while
    leased events may go now; yes once all is settled, or when a pause holds what is
    leased."""
    engine, api, clock, _ = make(3, lambda n, t, e: UNAVAILABLE if n == 1 else OK)
    assert engine.at_rest()  # nothing leased yet
    first = engine.take()
    assert first is not None and not engine.at_rest()  # in flight
    engine.settle(first, api(first))
    assert not engine.at_rest()  # settled, but the rest of the lease may go now
    engine.state = replace(engine.state, mode=Mode.CIRCUIT_OPEN, resume_at=clock.now + 60)
    assert engine.at_rest()  # paused: what is leased waits
    engine.state = replace(engine.state, mode=Mode.SENDING, resume_at=0.0)
    engine.pump()
    assert engine.at_rest() and not engine.quiet()  # one retry waits its backoff


def test_a_status_read_between_settle_and_write_says_backing_off() -> None:
    """A retry waiting its backoff shows in ``status()`` from its settle on, even after
    another event was taken and delivered and before anything was written."""
    engine, api, _, outbox = make(3, lambda n, t, e: UNAVAILABLE if e == "e0" else OK)
    engine.state = replace(engine.state, limit=4.0)
    first, second = engine.take(), engine.take()
    assert first is not None and second is not None
    engine.settle(first, api(first))
    third = engine.take()
    assert third is not None and engine.status() == "sending"
    engine.settle(second, api(second))
    engine.settle(third, api(third))
    assert outbox.pending_count() == 3  # nothing written yet
    assert engine.status() == "backing_off"


def test_a_drain_waiter_is_woken_when_the_engine_may_be_done_not_at_every_settle() -> None:
    """Worker threads deliver 40 events; the thread waiting for them to be delivered is
    woken a handful of times, not once per event, and still returns as soon as they
    are."""
    engine, api, _, _ = make(40, lambda n, t, e: OK)
    workers = DeliveryWorkers(engine)
    wakes = []

    class CountingCondition(type(workers._settled)):  # type: ignore[misc]
        def notify_all(self) -> None:
            wakes.append(1)
            super().notify_all()

    workers._settled = CountingCondition(threading.Lock())
    workers.start()
    try:
        assert workers.wait_quiet(time.monotonic() + 10.0)
    finally:
        assert workers.stop(time.monotonic() + 5.0)
    assert len(api.delivered()) == 40
    assert 1 <= len(wakes) <= 5


def test_settle_returns_what_to_say_and_logs_nothing_itself(
        caplog: pytest.LogCaptureFixture) -> None:
    """A refused key pauses sending: settle logs nothing under its lock; the notice it
    returns says it once when published, and a new key lets it be said again."""
    engine, api, _, _ = make(2, lambda n, t, e: REFUSED)
    event = engine.take()
    assert event is not None
    with caplog.at_level(logging.INFO, logger="massugc_logging"):
        settled = engine.settle(event, api(event))
        assert caplog.records == []
        assert [n.topic for n in settled.notices] == [Topic.SEND_RESUMED, Topic.SEND_AUTH]
        engine.diagnostics.publish(settled.notices)
        engine.diagnostics.publish(settled.notices)
        assert [r.getMessage()[:40] for r in caplog.records] == [
            "The MassUGC Cloud API refused the API ke"]
        engine.diagnostics.publish(engine.key_changed())
        engine.diagnostics.publish(settled.notices)
    assert len(caplog.records) == 2
