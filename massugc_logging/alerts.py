"""Failure-rate alerts: one WARNING when job failures spike, one when they recover.

:class:`FailureRateAlertHandler` sits on the ``massugc.jobs`` logger beside the
cloud handler. It watches job outcomes (records tagged ``event_type``) in a
sliding window of the last ``window`` jobs, overall and per ``workflow_type``,
and logs on the ``massugc.alerts`` logger:

- ``firing`` once, when the failure rate reaches ``threshold`` over at least
  ``min_jobs`` jobs;
- ``resolved`` once, when it falls to ``recover_below`` or less.

Between the two nothing more is said, however many jobs fail: the gap between
``threshold`` and ``recover_below`` (hysteresis) stops a rate hovering near the
threshold from flapping. The alert record carries the numbers as extras
(``alert``, ``state``, ``scope``, ``failure_rate``, ``failures``, ``jobs``,
``window_jobs``, ``window_seconds``, ``top_categories``), so any standard
handler (console, file, SMTP, HTTP webhook) can carry it.

Cost on the app thread: an append and a few integer updates per job. Failure
categories (:mod:`massugc_logging.classify`) are computed only when an alert
fires. A handler on ``massugc.alerts`` that does I/O runs when the alert is
logged, on the thread that logged the job; put a slow one (SMTP, webhook)
behind a ``QueueHandler``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from massugc_logging._unlocked import UnlockedHandler
from massugc_logging.contract import DEFAULT_EVENT_TYPE
from massugc_logging.diagnostics import is_internal_logger

if TYPE_CHECKING:
    from massugc_logging.classify import Classifier

ALERT_LOGGER = "massugc.alerts"
OVERALL = "overall"


@dataclass(frozen=True)
class _Outcome:
    """One job as the window keeps it; the error is classified only if an alert fires."""

    at: float
    failed: bool
    error_text: str
    exc_type_names: tuple[str, ...]


class _Window:
    """The last ``size`` outcomes of one scope, with a running failure count."""

    def __init__(self, size: int) -> None:
        self.outcomes: deque[_Outcome] = deque()
        self.size = size
        self.failures = 0
        self.firing = False

    def add(self, outcome: _Outcome) -> None:
        self.outcomes.append(outcome)
        self.failures += outcome.failed
        if len(self.outcomes) > self.size:
            self.failures -= self.outcomes.popleft().failed

    def expire(self, oldest: float) -> None:
        while self.outcomes and self.outcomes[0].at < oldest:
            self.failures -= self.outcomes.popleft().failed

    @property
    def rate(self) -> float:
        return self.failures / len(self.outcomes) if self.outcomes else 0.0


class FailureRateAlertHandler(UnlockedHandler):
    """Watch job outcomes and log one alert when failures spike and one when they recover.

    Args:
        threshold: failure rate (0-1) that starts an alert.
        recover_below: failure rate at or under which the alert is resolved.
        min_jobs: jobs a window needs before it can start an alert.
        window: how many recent jobs each scope keeps.
        window_seconds: jobs older than this leave the window (None: no age limit).
        per_workflow: also watch each ``workflow_type`` separately.
        event_type: only records with this ``event_type`` extra are jobs.
        alert_logger: where alerts are logged.
        rules: extra classification rules (see :meth:`Classifier.from_config`).
        clock: seconds, injectable for tests.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        recover_below: Optional[float] = None,
        min_jobs: int = 10,
        window: int = 20,
        window_seconds: Optional[float] = 3600.0,
        per_workflow: bool = True,
        event_type: str = DEFAULT_EVENT_TYPE,
        alert_logger: str = ALERT_LOGGER,
        rules: Sequence[Mapping[str, Any]] = (),
        level: int = logging.NOTSET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(level)
        self.threshold = float(threshold)
        self.recover_below = float(recover_below) if recover_below is not None else \
            self.threshold / 2
        if not 0 < self.threshold <= 1 or not 0 <= self.recover_below < self.threshold:
            raise ValueError("need 0 < threshold <= 1 and 0 <= recover_below < threshold, got "
                             f"threshold={threshold!r}, recover_below={recover_below!r}")
        self.min_jobs = max(1, int(min_jobs))
        self.window = max(self.min_jobs, int(window))
        self.window_seconds = None if window_seconds is None else float(window_seconds)
        self.per_workflow = bool(per_workflow)
        self.event_type = str(event_type)
        self.alert_logger = logging.getLogger(alert_logger)
        # Rules given are checked now (a mistake in them is the configuration's); the
        # default table is compiled when an alert first needs its top categories.
        self._classifier: Optional[Classifier] = None
        if rules:
            from massugc_logging.classify import Classifier  # noqa: PLC0415

            self._classifier = Classifier.from_config(list(rules))
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._state_lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"<FailureRateAlertHandler threshold={self.threshold:.0%} "
                f"recover_below={self.recover_below:.0%} window={self.window}>")

    @property
    def classifier(self) -> Classifier:
        """The classifier for the top categories (the default one made on first use)."""
        if self._classifier is None:
            from massugc_logging.classify import Classifier  # noqa: PLC0415

            self._classifier = Classifier()
        return self._classifier

    def emit(self, record: logging.LogRecord) -> None:
        """Count one job outcome; log an alert if a scope changes state. Never raises."""
        try:
            if getattr(record, "event_type", None) != self.event_type:
                return
            if is_internal_logger(record.name) or record.name == self.alert_logger.name:
                return
            outcome = _outcome_of(record, self._clock())
            workflow = getattr(record, "workflow_type", None)
            scopes = [OVERALL]
            if self.per_workflow and isinstance(workflow, str) and workflow:
                scopes.append(f"workflow_type={workflow}")
            changes = []
            with self._state_lock:
                for scope in scopes:
                    change = self._observe(scope, outcome)
                    if change is not None:
                        changes.append(change)
            for change in changes:
                self._announce(*change)
        except Exception:
            self.handleError(record)

    def _observe(self, scope: str, outcome: _Outcome) -> Optional[tuple[str, str, _Window]]:
        """Add an outcome to a scope; return (scope, new state, window) on a change."""
        window = self._windows.get(scope)
        if window is None:
            window = self._windows[scope] = _Window(self.window)
        window.add(outcome)
        if self.window_seconds is not None:
            window.expire(outcome.at - self.window_seconds)
        jobs = len(window.outcomes)
        if not window.firing and jobs >= self.min_jobs and window.rate >= self.threshold:
            window.firing = True
            return scope, "firing", window
        if window.firing and window.rate <= self.recover_below:
            window.firing = False
            return scope, "resolved", window
        return None

    def _announce(self, scope: str, state: str, window: _Window) -> None:
        """Log one alert record with the numbers as extras."""
        outcomes = list(window.outcomes)
        jobs = len(outcomes)
        failures = sum(o.failed for o in outcomes)
        rate = failures / jobs if jobs else 0.0
        categories = Counter(
            self.classifier.classify(exc_type_names=o.exc_type_names,
                                     text=o.error_text).category
            for o in outcomes if o.failed
        ).most_common(3)
        top = ", ".join(f"{name} ({count})" for name, count in categories) or "none"
        extra = {
            "alert": "failure_rate", "state": state, "scope": scope,
            "failure_rate": round(rate, 4), "failures": failures, "jobs": jobs,
            "window_jobs": self.window, "window_seconds": self.window_seconds,
            "top_categories": [list(c) for c in categories],
            "threshold": self.threshold, "recover_below": self.recover_below,
        }
        if state == "firing":
            self.alert_logger.warning(
                "ALERT job failure rate %s is %.0f%% (%d of the last %d jobs failed; threshold "
                "%.0f%%). Top failure categories: %s", scope, rate * 100, failures, jobs,
                self.threshold * 100, top, extra=extra)
        else:
            self.alert_logger.warning(
                "RESOLVED job failure rate %s is back to %.0f%% (%d of the last %d jobs "
                "failed).", scope, rate * 100, failures, jobs, extra=extra)

    def states(self) -> dict[str, dict[str, Any]]:
        """Each scope's window: jobs, failures, rate and whether it is alerting."""
        with self._state_lock:
            return {scope: {"jobs": len(w.outcomes), "failures": w.failures,
                            "failure_rate": w.rate, "firing": w.firing}
                    for scope, w in self._windows.items()}


def _outcome_of(record: logging.LogRecord, now: float) -> _Outcome:
    """What the window keeps of a job record: cheap references, no formatting."""
    explicit = getattr(record, "success", None)
    failed = (not explicit) if isinstance(explicit, bool) else record.levelno >= logging.ERROR
    if not failed:
        return _Outcome(now, False, "", ())
    text = getattr(record, "error_message", None)
    names: tuple[str, ...] = ()
    if record.exc_info:
        from massugc_logging.payload import capture_exception  # noqa: PLC0415 - only with one

        summary = capture_exception(record.exc_info)
        if summary is not None:
            names = summary.qualified_names
            if not isinstance(text, str):
                text = summary.describe()
    if not isinstance(text, str):
        text = record.msg if isinstance(record.msg, str) else ""
    return _Outcome(now, True, text, names)
