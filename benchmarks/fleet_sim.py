"""The fleet simulation: many clients against one finite API, in virtual time.

A discrete-event loop over one heap of timed events: a client logs an event
(each client a Poisson process with its own seeded random source), a client
wakes at the time it asked for, a request reaches the API, an answer reaches
its client. Nothing sleeps and nothing reads the real clock, so a run is a
pure function of its settings and seed: the same seed gives the same figures.

:func:`run` plays one scenario with one policy and returns its :class:`Figures`.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from fleet_api import REFUSED, ApiModel, Window
from fleet_clients import EngineClient, NaiveClient, ReleaseZeroOneClient, SimClient

from massugc_logging.pipeline.retry import RetryPolicy

POLICIES = ("default", "naive", "v0_1")
SCENARIOS = ("steady", "outage", "degraded", "restart", "restart_outage")

#: Offered load above this multiple of capacity counts as overload.
OVERLOAD = 1.5

_LOG, _WAKE, _ARRIVE, _REPLY, _RESTART = range(5)


@dataclass(frozen=True)
class FleetSettings:
    """The fleet, the API and the time line, for every scenario of a run.

    Attributes:
        clients: desktops in the fleet.
        events_per_min: each client's mean rate of job events (Poisson).
        headroom: the API's capacity as a multiple of the fleet's mean load.
        queue_seconds: the API's queue holds this many seconds of its capacity.
        rtt: network round trip in seconds.
        retry_after: ``Retry-After`` seconds sent with each 503, or None.
        max_in_flight: the engine's ``max_in_flight``.
        naive_pause: the naive client's fixed pause after a failure.
        warmup: seconds of normal running before anything happens.
        outage: seconds the API is down in the outage scenario.
        degraded_for: seconds of reduced capacity in the degraded scenario.
        degraded_share: the share of capacity left meanwhile.
        restart_backlog_min: in the restart scenario each client starts holding
            this many minutes of its events.
        observe: seconds the run goes on after the incident (new events keep coming).
        seed: the seed every random source is derived from.
        policy: the engine's retry policy (its defaults unless given).
    """

    clients: int = 10_000
    events_per_min: float = 1.0
    headroom: float = 3.0
    queue_seconds: float = 1.0
    rtt: float = 0.1
    retry_after: Optional[float] = None
    max_in_flight: int = 4
    naive_pause: float = 1.0
    warmup: float = 300.0
    outage: float = 900.0
    degraded_for: float = 600.0
    degraded_share: float = 1.0 / 3.0
    restart_backlog_min: float = 15.0
    observe: float = 2400.0
    seed: int = 1
    policy: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def load(self) -> float:
        """The fleet's mean offered events per second."""
        return self.clients * self.events_per_min / 60.0

    @property
    def capacity(self) -> float:
        """The API's requests per second."""
        return self.headroom * self.load


@dataclass(frozen=True)
class Scenario:
    """What happens: an outage, a degradation or a restart, and when it ends."""

    name: str
    #: When the incident is over (the API back, capacity back, the fleet started).
    recovery_at: Optional[float]
    end: float
    outage: Optional[Window] = None
    degraded: Optional[Window] = None
    backlog_per_client: float = 0.0
    #: When every client restarts at once (an update, a reboot), if it does.
    restart_at: Optional[float] = None


def scenario(name: str, s: FleetSettings) -> Scenario:
    """The named scenario under these settings."""
    if name == "steady":
        return Scenario(name, None, s.warmup + s.observe)
    if name == "outage":
        down = Window(s.warmup, s.warmup + s.outage)
        return Scenario(name, down.end, down.end + s.observe, outage=down)
    if name == "degraded":
        slow = Window(s.warmup, s.warmup + s.degraded_for, s.degraded_share)
        return Scenario(name, slow.end, slow.end + s.observe, degraded=slow)
    if name == "restart":
        return Scenario(name, 0.0, s.observe,
                        backlog_per_client=s.restart_backlog_min * s.events_per_min)
    if name == "restart_outage":
        down = Window(s.warmup, s.warmup + s.outage)
        return Scenario(name, down.end, down.end + s.observe, outage=down,
                        restart_at=(down.start + down.end) / 2)
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


@dataclass
class Figures:
    """What one policy did in one scenario (``None`` where a figure does not apply)."""

    events: int
    requests: int
    delivered: int
    lost: int
    undelivered: int
    retry_amplification: float
    peak_load_x_capacity: float
    overload_seconds: int
    overload_seconds_after_recovery: Optional[int]
    recovery_goodput_share: Optional[float]
    degraded_goodput_share: Optional[float]
    backlog_at_recovery: Optional[int]
    drain_s: Optional[float]
    ideal_drain_s: Optional[float]
    drain_ratio: Optional[float]
    slowest_to_median_drain: Optional[float]
    p50_delay_s: float
    p99_delay_s: float
    max_delay_s: float
    #: Connection attempts per client per minute while the API was down.
    probes_per_client_per_min_down: Optional[float]
    #: Requests that met the API down, and the amplification of the rest.
    requests_while_down: Optional[int]
    retry_amplification_while_up: Optional[float]
    #: Requests that reached a live API, per event (all of them when it was never down).
    live_requests_per_event: float
    max_in_flight_per_client: int
    max_in_flight_per_client_down: Optional[int]
    served: int
    rejected_503: int
    refused: int

    def as_dict(self) -> dict[str, object]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class Trace:
    """Per-second counts at the API: requests offered, and requests served."""

    offered: list[int]
    served: list[int]
    capacity: list[float]


class _VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def read(self) -> float:
        return self.now


def make_client(policy: str, clock: Callable[[], float], rng: random.Random,
                s: FleetSettings) -> SimClient:
    """A client of the named policy."""
    if policy == "default":
        return EngineClient(clock, rng, policy=s.policy, max_in_flight=s.max_in_flight)
    if policy == "naive":
        return NaiveClient(clock, pause=s.naive_pause)
    if policy == "v0_1":
        return ReleaseZeroOneClient(clock, rng)
    raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run(scenario_name: str, policy: str, s: FleetSettings) -> tuple[Figures, Trace]:
    """Play one scenario with every client on one policy."""
    sc = scenario(scenario_name, s)
    clock = _VirtualClock()
    api = ApiModel(capacity=s.capacity, queue_seconds=s.queue_seconds,
                   rtt=s.rtt, retry_after=s.retry_after,
                   outages=(sc.outage,) if sc.outage else (),
                   degraded=(sc.degraded,) if sc.degraded else ())
    n = s.clients
    work = [random.Random(f"{s.seed}:work:{i}") for i in range(n)]
    clients = [make_client(policy, clock.read, random.Random(f"{s.seed}:decide:{i}"), s)
               for i in range(n)]
    mean_gap = 60.0 / s.events_per_min
    half_rtt = s.rtt / 2.0
    # Room for every answer: the run stops at end + observe, and an answer can come a
    # queue's wait (at the slowest capacity) after that.
    slowest = min([s.capacity] + [s.capacity * w.capacity_share for w in api.degraded])
    seconds = int(sc.end + s.observe + s.queue_seconds + 1.0 / slowest + s.rtt) + 2
    offered = [0] * seconds
    served = [0] * seconds

    heap: list[tuple[float, int, int, int, object]] = []
    seq = 0
    held = [0] * n
    in_flight = [0] * n
    wake_at = [math.inf] * n
    #: Whether the client has had a refusal (a scenario has one outage at most): from
    #: then on, while the API is down, it should have at most one request out.
    knows_down = [False] * n
    max_flight = 0
    max_flight_down: Optional[int] = 0 if sc.outage else None
    events = requests = delivered = 0
    delays: list[float] = []
    recovery = sc.recovery_at
    backlog_at_recovery: Optional[int] = None
    draining: set[int] = set()
    drained_after: dict[int, float] = {}
    accepting = True

    def push(t: float, kind: int, i: int, what: object = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, kind, i, what))

    for i in range(n):
        rng = work[i]
        backlog = sc.backlog_per_client
        whole = int(backlog) + (1 if rng.random() < backlog - int(backlog) else 0)
        for k in range(whole):
            created = -rng.random() * backlog * mean_gap
            clients[i].log(f"{i}:b{k}", created)
            held[i] += 1
            events += 1
        clients[i].start()
        push(rng.expovariate(1.0 / mean_gap), _LOG, i)
    if sc.restart_at is not None:
        push(sc.restart_at, _RESTART, -1)
    #: Each client's process: answers to an earlier one's requests never reach it.
    generation = [0] * n

    def pump(i: int, now: float) -> None:
        nonlocal requests, max_flight, max_flight_down
        client = clients[i]
        for event in client.take():
            in_flight[i] += 1
            requests += 1
            max_flight = max(max_flight, in_flight[i])
            if knows_down[i] and max_flight_down is not None and api.is_down(now + half_rtt):
                max_flight_down = max(max_flight_down, in_flight[i])
            push(now + half_rtt, _ARRIVE, i, (event, generation[i]))
        wake = client.next_wake()
        if wake is not None:
            wake = max(wake, now + 1e-6)
            if wake < wake_at[i]:
                wake_at[i] = wake
                push(wake, _WAKE, i)

    def mark_recovery() -> None:
        nonlocal backlog_at_recovery
        backlog_at_recovery = events - delivered
        draining.update(i for i in range(n) if held[i])

    if recovery is not None and recovery <= 0.0:
        mark_recovery()
        recovery_marked = True
        for i in range(n):
            pump(i, 0.0)
    else:
        recovery_marked = False

    hard_end = sc.end + s.observe
    while heap:
        t, _, kind, i, what = heapq.heappop(heap)
        if t >= hard_end:
            break
        if recovery is not None and not recovery_marked and t >= recovery:
            mark_recovery()
            recovery_marked = True
        if t >= sc.end and accepting:
            accepting = False
            if events == delivered:
                break
        clock.now = t
        if kind == _LOG:
            if not accepting:
                continue
            events += 1
            held[i] += 1
            clients[i].log(f"{i}:{events}", t)
            push(t + work[i].expovariate(1.0 / mean_gap), _LOG, i)
            pump(i, t)
        elif kind == _WAKE:
            if t != wake_at[i]:
                continue  # superseded by an earlier wake
            wake_at[i] = math.inf
            pump(i, t)
        elif kind == _ARRIVE:
            offered[int(t)] += 1
            done, replied, outcome = api.answer(t)
            if outcome.delivered:
                served[int(done)] += 1
            push(replied, _REPLY, i, (what, outcome))
        elif kind == _RESTART:
            for j in range(n):
                generation[j] += 1
                in_flight[j] = 0
                wake_at[j] = math.inf
                clients[j].restart()
                pump(j, t)
        else:
            (event, born), outcome = what  # type: ignore[misc]
            if born != generation[i]:
                continue  # the process that sent it is gone
            in_flight[i] -= 1
            if outcome is REFUSED:
                knows_down[i] = True
            if clients[i].settle(event, outcome):
                delivered += 1
                held[i] -= 1
                delays.append(t - event.created)
                if held[i] == 0 and i in draining and recovery is not None:
                    draining.discard(i)
                    drained_after[i] = t - recovery
            pump(i, t)
            if not accepting and events == delivered:
                break

    capacity = [api.capacity_at(sec + 0.5) for sec in range(seconds)]
    figures = _figures(s, sc, api, offered, served, capacity, events=events, requests=requests,
                       delivered=delivered, held=events - delivered, delays=delays,
                       dropped=sum(c.dropped() for c in clients),
                       backlog_at_recovery=backlog_at_recovery, still_draining=len(draining),
                       drained_after=drained_after, max_flight=max_flight,
                       max_flight_down=max_flight_down)
    return figures, Trace(offered, served, capacity)


def _figures(s: FleetSettings, sc: Scenario, api: ApiModel, offered: list[int],
             served: list[int], capacity: list[float], *, events: int, requests: int,
             delivered: int, held: int, delays: list[float], dropped: int,
             backlog_at_recovery: Optional[int], still_draining: int,
             drained_after: dict[int, float], max_flight: int,
             max_flight_down: Optional[int]) -> Figures:
    span = int(sc.end)
    loads = [offered[sec] / capacity[sec] for sec in range(span)]
    overloaded = [sec for sec in range(span) if loads[sec] > OVERLOAD]
    recovery = sc.recovery_at

    drain_s = ideal = ratio = goodput = slowest = None
    after_recovery: Optional[int] = None
    if recovery is not None and backlog_at_recovery is not None:
        after_recovery = sum(1 for sec in overloaded if sec >= recovery)
        spare = s.capacity - s.load
        ideal = backlog_at_recovery / spare if spare > 0 else math.inf
        if drained_after and not still_draining:
            times = sorted(drained_after.values())
            drain_s = times[-1]
            median = _percentile(times, 0.5)
            slowest = drain_s / median if median > 0 else None
            ratio = drain_s / ideal if ideal > 0 else None
            first, last = int(recovery), max(int(recovery) + 1, math.ceil(recovery + drain_s))
            goodput = sum(served[first:last]) / sum(capacity[first:last])

    degraded_share = None
    if sc.degraded is not None:
        first, last = int(sc.degraded.start), int(sc.degraded.end)
        degraded_share = sum(served[first:last]) / sum(capacity[first:last])

    probes = amplification_up = None
    down: Optional[int] = None
    if sc.outage is not None:
        first, last = int(sc.outage.start), int(sc.outage.end)
        down = sum(offered[first:last])
        probes = down / s.clients / ((last - first) / 60.0)
        amplification_up = (requests - down) / events if events else 0.0
    live = (requests - (down or 0)) / events if events else 0.0

    delays.sort()
    return Figures(
        events=events, requests=requests, delivered=delivered,
        lost=dropped,
        undelivered=held - dropped,
        retry_amplification=requests / events if events else 0.0,
        peak_load_x_capacity=max(loads) if loads else 0.0,
        overload_seconds=len(overloaded),
        overload_seconds_after_recovery=after_recovery,
        recovery_goodput_share=goodput, degraded_goodput_share=degraded_share,
        backlog_at_recovery=backlog_at_recovery, drain_s=drain_s, ideal_drain_s=ideal,
        drain_ratio=ratio, slowest_to_median_drain=slowest,
        p50_delay_s=_percentile(delays, 0.5), p99_delay_s=_percentile(delays, 0.99),
        max_delay_s=delays[-1] if delays else 0.0,
        probes_per_client_per_min_down=probes, requests_while_down=down,
        retry_amplification_while_up=amplification_up, live_requests_per_event=live,
        max_in_flight_per_client=max_flight, max_in_flight_per_client_down=max_flight_down,
        served=api.served, rejected_503=api.rejected, refused=api.refused)
