"""The app's own headers: its User-Agent and X-Device-Fingerprint reach the API, can
never replace the handler's own, and never appear locally."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi

from massugc_logging import CloudHandler, UsageClient

JOB = {"event_type": "video_generation", "error_message": "x"}
AGENT = "MassUGC-Desktop/2.4.1 (Windows 11)"
FINGERPRINT = "fp-7f3a9c1e-device"


def test_the_apps_user_agent_and_fingerprint_reach_the_api(api: FakeApi, tmp_path: Path,
                                                           key: str) -> None:
    """user_agent and headers are sent with every event; the handler's own stay."""
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=tmp_path / "s.db",
                           user_agent=AGENT, headers={"X-Device-Fingerprint": FINGERPRINT})
    logging.getLogger("massugc.jobs").addHandler(handler)
    logging.getLogger("massugc.jobs").error("job failed", extra=JOB)
    assert handler.force_flush(5)
    (request,) = api.captured
    assert request.headers["User-Agent"] == AGENT
    assert request.headers["X-Device-Fingerprint"] == FINGERPRINT
    assert request.headers["X-API-Key"] == key and request.headers["Idempotency-Key"]
    handler.close()


def test_the_fingerprint_may_come_from_the_environment(api: FakeApi, key: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """MASSUGC_DEVICE_FINGERPRINT adds X-Device-Fingerprint when headers do not name it."""
    monkeypatch.setenv("MASSUGC_DEVICE_FINGERPRINT", FINGERPRINT)
    client = UsageClient(api_url=api.url, api_key=key)
    assert client.send_usage_data({"event_type": "video_generation", "job_data": {}}).delivered
    client.close()
    assert api.captured[0].headers["X-Device-Fingerprint"] == FINGERPRINT


@pytest.mark.parametrize("headers", [
    {"X-API-Key": "massugc_" + "x" * 32},
    {"content-type": "text/plain"},
    {"Idempotency-Key": "same-for-all"},
    {"User-Agent": "other"},
    {"X-Device-Fingerprint": FINGERPRINT + "\r\nX-API-Key: stolen"},
    {"X-Device-Fingerprint": FINGERPRINT + "\n"},
    {"Bad Name": "v4lue-9"},
])
def test_headers_that_could_forge_or_replace_the_handlers_own_are_refused(
        headers: dict[str, str], tmp_path: Path, key: str, caplog: Any) -> None:
    """Reserved names and values with line breaks are refused at configuration, with one
    clear error that names the header and not its value; events are kept."""
    caplog.set_level(logging.ERROR, logger="massugc_logging")
    handler = CloudHandler(api_url="https://api.example.com", api_key=key,
                           spool_path=tmp_path / "s.db", headers=headers)
    assert handler.stats()["state"] == "held"
    (line,) = [r.getMessage() for r in caplog.records]
    assert "headers" in line
    for value in headers.values():
        assert value.strip() not in line
    handler.close()


def test_header_values_never_appear_in_local_messages_or_stats(api: FakeApi, tmp_path: Path,
                                                               key: str, caplog: Any) -> None:
    """A refused key and a rejected event are said locally without the fingerprint."""
    caplog.set_level(logging.DEBUG, logger="massugc_logging")
    api.respond_with(422, {"error": "validation_error", "message": "bad"})
    api.respond_with(401, {"error": "invalid_api_key", "message": "no"})
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=tmp_path / "s.db",
                           headers={"X-Device-Fingerprint": FINGERPRINT})
    log = logging.getLogger("massugc.jobs")
    log.addHandler(handler)
    log.error("job failed", extra=JOB)
    log.error("job failed", extra={**JOB, "run_id": "second"})
    assert api.wait_for_count(2, 5)
    handler.force_flush(1)
    assert FINGERPRINT not in caplog.text
    assert FINGERPRINT not in repr(handler.stats()) and FINGERPRINT not in repr(handler)
    handler.close()
