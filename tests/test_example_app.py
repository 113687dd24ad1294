"""The README's ten-line app, run as a user would, delivers the exact schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from massugc_logging.collector import Collector
from massugc_logging.contract import validate_event

ROOT = Path(__file__).resolve().parent.parent


def test_the_ten_line_app_delivers_both_outcomes_to_a_local_server(tmp_path: Path,
                                                                     key: str) -> None:
    """examples/app.py with the repo's logging.yaml posts one success and one failure."""
    with Collector().start() as collector:
        env = {**os.environ, "MASSUGC_API_URL": collector.url, "MASSUGC_API_KEY": key,
               "MASSUGC_SPOOL_PATH": str(tmp_path / "spool.sqlite3"),
               "MASSUGC_ENV": "development"}
        result = subprocess.run([sys.executable, "examples/app.py"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60, check=False,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        bodies = [e["body"] for e in collector.events()]
    assert len(bodies) == 2
    assert all(validate_event(b) == [] for b in bodies)
    success, failure = sorted(bodies, key=lambda b: not b["job_data"]["success"])
    assert success["job_data"]["output_path"] == "renders/spring-launch.mp4"
    assert failure["job_data"]["error_message"] == (
        "RuntimeError: ffmpeg exited with code 1: moov atom not found")
    assert failure["job_data"]["failure_time"] == failure["timestamp"]
