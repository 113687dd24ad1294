"""Local diagnostics: say each problem once, count it always.

Everything this package has to tell its user goes to the ``massugc_logging``
logger (never to ``massugc.jobs``), and :class:`~massugc_logging.CloudHandler`
ignores records from it, so a diagnostic can never become a cloud event or
loop back into the handler that raised it.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

LOGGER_NAME = "massugc_logging"

#: Loggers whose records never enter the cloud handler: its own and those of
#: the HTTP stack it drives, so that sending can never trigger more sending.
IGNORED_LOGGER_PREFIXES = (LOGGER_NAME, "urllib3", "requests", "charset_normalizer")

logger = logging.getLogger(LOGGER_NAME)


def is_internal_logger(name: str) -> bool:
    """True for loggers whose records must never reach the cloud handler."""
    return any(name == p or name.startswith(p + ".") for p in IGNORED_LOGGER_PREFIXES)


class Topic(enum.Enum):
    """What a message is about: each is said once until it is forgotten (a problem that
    went away and came back is said again). A topic may be narrowed by an ``about``
    text (the HTTP status of a rejection, the field a warning names)."""

    CONFIG_URL = "config:url"
    CONFIG_NO_KEY = "config:no-key"
    CONFIG_BAD_KEY = "config:bad-key"
    CONFIG_KEY_CHANGED = "config:key-changed"
    FIELD = "field"
    DROP_QUEUE_FULL = "drop:queue_full"
    DROP_SHUTDOWN = "drop:shutdown"
    DROP_SPOOL_FULL = "drop:spool_full"
    INTAKE_START = "intake:start"
    INTAKE_STOP = "intake:stop"
    INTAKE_ERROR = "intake:error"
    INTAKE_SPOOL = "intake:spool"
    JOBS_RECOVERED = "jobs:recovered"
    ROUTE_LEARNT = "route"
    SPOOL_UNADDRESSED = "spool:unaddressed"
    SPOOL_OTHERS = "spool:others"
    SPOOL_UNUSABLE = "spool:unusable"
    SPOOL_BUSY = "spool:busy"
    SPOOL_RECOVERED = "spool:recovered"
    SPOOL_CLOSED_IN_MEMORY = "spool:closed-in-memory"
    DELIVERY_SPOOL = "delivery:spool"
    DELIVERY_ERROR = "delivery:error"
    SEND_PERMANENT = "send:permanent"
    SEND_NOT_THE_API = "send:not-the-api"
    SEND_CREDITS = "send:credits"
    SEND_RESUMED = "send:resumed"
    SEND_UNTRUSTED = "send:untrusted"
    SEND_ROUTE = "send:route"
    SEND_DEVICE = "send:device"
    SEND_AUTH = "send:auth"
    SEND_CIRCUIT = "send:circuit"
    SEND_RATE_LIMITED = "send:transient"
    SIGTERM_THREAD = "sigterm:thread"
    SIGTERM_TAKEN = "sigterm:taken"
    KEYRING_READ = "keystore:keyring-read"
    KEYRING_WRITE = "keystore:keyring-write"
    KEY_FILE_PERMISSIONS = "keystore:permissions"
    REPORT_JOB_NO_OUTCOME = "report_job:no-outcome"
    REPORT_JOB_CLASH = "report_job:clash"
    COLLECTOR_INTERNAL = "collector:internal"


@dataclass(frozen=True)
class Notice:
    """A message to say once (or, with ``forget``, a topic to allow again), made where a
    lock is held and said by :meth:`Diagnostics.publish` once it is released: logging
    can take the logging module's lock, which ``dictConfig`` holds while it closes
    handlers, and closing waits for those very locks."""

    topic: Topic
    level: int = logging.INFO
    message: str = ""
    args: tuple[Any, ...] = ()
    about: str = ""
    forget: bool = False

    @classmethod
    def forgetting(cls, *topics: Topic) -> tuple[Notice, ...]:
        """Notices that allow each of ``topics`` to be said again."""
        return tuple(cls(topic, forget=True) for topic in topics)


class Diagnostics:
    """Counters by reason plus a once-per-topic local message.

    Thread-safe; the lock is held for a counter bump only, never across I/O. It is
    re-entrant so that a signal handler logging on a thread that holds it cannot
    deadlock. Code that holds a lock of its own makes :class:`Notice` objects there
    and has them said by :meth:`publish` after it lets go.
    """

    def __init__(self, log: logging.Logger | None = None) -> None:
        self._log = log or logger
        self._lock = threading.RLock()
        self._said: set[tuple[Topic, str]] = set()
        self.counts: Counter[str] = Counter()

    def count(self, reason: str, n: int = 1) -> None:
        """Add ``n`` to the counter for ``reason``."""
        with self._lock:
            self.counts[reason] += n

    def say_once(self, topic: Topic, level: int, message: str, *args: Any,
                 about: str = "") -> bool:
        """Log ``message`` the first time ``topic`` (narrowed by ``about``) comes up;
        return whether it was logged."""
        with self._lock:
            if (topic, about) in self._said:
                return False
            self._said.add((topic, about))
        try:
            self._log.log(level, message, *args)
        except Exception:
            return False
        return True

    def forget(self, topic: Topic, about: str = "") -> None:
        """Allow ``topic`` to be said again (for a problem that went away and came back)."""
        with self._lock:
            self._said.discard((topic, about))

    def publish(self, notices: Iterable[Notice]) -> None:
        """Say or forget each notice, in order (with no lock of the caller's held)."""
        for notice in notices:
            if notice.forget:
                self.forget(notice.topic, notice.about)
            else:
                self.say_once(notice.topic, notice.level, notice.message, *notice.args,
                              about=notice.about)

    def after_fork_in_child(self) -> None:
        """A fresh lock: the parent's may have been held by one of its threads at the fork."""
        self._lock = threading.RLock()

    def snapshot(self) -> dict[str, int]:
        """A copy of the counters."""
        with self._lock:
            return dict(self.counts)
