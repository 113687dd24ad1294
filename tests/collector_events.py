"""Contract-valid job events, and posting them to a local collector over HTTP."""

from __future__ import annotations

import json
import uuid
from typing import Any

import requests

from massugc_logging.collector import Collector
from massugc_logging.collector.store import format_time

KEY = "massugc_" + "p" * 32


def job_event(job_name: str, error: str = "", *, at: float, workflow: str = "avatar",
              **job: Any) -> dict[str, Any]:
    """A failure when ``error`` is given, else a success, that happened at ``at``."""
    when = format_time(at)
    fields: dict[str, Any] = {
        "job_name": job_name, "product": "p", "persona": "p", "setting": "s", "emotion": "e",
        "hook": "h", "brand_name": "b", "language": "English", "run_id": str(uuid.uuid4()),
        "workflow_type": workflow, "success": not error,
        "output_path": None if error else "/renders/out.mp4",
    }
    fields.update({"error_message": error, "failure_time": when} if error
                  else {"generation_time": when})
    fields.update(job)
    return {"event_type": "video_generation", "job_data": fields, "timestamp": when,
            "source": "massugc-video-service", "version": "1.0.0"}


def post_event(collector: Collector, body: dict[str, Any]) -> None:
    """POST it to the collector's ingest endpoint; it must be accepted."""
    response = requests.post(collector.url + "/api/desktop/usage/log", data=json.dumps(body),
                             headers={"X-API-Key": KEY, "Content-Type": "application/json"},
                             timeout=10)
    assert response.status_code == 200, response.text
