"""Failure-rate alerts: start, recovery, no flapping, per workflow, and dictConfig routing."""

from __future__ import annotations

import logging
import logging.config
from typing import Any

import pytest

from massugc_logging.alerts import FailureRateAlertHandler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Alerts(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def states(self) -> list[tuple[str, str]]:
        return [(r.scope, r.state) for r in self.records]  # type: ignore[attr-defined]


@pytest.fixture
def alerts() -> Alerts:
    catcher = Alerts()
    logger = logging.getLogger("massugc.alerts")
    logger.addHandler(catcher)
    logger.propagate = False
    return catcher


def job(handler: logging.Handler, failed: bool, workflow: str = "avatar",
        error: str = "ffmpeg exited with code 1") -> None:
    record = logging.LogRecord("massugc.jobs", logging.ERROR if failed else logging.INFO,
                               __file__, 1, "job", None, None)
    record.event_type = "video_generation"
    record.workflow_type = workflow
    if failed:
        record.error_message = error
    handler.handle(record)


def test_a_burst_raises_one_alert_and_its_recovery_one_more(alerts: Alerts) -> None:
    """Start once, stay quiet while failing, resolve once."""
    h = FailureRateAlertHandler(threshold=0.5, recover_below=0.2, min_jobs=10, window=10,
                                per_workflow=False, clock=Clock())
    for _ in range(10):
        job(h, False)
    for _ in range(20):
        job(h, True)
    for _ in range(20):
        job(h, False)
    assert alerts.states() == [("overall", "firing"), ("overall", "resolved")]
    firing = alerts.records[0]
    assert firing.levelno == logging.WARNING
    assert firing.failure_rate == 0.5 and firing.jobs == 10  # type: ignore[attr-defined]
    assert firing.top_categories == [["video_generation", 5]]  # type: ignore[attr-defined]


def test_a_rate_hovering_at_the_threshold_does_not_flap(alerts: Alerts) -> None:
    """Between threshold and recover_below nothing more is said."""
    h = FailureRateAlertHandler(threshold=0.5, recover_below=0.2, min_jobs=4, window=4,
                                per_workflow=False, clock=Clock())
    for i in range(200):
        job(h, i % 2 == 0)  # 50%, then 25-50% as the window slides
    assert alerts.states() == [("overall", "firing")]


def test_no_alert_before_min_jobs(alerts: Alerts) -> None:
    """A few failures at start-up are not a spike."""
    h = FailureRateAlertHandler(threshold=0.5, min_jobs=10, window=20, clock=Clock())
    for _ in range(9):
        job(h, True)
    assert alerts.records == []
    job(h, True)
    assert ("overall", "firing") in alerts.states()


def test_each_workflow_is_watched_separately(alerts: Alerts) -> None:
    """Avatar failing while others succeed alerts for avatar only."""
    h = FailureRateAlertHandler(threshold=0.6, min_jobs=5, window=10, clock=Clock())
    for _ in range(10):
        job(h, True, "avatar")
        job(h, False, "massugc")
        job(h, False, "randomized")
    assert alerts.states() == [("workflow_type=avatar", "firing")]


def test_old_jobs_leave_the_window_with_the_clock(alerts: Alerts) -> None:
    """Outcomes older than window_seconds no longer count."""
    clock = Clock()
    h = FailureRateAlertHandler(threshold=0.5, min_jobs=3, window=10, window_seconds=60,
                                per_workflow=False, clock=clock)
    job(h, True)
    job(h, True)
    clock.now += 120
    job(h, True)
    assert alerts.records == []  # only one failure is in the window now
    assert h.states()["overall"]["jobs"] == 1


def test_top_categories_come_from_the_classifier(alerts: Alerts) -> None:
    """The alert names what kind of failure dominates."""
    h = FailureRateAlertHandler(threshold=0.5, min_jobs=4, window=4, per_workflow=False,
                                clock=Clock())
    for error in ("ElevenLabs quota exceeded", "429 Too Many Requests",
                  "rate limit reached", "moov atom not found"):
        job(h, True, error=error)
    (alert,) = alerts.records
    assert alert.top_categories[0] == ["rate_limit", 3]  # type: ignore[attr-defined]
    assert "rate_limit (3)" in alert.getMessage()


def test_records_without_the_event_type_are_ignored(alerts: Alerts) -> None:
    """Only job events count."""
    h = FailureRateAlertHandler(threshold=0.5, min_jobs=1, window=2, clock=Clock())
    logging.getLogger("massugc.jobs").addHandler(h)
    for _ in range(5):
        logging.getLogger("massugc.jobs").error("not a job")
    assert h.states() == {}


def test_bad_thresholds_are_refused_with_a_clear_message() -> None:
    """recover_below must be under threshold."""
    with pytest.raises(ValueError, match="recover_below"):
        FailureRateAlertHandler(threshold=0.3, recover_below=0.5)


def test_routing_through_dictconfig_to_a_standard_handler(tmp_path: Any) -> None:
    """Configured in dictConfig, the alert reaches a plain file handler on massugc.alerts."""
    path = tmp_path / "alerts.log"
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
        "handlers": {
            "alerts": {"class": "massugc_logging.alerts.FailureRateAlertHandler",
                       "threshold": 0.5, "min_jobs": 4, "window": 4},
            "alert_file": {"class": "logging.FileHandler", "filename": str(path),
                           "formatter": "plain"},
        },
        "loggers": {
            "massugc.jobs": {"handlers": ["alerts"], "level": "INFO"},
            "massugc.alerts": {"handlers": ["alert_file"], "level": "WARNING",
                               "propagate": False},
        },
    })
    log = logging.getLogger("massugc.jobs")
    for _ in range(4):
        log.error("job failed", extra={"event_type": "video_generation",
                                       "workflow_type": "massugc",
                                       "error_message": "Connection reset by peer"})
    for h in logging.getLogger("massugc.alerts").handlers:
        h.flush()
    text = path.read_text()
    assert "WARNING massugc.alerts ALERT job failure rate overall is 100%" in text
    assert "network (4)" in text
