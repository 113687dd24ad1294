"""The retry policy: an immutable value, like urllib3's ``Retry``.

Each failed attempt makes a new policy through :meth:`RetryPolicy.increment`,
so one policy can be shared and reasoned about without locks. The policy
decides *when* the next attempt may happen; the sender decides nothing else.

- Backoff is exponential with full jitter and a cap.
- After ``circuit_threshold`` consecutive transient failures the circuit opens:
  no attempt for ``circuit_cooldown`` seconds, then a single trial request.
- A server's ``Retry-After`` (seconds or HTTP-date) is a floor on the delay,
  itself capped by ``max_retry_after`` so a malformed or hostile value cannot
  stall delivery for days.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Optional, Union

Random = Callable[[], float]


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again after a transient failure. Times are in seconds."""

    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    circuit_threshold: int = 6
    circuit_cooldown: float = 120.0
    max_retry_after: float = 3600.0
    #: How long to pause after the API rejected the key (401/403) before trying one event.
    auth_pause: float = 300.0
    #: Consecutive transient failures so far; 0 means healthy.
    failures: int = 0

    def __post_init__(self) -> None:
        for name in ("backoff_base", "backoff_cap", "circuit_cooldown", "max_retry_after",
                     "auth_pause"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0
            ):
                raise ValueError(f"retry.{name} must be a number of seconds >= 0, got {value!r}")
        if isinstance(self.circuit_threshold, bool) or not isinstance(
            self.circuit_threshold, int
        ) or self.circuit_threshold < 1:
            raise ValueError(
                f"retry.circuit_threshold must be an integer >= 1, got {self.circuit_threshold!r}"
            )

    @classmethod
    def from_config(cls, value: Union[RetryPolicy, Mapping[str, Any], None]) -> RetryPolicy:
        """Coerce a dictConfig/YAML mapping (or None for the defaults) into a policy."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"retry must be a mapping of settings, got {type(value).__name__}")
        known = {f.name for f in fields(cls)} - {"failures"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"unknown retry setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        coerced: dict[str, Any] = {}
        for name, raw in value.items():
            if name == "circuit_threshold":
                coerced[name] = int(raw) if isinstance(raw, str) and raw.strip().isdigit() else raw
            else:
                try:
                    coerced[name] = float(raw) if isinstance(raw, (str, int)) and not isinstance(
                        raw, bool) else raw
                except ValueError:
                    coerced[name] = raw
        return cls(**coerced)

    @property
    def circuit_open(self) -> bool:
        """True once enough consecutive failures happened to stop trying for a while."""
        return self.failures >= self.circuit_threshold

    def increment(self) -> RetryPolicy:
        """The policy after one more transient failure."""
        return replace(self, failures=self.failures + 1)

    def reset(self) -> RetryPolicy:
        """The policy after a success."""
        return self if self.failures == 0 else replace(self, failures=0)

    def next_delay(self, retry_after: Optional[float] = None, rng: Random = random.random) -> float:
        """Seconds to wait before the next attempt.

        Args:
            retry_after: the server's ``Retry-After`` in seconds, if it sent one.
            rng: a source of floats in [0, 1), injectable for tests.
        """
        if self.failures <= 0:
            delay = 0.0
        elif self.circuit_open:
            # A little jitter so processes sharing an outage do not retry in step.
            delay = self.circuit_cooldown * (1.0 + 0.1 * rng())
        else:
            exponent = min(self.failures - 1, 62)
            delay = rng() * min(self.backoff_cap, self.backoff_base * (2.0 ** exponent))
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


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
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    try:
        return max(0.0, parsed.timestamp() - now)
    except (OverflowError, OSError, ValueError):
        return None
