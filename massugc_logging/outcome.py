"""How one delivery attempt ended: the value the transport returns and the engine settles.

Pure data with no HTTP in it, so the delivery engine, its decision core and
the fleet simulation can use outcomes without importing the HTTP stack's
behaviour (the transport is the only module that makes them from responses).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Optional


class OutcomeKind(enum.Enum):
    """How one delivery attempt ended."""

    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    AUTH = "auth"
    #: The server's TLS certificate did not verify: retrying cannot help until the
    #: trust is fixed (a CA bundle, or the CA in the system's store).
    UNTRUSTED = "untrusted_certificate"
    #: No usage-log path answers at the API (404 or 405 on every known one): the
    #: route is wrong, not the event.
    NO_ROUTE = "no_route"
    #: 403 ``device_mismatch``: the key is in use on another device.
    DEVICE_MISMATCH = "device_mismatch"
    #: 403 ``insufficient_credits``: events that cost credits (successes) must wait;
    #: failure reports cost none.
    NO_CREDITS = "insufficient_credits"


@dataclass(frozen=True)
class Outcome:
    """The result of one POST: its kind, the status, and what the server said."""

    kind: OutcomeKind
    status: Optional[int] = None
    #: Seconds the server asked us to wait (``Retry-After``), if any.
    retry_after: Optional[float] = None
    #: A short, key-free reason: the server's error code and message, or the network error.
    reason: str = ""
    #: The parsed JSON response body, when the server sent one.
    response: Optional[Any] = None
    #: No answer came in time (a read timeout, or the request's deadline): like an
    #: answer of 503, a sign the API is overloaded, unlike a refused connection.
    timed_out: bool = False

    @property
    def overloaded(self) -> bool:
        """A transient answer that says the API is busy (408, 429 or 5xx without
        ``Retry-After``, or no answer in time): what a retry budget is spent on."""
        return self.kind is OutcomeKind.TRANSIENT and self.retry_after is None and (
            self.timed_out or (self.status is not None and (
                self.status in (408, 429) or self.status >= 500)))

    @property
    def delivered(self) -> bool:
        """True when the server accepted the event."""
        return self.kind is OutcomeKind.DELIVERED
