"""Local diagnostics: say each problem once, count it always.

Everything this package has to tell its user goes to the ``massugc_logging``
logger (never to ``massugc.jobs``), and :class:`~massugc_logging.CloudHandler`
ignores records from it, so a diagnostic can never become a cloud event or
loop back into the handler that raised it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

LOGGER_NAME = "massugc_logging"

#: Loggers whose records never enter the cloud handler: its own and those of
#: the HTTP stack it drives, so that sending can never trigger more sending.
IGNORED_LOGGER_PREFIXES = (LOGGER_NAME, "urllib3", "requests", "charset_normalizer")

logger = logging.getLogger(LOGGER_NAME)


def is_internal_logger(name: str) -> bool:
    """True for loggers whose records must never reach the cloud handler."""
    return any(name == p or name.startswith(p + ".") for p in IGNORED_LOGGER_PREFIXES)


class Diagnostics:
    """Counters by reason plus a once-per-key local message.

    Thread-safe; the lock is held for a counter bump only, never across I/O. It is
    re-entrant so that a signal handler logging on a thread that holds it cannot
    deadlock.

    Code that holds a lock of its own wraps that section in :meth:`deferred`: a
    message said there is logged once the section is left. Logging can take the
    logging module's lock, which ``dictConfig`` holds while it closes handlers, and
    closing waits for those very locks.
    """

    def __init__(self, log: logging.Logger | None = None) -> None:
        self._log = log or logger
        self._lock = threading.RLock()
        self._said: set[str] = set()
        self._local = threading.local()
        self.counts: Counter[str] = Counter()

    def count(self, reason: str, n: int = 1) -> None:
        """Add ``n`` to the counter for ``reason``."""
        with self._lock:
            self.counts[reason] += n

    def say_once(self, key: str, level: int, message: str, *args: Any) -> bool:
        """Log ``message`` the first time ``key`` is seen; return whether it was logged."""
        with self._lock:
            if key in self._said:
                return False
            self._said.add(key)
        if getattr(self._local, "depth", 0):
            self._local.pending.append((level, message, args))
            return True
        return self._emit(level, message, args)

    def _emit(self, level: int, message: str, args: tuple[Any, ...]) -> bool:
        try:
            self._log.log(level, message, *args)
        except Exception:
            return False
        return True

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold back what is said inside, on this thread, until the outermost section ends."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._local.pending = []
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                pending, self._local.pending = self._local.pending, []
                for level, message, args in pending:
                    self._emit(level, message, args)

    def forget(self, key: str) -> None:
        """Allow ``key`` to be said again (for a problem that went away and came back)."""
        with self._lock:
            self._said.discard(key)

    def after_fork_in_child(self) -> None:
        """A fresh lock: the parent's may have been held by one of its threads at the fork."""
        self._lock = threading.RLock()
        self._local = threading.local()

    def snapshot(self) -> dict[str, int]:
        """A copy of the counters."""
        with self._lock:
            return dict(self.counts)
