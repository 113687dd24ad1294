"""massugc_logging.testing: capture_events(), CaptureHandler and the massugc_events fixture."""

from __future__ import annotations

import json
import logging
import logging.config
import textwrap
from pathlib import Path

import pytest
from fakeapi import FakeApi

from massugc_logging import CloudHandler
from massugc_logging.testing import CapturedEvents, CaptureHandler, capture_events

pytest_plugins = ["pytester"]

JOB = {"event_type": "video_generation", "job_name": "Spring", "product": "Glow Serum",
       "persona": "Tech Reviewer", "run_id": "run-capture-1", "workflow_type": "avatar"}
log = logging.getLogger("massugc.jobs")


def test_capture_events_records_a_failure_as_the_app_reports_it() -> None:
    """A failed job logged inside capture_events() is one event with success False."""
    with capture_events() as events:
        log.error("job failed", extra={**JOB, "error_message": "ffmpeg exited with code 1"})
    assert len(events) == 1
    job = events[0]["job_data"]
    assert job["success"] is False
    assert job["error_message"] == "ffmpeg exited with code 1"
    assert job["job_name"] == "Spring" and "failure_time" in job


def test_capture_events_takes_the_error_from_the_exception() -> None:
    """log.exception inside capture_events(): error_message is 'Type: message'."""
    with capture_events() as events:
        try:
            raise TimeoutError("render took too long")
        except TimeoutError:
            log.exception("job failed", extra=JOB)
    assert events[0]["job_data"]["error_message"] == "TimeoutError: render took too long"


def test_captured_events_are_exactly_what_the_cloud_handler_sends(
        api: FakeApi, key: str, tmp_path: Path) -> None:
    """The same record gives the same event in capture and on the wire, field for field."""
    extra_fields = ["useExactScript", "error_category"]
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=None,
                           extra_fields=extra_fields, source="studio", version="2.0.0")
    log.addHandler(handler)
    try:
        with capture_events(extra_fields=extra_fields, source="studio",
                            version="2.0.0") as events:
            try:
                raise ConnectionError(f"upload failed for {Path.home()}/Videos/a.mp4"
                                      "?X-Goog-Signature=abc123")
            except ConnectionError:
                log.exception("job failed", extra={**JOB, "useExactScript": True,
                                                   "not_allowed": "stays local"})
        assert handler.force_flush(10)
    finally:
        log.removeHandler(handler)
        handler.close()
    wire = api.captured[0]
    assert events[0] == wire.json
    assert events.event_ids[0] == wire.headers["Idempotency-Key"]
    assert "error_category" in events[0]["job_data"]


def test_captured_events_are_plain_json_values() -> None:
    """Each captured event survives a JSON round trip unchanged (it is the decoded body)."""
    with capture_events() as events:
        log.info("job succeeded", extra={**JOB, "output_path": "out/final.mp4"})
    assert json.loads(json.dumps(events[0])) == events[0]
    assert events[0]["job_data"]["output_path"] == "out/final.mp4"


def test_capture_events_redacts_as_the_wire_does() -> None:
    """The home directory and tokens are scrubbed from captured error text."""
    secret = "massugc_" + "Zz9_" * 8
    with capture_events() as events:
        log.error("job failed", extra={**JOB, "error_message":
                                       f"cannot read {Path.home()}/key.txt with {secret}"})
    text = events[0]["job_data"]["error_message"]
    assert str(Path.home()) not in text and "~/key.txt" in text
    assert secret not in text


def test_capture_events_keeps_only_allowlisted_fields() -> None:
    """Extras outside the allowlist never appear in a captured event."""
    with capture_events() as events:
        log.info("job succeeded", extra={**JOB, "internal_note": "secret", "job_id": "j-1"})
    job = events[0]["job_data"]
    assert "internal_note" not in job and "job_id" not in job


def test_capture_events_extra_fields_are_allowed_through() -> None:
    """extra_fields= lets the listed extra job fields into captured events."""
    with capture_events(extra_fields=["job_id"]) as events:
        log.info("job succeeded", extra={**JOB, "job_id": "j-1"})
    assert events[0]["job_data"]["job_id"] == "j-1"


def test_capture_events_ignores_records_without_the_event_type() -> None:
    """Plain log lines and other event types are not captured."""
    with capture_events() as events:
        log.info("just a message")
        log.info("other", extra={"event_type": "heartbeat"})
    assert events == []


def test_capture_events_ignores_the_library_s_own_loggers() -> None:
    """Records from massugc_logging's diagnostics loggers are never captured as events."""
    with capture_events() as events:
        logging.getLogger("massugc_logging.handler").error("x", extra=JOB)
    assert events == []


def test_capture_events_sees_debug_records_and_restores_the_level() -> None:
    """Inside, the root logger lets DEBUG through; afterwards its level and handlers are back."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    handlers_before = list(root.handlers)
    with capture_events() as events:
        log.debug("job succeeded", extra=JOB)
    assert len(events) == 1
    assert root.level == logging.WARNING
    assert root.handlers == handlers_before


def test_capture_events_on_a_given_logger_only_sees_that_logger() -> None:
    """capture_events(logger) captures records reaching that logger, not its siblings."""
    with capture_events(logging.getLogger("massugc.jobs")) as events:
        logging.getLogger("massugc.jobs.render").error("job failed", extra=JOB)
        logging.getLogger("massugc.other").error("job failed", extra=JOB)
    assert len(events) == 1


def test_capture_events_failures_and_successes_split_the_events() -> None:
    """events.failures() and events.successes() select by job_data.success."""
    with capture_events() as events:
        log.info("ok", extra={**JOB, "run_id": "a"})
        log.error("bad", extra={**JOB, "run_id": "b", "error_message": "x"})
        log.info("ok", extra={**JOB, "run_id": "c"})
    assert [e["job_data"]["run_id"] for e in events.failures()] == ["b"]
    assert [e["job_data"]["run_id"] for e in events.successes()] == ["a", "c"]
    assert len(events.event_ids) == 3


def test_capture_events_records_field_warnings() -> None:
    """A wrongly typed field is converted, and the warning is kept on events.warnings."""
    with capture_events() as events:
        log.error("bad", extra={**JOB, "error_message": 42})
    assert events[0]["job_data"]["error_message"] == "42"
    assert any("error_message" in w for w in events.warnings)


def test_capture_handler_in_dictconfig_accepts_the_cloud_payload_arguments() -> None:
    """CaptureHandler takes CloudHandler's payload arguments, so a test env can mirror prod."""
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "handlers": {"capture": {"class": "massugc_logging.testing.CaptureHandler",
                                 "source": "studio", "version": "9.9.9",
                                 "extra_fields": ["file_size"], "field_limit": 8,
                                 "redact_patterns": ["ticket-[0-9]+"]}},
        "loggers": {"massugc.jobs": {"level": "INFO", "handlers": ["capture"]}},
    })
    capture = next(h for h in log.handlers if isinstance(h, CaptureHandler))
    log.error("bad", extra={**JOB, "file_size": 10, "error_message": "see ticket-123",
                            "product": "A very long product name"})
    event = capture.events[0]
    assert (event["source"], event["version"]) == ("studio", "9.9.9")
    assert event["job_data"]["file_size"] == 10
    assert "ticket-123" not in event["job_data"]["error_message"]
    assert len(event["job_data"]["product"]) <= 8 + len("…[truncated 99 chars]")


def test_massugc_events_fixture_is_available_here(massugc_events: CapturedEvents) -> None:
    """The plugin's massugc_events fixture is loaded by the entry point in this very run."""
    log.error("job failed", extra={**JOB, "error_message": "boom"})
    assert massugc_events[0]["job_data"]["success"] is False


def test_massugc_events_fixture_works_in_an_apps_test_suite(pytester: pytest.Pytester) -> None:
    """A fresh pytest run of an app's test file finds the fixture through the entry point."""
    pytester.makepyfile(test_app=textwrap.dedent("""
        import logging

        def run_failing_job():
            logging.getLogger("app.jobs").error(
                "job failed",
                extra={"event_type": "video_generation", "job_name": "J", "run_id": "r-1",
                       "error_message": "render crashed"})

        def test_failed_render_is_reported(massugc_events):
            run_failing_job()
            assert massugc_events[0]["job_data"]["success"] is False
            assert massugc_events[0]["job_data"]["error_message"] == "render crashed"

        def test_each_test_starts_empty(massugc_events):
            assert list(massugc_events) == []
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
