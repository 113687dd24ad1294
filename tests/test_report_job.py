"""report_job: one call per job, exactly one event whatever happens."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from massugc_logging import report_job
from massugc_logging.testing import capture_events

JOB = {"job_name": "Spring", "run_id": "run-1", "workflow_type": "avatar"}
log = logging.getLogger("massugc.jobs")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_job_that_succeeds_with_an_output_reports_one_success() -> None:
    """succeeded(path): one success event carrying the output path."""
    with capture_events(log) as events, report_job(log, JOB) as job:
        job.succeeded("renders/spring.mp4")
    (event,) = events
    assert event["job_data"]["success"] is True
    assert event["job_data"]["output_path"] == "renders/spring.mp4"
    assert event["job_data"]["run_id"] == "run-1"


def test_a_job_that_fails_without_an_exception_reports_its_message() -> None:
    """failed(message): one failure event with that error message."""
    with capture_events(log) as events, report_job(log, JOB) as job:
        job.failed("render produced no file")
    (event,) = events
    assert event["job_data"]["success"] is False
    assert event["job_data"]["error_message"] == "render produced no file"


def test_an_exception_reports_a_failure_with_it_and_propagates() -> None:
    """Leaving the block by an exception: one failure, Type: message, and the exception
    reaches the caller unchanged."""
    with capture_events(log) as events, pytest.raises(RuntimeError, match="moov atom"), \
            report_job(log, JOB):
        raise RuntimeError("ffmpeg exited with code 1: moov atom not found")
    (event,) = events
    assert event["job_data"]["success"] is False
    assert event["job_data"]["error_message"] == (
        "RuntimeError: ffmpeg exited with code 1: moov atom not found")


def test_a_block_left_without_a_call_is_a_failure_never_an_unseen_success(
        caplog: Any) -> None:
    """No succeeded(), no failed(), no exception (an early return): a failure that says so,
    and one local warning naming the file and line of the with."""
    caplog.set_level(logging.WARNING, logger="massugc_logging")

    def run_job() -> None:
        with report_job(log, JOB):  # the line the warning names
            return  # the app's runner returns early on an invalid configuration

    with capture_events(log) as events:
        run_job()
        run_job()
    assert [e["job_data"]["success"] for e in events] == [False, False]
    assert "ended without reporting an outcome" in events[0]["job_data"]["error_message"]
    warnings = [r for r in caplog.records if "report_job at" in r.getMessage()]
    assert len(warnings) == 1  # said once for this place
    line = run_job.__code__.co_firstlineno + 1
    assert f"{__file__}:{line}" in warnings[0].getMessage()


@pytest.mark.parametrize("calls", [
    ("succeeded", "succeeded"), ("succeeded", "failed"), ("failed", "succeeded"),
    ("failed", "failed"),
])
def test_calling_twice_or_both_still_reports_once_and_the_first_wins(
        calls: tuple[str, str], caplog: Any) -> None:
    """The bug the app had (successes reported twice) cannot happen."""
    caplog.set_level(logging.WARNING, logger="massugc_logging")
    with capture_events(log) as events, report_job(log, JOB) as job:
        for name in calls:
            if name == "succeeded":
                job.succeeded("out.mp4")
            else:
                job.failed("no")
    (event,) = events
    assert event["job_data"]["success"] is (calls[0] == "succeeded")
    assert "only the first counts" in caplog.text


def test_an_exception_after_an_explicit_report_keeps_that_report() -> None:
    """failed() then an exception: still one event, the explicit one."""
    with capture_events(log) as events, pytest.raises(ValueError), report_job(log, JOB) as job:
        job.failed("upload failed")
        raise ValueError("cleanup")
    (event,) = events
    assert event["job_data"]["error_message"] == "upload failed"


def test_the_duration_is_sent_only_when_listed_in_extra_fields() -> None:
    """duration_s: the block's seconds, opt-in through extra_fields."""
    clock = Clock()
    with capture_events(log, extra_fields=["duration_s"]) as events, \
            report_job(log, JOB, clock=clock) as job:
        clock.now += 12.5
        job.succeeded("out.mp4")
    with capture_events(log) as default, report_job(log, JOB, clock=clock):
        pass
    assert events[0]["job_data"]["duration_s"] == 12.5
    assert "duration_s" not in default[0]["job_data"]


def test_a_field_named_like_a_logrecord_attribute_does_not_raise_into_the_job() -> None:
    """A job field called 'name' or 'message' would make logging raise: it is left out."""
    with capture_events(log) as events, report_job(log, {**JOB, "name": "x", "message": "y"}):
        pass
    assert len(events) == 1
