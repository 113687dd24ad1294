"""The retry policy: an immutable value of settings, and the delays it implies.

Like urllib3's ``Retry``, a :class:`RetryPolicy` is a frozen value that can be
shared freely; the state that changes as outcomes arrive lives in
:mod:`massugc_logging.pipeline.decisions`, which takes a policy and returns decisions.
Every function here is pure: time and randomness are passed in.

Two kinds of waiting, kept apart on purpose:

- **One event failed** (timeout, connection error, 408, 5xx): that event waits
  :func:`event_retry_delay`, exponential in its own attempt count with full
  jitter and a cap, while the other events keep flowing.
- **The API as a whole is failing** (the circuit is open): one probe at a time,
  spaced by :func:`probe_delay`, which starts at about a second and grows with
  jitter to ``probe_interval_cap``.
- **The API is overloaded** (the retry budget is spent): sending pauses for
  :func:`overload_delay`, on the same steps with wider jitter.

A process that starts with a backlog waits :func:`start_delay` before its first
send, so that a fleet restarted at once does not all send in the same second.

A server's ``Retry-After`` is honoured up to ``max_retry_after``, so a
malformed or hostile value cannot stall delivery for days.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional, Union

Random = Callable[[], float]

#: Old setting names still accepted from a configuration, and what they mean now.
_RENAMED = {"circuit_cooldown": "probe_interval_cap"}
_INTEGER_SETTINGS = ("circuit_threshold",)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again, and when to call the API down. Times are in seconds.

    Attributes:
        backoff_base: the first retry of an event waits up to this long.
        backoff_cap: the longest an event waits between its own attempts.
        circuit_threshold: consecutive transient failures (across events) that,
            together with ``circuit_failure_share``, open the circuit.
        circuit_failure_share: the share of failures over the last
            ``circuit_window`` seconds that, with the streak, opens the circuit.
        circuit_window: seconds of outcomes the failure share is taken over.
        probe_interval: the first probe after the circuit opens comes about this late.
        probe_interval_cap: the longest spacing between probes (at most 60 s
            keeps recovery prompt after a long outage).
        max_retry_after: a server's ``Retry-After`` is capped at this.
        auth_pause: after the API refused the key (401/403), wait this long
            before trying one event again.
        retry_budget: the most retries of overload answers (503, 429 or 408 without
            ``Retry-After``, other 5xx, timeouts) a client may hold in hand to send at
            the event's quick backoff; each takes one token. A client starts with
            one and earns the rest. Without a token sending pauses instead (see
            :mod:`massugc_logging.pipeline.decisions`).
        retry_budget_per_success: tokens each answer of the API puts back. At 0.5 an
            API failing one request in three is retried at once for ever, and a
            fleet settles at about 1.5x what the API serves.
        retry_budget_per_second: tokens that come back with time alone (one per
            ten minutes), so a client the API has not answered for a long while
            gets its budget back in the end.
        start_spread: a process that starts with events waiting in its spool sends the
            first of them after a random delay of up to this long (a fleet restarted
            at once does not all send in the same second); a remembered pause decides
            instead when there is one.
    """

    backoff_base: float = 0.01
    backoff_cap: float = 60.0
    circuit_threshold: int = 5
    circuit_failure_share: float = 0.5
    circuit_window: float = 30.0
    probe_interval: float = 1.0
    probe_interval_cap: float = 60.0
    max_retry_after: float = 3600.0
    auth_pause: float = 300.0
    retry_budget: float = 10.0
    retry_budget_per_success: float = 0.5
    retry_budget_per_second: float = 1.0 / 600
    start_spread: float = 30.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _INTEGER_SETTINGS:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"retry.{f.name} must be an integer >= 1, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0
            ):
                raise ValueError(f"retry.{f.name} must be a number >= 0, got {value!r}")
        if not 0 < self.circuit_failure_share <= 1:
            raise ValueError("retry.circuit_failure_share must be in (0, 1], got "
                             f"{self.circuit_failure_share!r}")

    @classmethod
    def from_config(cls, value: Union[RetryPolicy, Mapping[str, Any], None]) -> RetryPolicy:
        """Coerce a dictConfig/YAML mapping (or None for the defaults) into a policy.

        YAML scalars arrive as strings or ints; they are converted here, at the
        edge. ``circuit_cooldown`` (release 0.1.0) is read as ``probe_interval_cap``.
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"retry must be a mapping of settings, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        given = {_RENAMED.get(str(name), str(name)): raw for name, raw in value.items()}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(
                f"unknown retry setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**{name: _coerce(name, raw) for name, raw in given.items()})


def _coerce(name: str, raw: Any) -> Any:
    """A YAML scalar as the number the setting needs (left alone when it is not one)."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        return raw
    try:
        if name in _INTEGER_SETTINGS:
            if isinstance(raw, str):
                return int(raw) if raw.strip().isdigit() else raw
            return raw
        return float(raw)
    except (ValueError, AttributeError):
        return raw


def event_retry_delay(policy: RetryPolicy, attempts: int, rng: Random) -> float:
    """Seconds one event waits after its ``attempts``-th failed attempt (full jitter).

    ``rng() * min(backoff_cap, backoff_base * 2 ** (attempts - 1))``: each event
    backs off on its own count, so a poison event slows down alone.
    """
    if attempts <= 0:
        return 0.0
    ceiling = min(policy.backoff_cap, policy.backoff_base * (2.0 ** min(attempts - 1, 62)))
    return rng() * ceiling


def start_delay(policy: RetryPolicy, backlog: int, rng: Random) -> float:
    """Seconds a process that starts with ``backlog`` events waits before its first send:
    uniform up to ``start_spread``, so that a fleet restarted at once (an update, a
    reboot) comes back spread over that window instead of in one second; 0 with no
    backlog."""
    if backlog <= 0:
        return 0.0
    return rng() * policy.start_spread


#: The share of a probe step that is random: spacings lie in its upper quarter.
PROBE_JITTER = 0.25


def probe_delay(policy: RetryPolicy, failed_probes: int, rng: Random) -> float:
    """Seconds until the next probe while the circuit is open (jittered in the upper
    quarter of each step).

    The spacing doubles each failed probe, from ``probe_interval`` to
    ``probe_interval_cap``, and is drawn from its upper quarter so that a fleet's
    probes never come in a burst yet a recovered API is found within one spacing.
    Doubling reaches the cap after :func:`probe_steps` failed probes, so a long
    outage costs a client about one probe per seven eighths of the cap.

    The quarter (not the half) bounds the wait after a short outage: the probe
    before the API came back was sent at least three quarters of the sum of the
    steps before it after the circuit opened, so the next one is due within a
    third more than the outage plus ``probe_interval``: within 10 s of a 10 s
    outage, whatever the draws (with the half, 16 s), and within the cap for any
    outage.
    """
    return _step(policy, failed_probes) * (1.0 - PROBE_JITTER * rng())


def overload_delay(policy: RetryPolicy, steps: int, rng: Random) -> float:
    """Seconds a client whose retry budget is spent waits before sending again: up to the
    probe spacing of ``steps`` steps, drawn from its upper half (wider than the probes'
    quarter), so that a fleet that overloads the API comes back spread out, not in
    waves."""
    return _step(policy, steps) * (OVERLOAD_JITTER_FLOOR
                                   + (1.0 - OVERLOAD_JITTER_FLOOR) * rng())


def _step(policy: RetryPolicy, steps: int) -> float:
    """The probe spacing's ceiling after ``steps`` doublings: ``probe_interval`` doubled,
    at most ``probe_interval_cap``."""
    return min(policy.probe_interval_cap,
               policy.probe_interval * (2.0 ** min(max(steps, 0), 200)))


#: The shortest overload pause, as a share of its step: half (in the fleet
#: simulation, full jitter left the fleet above 1.5x capacity a third longer).
OVERLOAD_JITTER_FLOOR = 0.5


def probe_steps(policy: RetryPolicy) -> int:
    """Failed probes after which the spacing is at ``probe_interval_cap`` (more change
    nothing): 6 with the defaults, 1 s doubling to 60 s."""
    if policy.probe_interval <= 0 or policy.probe_interval_cap <= policy.probe_interval:
        return 0
    return math.ceil(math.log2(policy.probe_interval_cap / policy.probe_interval))


def capped_retry_after(policy: RetryPolicy, retry_after: float) -> float:
    """The server's ``Retry-After`` as the pause we honour: never negative, never endless."""
    return min(max(retry_after, 0.0), policy.max_retry_after)


def parse_retry_after(value: Optional[str], now: float) -> Optional[float]:
    """A ``Retry-After`` header as seconds from ``now``; None when absent or malformed.

    Accepts delay-seconds (``"120"``) and an HTTP-date; a date in the past is 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(int(text[:12]))
    try:
        import email.utils  # noqa: PLC0415 - an HTTP date is rare; most are seconds

        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    try:
        return max(0.0, parsed.timestamp() - now)
    except (OverflowError, OSError, ValueError):
        return None
