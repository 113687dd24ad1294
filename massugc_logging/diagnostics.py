"""Local diagnostics: say each problem once, count it always.

Everything this package has to tell its user goes to the ``massugc_logging``
logger (never to ``massugc.jobs``), and :class:`~massugc_logging.CloudHandler`
ignores records from it, so a diagnostic can never become a cloud event or
loop back into the handler that raised it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
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
    """

    def __init__(self, log: logging.Logger | None = None) -> None:
        self._log = log or logger
        self._lock = threading.RLock()
        self._said: set[str] = set()
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
        try:
            self._log.log(level, message, *args)
        except Exception:
            return False
        return True

    def forget(self, key: str) -> None:
        """Allow ``key`` to be said again (for a problem that went away and came back)."""
        with self._lock:
            self._said.discard(key)

    def after_fork_in_child(self) -> None:
        """A fresh lock: the parent's may have been held by one of its threads at the fork."""
        self._lock = threading.RLock()

    def snapshot(self) -> dict[str, int]:
        """A copy of the counters."""
        with self._lock:
            return dict(self.counts)
