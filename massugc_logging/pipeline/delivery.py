"""The delivery engine: from the outbox to the API, at the pace the policy allows.

:class:`DeliveryEngine` holds no thread and reads no clock of its own. It
leases due events from an :class:`~massugc_logging.pipeline.spool.Outbox`, hands them
out one by one through :meth:`~DeliveryEngine.take` while the decision core
(:mod:`massugc_logging.pipeline.decisions`) allows another request in flight, and
settles each outcome with :meth:`~DeliveryEngine.settle`: delivered,
rescheduled on the event's own backoff, dead-lettered, or sending paused.
Its clock, random source and ``send`` callable are arguments, so a test can
drive it with a memory outbox, a scripted ``send`` and a fake clock, and
``massugc-logging spool replay`` drives it with :meth:`~DeliveryEngine.drain`.

:class:`DeliveryWorkers` runs the engine on threads for the handler: one more
worker than requests may be in flight, so one of them is always free to wake
at the next due time and to cut off a request that overran its deadline. No
lock is held across a network call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from massugc_logging.diagnostics import Diagnostics, Notice, Topic
from massugc_logging.outcome import Outcome, OutcomeKind
from massugc_logging.payload import costs_credits
from massugc_logging.pipeline._signals import start_leaving_signals_to_the_main_thread
from massugc_logging.pipeline.counters import Counters
from massugc_logging.pipeline.decisions import (
    HOLD_MODES,
    KEY_MODES,
    EventAction,
    Mode,
    SendState,
    memory_lasts,
    memory_of,
    on_new_key,
    on_outcome,
    recalled,
)
from massugc_logging.pipeline.retry import RetryPolicy, start_delay
from massugc_logging.pipeline.spool import Outbox, Settlement, SpooledEvent, SpoolError

if TYPE_CHECKING:
    from massugc_logging.pipeline.transport import Transport

#: Events leased from the outbox at once.
LEASE_BATCH = 50
#: Outcomes recorded in the outbox together (fewer transactions on a fast API).
SETTLE_BATCH = 50
_EXPIRE_EVERY = 3600.0

Send = Callable[[SpooledEvent], Outcome]
Notices = tuple[Notice, ...]

#: Topics a return to healthy sending allows to be said again.
_HEALTH_TOPICS = (Topic.SEND_RATE_LIMITED, Topic.SEND_AUTH, Topic.SEND_CIRCUIT,
                  Topic.SEND_UNTRUSTED, Topic.SEND_ROUTE, Topic.SEND_DEVICE,
                  Topic.SEND_NOT_THE_API)
#: Topics about the key, said again for a new one.
_KEY_TOPICS = (Topic.SEND_AUTH, Topic.SEND_DEVICE, Topic.SEND_CREDITS)


@dataclass(frozen=True)
class Settled:
    """What became of an event, and what the engine has to say about it (for the caller
    to publish once it holds no lock: see :class:`~massugc_logging.diagnostics.Notice`)."""

    action: EventAction
    notices: Notices = ()


@dataclass(frozen=True)
class _InFlight:
    event: SpooledEvent
    sent_at: float
    #: Which key was in use when the request started (see ``key_changed``).
    key_generation: int = 0


#: Answers about the key: they speak of the key a request was sent with.
_KEY_ANSWERS = (OutcomeKind.AUTH, OutcomeKind.DEVICE_MISMATCH, OutcomeKind.NO_CREDITS)


def _tls_fix() -> str:
    """What to do about a certificate that does not verify (the trust module loads ssl,
    which an app that never meets one need not pay for at start)."""
    from massugc_logging.pipeline.trust import FIX  # noqa: PLC0415

    return FIX


class DeliveryEngine:
    """Leases, hands out and settles events; thread-safe, never blocks on the network.

    Args:
        outbox: where undelivered events are kept.
        send: posts one event and returns its outcome (never raises).
        policy: the retry settings.
        max_in_flight: the most requests at once while the API is healthy.
        clock: the seconds the engine decides by: monotonic in the handler, so a wall
            clock set back or forward never stalls sending nor hurries it.
        wall: wall-clock seconds, for what the outbox keeps across restarts (due times,
            leases, expiry); default the same as ``clock``. Due times are translated
            between the two when they cross.
        rng: floats in [0, 1), for jitter.
        counters, diagnostics: where outcomes are counted and problems said once.
        on_settled: called after each outcome with the event, the outcome and what became
            of the event (for progress displays).
        destination: how messages name where events go (the API's URL).
        unreachable_hint: added to the message that the API cannot be reached (the local
            collector's handler names the command that starts it).
        memory_key: the API's base URL, under which what sending learns of the API's
            health is kept in the outbox for the next process (None: not kept).
    """

    def __init__(
        self,
        outbox: Outbox,
        send: Send,
        *,
        policy: Optional[RetryPolicy] = None,
        max_in_flight: int = 4,
        clock: Callable[[], float] = time.time,
        wall: Optional[Callable[[], float]] = None,
        rng: Callable[[], float] = random.random,
        counters: Optional[Counters] = None,
        diagnostics: Optional[Diagnostics] = None,
        on_settled: Optional[Callable[[SpooledEvent, Outcome, EventAction], None]] = None,
        destination: str = "the API",
        unreachable_hint: str = "",
        memory_key: Optional[str] = None,
    ) -> None:
        self.outbox = outbox
        self.send = send
        self.policy = policy or RetryPolicy()
        self.max_in_flight = max(1, int(max_in_flight))
        self.clock = clock
        self.wall = wall or clock
        self.rng = rng
        self.counters = counters or Counters()
        self.diagnostics = diagnostics or Diagnostics()
        self._on_settled = on_settled
        self.destination = destination
        self._unreachable_hint = unreachable_hint
        self._memory_key = memory_key
        self._memory_written: Optional[tuple[Any, ...]] = None
        self._lock = threading.Lock()
        self.state = SendState.initial(self.max_in_flight)
        #: A hold of the configuration (one of HOLD_MODES), or SENDING for none.
        self.hold = Mode.SENDING
        self._ready: deque[SpooledEvent] = deque()
        self._in_flight: dict[int, _InFlight] = {}
        self._delivered: list[tuple[int, str]] = []
        self._rescheduled: list[tuple[int, str, float]] = []
        #: The due times of ``_rescheduled`` on the engine's clock, until written.
        self._retry_at: dict[int, float] = {}
        self._dead: list[tuple[SpooledEvent, Optional[int], str]] = []
        self._stopped = False
        self._key_generation = 0
        self._last_expire = -_EXPIRE_EVERY
        #: Set by commands (record_settled, a refill that found nothing due); read by status.
        self._backing_off = False
        #: Notices made under the lock, handed out by the next command that returns some.
        self._notices: list[Notice] = []
        #: Nothing is handed out before this (engine clock): a start spread over a window.
        self._not_before = -math.inf

    # -- handing out ------------------------------------------------------------

    def take(self) -> Optional[SpooledEvent]:
        """The next event to send now, marked in flight; None when none may go now."""
        with self._lock:
            if self._stopped or self.hold is not Mode.SENDING:
                return None
            now = self.clock()
            if now < self._not_before or len(self._in_flight) >= self.state.slots(now):
                return None
            if not self._ready:
                self._refill(now)
                if not self._ready:
                    return None
            # Backing off after this request only if a retry not yet written waits.
            self._backing_off = any(due > now for due in self._retry_at.values())
            event = self._ready.popleft()
            self._in_flight[event.row_id] = _InFlight(event, now, self._key_generation)
            return event

    def _refill(self, now: float) -> None:
        """Record outcomes so far, then lease the next due events (lock held)."""
        self._record_settled(now)
        try:
            wall = self.wall()
            if now - self._last_expire >= _EXPIRE_EVERY:
                self._last_expire = now
                self.counters.drop("expired", self.outbox.expire(wall))
            held = self._not_to_lease()
            self._ready.extend(self.outbox.lease(LEASE_BATCH, wall, held,
                                                 costly=not self.state.credits_held(now)))
            if not self._ready and not self._in_flight:
                due = self._next_due(now)
                self._backing_off = due is not None and due > now
        except SpoolError as exc:
            self._outbox_problem(exc)

    # -- settling -------------------------------------------------------------------

    def settle(self, event: SpooledEvent, outcome: Outcome) -> Settled:
        """Act on one outcome: what becomes of the event, and of sending as a whole; with
        what there is to say about it, for the caller to publish once unlocked."""
        with self._lock:
            now = self.clock()
            flight = self._in_flight.pop(event.row_id, None)
            sent_at = flight.sent_at if flight else now
            if self._stopped:
                return Settled(EventAction.RETRY)  # after close: the next run settles it
            if outcome.kind in _KEY_ANSWERS and (
                    outcome.status is None or flight is None
                    or flight.key_generation != self._key_generation):
                # Sent with a key that has been replaced (or removed on its way out): what
                # the API said of that key says nothing of the one in use now.
                self._record(event, Outcome(OutcomeKind.TRANSIENT, reason=outcome.reason),
                             EventAction.RETRY, now)
                return Settled(EventAction.RETRY, self._hand_out())
            before = self.state
            decision, self.state = on_outcome(
                self.policy, before, outcome, attempts=event.attempts + 1, sent_at=sent_at,
                now=now, rng=self.rng)
            # The event's due time is kept across restarts: on the wall clock.
            self._record(event, outcome, decision.action, decision.retry_at)
            self._report(before, self.state, outcome)
            after = self.state
            if (after.mode, after.failed_probes, after.credits_until) != (
                    before.mode, before.failed_probes, before.credits_until):
                self._remember(now)
            if self.state.credits_held(now) and not before.credits_held(now):
                # Successes leased before the hold would only meet the same answer.
                self._ready = deque(e for e in self._ready if not costs_credits(e.body))
            if self._unrecorded() >= SETTLE_BATCH:
                self._record_settled(now)
            notices = self._hand_out()
        if self._on_settled is not None:
            self._on_settled(event, outcome, decision.action)
        return Settled(decision.action, notices)

    def _not_to_lease(self) -> set[int]:
        """Rows in flight, and rows whose outcome is not written yet (lock held)."""
        return set(self._in_flight) | {row for row, _ in self._delivered} | set(
            self._retry_at) | {event.row_id for event, _, _ in self._dead}

    def _hand_out(self) -> Notices:
        """The notices made so far, for the caller to publish (lock held)."""
        notices, self._notices = tuple(self._notices), []
        return notices

    def _note(self, topic: Topic, level: int, message: str, *args: Any,
              about: str = "") -> None:
        self._notices.append(Notice(topic, level, message, args, about))

    def _forget(self, *topics: Topic) -> None:
        self._notices.extend(Notice.forgetting(*topics))

    def _record(self, event: SpooledEvent, outcome: Outcome, action: EventAction,
                retry_at: float) -> None:
        """Count the outcome and queue its write to the outbox (lock held); ``retry_at``
        is on the engine's clock."""
        self.counters.note(outcome.status, None if outcome.delivered or
                           outcome.kind is OutcomeKind.PERMANENT else
                           (outcome.reason or outcome.kind.value))
        if action is EventAction.DELIVERED:
            self.counters.add("sent")
            self._delivered.append((event.row_id, event.event_id))
        elif action is EventAction.DEAD_LETTER:
            self.counters.add("dead_lettered")
            self._dead.append((event, outcome.status, outcome.reason))
            self._note(
                Topic.SEND_PERMANENT, logging.ERROR,
                "The MassUGC Cloud API rejected an event for good (HTTP %s: %s). It is kept "
                "in the spool's dead-letter table and will not be retried; further "
                "rejections are counted in stats().", outcome.status, outcome.reason,
                about=str(outcome.status))
        else:
            self.counters.add("retried")
            # The outbox keeps due times across restarts: on the wall clock.
            now = self.clock()
            self._rescheduled.append((event.row_id, event.event_id,
                                      self.wall() + (retry_at - now)))
            self._retry_at[event.row_id] = retry_at
            if retry_at > now:
                # Waiting its backoff from now on, not only once the write is done (a
                # status read meanwhile, unlocked, must not say "idle").
                self._backing_off = True
            if outcome.kind is OutcomeKind.TRANSIENT and outcome.status is not None \
                    and 200 <= outcome.status < 300:
                self._note(
                    Topic.SEND_NOT_THE_API, logging.WARNING,
                    "CloudHandler: %s (HTTP %s from %s). The event is kept and sent again; "
                    "nothing counts as delivered until the API itself answers.",
                    outcome.reason, outcome.status, self.destination)

    def _unrecorded(self) -> int:
        return len(self._delivered) + len(self._rescheduled) + len(self._dead)

    def _record_settled(self, now: float) -> None:
        """Write the outcomes gathered so far to the outbox in one transaction (lock held)."""
        if not self._unrecorded():
            return
        settlement = Settlement(tuple(self._delivered), tuple(self._rescheduled),
                                tuple(self._dead))
        try:
            self.outbox.settle(settlement, self.wall())
        except SpoolError as exc:
            # Kept, and written with the next outcomes (a file another program keeps
            # locked takes them once it is free).
            self._outbox_problem(exc)
            return
        self._delivered, self._rescheduled, self._dead = [], [], []
        self._retry_at = {}

    def _remember(self, now: float) -> None:
        """Keep what a restarted process should know of the API's health in the outbox,
        when it changed (lock held): a pause, the circuit's probes, a hold on credits."""
        if self._memory_key is None:
            return
        memory = memory_of(self.state, now)
        state = self.state
        mark = None if memory is None else (memory["mode"], memory["failed_probes"],
                                            memory["remembered"], round(state.resume_at, 1),
                                            round(state.credits_until, 1))
        if mark == self._memory_written:
            return
        wall = self.wall()
        try:
            if memory is None:
                self.outbox.remember(self._memory_key, "health", "{}", wall)  # forgotten
            else:
                self.outbox.remember(self._memory_key, "health",
                                     json.dumps({**memory, "written_at": wall}),
                                     wall + memory_lasts(self.policy, memory))
            self._memory_written = mark
        except SpoolError as exc:
            self._outbox_problem(exc)

    def recall(self, remembered: str) -> None:
        """Pick up where a process that kept ``remembered`` (its :meth:`_remember` text)
        left off, as long as nothing has happened in this one yet."""
        try:
            memory = json.loads(remembered)
            age = max(0.0, self.wall() - float(memory["written_at"]))
        except (ValueError, TypeError, KeyError):
            return
        with self._lock:
            now = self.clock()
            self.state = recalled(self.policy, self.state, memory, age=age, now=now)
            self._memory_written = None

    def _outbox_problem(self, exc: SpoolError) -> None:
        self.diagnostics.count("spool_errors")
        self._note(Topic.DELIVERY_SPOOL, logging.ERROR,
                   "CloudHandler's delivery could not use its spool (%s); it tries again.", exc)

    def _report(self, before: SendState, after: SendState, outcome: Outcome) -> None:
        """Note each change of the API's health, to be said once (lock held)."""
        if outcome.kind is OutcomeKind.NO_CREDITS:
            self._note(
                Topic.SEND_CREDITS, logging.WARNING,
                "The MassUGC Cloud API says the account has no credits left, or no plan that "
                "allows this (%s). Reports of successful jobs, which cost credits, wait in the "
                "spool and are tried again every %.0f s (at once when the key changes); "
                "failure reports cost nothing and keep flowing.",
                outcome.reason or f"HTTP {outcome.status}", self.policy.auth_pause)
        if after.mode is Mode.SENDING:
            if before.mode is not Mode.SENDING:
                self.counters.clear_error()
                self._forget(*_HEALTH_TOPICS)
                self._note(Topic.SEND_RESUMED, logging.INFO,
                           "CloudHandler: delivery to the API resumed.")
            return
        self._forget(Topic.SEND_RESUMED)
        if outcome.kind is OutcomeKind.UNTRUSTED:
            self._note(
                Topic.SEND_UNTRUSTED, logging.ERROR,
                "CloudHandler cannot deliver: %s; %s. Retrying cannot help until this is "
                "fixed; every event is kept in the spool and the API is tried again at most "
                "%.0f s apart.", outcome.reason, _tls_fix(), self.policy.probe_interval_cap)
        elif outcome.kind is OutcomeKind.NO_ROUTE:
            self._note(
                Topic.SEND_ROUTE, logging.ERROR,
                "CloudHandler cannot deliver: %s. Every event is kept in the spool, and the "
                "API is tried again at most %.0f s apart.", outcome.reason,
                self.policy.probe_interval_cap)
        elif after.mode is Mode.DEVICE_MISMATCH:
            self._note(
                Topic.SEND_DEVICE, logging.ERROR,
                "The MassUGC Cloud API says this API key is in use on another device (%s). "
                "Sending is paused for %.0f s and every event is kept in the spool. Enter the "
                "key again in the app's Settings on this device (or set a new one with "
                "'massugc-logging key set'); if it stays refused, ask MassUGC support to "
                "release it from the other device.",
                outcome.reason or f"HTTP {outcome.status}", self.policy.auth_pause)
        elif after.mode is Mode.AUTH_PAUSED and outcome.kind is OutcomeKind.AUTH:
            self._note(
                Topic.SEND_AUTH, logging.ERROR,
                "The MassUGC Cloud API refused the API key (%s). Sending is paused for %.0f s "
                "and every event is kept in the spool. Check the key with "
                "'massugc-logging key show' and set a new one with 'massugc-logging key set'.",
                outcome.reason or f"HTTP {outcome.status}", self.policy.auth_pause)
        elif after.mode is Mode.CIRCUIT_OPEN and before.mode is Mode.SENDING:
            self._note(
                Topic.SEND_CIRCUIT, logging.WARNING,
                "CloudHandler cannot deliver to %s right now (%s).%s Events are kept in "
                "the spool; the API is probed with one event at a time, at most %.0f s apart.",
                self.destination, outcome.reason or outcome.kind.value,
                f" {self._unreachable_hint}" if self._unreachable_hint else "",
                self.policy.probe_interval_cap)
        elif after.mode is Mode.RATE_LIMITED and before.mode is Mode.SENDING:
            self._note(
                Topic.SEND_RATE_LIMITED, logging.WARNING,
                "The MassUGC Cloud API asked to wait %.0f s (%s). Events are kept in the "
                "spool and sent after the pause.", outcome.retry_after or 0.0,
                outcome.reason or f"HTTP {outcome.status}")

    # -- control ----------------------------------------------------------------------

    def key_changed(self) -> Notices:
        """A new key: lift a hold for a missing or bad key, and end a pause for a refused
        one. The key's problems may be said again (the notices say so)."""
        with self._lock:
            if self.hold in (Mode.NO_KEY, Mode.BAD_KEY):
                self.hold = Mode.SENDING
            self._key_generation += 1
            self.state = on_new_key(self.state)
            self._forget(*_KEY_TOPICS)
            return self._hand_out()

    def spread_start(self, backlog: int) -> None:
        """A process starts with ``backlog`` events waiting: unless a remembered pause
        already says when to send (see :meth:`recall`), hand nothing out for a random
        moment (:func:`~massugc_logging.pipeline.retry.start_delay`), so that a fleet
        restarted at once comes back spread out."""
        with self._lock:
            if self.state.mode is Mode.SENDING:
                self._not_before = self.clock() + start_delay(self.policy, backlog, self.rng)

    def end_start_delay(self) -> None:
        """Hand out at once again (the app flushes, or is shutting down: it wants its
        events delivered now, not after the spread)."""
        with self._lock:
            self._not_before = -math.inf

    def set_hold(self, hold: Mode) -> None:
        """Hold all sending for a configuration problem (one of ``HOLD_MODES``;
        ``Mode.SENDING`` lifts it)."""
        assert hold is Mode.SENDING or hold in HOLD_MODES
        with self._lock:
            self.hold = hold

    def record_settled(self) -> Notices:
        """Write the outcomes gathered so far and what to remember of the API's health to
        the outbox; when nothing is in flight, note whether the next event waits on a
        backoff, and clear the last error once nothing is left. What an idle worker does
        before it sleeps.

        While another request is in flight, fewer than ``SETTLE_BATCH`` outcomes are
        left for a later write: the next refill, a full batch, or the idle turn of
        the last worker with nothing in flight. Against an API failing every third
        request the workers idle often, and one small transaction per idle turn
        slowed its drain. ``quiet`` and ``next_wake`` already count them as written
        (``stats()["pending"]`` does not, until the write), and a crash before the
        write only sends them again, under the same ``Idempotency-Key``."""
        with self._lock:
            now = self.clock()
            if not self._in_flight or self._unrecorded() >= SETTLE_BATCH:
                self._record_settled(now)
            self._remember(now)
            if not self._in_flight and not self._ready and not self._stopped:
                try:
                    due = self._next_due(now)
                except SpoolError as exc:
                    self._outbox_problem(exc)
                else:
                    self._backing_off = due is not None and due > now
                    if due is None:
                        self.counters.clear_error()  # nothing left to deliver: all is well
            return self._hand_out()

    def stop(self) -> Notices:
        """Hand out nothing more and ignore late outcomes (the next run settles them)."""
        with self._lock:
            now = self.clock()
            self._record_settled(now)
            self._remember(now)
            self._stopped = True
            self._ready.clear()
            return self._hand_out()

    # -- outlook -----------------------------------------------------------------------

    def waiting_for_key(self) -> bool:
        """True while sending waits for a usable key: none, a malformed one, or one the API
        refused (read without the lock: a hint for how often to look at the key store)."""
        state = self.state
        return self.hold in (Mode.NO_KEY, Mode.BAD_KEY) or state.mode in KEY_MODES \
            or state.credits_held(self.clock())

    def holds(self) -> dict[str, Optional[float]]:
        """Holds in force now, and the seconds each has left (None: until the configuration
        changes): ``no_key``, ``bad_key``, ``bad_url``; ``insufficient_credits`` while the
        successes wait."""
        state, now = self.state, self.clock()
        held: dict[str, Optional[float]] = {}
        if self.hold is not Mode.SENDING:
            held[self.hold.value] = None
        if state.credits_held(now):
            held["insufficient_credits"] = round(state.credits_until - now, 1)
        return held

    def has_pending(self) -> bool:
        """Whether the outbox holds events for this engine (held or not)."""
        try:
            return self.outbox.next_due(self.wall()) is not None
        except SpoolError:
            return False

    def in_flight(self) -> int:
        """Requests started and not yet settled."""
        return len(self._in_flight)

    def at_rest(self) -> bool:
        """Whether sending is held, or nothing is in flight and nothing leased may go
        now: only then can a drain's waiter find the engine quiet, held, paused or
        waiting past its deadline (read without the lock: a hint for waking it)."""
        if self.hold is not Mode.SENDING:
            return True
        return not self._in_flight and (not self._ready or self.state.mode is not Mode.SENDING)

    def room_for_another(self) -> bool:
        """Whether another request could start now with an event already leased (read
        without the lock: a hint for waking one more worker)."""
        return bool(self._ready) and len(self._in_flight) < self.state.slots(self.clock())

    def next_wake(self) -> Optional[float]:
        """When something may next be sent (wall clock); None when nothing is waiting.

        With requests in flight and no free slot, the answer is None too: their
        outcomes wake the caller.
        """
        with self._lock:
            if self._stopped or self.hold is not Mode.SENDING:
                return None
            now = self.clock()
            if len(self._in_flight) >= self.state.slots(max(now, self.state.resume_at)):
                return None  # every slot is busy: an outcome will wake the caller
            not_before = max(self.state.resume_at, self._not_before)
            if self._ready:
                return max(now, not_before)
            try:
                due = self._next_due(now)
            except SpoolError:
                due = now + 1.0  # the spool is busy or broken: look again soon
            return None if due is None else max(due, not_before)

    def _next_due(self, now: float) -> Optional[float]:
        """When the next event may go, on the engine's clock (lock held): while successes
        are held for credits, the others when due and the successes when the hold ends.
        Outcomes not yet written to the outbox count as written (reads only)."""
        skipped = self._not_to_lease()
        wall = self.wall()

        def due(costly: bool = True) -> Optional[float]:
            found = self.outbox.next_due(wall, skipped, costly=costly)
            return None if found is None else now + (found - wall)

        later = list(self._retry_at.values())
        if not self.state.credits_held(now):
            known = [t for t in (due(), *later) if t is not None]
        else:
            free, every = due(costly=False), due()
            held = [max(t, self.state.credits_until) for t in (every, *later) if t is not None]
            known = [t for t in (free, *held) if t is not None]
        return min(known) if known else None

    def quiet(self) -> bool:
        """True when nothing is in flight and the outbox holds nothing for this engine
        (outcomes not yet written count as written; reads only)."""
        with self._lock:
            if self._in_flight or self._ready or self._rescheduled:
                return False
            try:
                return self.outbox.next_due(self.wall(), self._not_to_lease()) is None
            except SpoolError:
                return False

    def status(self) -> str:
        """A word for ``stats()``: held, idle, sending, backing_off, or the pause's mode."""
        if self.hold is not Mode.SENDING:
            return "held"
        if self.state.mode is not Mode.SENDING:
            return str(self.state.mode.value)
        if self._in_flight or self._ready:
            return "sending"
        return "backing_off" if self._backing_off else "idle"

    # -- synchronous driving -------------------------------------------------------------

    def pump(self) -> int:
        """Send, one at a time on this thread, everything that may go now; return how many."""
        sent = 0
        while True:
            event = self.take()
            if event is None:
                self.diagnostics.publish(self.record_settled())
                return sent
            self.diagnostics.publish(self.settle(event, self.send(event)).notices)
            sent += 1

    def drain(self, *, sleep: Callable[[float], None] = time.sleep,
              deadline: Optional[float] = None, stop_when_paused: bool = True) -> bool:
        """Deliver on this thread until nothing is left; True when the outbox is empty
        of this engine's events.

        Stops early when sending pauses for the whole API (circuit, ``Retry-After``,
        refused key) if ``stop_when_paused``, or at ``deadline`` (engine clock).
        """
        while True:
            self.pump()
            wake = self.next_wake()
            if wake is None:
                return self.quiet()
            if stop_when_paused and self.state.mode is not Mode.SENDING:
                return False
            now = self.clock()
            if deadline is not None and wake > deadline:
                return False
            if wake > now:
                sleep(wake - now)


class DeliveryWorkers:
    """The engine on threads: ``max_in_flight + 1`` workers that take, send and settle.

    One more worker than requests may be in flight, so one of them is always free to
    wake at the next due time and to have the transport cut off requests past their
    deadline (the transport owns each request's deadline; the engine only learns of a
    cut-off as the transient outcome ``send`` returns).

    Args:
        engine: the engine to run.
        transport: the transport the engine's ``send`` goes through (None: nothing to cut
            off).
        before_take: run by a worker before it asks for work, with no lock held (the
            pipeline reads the key store again there when that is due).
        look_again_within: the longest an idle worker may sleep (seconds) while something
            outside the engine may change, or None to sleep until woken.
    """

    def __init__(self, engine: DeliveryEngine, *, transport: Optional[Transport] = None,
                 before_take: Optional[Callable[[], None]] = None,
                 look_again_within: Optional[Callable[[], Optional[float]]] = None) -> None:
        self.engine = engine
        self._transport = transport
        self._before_take = before_take
        self._look_again_within = look_again_within
        self._wake = threading.Condition(threading.Lock())
        #: Bumped (under ``_wake``) whenever there may be new work: a worker that saw
        #: no work waits only if nothing changed since it last looked.
        self._generation = 0
        self._settled = threading.Condition(threading.Lock())
        self._stopping = False
        self._threads: list[threading.Thread] = []
        #: True when no worker thread could start (the interpreter was exiting).
        self._without_threads = False

    def use_transport(self, transport: Transport) -> None:
        """The transport ``send`` goes through, whose overdue requests the idle worker has
        cut off (made after the workers were built: see the pipeline's start)."""
        self._transport = transport

    def start(self) -> None:
        """Start the workers (once).

        Python 3.12.0 and 3.12.1 refuse new threads once the interpreter begins to exit,
        before ``sys.is_finalizing()`` says so; a pipeline whose start came that late
        has no worker, and :meth:`wait_quiet` delivers on the thread that waits.
        """
        if self._threads or self._without_threads:
            return
        for n in range(self.engine.max_in_flight + 1):
            thread = threading.Thread(target=self._work, daemon=True,
                                      name=f"massugc-logging-delivery-{n}")
            try:
                start_leaving_signals_to_the_main_thread(thread)
            except RuntimeError as exc:
                if "shutdown" not in str(exc):  # out of threads: not ours to hide
                    raise
                self._without_threads = not self._threads
                return
            self._threads.append(thread)

    @property
    def idents(self) -> frozenset[int]:
        """The workers' thread ids."""
        return frozenset(t.ident for t in self._threads if t.ident is not None)

    def alive(self) -> bool:
        """True while the workers run."""
        return any(t.is_alive() for t in self._threads)

    def wake(self) -> None:
        """Something changed (new events, a new key): look again.

        One idle worker wakes; each worker that takes an event wakes one more while
        there is room for another request, so as many run as there is work and room for,
        without every idle worker contending for each batch.
        """
        self._wake_one()

    def _wake_one(self) -> None:
        with self._wake:
            self._generation += 1
            self._wake.notify()

    def stop(self, deadline: float) -> bool:
        """Stop the engine and the workers, cutting off requests in flight; wait for them
        until ``deadline`` (monotonic). True if all stopped."""
        self.engine.diagnostics.publish(self.engine.stop())
        if self._transport is not None:
            self._transport.abort_all()
        with self._wake:
            self._stopping = True
            self._generation += 1
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not self.alive()

    def wait_quiet(self, deadline: float, *, give_up_when_paused: bool = False) -> bool:
        """Wait until the engine is quiet; False at ``deadline`` (monotonic) or as soon as
        nothing can happen before it (a pause, a backoff, a hold). With
        ``give_up_when_paused`` (at exit), also as soon as sending pauses for the whole
        API (the circuit, ``Retry-After``, a refused key): what is left waits in the spool
        for the next run instead of holding the exit until the deadline."""
        if self._without_threads:
            return self._deliver_here(deadline, give_up_when_paused=give_up_when_paused)
        engine = self.engine
        with self._settled:
            while not engine.quiet():
                if engine.hold is not Mode.SENDING or not self.alive():
                    return False
                if give_up_when_paused and engine.state.mode is not Mode.SENDING \
                        and engine.in_flight() == 0:
                    return False
                now = time.monotonic()
                if now >= deadline:
                    return False
                if engine.in_flight() == 0:
                    wake = engine.next_wake()
                    if wake is not None and wake - engine.clock() > deadline - now:
                        return False
                self._settled.wait(min(deadline - now, 0.25))
        # What was delivered leaves the outbox now, not at the next idle turn.
        engine.diagnostics.publish(engine.record_settled())
        return True

    def _deliver_here(self, deadline: float, *, give_up_when_paused: bool) -> bool:
        """With no worker thread (see :meth:`start`): take, send and settle on the calling
        thread, one request at a time, until the engine is quiet (True) or nothing more
        can be done before ``deadline`` (False). No request starts after the deadline;
        the one under way is bounded by the transport's own timeouts."""
        engine = self.engine
        while not engine.quiet():
            if engine.hold is not Mode.SENDING or self._stopping:
                return False
            if time.monotonic() >= deadline:
                return False
            if self._before_take is not None:
                self._before_take()
            event = engine.take()  # a probe that is due comes out too
            if event is None:
                if give_up_when_paused and engine.state.mode is not Mode.SENDING:
                    return False
                wake = engine.next_wake()
                if wake is None:
                    return False
                wait = wake - engine.clock()
                if wait > deadline - time.monotonic():
                    return False
                with self._wake:  # a wait that wake() or stop() may end early
                    self._wake.wait(max(0.001, wait))
                continue
            try:
                outcome = engine.send(event)
            except Exception as exc:  # as in a worker: send never raises
                outcome = Outcome(OutcomeKind.TRANSIENT, reason=f"unexpected {type(exc).__name__}")
            engine.diagnostics.publish(engine.settle(event, outcome).notices)
        engine.diagnostics.publish(engine.record_settled())
        return True

    def _work(self) -> None:
        engine = self.engine
        while not self._stopping:
            try:
                with self._wake:
                    generation = self._generation
                # No lock of the workers' is held here: the engine may say something
                # (which logs), and closing may be waiting for the logging module's lock.
                if self._before_take is not None:
                    self._before_take()
                event = engine.take()
                if event is None:
                    self._idle(generation)
                    continue
                if engine.room_for_another():
                    self._wake_one()
            except Exception as exc:  # a bug must not kill a worker: pause, then carry on
                engine.diagnostics.say_once(Topic.DELIVERY_ERROR, logging.ERROR,
                                            "CloudHandler's delivery hit %s; it carries on.",
                                            type(exc).__name__)
                with self._wake:
                    self._wake.wait(1.0)
                continue
            try:
                outcome = engine.send(event)
            except Exception as exc:  # send never raises; a bug in it must not kill a worker
                outcome = Outcome(OutcomeKind.TRANSIENT, reason=f"unexpected {type(exc).__name__}")
            try:
                settled = engine.settle(event, outcome)
            except Exception as exc:
                engine.diagnostics.say_once(Topic.DELIVERY_ERROR, logging.ERROR,
                                            "CloudHandler's delivery hit %s; it carries on.",
                                            type(exc).__name__)
            else:
                engine.diagnostics.publish(settled.notices)  # no lock held here
            # This worker takes the freed slot itself; it wakes another if there is room.
            # A drain's waiter is woken only when the engine may be done, not at every
            # settle: one thread switch less per event (it still looks again every
            # quarter second).
            if engine.at_rest():
                with self._settled:
                    self._settled.notify_all()

    def _idle(self, generation: int) -> None:
        """Sleep until the next due time or request deadline, unless something changed
        since ``generation``; then have the transport cut off requests past their
        deadline."""
        self.engine.diagnostics.publish(self.engine.record_settled())
        timeout = self._idle_timeout()
        with self._wake:
            if self._generation == generation and not self._stopping:
                self._wake.wait(timeout)
        if self._transport is not None:
            with contextlib.suppress(Exception):  # best effort; the timeouts still apply
                self._transport.cut_off_overdue()

    def _idle_timeout(self) -> Optional[float]:
        """How long an idle worker sleeps: until the next due time or request deadline."""
        engine = self.engine
        now = engine.clock()
        times = []
        wake = engine.next_wake()
        if wake is not None:
            times.append(wake - now)
        deadline = self._transport.next_deadline() if self._transport is not None else None
        if deadline is not None:
            times.append(deadline - time.monotonic())
        if self._look_again_within is not None:
            within = self._look_again_within()
            if within is not None:
                times.append(within)
        if not times:
            return None  # idle: no polling, an event or a settle wakes us
        return max(0.001, min(times))
