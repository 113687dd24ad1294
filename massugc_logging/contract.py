"""The wire contract with the MassUGC Cloud API, as data.

One place holds the names, defaults and types of the event fields, so the
payload builder, the local collector's validation and the tests all agree
on exactly one schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

PRODUCTION_API_URL = "https://massugc-cloud-api.onrender.com"
DEFAULT_ENDPOINT = "/api/desktop/usage/log"
LEGACY_ENDPOINT = "/api/desktop/usage"
DEFAULT_EVENT_TYPE = "video_generation"
DEFAULT_SOURCE = "massugc-video-service"
DEFAULT_EVENT_VERSION = "1.0.0"

#: Job fields every event carries, in wire order, with the default a missing
#: field gets. ``output_path`` defaults to null; the times and ``success`` /
#: ``error_message`` are derived by the payload builder.
JOB_FIELD_DEFAULTS: Mapping[str, Any] = {
    "job_name": "",
    "product": "",
    "persona": "",
    "setting": "",
    "emotion": "",
    "hook": "",
    "brand_name": "",
    "language": "English",
    "run_id": "",
    "output_path": None,
}

#: Optional job fields the app is known to send, with their JSON types. They
#: leave the machine only when listed in the handler's ``extra_fields``.
KNOWN_EXTRA_FIELDS: Mapping[str, tuple[type, ...]] = {
    "useExactScript": (bool,),
    "script_generation_type": (str,),
    "job_id": (str, int),
    "file_size": (int,),
    "error_category": (str,),
}

#: ``workflow_type`` follows the time field on the wire; a missing one is ``""``.
DEFAULT_WORKFLOW_TYPE = ""
WORKFLOW_TYPES = ("avatar", "massugc", "randomized")

#: ``massugc_`` followed by 32 characters of ``[A-Za-z0-9_-]``.
API_KEY_PATTERN = re.compile(r"massugc_[A-Za-z0-9_-]{32}")

#: A key for the local collector ('massugc-logging serve'), which accepts any
#: well-formed key. Not a secret, and the MassUGC Cloud API refuses it.
LOCAL_COLLECTOR_KEY = "massugc_local-collector-accepts-any-keys"

#: UTC, ISO 8601, millisecond precision, ``Z`` suffix.
TIMESTAMP_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def validate_event(body: Any) -> list[str]:
    """Return the contract violations in ``body`` (empty when it is a valid event).

    Each problem names the field, e.g. ``"job_data.success: must be a boolean"``.
    Used by the local collector and by the tests; never raises.
    """
    problems: list[str] = []
    if not isinstance(body, dict):
        return ["body: must be a JSON object"]
    for name in ("event_type", "timestamp", "source", "version"):
        if not isinstance(body.get(name), str) or not body.get(name):
            problems.append(f"{name}: must be a non-empty string")
    ts = body.get("timestamp")
    if isinstance(ts, str) and not TIMESTAMP_PATTERN.fullmatch(ts):
        problems.append("timestamp: must be UTC ISO 8601 with milliseconds and Z")
    job = body.get("job_data")
    if not isinstance(job, dict):
        problems.append("job_data: must be a JSON object")
        return problems
    for name, default in JOB_FIELD_DEFAULTS.items():
        if name not in job:
            problems.append(f"job_data.{name}: missing")
            continue
        value = job[name]
        if default is None:
            if value is not None and not isinstance(value, str):
                problems.append(f"job_data.{name}: must be a string or null")
        elif not isinstance(value, str):
            problems.append(f"job_data.{name}: must be a string")
    success = job.get("success")
    if not isinstance(success, bool):
        problems.append("job_data.success: must be a boolean")
        return problems
    time_field = "generation_time" if success else "failure_time"
    other_time = "failure_time" if success else "generation_time"
    when = job.get(time_field)
    if not isinstance(when, str) or not TIMESTAMP_PATTERN.fullmatch(when):
        problems.append(f"job_data.{time_field}: must be UTC ISO 8601 with milliseconds and Z")
    if other_time in job:
        problems.append(f"job_data.{other_time}: not allowed when success is {success}")
    if success:
        if "error_message" in job:
            problems.append("job_data.error_message: not allowed on success")
    elif not isinstance(job.get("error_message"), str):
        problems.append("job_data.error_message: must be a string on failure")
    if not isinstance(job.get("workflow_type"), str):
        problems.append("job_data.workflow_type: must be a string")
    for name, types in KNOWN_EXTRA_FIELDS.items():
        if name in job and job[name] is not None:
            value = job[name]
            if not isinstance(value, types) or (int in types and isinstance(value, bool)
                                                and bool not in types):
                problems.append(f"job_data.{name}: wrong type")
    return problems
