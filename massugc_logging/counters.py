"""The numbers ``stats()`` reports, kept in one small thread-safe unit.

The lock is re-entrant on purpose: ``emit`` counts a drop on the app thread,
and a signal handler (or a ``__del__``) that logs can interrupt that thread
while it holds the lock; a plain lock would deadlock there.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

_COUNTED = ("sent", "retried", "spooled", "dead_lettered")


class Counters:
    """Delivery counters, drops by reason, and the last error and status seen."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._counts = dict.fromkeys(_COUNTED, 0)
        self._dropped: dict[str, int] = {}
        self._last_error: Optional[str] = None
        self._last_status: Optional[int] = None

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to one of ``sent``, ``retried``, ``spooled``, ``dead_lettered``."""
        with self._lock:
            self._counts[name] += n

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` events lost for ``reason`` (queue_full, spool_full, expired, ...)."""
        if n:
            with self._lock:
                self._dropped[reason] = self._dropped.get(reason, 0) + n

    def note(self, status: Optional[int], error: Optional[str]) -> None:
        """Remember the last status seen and, for a failure, what went wrong."""
        with self._lock:
            self._last_status = status
            if error is not None:
                self._last_error = error

    def clear_error(self) -> None:
        """Delivery has recovered: there is no current error to report."""
        with self._lock:
            self._last_error = None

    def lost(self) -> int:
        """Events that will never be delivered: dropped or dead-lettered."""
        with self._lock:
            return sum(self._dropped.values()) + self._counts["dead_lettered"]

    def snapshot(self) -> dict[str, Any]:
        """A copy: the counts, ``dropped`` by reason, ``last_error``, ``last_status``."""
        with self._lock:
            return {**self._counts, "dropped": dict(self._dropped),
                    "last_error": self._last_error, "last_status": self._last_status}

    def after_fork_in_child(self) -> None:
        """A fresh lock: a parent thread may have held it at the fork."""
        self._lock = threading.RLock()
