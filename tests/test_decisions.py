"""The pure decision core: outcomes in, the event's fate and the next state out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from massugc_logging.outcome import Outcome, OutcomeKind
from massugc_logging.pipeline.decisions import (
    EventAction,
    Mode,
    SendState,
    memory_bound,
    on_new_key,
    on_outcome,
)
from massugc_logging.pipeline.retry import RetryPolicy, probe_steps

OK = Outcome(OutcomeKind.DELIVERED, 200)
FAIL = Outcome(OutcomeKind.TRANSIENT, 503, reason="unavailable")
NO_ANSWER = Outcome(OutcomeKind.TRANSIENT, None, reason="connection refused")
TIMED_OUT = Outcome(OutcomeKind.TRANSIENT, None, reason="no answer in time", timed_out=True)
REFUSED = Outcome(OutcomeKind.AUTH, 401)
REJECTED = Outcome(OutcomeKind.PERMANENT, 422)
POLICY = RetryPolicy()


def run(outcomes: list[Outcome], *, step: float = 0.01, max_in_flight: int = 4,
        policy: RetryPolicy = POLICY) -> list[tuple[float, SendState, EventAction, float]]:
    """Feed outcomes one after another; return (now, state, action, retry_at) after each."""
    state = SendState.initial(max_in_flight)
    now = 1000.0
    seen = []
    for outcome in outcomes:
        now = max(now + step, state.resume_at)
        decision, state = on_outcome(policy, state, outcome, attempts=1, sent_at=now - step / 2,
                                     now=now, rng=lambda: 0.5)
        seen.append((now, state, decision.action, decision.retry_at))
    return seen


def test_sending_starts_with_one_request_and_grows_by_one_per_round() -> None:
    """Slow start: 1 in flight, then 2 after a success, and up to max_in_flight."""
    slots = [s.slots(now) for now, s, _, _ in run([OK] * 10)]
    assert SendState.initial(4).slots(0) == 1
    assert slots[0] == 2 and slots[-1] == 4 and slots == sorted(slots)


def test_a_transient_failure_reschedules_only_that_event() -> None:
    """One 503 keeps the API open: the event is due again soon, sending goes on."""
    (now, state, action, retry_at), = run([FAIL])
    assert action is EventAction.RETRY
    assert state.mode is Mode.SENDING and state.slots(now) >= 1
    assert now <= retry_at <= now + POLICY.backoff_base


def test_failures_halve_the_requests_in_flight_at_most_once_per_round() -> None:
    """Multiplicative decrease: 4 -> 2 on a failure; failures of requests sent before that
    decrease are the same signal and do not halve it again."""
    state = SendState.initial(4)
    for _ in range(10):
        _, state = on_outcome(POLICY, state, OK, attempts=1, sent_at=0.0, now=1.0,
                              rng=lambda: 0.5)
    assert state.slots(2.0) == 4
    _, state = on_outcome(POLICY, state, FAIL, attempts=1, sent_at=1.5, now=2.0,
                          rng=lambda: 0.5)
    assert state.slots(2.0) == 2
    _, state = on_outcome(POLICY, state, FAIL, attempts=1, sent_at=1.6, now=2.1,
                          rng=lambda: 0.5)
    assert state.slots(2.1) == 2  # sent before the decrease: no second halving
    _, state = on_outcome(POLICY, state, FAIL, attempts=1, sent_at=2.2, now=2.3,
                          rng=lambda: 0.5)
    assert state.slots(2.3) == 1


def test_every_third_failing_never_opens_the_circuit() -> None:
    """Partial failure is not an outage, however long it lasts."""
    seen = run([OK, OK, FAIL] * 400)
    assert all(s.mode is Mode.SENDING for _, s, _, _ in seen)


def test_an_outage_opens_the_circuit_after_the_threshold() -> None:
    """Consecutive failures with most recent outcomes failing open the circuit."""
    seen = run([NO_ANSWER] * POLICY.circuit_threshold)
    assert [s.mode for _, s, _, _ in seen[:-1]] == [Mode.SENDING] * (POLICY.circuit_threshold - 1)
    now, state, _, _ = seen[-1]
    assert state.mode is Mode.CIRCUIT_OPEN
    assert state.slots(now) == 0 and state.slots(state.resume_at) == 1
    assert 0.5 <= state.resume_at - now <= 1.0  # the first probe about a second later


def test_a_streak_after_a_long_healthy_spell_needs_the_failure_share_too() -> None:
    """Five failures after many successes in the window do not open it; more do."""
    seen = run([OK] * 10 + [NO_ANSWER] * POLICY.circuit_threshold, step=0.1)
    assert seen[-1][1].mode is Mode.SENDING
    seen = run([OK] * 10 + [NO_ANSWER] * 12, step=0.1)
    assert seen[-1][1].mode is Mode.CIRCUIT_OPEN


def test_probes_are_spaced_further_apart_up_to_the_cap_and_one_success_closes() -> None:
    """While open: one probe at a time, spacing growing to probe_interval_cap; the first
    success closes the circuit and sending restarts from one request."""
    seen = run([NO_ANSWER] * 40 + [OK])
    gaps = [round(b[0] - a[0], 6) for a, b in zip(seen[5:-1], seen[6:-1])]
    assert gaps == sorted(gaps) and max(gaps) <= POLICY.probe_interval_cap
    assert gaps[-1] == POLICY.probe_interval_cap * 0.875  # rng 0.5: mid upper quarter
    assert all(s.slots(s.resume_at) == 1 for _, s, _, _ in seen[5:-1])
    now, state, action, _ = seen[-1]
    assert action is EventAction.DELIVERED and state.mode is Mode.SENDING
    assert state.slots(now) == 1



def test_no_answer_at_all_drops_to_one_request_in_flight() -> None:
    """A refused connection is the API's trouble, not the event's: one request at a time
    from then on (a 503 only halves)."""
    state = run([OK] * 10)[-1][1]
    assert state.slots(0) == 4
    _, refused = on_outcome(POLICY, state, NO_ANSWER, attempts=1, sent_at=50.0, now=50.1,
                            rng=lambda: 0.5)
    _, busy = on_outcome(POLICY, state, FAIL, attempts=1, sent_at=50.0, now=50.1,
                         rng=lambda: 0.5)
    assert refused.slots(50.1) == 1 and busy.slots(50.1) == 2


STEPS = probe_steps(POLICY)
BOUND = memory_bound(POLICY)


def closed_after_outage(failures: int = 30) -> tuple[float, SendState]:
    """The state just after a probe went through, following ``failures`` failures."""
    now, closed, _, _ = run([NO_ANSWER] * failures + [OK])[-1]
    return now, closed


def test_a_circuit_that_closes_remembers_its_spacing_and_one_failure_reopens_it() -> None:
    """Back from a long outage: one request at a time, and a single failure (a full API)
    reopens the circuit at the spacing it had reached, not at one-second probes."""
    now, closed = closed_after_outage()
    assert closed.mode is Mode.SENDING and closed.remembered == min(25, BOUND) - 1
    _, grown = on_outcome(POLICY, closed, OK, attempts=1, sent_at=now, now=now + 0.1,
                          rng=lambda: 0.5)
    assert grown.slots(now + 0.1) == 1  # no growth while the memory lasts
    _, reopened = on_outcome(POLICY, closed, FAIL, attempts=1, sent_at=now, now=now + 0.1,
                             rng=lambda: 0.5)
    assert reopened.mode is Mode.CIRCUIT_OPEN and reopened.failed_probes == closed.remembered + 1
    assert reopened.resume_at - (now + 0.1) == POLICY.probe_interval_cap * 0.75  # upper half


def test_the_memory_is_bounded_whatever_the_outage_lasted() -> None:
    """Eight hours down are remembered no longer than a quarter of an hour."""
    assert closed_after_outage(3000)[1].remembered == BOUND - 1
    assert (STEPS, BOUND) == (6, 24)  # 1 s doubling to 60 s


def test_successes_spend_the_memory_and_then_sending_grows_again() -> None:
    """Each success takes one step off; once spent, the usual rules are back: growth to
    max_in_flight, and only a real streak opens the circuit."""
    seen = run([NO_ANSWER] * 12 + [OK] * 30)
    levels = [s.remembered for _, s, _, _ in seen[12:]]
    assert levels == sorted(levels, reverse=True) and levels[-1] == 0
    spent = levels.index(0)
    assert spent == levels[0] > 0
    assert all(s.slots(now) == 1 for now, s, _, _ in seen[12:12 + spent])
    now, state, _, _ = seen[-1]
    assert state.slots(now) == 4
    _, after = on_outcome(POLICY, state, FAIL, attempts=1, sent_at=now, now=now + 0.1,
                          rng=lambda: 0.5)
    assert after.mode is Mode.SENDING


def test_a_late_failure_of_a_request_sent_before_the_close_does_not_reopen_it() -> None:
    """A request that hung from before the outage ended fails after the probe closed the
    circuit: that is old news, not a full API."""
    now, closed = closed_after_outage()
    _, after = on_outcome(POLICY, closed, FAIL, attempts=1, sent_at=now - 5.0, now=now + 0.1,
                          rng=lambda: 0.5)
    assert after.mode is Mode.SENDING


def test_retry_after_just_after_the_close_keeps_the_remembered_spacing() -> None:
    """A 503 with Retry-After: 1 right after an outage pauses for the remembered spacing,
    not for one second."""
    now, closed = closed_after_outage()
    busy = Outcome(OutcomeKind.TRANSIENT, 503, retry_after=1.0)
    _, after = on_outcome(POLICY, closed, busy, attempts=1, sent_at=now, now=now + 0.1,
                          rng=lambda: 0.5)
    assert after.mode is Mode.RATE_LIMITED
    assert after.resume_at - (now + 0.1) == POLICY.probe_interval_cap * 0.875


def test_a_flaky_api_after_an_outage_is_back_to_normal_within_a_quarter_hour() -> None:
    """An API that comes back failing every third request after a long outage is taken
    for a full one until the memory is spent (two successes a round, each round a
    pause at the probe spacing), then sending goes on without pauses of all."""
    now, state = closed_after_outage(3000)
    paused = 0.0
    for outcome in [OK, OK, FAIL] * 100:
        sent = max(now + 0.1, state.resume_at)
        paused += sent - (now + 0.1)
        _, state = on_outcome(POLICY, state, outcome, attempts=1, sent_at=sent,
                              now=sent + 0.05, rng=lambda: 0.5)
        now = sent + 0.05
    assert state.mode is Mode.SENDING and state.remembered == 0
    assert 60 < paused < 15 * 60


def test_retry_after_pauses_everything_for_that_long() -> None:
    """429 with Retry-After: 2 pauses all sending for two seconds, then one probe."""
    limited = Outcome(OutcomeKind.TRANSIENT, 429, retry_after=2.0)
    decision, state = on_outcome(POLICY, SendState.initial(4), limited, attempts=1,
                                 sent_at=10.0, now=10.0, rng=lambda: 0.5)
    assert state.mode is Mode.RATE_LIMITED
    assert state.slots(11.9) == 0 and state.slots(12.0) == 1
    assert decision.action is EventAction.RETRY and decision.retry_at == 10.0


def test_a_refused_key_pauses_until_a_new_key() -> None:
    """401 pauses for auth_pause; a new key ends the pause at once."""
    _, state = on_outcome(POLICY, SendState.initial(4), REFUSED, attempts=1, sent_at=0.0,
                          now=0.0, rng=lambda: 0.5)
    assert state.mode is Mode.AUTH_PAUSED and state.slots(POLICY.auth_pause - 1) == 0
    assert on_new_key(state).slots(1.0) == 1


def test_a_permanent_rejection_dead_letters_and_counts_as_an_answer() -> None:
    """422: the event is dead-lettered; the API answered, so a streak ends."""
    seen = run([FAIL, FAIL, REJECTED])
    assert seen[-1][2] is EventAction.DEAD_LETTER and seen[-1][1].streak == 0


outcomes = st.lists(st.sampled_from([OK, FAIL, REFUSED, REJECTED,
                                     Outcome(OutcomeKind.TRANSIENT, 503, retry_after=5.0)]),
                    max_size=200)


@settings(max_examples=300)
@given(outcomes, st.integers(min_value=1, max_value=8),
       st.floats(min_value=0.0, max_value=30.0))
def test_invariants_hold_for_any_sequence(sequence: list[Outcome], max_in_flight: int,
                                          step: float) -> None:
    """Whatever happens: slots stay within [0, max_in_flight], at most one while paused,
    an event is never due in the past nor past backoff_cap, and a success always reopens."""
    for now, state, action, retry_at in run(sequence, step=step, max_in_flight=max_in_flight):
        assert 0 <= state.slots(now) <= max_in_flight
        if state.mode is not Mode.SENDING:
            assert state.slots(now) <= 1
            assert state.resume_at - now <= max(POLICY.probe_interval_cap,
                                                POLICY.auth_pause, 5.0) + 1e-6
        if action is EventAction.RETRY:
            assert now <= retry_at <= now + POLICY.backoff_cap
        if action is EventAction.DELIVERED:
            assert state.mode is Mode.SENDING


@given(st.lists(st.booleans(), max_size=300))
def test_no_streak_shorter_than_the_threshold_opens_the_circuit(pattern: list[bool]) -> None:
    """The circuit needs a run of circuit_threshold failures to connect: anything less
    never opens it."""
    runs, longest = 0, 0
    for ok in pattern:
        runs = 0 if ok else runs + 1
        longest = max(longest, runs)
    seen = run([OK if ok else NO_ANSWER for ok in pattern])
    opened = any(s.mode is Mode.CIRCUIT_OPEN for _, s, _, _ in seen)
    if longest < POLICY.circuit_threshold:
        assert not opened


def test_a_failed_probe_after_an_auth_pause_waits_before_the_next_one() -> None:
    """403, the pause ends, the probe then meets a dead network: the next probe is spaced
    out, not sent at once in a tight loop."""
    _, state = on_outcome(POLICY, SendState.initial(4), REFUSED, attempts=1, sent_at=0.0,
                          now=0.0, rng=lambda: 0.5)
    probe_at = state.resume_at
    _, state = on_outcome(POLICY, state, FAIL, attempts=2, sent_at=probe_at,
                          now=probe_at + 0.01, rng=lambda: 0.5)
    assert state.slots(probe_at + 0.02) == 0
    assert state.resume_at >= probe_at + 0.5


def test_retry_after_zero_on_every_answer_is_not_a_tight_loop() -> None:
    """A server answering 503 with Retry-After: 0 every time is probed at a growing
    spacing, like an open circuit."""
    zero = Outcome(OutcomeKind.TRANSIENT, 503, retry_after=0.0)
    state, now, gaps = SendState.initial(4), 0.0, []
    for _ in range(12):
        sent = max(now, state.resume_at)
        _, state = on_outcome(POLICY, state, zero, attempts=1, sent_at=sent, now=sent,
                              rng=lambda: 0.5)
        gaps.append(state.resume_at - sent)
        now = sent
    assert min(gaps) >= 0.5 and gaps == sorted(gaps) and gaps[-1] > 5


def test_a_pause_beyond_any_horizon_is_a_clock_set_back_and_is_over() -> None:
    """A wall clock set back by a day must not stop sending for a day."""
    _, state = on_outcome(POLICY, SendState.initial(4), REFUSED, attempts=1, sent_at=0.0,
                          now=86_400.0, rng=lambda: 0.5)
    assert state.slots(86_401.0) == 0
    assert state.slots(1.0) == 1  # the clock went back a day: the pause is void


# -- the retry budget ------------------------------------------------------------------


def quick_retries(seen: list[tuple[float, SendState, EventAction, float]]) -> int:
    """Failures retried at the event's quick backoff, with sending going on."""
    return sum(1 for now, state, action, retry_at in seen
               if action is EventAction.RETRY and state.mode is Mode.SENDING
               and retry_at <= now + POLICY.backoff_cap)


def test_a_failure_among_successes_is_retried_at_once() -> None:
    """One 503 (or timeout) among successes: the event goes again within the quick
    backoff and nothing pauses, as long as the budget lasts."""
    for failure in (FAIL, TIMED_OUT):
        now, state, action, retry_at = run([OK] * 20 + [failure])[-1]
        assert action is EventAction.RETRY and state.mode is Mode.SENDING
        assert retry_at <= now + POLICY.backoff_base


def test_overload_beyond_the_budget_pauses_sending() -> None:
    """An API that fails every other request (a fleet at twice its capacity): quick
    retries stop once the budget is spent, and sending pauses seconds at a time."""
    seen = run([OK, FAIL] * 40)
    assert any(s.mode is Mode.CIRCUIT_OPEN for _, s, _, _ in seen)
    pauses = [s.resume_at - now for now, s, _, _ in seen if s.mode is Mode.CIRCUIT_OPEN]
    assert min(pauses) >= 2.0  # one token owed: 2 to 4 s
    assert max(pauses) >= 30.0  # three or more: 30 to 60 s


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([OK, FAIL, TIMED_OUT]), max_size=300))
def test_quick_retries_of_overload_never_exceed_what_answers_earned(
        sequence: list[Outcome]) -> None:
    """Whatever the answers: quick retries of overload answers are at most the budget
    the client starts with, plus what successes and time put back."""
    seen = run(sequence)
    successes = sum(1 for o in sequence if o is OK)
    elapsed = seen[-1][0] - 1000.0 if seen else 0.0
    earned = (1.0 + POLICY.retry_budget_per_success * successes
              + POLICY.retry_budget_per_second * elapsed)
    assert quick_retries(seen) <= earned + 1e-9


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=150, max_size=150))
def test_an_api_failing_every_third_request_never_pauses_whatever_the_answer_order(
        picks: list[int]) -> None:
    """``bench.py``'s flaky API, with the answers of the requests in flight arriving in any
    order: the budget neither fills nor drains, and with the in-flight limit kept low
    (halved at each 503) no order overdraws it. Sending never pauses."""
    state = SendState.initial(4)
    now, sent, in_flight = 1000.0, 0, []
    for pick in picks:
        while len(in_flight) < state.slots(now):
            sent += 1
            in_flight.append((sent, now))
        number, sent_at = in_flight.pop(pick % len(in_flight))
        now += 0.001
        outcome = FAIL if number % 3 == 0 else OK
        _, state = on_outcome(POLICY, state, outcome, attempts=1, sent_at=sent_at, now=now,
                              rng=lambda: 0.5)
        assert state.mode is Mode.SENDING and state.tokens >= 0.0


def test_refused_connections_spend_nothing_from_the_budget() -> None:
    """An API that is down is the circuit's to pace: its refusals leave the budget as it
    was, so the first 503 after it is back is still retried at once."""
    seen = run([OK] * 4 + [NO_ANSWER] * 3)
    tokens = [s.tokens for _, s, _, _ in seen]
    assert tokens[4:] == [tokens[3]] * 3
    now, state = seen[-1][0], seen[-1][1]
    _, after = on_outcome(POLICY, state, OK, attempts=1, sent_at=now, now=now + 0.1,
                          rng=lambda: 0.5)
    decision, later = on_outcome(POLICY, after, FAIL, attempts=1, sent_at=now + 0.1,
                                 now=now + 0.2, rng=lambda: 0.5)
    assert later.mode is Mode.SENDING and decision.retry_at <= now + 0.2 + POLICY.backoff_base


def test_retry_after_is_honoured_and_spends_nothing() -> None:
    """A 429 with Retry-After is the server's own pace: it pauses for that long whatever
    the budget holds, and leaves the budget alone."""
    limited = Outcome(OutcomeKind.TRANSIENT, 429, retry_after=5.0)
    state = run([OK] * 4)[-1][1]
    _, after = on_outcome(POLICY, state, limited, attempts=1, sent_at=100.0, now=100.1,
                          rng=lambda: 0.5)
    assert after.mode is Mode.RATE_LIMITED and after.tokens == state.tokens


@pytest.mark.parametrize(("outcome", "overloaded"), [
    (FAIL, True), (TIMED_OUT, True), (Outcome(OutcomeKind.TRANSIENT, 429), True),
    (Outcome(OutcomeKind.TRANSIENT, 408), True), (Outcome(OutcomeKind.TRANSIENT, 502), True),
    (Outcome(OutcomeKind.TRANSIENT, 503, retry_after=2.0), False), (NO_ANSWER, False),
    (OK, False), (REJECTED, False)])
def test_what_counts_as_an_overload_answer(outcome: Outcome, overloaded: bool) -> None:
    """408, 429 and 5xx without Retry-After, and no answer in time: the API is busy.
    Refused connections, Retry-After and answers are not the budget's."""
    assert outcome.overloaded is overloaded


def test_late_answers_of_requests_sent_before_the_pause_spend_nothing() -> None:
    """Four requests in flight meet a full API: the first two answers spend the budget
    and pause sending; the two late ones are old news and add no debt."""
    state = SendState.initial(4)  # one token, as a fresh process starts
    _, state = on_outcome(POLICY, state, FAIL, attempts=1, sent_at=50.0, now=50.1,
                          rng=lambda: 0.5)
    _, paused = on_outcome(POLICY, state, FAIL, attempts=1, sent_at=50.0, now=50.2,
                           rng=lambda: 0.5)
    assert paused.mode is Mode.CIRCUIT_OPEN and paused.tokens < 0
    for late in (50.3, 50.4):
        _, after = on_outcome(POLICY, paused, FAIL, attempts=1, sent_at=50.0, now=late,
                              rng=lambda: 0.5)
        assert after.tokens == paused.tokens and after.resume_at == paused.resume_at
