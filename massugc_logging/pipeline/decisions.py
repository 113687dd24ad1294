"""The pure decision core of delivery: given an outcome and the state, what happens next.

Values in, decisions out: the state is a frozen :class:`SendState`, the clock
reading and the random source are arguments, and nothing here touches a
socket, a file or a thread. The delivery engine, ``spool replay`` and the
fleet simulation in ``benchmarks/fleet.py`` all call these same functions.

What the rules tell apart is an unhealthy *event* from an unhealthy *API*:

- A transient failure (timeout, connection error, 408, 5xx without
  ``Retry-After``) reschedules that event on its own backoff; the others
  keep flowing, and the number of requests in flight is halved (at most once
  per round of requests) so a struggling server is eased off, not abandoned.
  A failure with no answer at all (refused, reset, timed out) drops it to one
  request instead (also at most once per round): nothing there is the event's
  fault.
- Signals about the whole API pause everything: ``Retry-After``, a refused key
  (401/403, and 403 ``device_mismatch``: the key is in use on another device),
  a certificate that does not verify and a usage-log path that answers 404 on
  every known route (the circuit opens at once: retrying fast cannot help,
  probing slowly finds the fix), and the circuit.
- 403 ``insufficient_credits`` holds only the events that cost credits (the
  successes) for ``auth_pause``; failure reports cost nothing and keep flowing.
  A new key ends it, as it ends a pause for a refused key.
  The event that brought the signal stays due: the pause, not its own schedule,
  holds it back, so it goes first when sending resumes.
- The circuit opens on evidence, not on one unlucky streak: a run of
  ``circuit_threshold`` consecutive failures *and* at least
  ``circuit_failure_share`` of the outcomes over the last ``circuit_window``
  seconds failing. A streak alone trips on a flaky API (every third request
  failing gives a run of five about once in 250 outcomes); a share alone
  reacts late after a long healthy spell. Together they open within a few
  requests of a real outage and stay shut under partial failure. This is the
  failure-rate breaker of resilience4j with a minimum-calls guard, with the
  threshold of Google SRE's client-side throttling (K = 2: trouble begins where
  failures outnumber successes).
- Retries of overload answers (503, 429 or 408 without ``Retry-After``, other
  5xx, timeouts) are spent from a retry budget, a token bucket that answers of
  the API refill (the retry budgets of Google SRE, gRPC and Finagle; the AWS
  SDKs' token bucket). A client starts with one token and holds at most
  ``retry_budget``; each answer puts back ``retry_budget_per_success``, time
  alone ``retry_budget_per_second``. While a token is left, the failed event is
  retried at its quick backoff: one unlucky request among successes costs
  nothing, and an API failing every third request neither fills nor drains
  the budget, whatever order its answers arrive in (the in-flight limit,
  halved at each 503, stays too low for one to overtake enough others).
  Past empty the budget runs into debt, and sending pauses for
  :data:`STEPS_PER_TOKEN_OWED` probe steps per token owed
  (:func:`~massugc_logging.pipeline.retry.overload_delay`): a fleet that offers
  more than 1.5x what the API serves steps back within seconds.
  Refused connections spend nothing; the circuit paces those.
- While open: one probe at a time, spaced by :func:`~massugc_logging.pipeline.retry.probe_delay`;
  the first success closes the circuit and sending starts again from one request
  in flight, growing by one per round of successes (additive increase).
- The circuit remembers: closing keeps the failed probes it had counted (at
  most :func:`memory_bound`, 24 with the defaults), one fewer per success. While
  any are left, sending stays at one request at a time and a single failure of
  a request sent after the close opens the circuit again at the spacing they
  give. A fleet coming back from an outage is what needs this: ten thousand
  clients find the API again within one probe spacing of each other, and each
  that meets a full API steps back for as long as it had been waiting, instead
  of starting over from one-second probes and knocking the API over again
  (``benchmarks/fleet.py`` measures it). The price is paid by a desktop whose
  API comes back flaky after a long outage: it is taken for a full one until
  the memory is spent, up to about a quarter of an hour of slower delivery with
  nothing lost. A reopening for the memory, or for the budget's debt, pauses
  for a spacing drawn from the upper half of its step (wider than the probes'
  quarter), so a fleet that meets a full API spreads out as it steps back.
- What sending has learnt outlives the process: :func:`memory_of` says what a
  process starting on the same spool should know (a pause and its end, the
  circuit's probe count and memory, a hold on credits), :func:`memory_lasts`
  how long that stays true, and :func:`recalled` resumes from it, so a
  restarted fleet neither probes sooner nor waits longer than it had to.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Optional

from massugc_logging.outcome import Outcome, OutcomeKind
from massugc_logging.pipeline.retry import (
    Random,
    RetryPolicy,
    capped_retry_after,
    event_retry_delay,
    overload_delay,
    probe_delay,
    probe_steps,
)

#: No pause is longer than this (``max_retry_after`` is an hour by default).
PAUSE_HORIZON = 2 * 3600.0


class Mode(enum.Enum):
    """Whether sending is open, and if not, why: the one answer to "why is nothing sent".

    The first members are what the API's answers lead to (the decision core moves
    between them); the last three are holds of the configuration, which only a new key
    or a new handler lifts.
    """

    SENDING = "sending"
    CIRCUIT_OPEN = "circuit_open"
    RATE_LIMITED = "rate_limited"
    AUTH_PAUSED = "auth_paused"
    #: The API said the key is in use on another device (403 ``device_mismatch``).
    DEVICE_MISMATCH = "device_mismatch"
    #: No API key is configured.
    NO_KEY = "no_key"
    #: The configured API key is not a well-formed key.
    BAD_KEY = "bad_key"
    #: The API URL, timeout, CA bundle or headers are not usable.
    BAD_URL = "bad_url"


#: Holds of the configuration: nothing is sent until it changes.
HOLD_MODES = (Mode.NO_KEY, Mode.BAD_KEY, Mode.BAD_URL)


#: Modes in which sending waits for a key to change (or the pause to pass).
KEY_MODES = (Mode.AUTH_PAUSED, Mode.DEVICE_MISMATCH)


class EventAction(enum.Enum):
    """What becomes of the event whose outcome came in."""

    DELIVERED = "delivered"
    DEAD_LETTER = "dead_letter"
    RETRY = "retry"


@dataclass(frozen=True)
class EventDecision:
    """The event's fate; for ``RETRY``, the time it becomes due again."""

    action: EventAction
    retry_at: float = 0.0


@dataclass(frozen=True)
class SendState:
    """What the engine knows of the API's health. Replace, never mutate.

    Attributes:
        max_in_flight: the most requests at once, however healthy the API.
        mode: sending, or paused and why.
        resume_at: no request starts before this time (a pause or the next probe).
        limit: requests allowed in flight while sending (a float, for additive increase).
        streak: consecutive transient failures, across events.
        failed_probes: the steps of probe spacing reached since the circuit opened:
            one per failed probe, or more when the retry budget's debt set them.
        remembered: after the circuit closed, the failed probes it had counted (at
            most :func:`memory_bound`), one fewer per success; while above zero one
            request goes at a time and a failure reopens the circuit.
        closed_at: when the circuit last closed.
        opened_at: when sending last paused; outcomes of requests sent earlier
            do not move the probe schedule.
        reduced_at: when ``limit`` was last halved; failures of requests sent
            before then are the same signal and do not halve it again.
        window: ``(second, successes, failures)`` buckets over ``circuit_window``.
        credits_until: events that cost credits are held until then (403
            ``insufficient_credits``); the others keep flowing.
        tokens: the retry budget left at ``tokens_at`` (negative: owed); a client
            starts with one token and earns the rest (see :func:`_spend_token`).
        tokens_at: when ``tokens`` was last counted.
    """

    max_in_flight: int = 4
    mode: Mode = Mode.SENDING
    resume_at: float = 0.0
    limit: float = 1.0
    streak: int = 0
    failed_probes: int = 0
    opened_at: float = -math.inf
    reduced_at: float = -math.inf
    window: tuple[tuple[int, int, int], ...] = ()
    remembered: int = 0
    closed_at: float = -math.inf
    credits_until: float = -math.inf
    tokens: float = 1.0
    tokens_at: float = -math.inf

    @classmethod
    def initial(cls, max_in_flight: int) -> SendState:
        """A fresh state: healthy, starting from one request in flight."""
        return cls(max_in_flight=max(1, int(max_in_flight)))

    def slots(self, now: float) -> int:
        """How many requests may be in flight at ``now`` (0 while paused).

        A pause ending further ahead than any pause is ever set can only come from a
        wall clock set back: it is over.
        """
        if now < self.resume_at <= now + PAUSE_HORIZON:
            return 0
        if self.mode is not Mode.SENDING:
            return 1  # one probe at a time
        return max(1, min(self.max_in_flight, int(self.limit)))

    def credits_held(self, now: float) -> bool:
        """Whether events that cost credits must wait at ``now`` (a hold further ahead than
        any is ever set can only come from a clock set back: it is over)."""
        return now < self.credits_until <= now + PAUSE_HORIZON

    def failure_share(self, now: float, span: float) -> tuple[int, int]:
        """``(failures, outcomes)`` over the last ``span`` seconds."""
        oldest = math.floor(now - span)
        failures = total = 0
        for second, ok, failed in self.window:
            if second > oldest:
                failures += failed
                total += ok + failed
        return failures, total


#: The deepest the retry budget goes into debt (see ``_spend_token``): a pause of the
#: circuit's longest spacing is reached well before.
_MAX_DEBT = 10.0

#: Probe steps of pause for each token the retry budget owes: with two, a client that
#: owes one token waits 2 to 4 s, two 8 to 16 s, three or more 30 to 60 s. Chosen in
#: the fleet simulation (2,000 clients restarted at once): one step per token let
#: the peak reach 5.6x the API's capacity, three kept it at 3.8x but made a single
#: desktop that meets a few 503s wait twice as long for little fleet-wide gain.
STEPS_PER_TOKEN_OWED = 2

#: How many probe steps' worth of successes a closed circuit remembers at most.
MEMORY_PER_STEP = 4


def memory_bound(policy: RetryPolicy) -> int:
    """The most successes a closed circuit's memory lasts: 24 with the defaults, enough
    for a desktop to work off a quarter-hour's backlog one request at a time, and
    few enough that a flaky API after an outage slows delivery for a quarter of an
    hour at most, not for as long as the outage lasted."""
    return MEMORY_PER_STEP * probe_steps(policy)


def _memory(state: SendState, *, sent_at: float) -> int:
    """What a closed circuit still remembers for a request sent at ``sent_at`` (0 for a
    request sent before the close: its failure is old news)."""
    if state.mode is not Mode.SENDING or sent_at < state.closed_at:
        return 0
    return state.remembered


def _counted(state: SendState, now: float, span: float, *, ok: bool) -> tuple[
        tuple[int, int, int], ...]:
    """The window with one more outcome, buckets older than ``span`` dropped."""
    second = math.floor(now)
    oldest = math.floor(now - span)
    kept = [b for b in state.window if b[0] > oldest]
    if kept and kept[-1][0] == second:
        _, good, bad = kept[-1]
        kept[-1] = (second, good + ok, bad + (not ok))
    else:
        kept.append((second, int(ok), int(not ok)))
    return tuple(kept)


def on_outcome(
    policy: RetryPolicy,
    state: SendState,
    outcome: Outcome,
    *,
    attempts: int,
    sent_at: float,
    now: float,
    rng: Random,
) -> tuple[EventDecision, SendState]:
    """Decide the event's fate and the next state after one outcome.

    Args:
        policy: the retry settings.
        state: the state before this outcome.
        outcome: how the attempt ended.
        attempts: the event's attempts including this one.
        sent_at: when this request started (separates probes from late answers).
        now: the time the outcome arrived.
        rng: floats in [0, 1), for jitter.
    """
    if outcome.kind in (OutcomeKind.DELIVERED, OutcomeKind.PERMANENT):
        return _answered(policy, state, outcome, sent_at=sent_at, now=now)
    if outcome.kind is OutcomeKind.NO_CREDITS:
        # The API is up and answered: only the events that cost credits wait.
        _, answered = _answered(policy, state, outcome, sent_at=sent_at, now=now)
        held = replace(answered, credits_until=max(state.credits_until, now + policy.auth_pause))
        return EventDecision(EventAction.RETRY, now), held
    if outcome.kind in (OutcomeKind.UNTRUSTED, OutcomeKind.NO_ROUTE):
        return _untrusted(policy, state, sent_at=sent_at, now=now, rng=rng)
    if outcome.kind in (OutcomeKind.AUTH, OutcomeKind.DEVICE_MISMATCH):
        mode = Mode.AUTH_PAUSED if outcome.kind is OutcomeKind.AUTH else Mode.DEVICE_MISMATCH
        resume = now + policy.auth_pause
        paused = replace(state, mode=mode, resume_at=max(state.resume_at, resume),
                         opened_at=now if state.mode is Mode.SENDING else state.opened_at)
        return EventDecision(EventAction.RETRY, now), paused
    return _failed(policy, state, outcome, attempts=attempts, sent_at=sent_at, now=now, rng=rng)


def _tokens(policy: RetryPolicy, state: SendState, now: float) -> float:
    """The retry budget at ``now``: what was left, plus what time has put back, within
    the budget's size."""
    elapsed = max(0.0, now - state.tokens_at) if math.isfinite(state.tokens_at) else 0.0
    return min(policy.retry_budget, state.tokens + elapsed * policy.retry_budget_per_second)


def _spend_token(policy: RetryPolicy, state: SendState, now: float) -> tuple[bool, float]:
    """Whether a retry of an overload answer may go at the event's quick backoff, and the
    budget after it. Spent past empty it runs into debt (at most :data:`_MAX_DEBT`
    tokens), which answers pay back before any retry is quick again."""
    tokens = _tokens(policy, state, now)
    return tokens >= 1.0, max(-_MAX_DEBT, tokens - 1.0)


def _answered(policy: RetryPolicy, state: SendState, outcome: Outcome, *, sent_at: float,
              now: float) -> tuple[EventDecision, SendState]:
    """The API answered (delivered, or rejected the event for good): it is up."""
    action = EventAction.DELIVERED if outcome.delivered else EventAction.DEAD_LETTER
    state = replace(state, tokens=min(policy.retry_budget, _tokens(policy, state, now)
                                      + policy.retry_budget_per_success), tokens_at=now)
    window = _counted(state, now, policy.circuit_window, ok=True)
    if state.mode is not Mode.SENDING:
        kept = max(0, min(state.failed_probes, memory_bound(policy)) - 1)
        healthy = replace(state, mode=Mode.SENDING, resume_at=0.0, limit=1.0, streak=0,
                          failed_probes=0, remembered=kept, closed_at=now, window=window)
    else:
        kept = max(0, _memory(state, sent_at=sent_at) - 1)
        limit = 1.0 if kept else min(float(state.max_in_flight),
                                     state.limit + 1.0 / max(state.limit, 1.0))
        healthy = replace(state, limit=limit, streak=0, remembered=kept, window=window)
    return EventDecision(action), healthy


def _failed(policy: RetryPolicy, state: SendState, outcome: Outcome, *, attempts: int,
            sent_at: float, now: float, rng: Random) -> tuple[EventDecision, SendState]:
    """A transient failure: reschedule the event; maybe ease off, pause or open the circuit."""
    window = _counted(state, now, policy.circuit_window, ok=False)
    streak = state.streak + 1
    limit, reduced_at = state.limit, state.reduced_at
    if sent_at >= state.reduced_at:
        # No answer at all (refused, reset, timed out): the API is the trouble, not
        # this event; one request at a time finds out when it is back.
        halved = 1.0 if outcome.status is None else state.limit / 2.0
        limit, reduced_at = max(1.0, halved), now
    after = replace(state, window=window, streak=streak, limit=limit, reduced_at=reduced_at)
    # An overload answer spends from the retry budget (a probe's too: an API that
    # answers 503 is up but overloaded); past empty, the debt sets how far out sending
    # waits. A refused connection spends nothing: the circuit spaces those; nor does
    # the late answer of a request sent before the pause began: old news.
    quick, owed = True, 0
    if outcome.overloaded and (state.mode is Mode.SENDING or sent_at >= state.opened_at):
        quick, tokens = _spend_token(policy, state, now)
        after = replace(after, tokens=tokens, tokens_at=now)
        owed = 0 if quick else max(1, math.ceil(-tokens)) * STEPS_PER_TOKEN_OWED

    probing = state.mode is not Mode.SENDING and sent_at >= state.opened_at
    memory = _memory(state, sent_at=sent_at)
    if outcome.retry_after is not None:
        # The server's pause, but never shorter than the probe spacing: a Retry-After
        # of 0 (or a date in the past) on every answer must not become a tight loop.
        probes = state.failed_probes + 1 if probing else (memory + 1 if memory else 0)
        pause = max(capped_retry_after(policy, outcome.retry_after),
                    probe_delay(policy, probes, rng))
        resume = max(state.resume_at, now + pause)
        paused = replace(after, mode=Mode.RATE_LIMITED, resume_at=resume, failed_probes=probes,
                         remembered=0,
                         opened_at=now if state.mode is Mode.SENDING else state.opened_at)
        return EventDecision(EventAction.RETRY, now), paused

    if state.mode in KEY_MODES and not probing:
        return EventDecision(EventAction.RETRY, now), after  # sent before the pause began

    if state.mode is not Mode.SENDING:
        if sent_at >= state.opened_at:  # this was the probe: space the next one further out
            probes = max(state.failed_probes + 1, owed)
            after = replace(after, mode=Mode.CIRCUIT_OPEN, failed_probes=probes,
                            resume_at=now + _spacing(policy, probes, owed, rng))
        return EventDecision(EventAction.RETRY, now), after

    if memory or owed:
        # Failing again while the memory lasts, or with the budget spent: the API answers
        # but is overloaded; pause for the spacing the memory, or the debt, says.
        probes = max(memory + 1, owed)
        opened = replace(after, mode=Mode.CIRCUIT_OPEN, opened_at=now, failed_probes=probes,
                         remembered=0, resume_at=now + overload_delay(policy, probes, rng))
        return EventDecision(EventAction.RETRY, now), opened
    failures, total = after.failure_share(now, policy.circuit_window)
    if streak >= policy.circuit_threshold and failures >= policy.circuit_failure_share * total:
        opened = replace(after, mode=Mode.CIRCUIT_OPEN, opened_at=now, failed_probes=0,
                         resume_at=now + probe_delay(policy, 0, rng))
        return EventDecision(EventAction.RETRY, now), opened
    return EventDecision(EventAction.RETRY, now + event_retry_delay(policy, attempts, rng)), after


def _spacing(policy: RetryPolicy, probes: int, owed: int, rng: Random) -> float:
    """The wait before the next probe: the probe spacing, or the overload pause when the
    retry budget's debt is what set it."""
    if owed and owed >= probes:
        return overload_delay(policy, owed, rng)
    return probe_delay(policy, probes, rng)


def _untrusted(policy: RetryPolicy, state: SendState, *, sent_at: float, now: float,
               rng: Random) -> tuple[EventDecision, SendState]:
    """The certificate did not verify, or no usage-log path exists: no amount of fast
    retrying helps; open the circuit at once and probe at its pace until it is fixed."""
    window = _counted(state, now, policy.circuit_window, ok=False)
    if state.mode is Mode.CIRCUIT_OPEN:
        probes = state.failed_probes + (1 if sent_at >= state.opened_at else 0)
        opened_at = state.opened_at
    else:
        probes, opened_at = 0, now
    after = replace(state, mode=Mode.CIRCUIT_OPEN, window=window, streak=state.streak + 1,
                    failed_probes=probes, opened_at=opened_at, limit=1.0,
                    resume_at=now + probe_delay(policy, probes, rng))
    return EventDecision(EventAction.RETRY, now), after


def on_new_key(state: SendState) -> SendState:
    """A new API key was set: a pause for the refused key (or a key in use on another
    device) ends now, and so does a hold for missing credits."""
    state = replace(state, credits_until=-math.inf)
    if state.mode in KEY_MODES:
        return replace(state, mode=Mode.SENDING, resume_at=0.0, limit=1.0, failed_probes=0,
                       remembered=0)
    return state


def memory_of(state: SendState, now: float) -> Optional[dict[str, Any]]:
    """What a process starting on the same spool should know of the API's health, in
    seconds from ``now``: a pause (the circuit with its probe count, ``Retry-After``, a
    refused key, a key in use elsewhere), what a closed circuit still remembers, a hold on
    credits. None when sending is simply open (nothing worth keeping)."""
    credits_in = max(0.0, state.credits_until - now) if state.credits_held(now) else 0.0
    if state.mode is Mode.SENDING and not state.remembered and not credits_in:
        return None
    paused = state.mode is not Mode.SENDING
    return {"mode": state.mode.value,
            "resume_in": round(max(0.0, state.resume_at - now), 3) if paused else 0.0,
            "failed_probes": state.failed_probes, "remembered": state.remembered,
            "credits_in": round(credits_in, 3)}


def memory_lasts(policy: RetryPolicy, memory: Mapping[str, Any]) -> float:
    """How long a memory stays true: until its pause ends, and one probe spacing more so
    that a process starting just after still knows how far the probes had spread."""
    return max(float(memory.get("resume_in", 0.0)),
               float(memory.get("credits_in", 0.0))) + policy.probe_interval_cap


def recalled(policy: RetryPolicy, state: SendState, memory: Mapping[str, Any], *, age: float,
             now: float) -> SendState:
    """``state`` picking up where a process that wrote ``memory`` ``age`` seconds ago left
    off: no sooner and no later than the memory says. A memory that cannot be read is
    ignored."""
    try:
        mode = Mode(str(memory["mode"]))
        resume_in = float(memory.get("resume_in", 0.0)) - age
        credits_in = float(memory.get("credits_in", 0.0)) - age
        probes = max(0, int(memory.get("failed_probes", 0)))
        remembered = min(max(0, int(memory.get("remembered", 0))), memory_bound(policy))
    except (KeyError, TypeError, ValueError):
        return state
    if not all(math.isfinite(v) for v in (resume_in, credits_in)):
        return state
    credits_until = now + credits_in if credits_in > 0 else -math.inf
    if mode is Mode.SENDING:
        return replace(state, remembered=remembered, closed_at=now if remembered else
                       state.closed_at, limit=1.0, credits_until=credits_until)
    return replace(state, mode=mode, resume_at=now + max(0.0, min(resume_in, PAUSE_HORIZON)),
                   failed_probes=probes, opened_at=-math.inf, limit=1.0,
                   credits_until=credits_until)
