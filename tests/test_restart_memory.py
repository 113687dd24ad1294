"""Trouble remembered across a restart, in real processes: a process that starts on the
spool of one that stopped in the middle of an open circuit, or of a Retry-After pause,
sends neither sooner nor later than that memory says."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi

pytestmark = pytest.mark.slow

KEY = "massugc_" + "Ab3_dEf-9" * 3 + "Zq1x9"
#: How late a process may send after the remembered pause ends (its own start-up,
#: the intake's start, a worker's wake-up): well under the pauses these tests use.
LATE = 1.5
#: How early counts as sooner (the clocks of two processes, read a moment apart).
EARLY = 0.05

RUNNER = """
import json, logging, sys, time
from massugc_logging import CloudHandler
url, spool, count, until = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
retry, key = json.loads(sys.argv[5]), sys.argv[6]
started = time.monotonic()
handler = CloudHandler(api_url=url, api_key=key, spool_path=spool, retry=retry,
                       timeout=(1, 2), shutdown_timeout=1)
log = logging.getLogger("massugc.jobs")
log.addHandler(handler)
log.propagate = False
for i in range(count):
    log.error("job failed", extra={"event_type": "video_generation", "run_id": f"r{i}",
                                   "error_message": "render failed"})
deadline = time.monotonic() + 30
if until == "delivered":
    reached = handler.force_flush(30)
else:
    while handler.stats()["state"] != until and time.monotonic() < deadline:
        time.sleep(0.005)
    reached = handler.stats()["state"] == until
print(json.dumps({"reached": reached, "started": started, "stats": handler.stats()}))
"""


def run(api_url: str, spool: Path, count: int, until: str,
        retry: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", RUNNER, api_url, str(spool), str(count),
                           until, json.dumps(retry), KEY], capture_output=True, text=True,
                          timeout=90, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["reached"], (until, answer, done.stderr)
    return answer


def remembered_resume(spool: Path, api_url: str) -> tuple[str, float]:
    """The mode the stopped process remembered and when its pause ends, on this process's
    monotonic clock."""
    conn = sqlite3.connect(spool)
    try:
        (value,), = conn.execute("SELECT value FROM api_memory WHERE api_url = ? AND name = ?",
                                 (api_url, "health")).fetchall()
    finally:
        conn.close()
    memory = json.loads(value)
    resume_wall = memory["written_at"] + memory["resume_in"]
    return memory["mode"], resume_wall - time.time() + time.monotonic()


def test_a_restart_in_the_middle_of_an_open_circuit_probes_when_the_memory_says(
        down_api: FakeApi, tmp_path: Path) -> None:
    """The API refuses connections: the first process opens the circuit (its first probe
    3 s out) and stops. The API comes back; the next process sends its first request
    (one probe) no sooner than the remembered probe time, and no later than it either."""
    spool = tmp_path / "spool.sqlite3"
    retry = {"probe_interval": 3.0}
    run(down_api.url, spool, 6, "circuit_open", retry)
    mode, resume_at = remembered_resume(spool, down_api.url)
    assert mode == "circuit_open"
    down_api.come_up()
    second = run(down_api.url, spool, 0, "delivered", retry)
    first = min(c.at for c in down_api.captured)
    assert resume_at - first <= EARLY, "sent before the remembered probe time"
    assert first - max(resume_at, second["started"]) <= LATE, "sent long after it"
    assert resume_at - second["started"] > 1.0  # the memory did hold the process back
    assert second["stats"]["sent"] == 6


def test_a_restart_in_the_middle_of_a_retry_after_pause_waits_it_out_exactly(
        api: FakeApi, tmp_path: Path) -> None:
    """The API answers 503 with Retry-After: 4, and the first process stops during the
    pause; the next process sends nothing until the pause ends, then at once."""
    spool = tmp_path / "spool.sqlite3"
    api.respond_with(503, {"error": "unavailable", "message": "busy"},
                     headers={"Retry-After": "4"})
    first_run = run(api.url, spool, 3, "rate_limited", {})
    assert first_run["stats"]["retried"] >= 1
    mode, resume_at = remembered_resume(spool, api.url)
    assert mode == "rate_limited"
    before = len(api.captured)
    second = run(api.url, spool, 0, "delivered", {})
    first = min(c.at for c in api.captured[before:])
    assert resume_at - first <= EARLY, "sent before the Retry-After pause ended"
    assert first - max(resume_at, second["started"]) <= LATE, "sent long after it"
    assert resume_at - second["started"] > 1.0
    assert second["stats"]["sent"] == 3
