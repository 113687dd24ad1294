"""The payload builder: a LogRecord becomes exactly the contract's event."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from massugc_logging.contract import validate_event
from massugc_logging.payload import (
    PayloadSettings,
    build_event,
    capture_exception,
    event_id_for,
    format_utc,
)

JOB = {
    "job_name": "Campaign Name", "product": "Product Name", "persona": "Tech Reviewer",
    "setting": "Studio", "emotion": "Enthusiastic", "hook": "Check this out!",
    "brand_name": "Brand Name", "language": "English", "run_id": "unique-run-id-12345",
    "workflow_type": "avatar",
}
CREATED = 1753878896.789  # 2025-07-30T12:34:56.789Z


def make_record(level: int = logging.ERROR, msg: str = "job failed", args: Any = None,
                exc_info: Any = None, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("massugc.jobs", level, __file__, 1, msg, args, exc_info)
    record.__dict__.update({"event_type": "video_generation", **extra})
    record.created = CREATED
    return record


def build(record: logging.LogRecord, **kw: Any) -> Any:
    return build_event(record, PayloadSettings(**kw), exception=None, fallback_id="fallback",
                       now=0.0)


def test_failure_event_matches_the_contract_field_by_field() -> None:
    """A failed job becomes the contract's failure body, exactly."""
    built = build(make_record(error_message="Descriptive error message", **JOB))
    assert built.event == {
        "event_type": "video_generation",
        "job_data": {
            "job_name": "Campaign Name", "product": "Product Name", "persona": "Tech Reviewer",
            "setting": "Studio", "emotion": "Enthusiastic", "hook": "Check this out!",
            "brand_name": "Brand Name", "language": "English", "run_id": "unique-run-id-12345",
            "output_path": None, "success": False,
            "error_message": "Descriptive error message",
            "failure_time": "2025-07-30T12:34:56.789Z",
            "workflow_type": "avatar",
        },
        "timestamp": "2025-07-30T12:34:56.789Z",
        "source": "massugc-video-service",
        "version": "1.0.0",
    }
    assert list(built.event["job_data"])[-3:] == ["error_message", "failure_time", "workflow_type"]
    assert validate_event(built.event) == []


def test_success_event_differs_only_where_the_contract_says() -> None:
    """Success: success true, output_path set, no error_message, generation_time."""
    built = build(make_record(logging.INFO, "job succeeded", output_path="out/video.mp4", **JOB))
    job = built.event["job_data"]
    assert job["success"] is True
    assert job["output_path"] == "out/video.mp4"
    assert "error_message" not in job and "failure_time" not in job
    assert job["generation_time"] == "2025-07-30T12:34:56.789Z"
    assert validate_event(built.event) == []


def test_missing_fields_get_the_documented_defaults() -> None:
    """A record with no job fields still yields a complete event."""
    job = build(make_record()).event["job_data"]
    for name in ("job_name", "product", "persona", "setting", "emotion", "hook", "brand_name",
                 "run_id", "workflow_type"):
        assert job[name] == ""
    assert job["language"] == "English"
    assert job["output_path"] is None


@pytest.mark.parametrize(("level", "success"), [
    (logging.DEBUG, True), (logging.INFO, True), (logging.WARNING, True),
    (logging.ERROR, False), (logging.CRITICAL, False),
])
def test_success_follows_the_level_without_an_explicit_extra(level: int, success: bool) -> None:
    """Below ERROR is a success, ERROR and above a failure."""
    assert build(make_record(level)).event["job_data"]["success"] is success


def test_explicit_success_extra_wins_over_the_level() -> None:
    """An explicit success=False at INFO is a failure, and vice versa."""
    assert build(make_record(logging.INFO, success=False)).event["job_data"]["success"] is False
    assert build(make_record(logging.ERROR, success=True)).event["job_data"]["success"] is True


def test_error_message_comes_from_the_extra_first() -> None:
    """The error_message extra is preferred over exc_info and the message."""
    try:
        raise ValueError("from exception")
    except ValueError:
        import sys
        record = make_record(exc_info=sys.exc_info(), error_message="from extra")
    assert build(record).event["job_data"]["error_message"] == "from extra"


def test_error_message_falls_back_to_the_exception_as_type_and_message() -> None:
    """Without the extra, exc_info gives ``Type: message``."""
    try:
        raise TimeoutError("render timed out after 300s")
    except TimeoutError:
        import sys
        record = make_record(exc_info=sys.exc_info())
    job = build(record).event["job_data"]
    assert job["error_message"] == "TimeoutError: render timed out after 300s"


def test_error_message_falls_back_to_the_log_message() -> None:
    """Without extra or exception, the formatted log message is the error text."""
    record = make_record(msg="job %s failed", args=("42",))
    assert build(record).event["job_data"]["error_message"] == "job 42 failed"


def test_exception_captured_on_the_app_thread_survives_a_stripped_record() -> None:
    """A summary taken before exc_info was stripped still gives the error text."""
    try:
        raise KeyError("voice")
    except KeyError:
        import sys
        summary = capture_exception(sys.exc_info())
    record = make_record()
    built = build_event(record, PayloadSettings(), exception=summary, fallback_id="f", now=0.0)
    assert built.event["job_data"]["error_message"] == "KeyError: 'voice'"


def test_times_come_from_the_record_not_the_clock() -> None:
    """A record created a day ago keeps its own time, whatever ``now`` is."""
    record = make_record()
    record.created = CREATED - 86400
    built = build_event(record, PayloadSettings(), exception=None, fallback_id="f",
                        now=CREATED + 10_000)
    assert built.event["timestamp"] == "2025-07-29T12:34:56.789Z"
    assert built.event["job_data"]["failure_time"] == built.event["timestamp"]


def test_format_utc_has_milliseconds_and_z() -> None:
    """UTC, ISO 8601, three decimals, Z suffix; truncated, never rounded up."""
    assert format_utc(0) == "1970-01-01T00:00:00.000Z"
    assert format_utc(1753878896.7899) == "2025-07-30T12:34:56.789Z"


def test_only_allowlisted_fields_leave_the_machine() -> None:
    """Unknown extras are dropped; allowlisted extras are sent."""
    record = make_record(file_size=1234, job_id="J-1", secret_note="do not send",
                         useExactScript=True, script_generation_type="exact")
    job = build(record).event["job_data"]
    assert "file_size" not in job and "secret_note" not in job
    job = build(record, extra_fields=("file_size", "job_id", "useExactScript",
                                      "script_generation_type")).event["job_data"]
    assert job["file_size"] == 1234 and job["job_id"] == "J-1"
    assert job["useExactScript"] is True and job["script_generation_type"] == "exact"
    assert "secret_note" not in job


def test_source_and_version_are_configurable() -> None:
    """Identity fields follow the settings."""
    event = build(make_record(), source="svc", version="2.0.0").event
    assert (event["source"], event["version"]) == ("svc", "2.0.0")


def test_bad_field_types_get_a_default_and_a_warning() -> None:
    """Wrong types never lose the event; each is reported."""
    record = make_record(run_id=42, success="yes", job_name={"x": 1}, output_path=b"raw")
    built = build(record)
    job = built.event["job_data"]
    assert job["run_id"] == "42"
    assert job["success"] is False  # decided by the ERROR level
    assert job["job_name"] == ""
    assert job["output_path"] is None
    assert len(built.warnings) == 4
    assert validate_event(built.event) == []


def test_same_run_and_outcome_give_the_same_event_id() -> None:
    """A double report of one run collides on the Idempotency-Key."""
    a = build(make_record(run_id="r-1")).event_id
    b = build(make_record(run_id="r-1", msg="again")).event_id
    c = build(make_record(logging.INFO, run_id="r-1")).event_id
    assert a == b and a != c
    assert event_id_for("video_generation", "", False, "fb") == "fb"


def test_bad_percent_format_in_the_message_keeps_the_event() -> None:
    """A broken %-format sends the raw message and warns."""
    built = build(make_record(msg="%d jobs %s", args=("x",)))
    assert built.event["job_data"]["error_message"] == "%d jobs %s"
    assert built.warnings


def test_exception_whose_str_raises_is_described_by_its_type() -> None:
    """exc_info with a hostile __str__ still yields an error text."""
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")
    try:
        raise Weird()
    except Weird:
        import sys
        record = make_record(exc_info=sys.exc_info())
    assert build(record).event["job_data"]["error_message"] == "Weird"


def test_scrub_is_applied_to_every_string_with_its_limit() -> None:
    """Every string goes through the redactor with the right cap."""
    seen: list[int] = []

    def scrub(text: str, limit: int) -> str:
        seen.append(limit)
        return text.upper()

    job = build(make_record(error_message="boom", **JOB), scrub=scrub).event["job_data"]
    assert job["error_message"] == "BOOM" and job["product"] == "PRODUCT NAME"
    assert 4096 in seen and seen.count(256) == 10


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("str")

    def __repr__(self) -> str:
        raise RuntimeError("repr")


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    | st.binary(max_size=20) | st.builds(_Unprintable) | st.just(math.nan),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=8,
)
_names = st.sampled_from(["job_name", "product", "run_id", "success", "error_message",
                          "output_path", "workflow_type", "language", "file_size", "job_id",
                          "created", "levelno", "msg", "args", "unknown"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_names, _values, max_size=8))
def test_any_extras_give_a_json_event_of_the_contract_shape(extras: dict[str, Any]) -> None:
    """For arbitrary extras the builder never raises and returns a valid, JSON-safe event."""
    record = make_record()
    record.__dict__.update(extras)
    built = build_event(record, PayloadSettings(extra_fields=("file_size", "job_id")),
                        exception=None, fallback_id="f", now=CREATED)
    body = built.body()
    assert validate_event(json.loads(body)) == []


def test_record_stripped_by_a_stdlib_queue_handler_keeps_the_exception_line() -> None:
    """A QueueHandler-prepared record (traceback in msg, no exc_info) yields Type: message."""
    import logging.handlers
    import queue as queue_module

    q: queue_module.Queue[logging.LogRecord] = queue_module.Queue()
    handler = logging.handlers.QueueHandler(q)
    try:
        raise ConnectionResetError("peer closed")
    except ConnectionResetError:
        import sys
        record = make_record(exc_info=sys.exc_info())
    handler.handle(record)
    stripped = q.get_nowait()
    assert stripped.exc_info is None
    job = build(stripped).event["job_data"]
    assert job["error_message"] == "ConnectionResetError: peer closed"


def test_extras_named_like_logrecord_attributes_do_not_break_the_event() -> None:
    """Clashing names are refused by logging itself; the builder copes with whatever is set."""
    log = logging.getLogger("massugc.jobs")
    with pytest.raises(KeyError):
        log.makeRecord("massugc.jobs", logging.ERROR, "f", 1, "m", None, None,
                       extra={"message": "clash"})
    record = make_record(name=123, levelno="high")
    record.created = "yesterday"  # type: ignore[assignment]
    built = build_event(record, PayloadSettings(), exception=None, fallback_id="f",
                        now=CREATED + 1)
    assert validate_event(built.event) == []
    assert built.event["timestamp"] == "2025-07-30T12:34:57.789Z"  # fell back to ``now``
    assert built.event["job_data"]["success"] is False  # unusable level: treated as ERROR


def test_a_path_is_sent_as_text() -> None:
    """output_path given as a pathlib.Path is its string, without a warning."""
    from pathlib import PurePosixPath

    built = build(make_record(logging.INFO, output_path=PurePosixPath("renders/a.mp4")))
    assert built.event["job_data"]["output_path"] == "renders/a.mp4"
    assert built.warnings == ()
