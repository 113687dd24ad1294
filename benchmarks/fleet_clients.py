"""The clients of the fleet simulation: the delivery engine itself, and two models.

Every client takes events, says which may be sent now, settles each answer and
says when it next wants to be woken; the simulation owns time and the network.

* :class:`EngineClient` is this library's :class:`~massugc_logging.pipeline.delivery.DeliveryEngine`
  over an in-memory outbox, with a virtual clock: the same ``take``/``settle``
  and the same decision core (:func:`massugc_logging.pipeline.decisions.on_outcome`,
  :class:`~massugc_logging.pipeline.decisions.SendState`) the handler's threads run.
  Nothing of its retry, circuit or concurrency logic is copied here.
* :class:`NaiveClient` is the client most projects start with: one sending
  thread that retries the oldest event after a fixed pause, with no backoff,
  no jitter and no circuit.
* :class:`ReleaseZeroOneClient` models release 0.1.0 of this package: one request
  at a time; any failure pauses the whole client on an exponential backoff with
  full jitter from 0.5 s, and six failures in a row open a circuit of 120 s.
"""

from __future__ import annotations

import logging
import random
import sys
from collections import deque
from typing import Callable, Optional, Protocol

from massugc_logging.diagnostics import Diagnostics
from massugc_logging.outcome import Outcome
from massugc_logging.pipeline.decisions import EventAction
from massugc_logging.pipeline.delivery import DeliveryEngine
from massugc_logging.pipeline.retry import RetryPolicy
from massugc_logging.pipeline.spool import MemorySpool, SpooledEvent

Clock = Callable[[], float]

#: Ten thousand engines each saying "circuit open" once would drown the table.
_QUIET = logging.getLogger("massugc_logging.fleet-simulation")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


class SimClient(Protocol):
    """What the simulation needs of a client."""

    def log(self, event_id: str, created: float) -> None:
        """An event was logged (it is kept until delivered)."""

    def take(self) -> list[SpooledEvent]:
        """The events to send now, each now in flight."""

    def settle(self, event: SpooledEvent, outcome: Outcome) -> bool:
        """Act on the answer to one request; True when the event is delivered."""

    def next_wake(self) -> Optional[float]:
        """When the client may next send without an answer arriving first; None: never."""

    def dropped(self) -> int:
        """Events given up on (dropped or dead-lettered)."""

    def start(self) -> None:
        """The process starts, with whatever events it was given already kept."""

    def restart(self) -> None:
        """The process restarts: its events are kept; answers to requests it had in flight
        never reach it; it knows of the API only what it kept on disk."""


def _never_called(event: SpooledEvent) -> Outcome:
    raise AssertionError("the simulation sends; the engine only takes and settles")


#: Where an engine client keeps what it learns of the API (its outbox's memory).
_MEMORY_KEY = "http://api.simulated"


class EngineClient:
    """This library's delivery engine, driven in virtual time. Its outbox stands for the
    spool file: a restarted client makes a new engine on it, which picks up what the
    last one remembered of the API and spreads its start, as the handler's start does."""

    def __init__(self, clock: Clock, rng: random.Random, *, policy: RetryPolicy,
                 max_in_flight: int) -> None:
        self.clock = clock
        self._rng = rng
        self._policy = policy
        self._max_in_flight = max_in_flight
        self.outbox = MemorySpool(max_events=sys.maxsize, max_age=float("inf"))
        self.engine = self._engine()

    def _engine(self) -> DeliveryEngine:
        return DeliveryEngine(self.outbox, _never_called, policy=self._policy,
                              max_in_flight=self._max_in_flight, clock=self.clock,
                              rng=self._rng.random, diagnostics=Diagnostics(_QUIET),
                              memory_key=_MEMORY_KEY)

    def start(self) -> None:
        self.engine.spread_start(self.outbox.pending_count())

    def restart(self) -> None:
        self.engine.stop()  # writes what it learnt, as at exit
        self.engine = self._engine()
        remembered = self.outbox.recall(_MEMORY_KEY, self.clock())
        if "health" in remembered:
            self.engine.recall(remembered["health"])
        self.start()

    def log(self, event_id: str, created: float) -> None:
        self.outbox.add([(event_id, b"", created)], self.clock())

    def take(self) -> list[SpooledEvent]:
        taken = []
        while True:
            event = self.engine.take()
            if event is None:
                return taken
            taken.append(event)

    def settle(self, event: SpooledEvent, outcome: Outcome) -> bool:
        return self.engine.settle(event, outcome).action is EventAction.DELIVERED

    def next_wake(self) -> Optional[float]:
        self.engine.record_settled()  # what the handler's idle worker does before it sleeps
        return self.engine.next_wake()

    def dropped(self) -> int:
        return self.engine.counters.lost() + self.outbox.dead_letter_count()


class _OneAtATime:
    """A single sender working through its events oldest first."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.queue: deque[SpooledEvent] = deque()
        self.busy = False
        self.not_before = 0.0
        self._next_id = 0

    def log(self, event_id: str, created: float) -> None:
        self._next_id += 1
        self.queue.append(SpooledEvent(self._next_id, event_id, b"", created, 0))

    def take(self) -> list[SpooledEvent]:
        if self.busy or not self.queue or self.clock() < self.not_before:
            return []
        self.busy = True
        return [self.queue[0]]

    def settle(self, event: SpooledEvent, outcome: Outcome) -> bool:
        self.busy = False
        if outcome.delivered:
            self.queue.popleft()
            self.on_success()
            return True
        self.not_before = self.clock() + self.pause_after_failure(outcome)
        return False

    def next_wake(self) -> Optional[float]:
        if self.busy or not self.queue:
            return None
        return max(self.clock(), self.not_before)

    def dropped(self) -> int:
        return 0

    def start(self) -> None:
        pass

    def restart(self) -> None:
        self.busy = False
        self.not_before = 0.0
        self.on_restart()

    def on_restart(self) -> None:
        """What a fresh process forgets (nothing is kept but the events)."""

    def on_success(self) -> None:
        """A request went through."""

    def pause_after_failure(self, outcome: Outcome) -> float:
        raise NotImplementedError


class NaiveClient(_OneAtATime):
    """Retries after a fixed pause whatever the answer: no backoff, no jitter, no circuit."""

    def __init__(self, clock: Clock, *, pause: float = 1.0) -> None:
        super().__init__(clock)
        self.pause = pause

    def pause_after_failure(self, outcome: Outcome) -> float:
        return self.pause


class ReleaseZeroOneClient(_OneAtATime):
    """Release 0.1.0's sender: every failure pauses everything; six open the circuit.

    Its policy, as 0.1.0 shipped it: after the n-th consecutive failure, wait
    ``u * min(60, 0.5 * 2 ** (n - 1))`` (u uniform in [0, 1)); from the sixth,
    ``120 * (1 + 0.1 * u)``; a ``Retry-After`` (capped at an hour) is waited out
    if longer. A success resets the count.
    """

    backoff_base = 0.5
    backoff_cap = 60.0
    circuit_threshold = 6
    circuit_cooldown = 120.0
    max_retry_after = 3600.0

    def __init__(self, clock: Clock, rng: random.Random) -> None:
        super().__init__(clock)
        self.rng = rng
        self.failures = 0

    def on_success(self) -> None:
        self.failures = 0

    def on_restart(self) -> None:
        self.failures = 0

    def pause_after_failure(self, outcome: Outcome) -> float:
        self.failures += 1
        if self.failures >= self.circuit_threshold:
            delay = self.circuit_cooldown * (1.0 + 0.1 * self.rng.random())
        else:
            delay = self.rng.random() * min(
                self.backoff_cap, self.backoff_base * 2.0 ** (self.failures - 1))
        if outcome.retry_after is not None and outcome.retry_after > 0:
            delay = max(delay, min(outcome.retry_after, self.max_retry_after))
        return delay
