"""The README's integration snippet runs as written, after the command it names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from massugc_logging.collector import Collector
from massugc_logging.contract import LOCAL_COLLECTOR_KEY, validate_event

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "massugc_logging.cli"]


def snippet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- snippet: integration -->\s*```python\n(.*?)```", text, re.S)
    assert match, "the README has lost its integration snippet"
    return match.group(1)


def new_user(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "user"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASSUGC_")}
    env.update({"HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
                "XDG_CONFIG_HOME": str(home / "config"), "XDG_STATE_HOME": str(home / "state"),
                "NO_PROXY": "127.0.0.1,localhost"})
    return env


def init_and_write_snippet(tmp_path: Path, env: dict[str, str]) -> Path:
    init = subprocess.run([*CLI, "init"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert init.returncode == 0, init.stderr
    app = tmp_path / "app.py"  # beside the logging.yaml init wrote
    app.write_text(snippet(), encoding="utf-8")
    return app


def run_snippet(app: Path, env: dict[str, str], **variables: str
                ) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the snippet as a user would; return the result and how long it took."""
    started = time.monotonic()
    run = subprocess.run([sys.executable, str(app)], cwd=app.parent, env={**env, **variables},
                         capture_output=True, text=True, timeout=60, check=False,
                         stdin=subprocess.DEVNULL)
    return run, time.monotonic() - started


def test_the_snippet_runs_after_init_and_its_event_reaches_the_local_collector(
        tmp_path: Path) -> None:
    """massugc-logging init, then the snippet with the collector's key: one valid success."""
    env = new_user(tmp_path)
    app = init_and_write_snippet(tmp_path, env)
    with Collector().start() as collector:
        run, _ = run_snippet(app, env, MASSUGC_API_URL=collector.url,
                             MASSUGC_API_KEY=LOCAL_COLLECTOR_KEY)
        assert run.returncode == 0, run.stderr
        (event,) = [e["body"] for e in collector.events()]
    assert validate_event(event) == []
    assert event["job_data"]["success"] is True
    assert event["job_data"]["output_path"] == "renders/Spring.mp4"


def test_the_snippet_runs_without_a_collector_and_exits_promptly(tmp_path: Path) -> None:
    """No collector and no key: it still runs, exits at once, and says what to do."""
    env = new_user(tmp_path)
    app = init_and_write_snippet(tmp_path, env)
    run, took = run_snippet(app, env, MASSUGC_API_URL="http://127.0.0.1:9")
    assert run.returncode == 0, run.stderr
    assert took < 4.0, took
    assert "massugc-logging key set" in run.stderr
    assert LOCAL_COLLECTOR_KEY in run.stderr


def test_in_development_with_no_collector_the_warning_names_the_url_and_serve(
        tmp_path: Path) -> None:
    """A key but no collector: exit is prompt, and the warning says where events were
    going and how to start the collector."""
    env = new_user(tmp_path)
    app = init_and_write_snippet(tmp_path, env)
    run, took = run_snippet(app, env, MASSUGC_API_URL="http://127.0.0.1:9",
                            MASSUGC_API_KEY=LOCAL_COLLECTOR_KEY)
    assert run.returncode == 0, run.stderr
    assert took < 4.0, took
    assert "http://127.0.0.1:9/api/desktop/usage/log" in run.stderr
    assert "massugc-logging serve" in run.stderr
