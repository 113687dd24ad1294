"""The numbers ``stats()`` reports, kept in one small thread-safe unit.

``emit`` counts on the app thread, where a signal handler (or a ``__del__``)
that logs can interrupt it between any two bytecodes. Two things follow: no
lock there may be a plain one (it would deadlock when re-entered), and no count
there may be a Python ``x += 1`` (the handler's increment, made between the
read and the write, would be lost). :class:`AtomicCounter` increments in one
C call; the other counters are bumped by the handler's own threads only.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Optional


class AtomicCounter:
    """A counter whose increment is a single C call (``next`` on :func:`itertools.count`).

    Safe to bump from any thread and from a signal handler re-entering the
    thread that is bumping it.
    """

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = itertools.count()

    def increment(self) -> None:
        """Add one."""
        next(self._count)

    @property
    def value(self) -> int:
        """The count so far (read from the iterator's ``count(N)`` repr: no increment)."""
        return int(repr(self._count)[6:-1])

_COUNTED = ("sent", "retried", "spooled", "dead_lettered")


class Counters:
    """Delivery counters, drops by reason, and the last error and status seen."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._counts = dict.fromkeys(_COUNTED, 0)
        self._dropped: dict[str, int] = {}
        self._dropped_on_app_thread: dict[str, AtomicCounter] = {}
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

    def drop_on_app_thread(self, reason: str) -> None:
        """Count one event lost in ``emit`` (queue full, internal error): re-entrant."""
        counter = self._dropped_on_app_thread.get(reason)
        if counter is None:
            counter = self._dropped_on_app_thread.setdefault(reason, AtomicCounter())
        counter.increment()

    def dropped(self) -> dict[str, int]:
        """Events lost, by reason."""
        with self._lock:
            merged = dict(self._dropped)
        for reason, counter in list(self._dropped_on_app_thread.items()):
            merged[reason] = merged.get(reason, 0) + counter.value
        return {reason: n for reason, n in merged.items() if n}

    def lost(self) -> int:
        """Events that will never be delivered: dropped or dead-lettered."""
        return sum(self.dropped().values()) + self._counts["dead_lettered"]

    def snapshot(self) -> dict[str, Any]:
        """A copy: the counts, ``dropped`` by reason, ``last_error``, ``last_status``."""
        dropped = self.dropped()
        with self._lock:
            return {**self._counts, "dropped": dropped,
                    "last_error": self._last_error, "last_status": self._last_status}

    def after_fork_in_child(self) -> None:
        """A fresh lock: a parent thread may have held it at the fork."""
        self._lock = threading.RLock()
