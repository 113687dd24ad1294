"""UsageClient: the app's existing call, redacted, answering as the app's client did."""

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
    outcome = client.send_usage_data(payload())
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
    assert client.send_usage_data(payload()).kind is OutcomeKind.PERMANENT
    assert client.send_usage_data({"job_data": {"x": object()}}).kind is OutcomeKind.PERMANENT
    client.close()
    down = UsageClient(f"http://127.0.0.1:{free_port()}", key, timeout=1)
    assert down.send_usage_data(payload()).kind is OutcomeKind.TRANSIENT
    down.close()


# -- a drop-in for the app's client: result.get('skipped') ------------------------------


def test_a_delivered_payload_returns_the_servers_json_object(api: FakeApi, key: str) -> None:
    """Delivered: the server's object itself, as the app's client returned response.json()."""
    api.respond_with(200, {"code": 0, "message": "success", "data": {"id": 7}})
    client = UsageClient(api.url, key)
    result = client.log_usage_data(payload())
    client.close()
    assert result == {"code": 0, "message": "success", "data": {"id": 7}}
    assert not result.get("skipped")


def test_a_404_on_every_path_is_skipped_as_endpoint_not_implemented(api: FakeApi,
                                                                     key: str) -> None:
    """404 on both known paths: {"skipped": True, "reason": "endpoint_not_implemented"}, as
    the app's client said."""
    api.respond_with(404, {"error": "not_found", "message": "no route"}, times=2)
    client = UsageClient(api.url, key)
    result = client.log_usage_data(payload())
    client.close()
    assert result["skipped"] is True and result["reason"] == "endpoint_not_implemented"
    assert sorted(c.path for c in api.captured) == ["/api/desktop/usage",
                                                    "/api/desktop/usage/log"]


def test_a_route_that_moved_is_found_and_kept(api: FakeApi, key: str) -> None:
    """404 on the configured path, 200 on the other: delivered, and the next event goes
    straight to the path that answered."""
    api.respond_with(404, {"error": "not_found", "message": "no route"})
    client = UsageClient(api.url, key, endpoint="/api/desktop/usage")
    first = client.log_usage_data(payload())
    second = client.log_usage_data(payload(run_id="run-2"))
    client.close()
    assert not first.get("skipped") and not second.get("skipped")
    assert [c.path for c in api.captured] == [
        "/api/desktop/usage", "/api/desktop/usage/log", "/api/desktop/usage/log"]


def test_another_status_is_skipped_as_http_status(api: FakeApi, key: str) -> None:
    """503: reason http_503, with the status and the server's message beside it."""
    api.respond_with(503, {"error": "unavailable", "message": "maintenance"})
    client = UsageClient(api.url, key)
    result = client.log_usage_data(payload())
    client.close()
    assert result["skipped"] is True and result["reason"] == "http_503"
    assert result["status"] == 503 and "maintenance" in result["detail"]


def test_a_network_failure_is_skipped_with_the_reason_in_words_and_no_secret(key: str) -> None:
    """Nothing listening: skipped, the reason says so, and the key is nowhere in the answer."""
    down = UsageClient(f"http://127.0.0.1:{free_port()}", key, timeout=1)
    result = down.log_usage_data(payload())
    down.close()
    assert result == {"skipped": True, "reason": "connection refused"}
    assert key not in repr(result)


def test_the_apps_own_reporting_code_runs_unchanged(api: FakeApi, key: str) -> None:
    """The three reporting sites' code, as the app has it, works with UsageClient."""
    lines = []
    for status in (200, 404, 500):
        api.respond_with(status, {"code": 0} if status == 200 else {"error": "x"},
                         times=2 if status == 404 else 1)
        client = UsageClient(api.url, key)
        result = client.log_usage_data(payload())
        if result.get('skipped'):
            lines.append(f"[USAGE] Skipped: {result.get('reason', 'unknown')}")
        else:
            lines.append("[USAGE] Successfully logged")
        client.close()
    assert lines == ["[USAGE] Successfully logged", "[USAGE] Skipped: endpoint_not_implemented",
                     "[USAGE] Skipped: http_500"]
