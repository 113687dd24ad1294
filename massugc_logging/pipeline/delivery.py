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
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from massugc_logging.diagnostics import Diagnostics
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
from massugc_logging.pipeline.retry import RetryPolicy
from massugc_logging.pipeline.spool import Outbox, Settlement, SpooledEvent, SpoolError

if TYPE_CHECKING:
    from massugc_logging.pipeline.transport import Transport

#: Events leased from the outbox at once.
LEASE_BATCH = 50
#: Outcomes recorded in the outbox together (fewer transactions on a fast API).
SETTLE_BATCH = 50
_EXPIRE_EVERY = 3600.0

Send = Callable[[SpooledEvent], Outcome]


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
        self._delivered: list[int] = []
        self._rescheduled: list[tuple[int, float]] = []
        self._dead: list[tuple[SpooledEvent, Optional[int], str]] = []
        self._stopped = False
        self._key_generation = 0
        self._last_expire = -_EXPIRE_EVERY
        self._backing_off = False

    # -- handing out ------------------------------------------------------------

    def take(self) -> Optional[SpooledEvent]:
        """The next event to send now, marked in flight; None when none may go now."""
        with self.diagnostics.deferred(), self._lock:
            if self._stopped or self.hold is not Mode.SENDING:
                return None
            now = self.clock()
            if len(self._in_flight) >= self.state.slots(now):
                return None
            if not self._ready:
                self._refill(now)
                if not self._ready:
                    return None
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
            held = set(self._in_flight)
            self._ready.extend(self.outbox.lease(LEASE_BATCH, wall, held,
                                                 costly=not self.state.credits_held(now)))
        except SpoolError as exc:
            self._outbox_problem(exc)

    # -- settling -------------------------------------------------------------------

    def settle(self, event: SpooledEvent, outcome: Outcome) -> EventAction:
        """Act on one outcome: what becomes of the event, and of sending as a whole."""
        with self.diagnostics.deferred(), self._lock:
            now = self.clock()
            flight = self._in_flight.pop(event.row_id, None)
            sent_at = flight.sent_at if flight else now
            if self._stopped:
                return EventAction.RETRY  # after close: the next run settles it
            if outcome.kind in _KEY_ANSWERS and (
                    outcome.status is None or flight is None
                    or flight.key_generation != self._key_generation):
                # Sent with a key that has been replaced (or removed on its way out): what
                # the API said of that key says nothing of the one in use now.
                self._record(event, Outcome(OutcomeKind.TRANSIENT, reason=outcome.reason),
                             EventAction.RETRY, self.wall())
                return EventAction.RETRY
            before = self.state
            decision, self.state = on_outcome(
                self.policy, before, outcome, attempts=event.attempts + 1, sent_at=sent_at,
                now=now, rng=self.rng)
            # The event's due time is kept across restarts: on the wall clock.
            self._record(event, outcome, decision.action,
                         self.wall() + (decision.retry_at - now))
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
        if self._on_settled is not None:
            self._on_settled(event, outcome, decision.action)
        return decision.action

    def _record(self, event: SpooledEvent, outcome: Outcome, action: EventAction,
                retry_at: float) -> None:
        """Count the outcome and queue its write to the outbox (lock held)."""
        self.counters.note(outcome.status, None if outcome.delivered or
                           outcome.kind is OutcomeKind.PERMANENT else
                           (outcome.reason or outcome.kind.value))
        if action is EventAction.DELIVERED:
            self.counters.add("sent")
            self._delivered.append(event.row_id)
        elif action is EventAction.DEAD_LETTER:
            self.counters.add("dead_lettered")
            self._dead.append((event, outcome.status, outcome.reason))
            self.diagnostics.say_once(
                f"send:permanent:{outcome.status}", logging.ERROR,
                "The MassUGC Cloud API rejected an event for good (HTTP %s: %s). It is kept "
                "in the spool's dead-letter table and will not be retried; further "
                "rejections are counted in stats().", outcome.status, outcome.reason)
        else:
            self.counters.add("retried")
            self._rescheduled.append((event.row_id, retry_at))
            if outcome.kind is OutcomeKind.TRANSIENT and outcome.status is not None \
                    and 200 <= outcome.status < 300:
                self.diagnostics.say_once(
                    "send:not-the-api", logging.WARNING,
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
        self._delivered, self._rescheduled, self._dead = [], [], []
        try:
            self.outbox.settle(settlement, self.wall())
        except SpoolError as exc:
            self._outbox_problem(exc)

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
        with self.diagnostics.deferred(), self._lock:
            now = self.clock()
            self.state = recalled(self.policy, self.state, memory, age=age, now=now)
            self._memory_written = None

    def _outbox_problem(self, exc: SpoolError) -> None:
        self.diagnostics.count("spool_errors")
        self.diagnostics.say_once("delivery:spool", logging.ERROR,
                                  "CloudHandler's delivery could not use its spool (%s); it "
                                  "tries again.", exc)

    def _report(self, before: SendState, after: SendState, outcome: Outcome) -> None:
        """Say each change of the API's health once, on the local logger (lock held)."""
        if outcome.kind is OutcomeKind.NO_CREDITS:
            self.diagnostics.say_once(
                "send:credits", logging.WARNING,
                "The MassUGC Cloud API says the account has no credits left, or no plan that "
                "allows this (%s). Reports of successful jobs, which cost credits, wait in the "
                "spool and are tried again every %.0f s (at once when the key changes); "
                "failure reports cost nothing and keep flowing.",
                outcome.reason or f"HTTP {outcome.status}", self.policy.auth_pause)
        if after.mode is Mode.SENDING:
            if before.mode is not Mode.SENDING:
                self.counters.clear_error()
                for key in ("send:transient", "send:auth", "send:circuit", "send:untrusted",
                            "send:route", "send:device", "send:not-the-api"):
                    self.diagnostics.forget(key)
                self.diagnostics.say_once("send:resumed", logging.INFO,
                                          "CloudHandler: delivery to the API resumed.")
            return
        self.diagnostics.forget("send:resumed")
        if outcome.kind is OutcomeKind.UNTRUSTED:
            self.diagnostics.say_once(
                "send:untrusted", logging.ERROR,
                "CloudHandler cannot deliver: %s; %s. Retrying cannot help until this is "
                "fixed; every event is kept in the spool and the API is tried again at most "
                "%.0f s apart.", outcome.reason, _tls_fix(), self.policy.probe_interval_cap)
        elif outcome.kind is OutcomeKind.NO_ROUTE:
            self.diagnostics.say_once(
                "send:route", logging.ERROR,
                "CloudHandler cannot deliver: %s. Every event is kept in the spool, and the "
                "API is tried again at most %.0f s apart.", outcome.reason,
                self.policy.probe_interval_cap)
        elif after.mode is Mode.DEVICE_MISMATCH:
            self.diagnostics.say_once(
                "send:device", logging.ERROR,
                "The MassUGC Cloud API says this API key is in use on another device (%s). "
                "Sending is paused for %.0f s and every event is kept in the spool. Enter the "
                "key again in the app's Settings on this device (or set a new one with "
                "'massugc-logging key set'); if it stays refused, ask MassUGC support to "
                "release it from the other device.",
                outcome.reason or f"HTTP {outcome.status}", self.policy.auth_pause)
        elif after.mode is Mode.AUTH_PAUSED and outcome.kind is OutcomeKind.AUTH:
            self.diagnostics.say_once(
                "send:auth", logging.ERROR,
                "The MassUGC Cloud API refused the API key (%s). Sending is paused for %.0f s "
                "and every event is kept in the spool. Check the key with "
                "'massugc-logging key show' and set a new one with 'massugc-logging key set'.",
                outcome.reason or f"HTTP {outcome.status}", self.policy.auth_pause)
        elif after.mode is Mode.CIRCUIT_OPEN and before.mode is Mode.SENDING:
            self.diagnostics.say_once(
                "send:circuit", logging.WARNING,
                "CloudHandler cannot deliver to %s right now (%s).%s Events are kept in "
                "the spool; the API is probed with one event at a time, at most %.0f s apart.",
                self.destination, outcome.reason or outcome.kind.value,
                f" {self._unreachable_hint}" if self._unreachable_hint else "",
                self.policy.probe_interval_cap)
        elif after.mode is Mode.RATE_LIMITED and before.mode is Mode.SENDING:
            self.diagnostics.say_once(
                "send:transient", logging.WARNING,
                "The MassUGC Cloud API asked to wait %.0f s (%s). Events are kept in the "
                "spool and sent after the pause.", outcome.retry_after or 0.0,
                outcome.reason or f"HTTP {outcome.status}")

    # -- control ----------------------------------------------------------------------

    def key_changed(self) -> None:
        """A new key: lift a hold for a missing or bad key, and end a pause for a refused one."""
        with self.diagnostics.deferred(), self._lock:
            if self.hold in (Mode.NO_KEY, Mode.BAD_KEY):
                self.hold = Mode.SENDING
            self._key_generation += 1
            self.state = on_new_key(self.state)
            for key in ("send:auth", "send:device", "send:credits"):
                self.diagnostics.forget(key)

    def set_hold(self, hold: Mode) -> None:
        """Hold all sending for a configuration problem (one of ``HOLD_MODES``;
        ``Mode.SENDING`` lifts it)."""
        assert hold is Mode.SENDING or hold in HOLD_MODES
        with self.diagnostics.deferred(), self._lock:
            self.hold = hold

    def stop(self) -> None:
        """Hand out nothing more and ignore late outcomes (the next run settles them)."""
        with self.diagnostics.deferred(), self._lock:
            now = self.clock()
            self._record_settled(now)
            self._remember(now)
            self._stopped = True
            self._ready.clear()

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

    def room_for_another(self) -> bool:
        """Whether another request could start now with an event already leased (read
        without the lock: a hint for waking one more worker)."""
        return bool(self._ready) and len(self._in_flight) < self.state.slots(self.clock())

    def next_wake(self) -> Optional[float]:
        """When something may next be sent (wall clock); None when nothing is waiting.

        With requests in flight and no free slot, the answer is None too: their
        outcomes wake the caller.
        """
        with self.diagnostics.deferred(), self._lock:
            if self._stopped or self.hold is not Mode.SENDING:
                return None
            now = self.clock()
            if len(self._in_flight) >= self.state.slots(max(now, self.state.resume_at)):
                return None  # every slot is busy: an outcome will wake the caller
            if self._ready:
                return max(now, self.state.resume_at)
            self._record_settled(now)
            self._remember(now)
            try:
                due = self._next_due(now)
            except SpoolError as exc:
                self._outbox_problem(exc)
                due = now + 1.0
            self._backing_off = due is not None and due > now and not self._in_flight
            if due is None:
                if not self._in_flight:
                    self.counters.clear_error()  # nothing left to deliver: all is well
                return None
            return max(due, self.state.resume_at)

    def _next_due(self, now: float) -> Optional[float]:
        """When the next event may go, on the engine's clock (lock held): while successes
        are held for credits, the others when due and the successes when the hold ends."""
        flying = set(self._in_flight)
        wall = self.wall()

        def due(costly: bool = True) -> Optional[float]:
            found = self.outbox.next_due(wall, flying, costly=costly)
            return None if found is None else now + (found - wall)

        if not self.state.credits_held(now):
            return due()
        free, every = due(costly=False), due()
        held = None if every is None else max(every, self.state.credits_until)
        known = [t for t in (free, held) if t is not None]
        return min(known) if known else None

    def quiet(self) -> bool:
        """True when nothing is in flight and the outbox holds nothing for this engine."""
        with self.diagnostics.deferred(), self._lock:
            if self._in_flight or self._ready:
                return False
            now = self.clock()
            self._record_settled(now)
            try:
                empty = self.outbox.next_due(self.wall()) is None
            except SpoolError:
                return False
            if empty:
                self.counters.clear_error()  # nothing left to deliver: all is well
            return empty

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
                return sent
            self.settle(event, self.send(event))
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

    def use_transport(self, transport: Transport) -> None:
        """The transport ``send`` goes through, whose overdue requests the idle worker has
        cut off (made after the workers were built: see the pipeline's start)."""
        self._transport = transport

    def start(self) -> None:
        """Start the workers (once)."""
        if self._threads:
            return
        for n in range(self.engine.max_in_flight + 1):
            thread = threading.Thread(target=self._work, daemon=True,
                                      name=f"massugc-logging-delivery-{n}")
            start_leaving_signals_to_the_main_thread(thread)
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
        self.engine.stop()
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
        engine = self.engine
        with self._settled:
            while True:
                if engine.quiet():
                    return True
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
                engine.diagnostics.say_once("delivery:error", logging.ERROR,
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
                engine.settle(event, outcome)
            except Exception as exc:
                engine.diagnostics.say_once("delivery:error", logging.ERROR,
                                            "CloudHandler's delivery hit %s; it carries on.",
                                            type(exc).__name__)
            # This worker takes the freed slot itself; it wakes another if there is room.
            with self._settled:
                self._settled.notify_all()

    def _idle(self, generation: int) -> None:
        """Sleep until the next due time or request deadline, unless something changed
        since ``generation``; then have the transport cut off requests past their
        deadline."""
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
