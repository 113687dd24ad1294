"""The MassUGC Cloud API as the fleet simulation sees it: a capacity, a queue, a latency.

One server that completes ``capacity`` requests per second, first come first
served, with room for ``queue_seconds`` of its capacity waiting (a degraded API
queues fewer requests: a request that would wait longer times out upstream). A request that finds
the queue full is answered 503 at once (optionally with ``Retry-After``): a
load balancer's cheap refusal, which costs the API no capacity. During an
outage nothing listens: every request is refused, one network hop later.
Capacity can drop for a while (a degraded API).

It is pure accounting in virtual time: :meth:`ApiModel.answer` takes the
moment a request arrives and returns when its answer reaches the client and
what the answer is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from massugc_logging.outcome import Outcome, OutcomeKind

DELIVERED = Outcome(OutcomeKind.DELIVERED, status=200)
REFUSED = Outcome(OutcomeKind.TRANSIENT, reason="connection refused")


@dataclass(frozen=True)
class Window:
    """``[start, end)`` in virtual seconds, and the share of capacity left in it (for a
    degraded window; an outage's is not used)."""

    start: float
    end: float
    capacity_share: float = 1.0

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class ApiModel:
    """A finite API in virtual time, with the counts to check it by.

    Attributes:
        capacity: requests per second it completes when healthy.
        queue_seconds: the queue holds this many seconds of the capacity in force;
            beyond it, 503.
        rtt: the network round trip, split evenly between the two ways.
        retry_after: seconds sent as ``Retry-After`` with each 503, or None.
        outages: windows where nothing listens (connection refused).
        degraded: windows where only ``capacity_share`` of the capacity is left.
    """

    capacity: float
    queue_seconds: float
    rtt: float = 0.1
    retry_after: Optional[float] = None
    outages: tuple[Window, ...] = ()
    degraded: tuple[Window, ...] = ()
    arrived: int = field(default=0, init=False)
    served: int = field(default=0, init=False)
    rejected: int = field(default=0, init=False)
    refused: int = field(default=0, init=False)
    #: The most requests ever ahead of an accepted one.
    longest_queue: int = field(default=0, init=False)
    _free_at: float = field(default=0.0, init=False)
    _busy: Outcome = field(init=False)

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.queue_seconds < 0 or self.rtt < 0:
            raise ValueError("capacity must be > 0, queue_seconds and rtt >= 0")
        self._busy = Outcome(OutcomeKind.TRANSIENT, status=503, retry_after=self.retry_after,
                             reason="HTTP 503 overloaded")

    def is_down(self, t: float) -> bool:
        """True while nothing listens."""
        return any(w.holds(t) for w in self.outages)

    def capacity_at(self, t: float) -> float:
        """Requests per second the API completes at ``t`` (its full capacity while down:
        an outage is counted as refusals, not as lost capacity)."""
        for w in self.degraded:
            if w.holds(t):
                return self.capacity * w.capacity_share
        return self.capacity

    def answer(self, t: float) -> tuple[float, float, Outcome]:
        """A request reaching the API at ``t``: ``(answered_at, replied_at, outcome)``,
        when the API finished with it and when its answer reaches the client."""
        half = self.rtt / 2.0
        self.arrived += 1
        if self.is_down(t):
            self.refused += 1
            return t, t + half, REFUSED
        capacity = self.capacity_at(t)
        service = 1.0 / capacity
        # Requests ahead of this one: the one in service and those waiting.
        ahead = max(0.0, self._free_at - t) / service
        if ahead > self.queue_seconds * capacity + 1e-9:
            self.rejected += 1
            return t, t + half, self._busy
        self.longest_queue = max(self.longest_queue, round(ahead))
        done = max(t, self._free_at) + service
        self._free_at = done
        self.served += 1
        return done, done + half, DELIVERED
