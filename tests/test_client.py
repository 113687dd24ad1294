"""UsageClient.log_usage_data: the app's existing call, redacted, returning an outcome."""

from __future__ import annotations

import os
from typing import Any

from fakeapi import FakeApi, free_port

from massugc_logging import OutcomeKind, UsageClient


def payload(**job: Any) -> dict[str, Any]:
    return {
        "event_type": "video_generation",
        "job_data": {"job_name": "Spring", "run_id": "run-1", "success": False,
                     "error_message": "boom", **job},
        "timestamp": "2025-07-30T12:34:56.789Z",
        "source": "massugc-video-service",
        "version": "1.0.0",
    }


def test_log_usage_data_posts_the_payload_and_reports_delivery(api: FakeApi, key: str) -> None:
    """A ready-made payload is posted with the contract's headers; the outcome says delivered."""
    client = UsageClient(api.url, key)
    outcome = client.log_usage_data(payload())
    client.close()
    assert outcome.delivered and outcome.status == 200
    request = api.captured[0]
    assert request.json["job_data"]["job_name"] == "Spring"
    assert request.headers["X-API-Key"] == key
    assert len(request.headers["Idempotency-Key"]) == 36


def test_log_usage_data_redacts_job_strings_before_sending(api: FakeApi, key: str) -> None:
    """Home paths and tokens in a hand-built payload are scrubbed too."""
    home = os.path.expanduser("~")
    client = UsageClient(api.url, key)
    client.log_usage_data(payload(error_message=f"{home}/v.mp4 token=abc123 failed"))
    client.close()
    sent = api.captured[0].json["job_data"]["error_message"]
    assert home not in sent and "abc123" not in sent


def test_the_same_run_and_outcome_reuse_the_idempotency_key(api: FakeApi, key: str) -> None:
    """Reporting one run's failure twice sends the same key, so the server can drop one."""
    client = UsageClient(api.url, key)
    client.log_usage_data(payload())
    client.log_usage_data(payload(error_message="again"))
    client.close()
    first, second = (c.headers["Idempotency-Key"] for c in api.captured)
    assert first == second


def test_failures_come_back_as_outcomes_not_exceptions(api: FakeApi, key: str) -> None:
    """A 422, a refused connection and an unserializable payload are all outcomes."""
    api.respond_with(422, {"error": "validation_error", "message": "job_data.success"})
    client = UsageClient(api.url, key)
    assert client.log_usage_data(payload()).kind is OutcomeKind.PERMANENT
    assert client.log_usage_data({"job_data": {"x": object()}}).kind is OutcomeKind.PERMANENT
    client.close()
    down = UsageClient(f"http://127.0.0.1:{free_port()}", key, timeout=1)
    assert down.log_usage_data(payload()).kind is OutcomeKind.TRANSIENT
    down.close()
