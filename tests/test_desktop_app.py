"""The desktop app as it really runs: its job runner migrated to report_job, configured from
the reference logging.yaml, its key in the app's own file, killed and stopped as its shell
does it. Every job it starts ends in exactly one outcome event."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi, wait_until

from massugc_logging.contract import validate_event
from massugc_logging.handler import SHUTDOWN_MESSAGE, STOPPED_MESSAGE
from massugc_logging.pipeline.spool import Spool

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RUNNER = str(Path(__file__).resolve().parent / "desktop_runner.py")


@pytest.fixture
def machine(tmp_path: Path, key: str) -> dict[str, str]:
    """A user's machine: its own home (with the app's base64 key file), data and log
    directories; the API URL points at the test's server."""
    home = tmp_path / "home"
    app_dir = home / ".zyra-video-agent"
    app_dir.mkdir(parents=True)
    (app_dir / ".massugc_api_key").write_text(base64.b64encode(key.encode()).decode())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASSUGC_")}
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                "XDG_DATA_HOME": str(home / ".local" / "share"),
                "XDG_STATE_HOME": str(home / ".local" / "state"),
                "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"})
    return env


def spool_of(env: dict[str, str]) -> Path:
    return Path(env["XDG_DATA_HOME"]) / "massugc-logging" / "spool.sqlite3"


def run(env: dict[str, str], *jobs: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, RUNNER, "--config", str(REPO / "logging.yaml"), *jobs],
                          env=env, capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)


@pytest.fixture
def production(machine: dict[str, str], api: FakeApi) -> dict[str, str]:
    return {**machine, "MASSUGC_ENV": "production", "MASSUGC_API_URL": api.url}


def outcomes(api: FakeApi) -> dict[str, list[dict[str, Any]]]:
    by_run: dict[str, list[dict[str, Any]]] = {}
    for captured in api.captured:
        job = captured.json["job_data"]
        by_run.setdefault(job["run_id"], []).append(job)
    return by_run


def nothing_left(env: dict[str, str]) -> bool:
    """After the processes exited: no event waits in the spool and no job is kept running."""
    store = Spool(spool_of(env))
    try:
        return store.total_count() == 0 and store.running() == []
    finally:
        store.close()


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def start_hanging_job(env: dict[str, str], run_id: str,
                      procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """The runner with one job that never ends, once the job is kept as running."""
    proc = subprocess.Popen([sys.executable, RUNNER, "--config", str(REPO / "logging.yaml"),
                             "--wait", f"hang:{run_id}"], env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    procs.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == f"running {run_id}"

    def kept() -> bool:
        if not spool_of(env).exists():
            return False
        store = Spool(spool_of(env))
        try:
            return any(job.event_id for job in store.running())
        finally:
            store.close()

    assert wait_until(kept, 5), "the running job was not kept durably within 5 s"
    return proc


def test_the_runner_reports_one_event_per_job_with_its_outcome(production: dict[str, str],
                                                               api: FakeApi) -> None:
    """An early return on invalid configuration, a failure without an exception, a success
    and a failure by exception: one event each, with the right outcome and text."""
    result = run(production, "invalid:r-invalid", "fail:r-fail", "ok:r-ok", "raise:r-raise")
    assert result.returncode == 0, result.stderr
    assert api.wait_for_count(4, 10)
    by_run = outcomes(api)
    assert sorted(by_run) == ["r-fail", "r-invalid", "r-ok", "r-raise"]
    assert all(len(events) == 1 for events in by_run.values()), by_run
    assert [by_run[r][0]["success"] for r in ("r-invalid", "r-fail", "r-ok", "r-raise")] == [
        False, False, True, False]
    assert "without reporting an outcome" in by_run["r-invalid"][0]["error_message"]
    assert by_run["r-fail"][0]["error_message"].startswith("Avatar render failed")
    assert by_run["r-raise"][0]["error_message"] == (
        "RuntimeError: ffmpeg exited with code 1: moov atom not found")
    assert by_run["r-ok"][0]["output_path"].startswith("~/")  # the home path is redacted
    assert all(validate_event(c.json) == [] for c in api.captured)
    assert "report_job at" in result.stderr and "desktop_runner.py" in result.stderr


def test_a_job_killed_mid_run_is_one_failure_sent_by_the_next_start(
        production: dict[str, str], api: FakeApi,
        started: list[subprocess.Popen[str]]) -> None:
    """kill -9 (Windows' taskkill /f) in the middle of a job: the next start sends exactly
    one failure for it, saying the app stopped while it ran."""
    proc = start_hanging_job(production, "r-killed", started)
    proc.kill()
    proc.communicate()
    assert outcomes(api) == {}
    after = run(production, "ok:r-next")
    assert after.returncode == 0, after.stderr
    assert api.wait_for(lambda c: len(c) >= 2, 10)
    by_run = outcomes(api)
    (killed,) = by_run["r-killed"]
    assert killed["success"] is False
    assert killed["error_message"] == STOPPED_MESSAGE
    assert len(by_run["r-next"]) == 1


def test_two_processes_starting_at_once_report_a_killed_job_once(
        production: dict[str, str], api: FakeApi,
        started: list[subprocess.Popen[str]]) -> None:
    """Two processes start together on the spool a killed job was left in: one event."""
    proc = start_hanging_job(production, "r-once", started)
    proc.kill()
    proc.communicate()
    both = [subprocess.Popen([sys.executable, RUNNER, "--config", str(REPO / "logging.yaml")],
                             env=production, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in both:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert Counter(c.json["job_data"]["run_id"] for c in api.captured) == {"r-once": 1}
    assert nothing_left(production)  # no second copy waits to be sent either


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt",
                    reason="the macOS shell's SIGTERM")
def test_sigterm_in_the_middle_of_a_job_reports_it_as_shut_down(
        production: dict[str, str], api: FakeApi,
        started: list[subprocess.Popen[str]]) -> None:
    """SIGTERM (how the shell stops the backend on macOS) while a job runs: the job is
    reported once, as shut down while running, in that run or the next."""
    proc = start_hanging_job(production, "r-term", started)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    run(production)  # the next start sends what the first could not
    assert api.wait_for(lambda c: len(c) >= 1, 10)
    events = outcomes(api)["r-term"]
    assert len(events) == 1, [(e["error_message"], e["failure_time"]) for e in events]
    (event,) = events
    assert event["success"] is False
    assert event["error_message"] == SHUTDOWN_MESSAGE


def test_a_job_that_finishes_after_a_reconfiguration_is_reported_once(
        production: dict[str, str], api: FakeApi, tmp_path: Path) -> None:
    """A handler closed while the app carries on (a second configure()) leaves the running
    job alone: its real outcome, through the new handler, is the one event."""
    script = tmp_path / "reconfigure.py"
    script.write_text(f"""
import logging
from massugc_logging import configure, report_job
configure({str(REPO / "logging.yaml")!r})
log = logging.getLogger("massugc.jobs")
with report_job(log, {{"run_id": "r-reconf", "workflow_type": "avatar"}}) as job:
    configure({str(REPO / "logging.yaml")!r})  # the first cloud handler is closed here
    job.succeeded("out.mp4")
""")
    result = subprocess.run([sys.executable, str(script)], env=production, capture_output=True,
                            text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    run(production)  # a next start finds no abandoned job
    assert [j["success"] for j in outcomes(api)["r-reconf"]] == [True]
    assert nothing_left(production)


def run_script(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


def test_massugc_logging_shutdown_reports_open_jobs_as_shut_down_in_that_run(
        production: dict[str, str], api: FakeApi) -> None:
    """An app stopping on its own terms (a /shutdown route) with massugc_logging.shutdown():
    the job still running is delivered as shut down before the process ends."""
    result = run_script(production, f"""
        import logging, os, threading
        import massugc_logging
        massugc_logging.configure({str(REPO / "logging.yaml")!r})
        log = logging.getLogger("massugc.jobs")
        started = threading.Event()
        def job():
            with massugc_logging.report_job(log, {{"run_id": "r-stop"}}):
                started.set()
                threading.Event().wait()
        threading.Thread(target=job, daemon=True).start()
        started.wait(5)
        massugc_logging.shutdown()
        os._exit(0)  # what a /shutdown route does next: nothing else runs
    """)
    assert result.returncode == 0, result.stderr
    (event,) = outcomes(api)["r-stop"]
    assert event["error_message"] == SHUTDOWN_MESSAGE
    assert nothing_left(production)


def test_a_daemon_job_open_at_a_normal_exit_is_reported_as_shut_down(
        production: dict[str, str], api: FakeApi) -> None:
    """The interpreter exits while a daemon thread's job runs: one shut-down failure."""
    result = run_script(production, f"""
        import logging, threading
        import massugc_logging
        massugc_logging.configure({str(REPO / "logging.yaml")!r})
        log = logging.getLogger("massugc.jobs")
        started = threading.Event()
        def job():
            with massugc_logging.report_job(log, {{"run_id": "r-daemon"}}):
                started.set()
                threading.Event().wait()
        threading.Thread(target=job, daemon=True).start()
        started.wait(5)
    """)
    assert result.returncode == 0, result.stderr
    (event,) = outcomes(api)["r-daemon"]
    assert event["error_message"] == SHUTDOWN_MESSAGE
    assert nothing_left(production)
