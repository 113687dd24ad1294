"""The ``massugc-logging`` command line, run as a user runs it: a process, real servers, files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
import requests
from fakeapi import FakeApi, free_port

from massugc_logging import __version__
from massugc_logging.collector import Collector
from massugc_logging.pipeline.spool import Spool

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
REFERENCE_YAML = REPO / "logging.yaml"
SCENARIO_APP = str(Path(__file__).parent / "scenario_app.py")
CLI = [sys.executable, "-m", "massugc_logging.cli"]
KEY = "massugc_" + "Ab3_dEf-9" * 3 + "Zq1x9"
SPOOLED = 6


def clean_environment(home: Path) -> dict[str, str]:
    """The process environment with a throwaway home and no MassUGC settings or proxies."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MASSUGC_") and k.lower() not in ("http_proxy", "https_proxy",
                                                                 "all_proxy")}
    env.update({
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "NO_PROXY": "127.0.0.1,localhost",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
        "PYTHONIOENCODING": "utf-8",
    })
    return env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An isolated environment for one command: its own HOME, config and data directories."""
    home = tmp_path / "user"
    home.mkdir()
    return clean_environment(home)


def cli(*args: str, env: dict[str, str], stdin: Optional[str] = None,
        cwd: Optional[Path] = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``massugc-logging ARGS`` in a fresh interpreter; no terminal, no input by default."""
    if stdin is None:
        return subprocess.run([*CLI, *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)


def with_key(env: dict[str, str], key: str = KEY) -> dict[str, str]:
    return {**env, "MASSUGC_API_KEY": key}


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector().start() as server:
        yield server


# -- spools made by a real CloudHandler while the API was down ------------------------


@pytest.fixture(scope="module")
def spooled_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spool holding six failure events, written by an app run against a down port."""
    base = tmp_path_factory.mktemp("made-spool")
    home = base / "home"
    home.mkdir()
    spool = base / "spool.sqlite3"
    result = subprocess.run(
        [sys.executable, SCENARIO_APP, "--url", f"http://127.0.0.1:{free_port()}",
         "--spool", str(spool), "--events", str(SPOOLED), "--shutdown-timeout", "0.3"],
        env=clean_environment(home), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return spool


@pytest.fixture(scope="module")
def spooled_for(spooled_file: Path) -> str:
    """The destination the spooled events were logged for (the down port's URL)."""
    store = Spool(spooled_file)
    try:
        (destination,) = store.counts_by_destination()
    finally:
        store.close()
    assert destination is not None
    return destination


@pytest.fixture
def spool(spooled_file: Path, tmp_path: Path) -> Path:
    """A private copy of the spool (with its WAL) for one test."""
    target = tmp_path / "spool" / spooled_file.name
    target.parent.mkdir()
    for part in spooled_file.parent.glob(spooled_file.name + "*"):
        shutil.copy2(part, target.parent / part.name)
    return target


def spool_cli(spool: Path, *args: str, env: dict[str, str],
              stdin: Optional[str] = None) -> subprocess.CompletedProcess[str]:
    return cli("spool", *args, "--spool", str(spool), env=env, stdin=stdin)


def pending_of(spool: Path, env: dict[str, str]) -> int:
    status = spool_cli(spool, "status", env=env)
    assert status.returncode == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if x.startswith("pending events:"))
    return int(line.split(":")[1])


# -- version and usage ------------------------------------------------------------------


def test_version_prints_the_package_version(env: dict[str, str]) -> None:
    """--version prints the program name and version and exits 0."""
    result = cli("--version", env=env)
    assert result.returncode == 0
    assert result.stdout.strip() == f"massugc-logging {__version__}"


def test_console_script_is_installed_next_to_the_interpreter(env: dict[str, str]) -> None:
    """The massugc-logging console script runs the same command line."""
    script = Path(sys.executable).with_name("massugc-logging")
    if not script.exists():
        pytest.skip("the console script is not installed in this environment")
    result = subprocess.run([str(script), "--version"], env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_no_command_prints_usage_and_exits_2(env: dict[str, str]) -> None:
    """Without a command: usage on stderr, a hint what to run, exit code 2."""
    result = cli(env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: massugc-logging")
    assert "massugc-logging demo" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args", [
    ["frobnicate"],
    ["spool", "frob"],
    ["key"],
    ["check", "a.yaml", "b.yaml"],
    ["demo", "--jobs", "0"],
    ["demo", "--jobs", "many"],
    ["serve", "--port", "70000"],
    ["send-test", "--no-such-option"],
], ids=" ".join)
def test_wrong_arguments_get_usage_and_exit_2(env: dict[str, str], args: list[str]) -> None:
    """Wrong arguments: a usage line, the error, a pointer to --help, and exit code 2."""
    result = cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert "usage: massugc-logging" in result.stderr
    assert "error:" in result.stderr
    assert "--help" in result.stderr


# -- demo -------------------------------------------------------------------------------


def test_demo_delivers_every_event_exactly_once_and_prints_the_table(
        env: dict[str, str]) -> None:
    """demo: the default jobs through logging.yaml into a local collector, a table, exit 0."""
    result = cli("demo", env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exactly once" in result.stdout
    header = next(line for line in result.stdout.splitlines() if line.startswith("count "))
    assert "category" in header and "workflows" in header and "example" in header
    groups = [line.split() for line in result.stdout.splitlines() if line[:3].rstrip("x ").isdigit()
              and line.split()[0].endswith("x")]
    # 11 failed jobs, 5 distinct problems: the avatar outage is one group of 6, the signed-URL
    # upload one group in two workflows.
    assert [g[0] for g in groups] == ["6x", "2x", "1x", "1x", "1x"]
    assert groups[0][1:3] == ["video_generation", "avatar"]
    assert groups[1][1:4] == ["storage_upload", "massugc,", "randomized"]
    assert "48 jobs logged (11 failed); the collector received 48 events" in result.stdout
    assert "jobs [" in result.stderr and "48/48" in result.stderr
    # The simulated errors are full of a home path and tokens; none survive.
    assert "alice" not in result.stdout
    assert "sk_3f9a" not in result.stdout
    assert "Failure rate by workflow_type: avatar 38% (6/16)" in result.stdout


def test_demo_burst_raises_exactly_one_alert_and_one_recovery_on_the_console(
        env: dict[str, str]) -> None:
    """The avatar outage in the demo: one ALERT and one RESOLVED line, nothing more."""
    result = cli("demo", env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    alert_lines = [line for line in result.stderr.splitlines() if "massugc.alerts" in line]
    assert len(alert_lines) == 2, result.stderr
    assert "ALERT job failure rate workflow_type=avatar" in alert_lines[0]
    assert "video_generation" in alert_lines[0]
    assert "RESOLVED job failure rate workflow_type=avatar" in alert_lines[1]
    assert "Alerts raised on massugc.alerts: 1 firing, 1 resolved" in result.stdout


def test_demo_with_fewer_jobs_still_checks_delivery(env: dict[str, str]) -> None:
    """demo --jobs 12: a shorter run, still verified exactly once."""
    result = cli("demo", "--jobs", "12", env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "12 jobs logged" in result.stdout and "exactly once" in result.stdout


def test_demo_with_a_config_that_sends_nothing_says_what_to_add(env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    """demo --config without a cloud handler for massugc.jobs: exit 1 and what to add."""
    config = tmp_path / "logging.yaml"
    config.write_text("environments:\n  development:\n    version: 1\n", encoding="utf-8")
    result = cli("demo", "--jobs", "2", "--config", str(config), env=env)
    assert result.returncode == 1
    assert "massugc_logging.CloudHandler" in result.stderr


# -- serve ------------------------------------------------------------------------------


def test_serve_shows_received_events_on_its_page_and_stops_on_sigterm(
        env: dict[str, str]) -> None:
    """serve: prints its URL, stores what send-test sends, shows it on the page, exits 0."""
    with subprocess.Popen([*CLI, "serve", "--port", "0"], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert "listening on http://127.0.0.1:" in first
            url = first.split("listening on ")[1].split()[0]
            sent = cli("send-test", "--api-url", url, env=with_key(env))
            assert sent.returncode == 0, sent.stderr
            page = requests.get(url + "/", timeout=10)
            assert page.status_code == 200
            assert page.headers["Content-Type"].startswith("text/html")
            assert "massugc-logging send-test" in page.text
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0


def test_serve_on_a_busy_port_says_choose_another(env: dict[str, str],
                                                  collector: Collector) -> None:
    """serve on a port already in use: exit 1 and a hint to pick another --port."""
    port = collector.url.rsplit(":", 1)[1]
    result = cli("serve", "--port", port, env=env, timeout=30)
    assert result.returncode == 1
    assert "choose another --port" in result.stderr


# -- send-test --------------------------------------------------------------------------


def test_send_test_delivers_one_event_to_the_collector(env: dict[str, str],
                                                       collector: Collector) -> None:
    """send-test: one valid event reaches the API; the outcome is printed; exit 0."""
    result = cli("send-test", "--api-url", collector.url, env=with_key(env))
    assert result.returncode == 0, result.stderr
    assert "Outcome: delivered (HTTP 200)" in result.stdout
    events = collector.events()
    assert len(events) == 1
    assert events[0]["body"]["job_data"]["job_name"] == "massugc-logging send-test"
    assert events[0]["body"]["job_data"]["success"] is True


def test_send_test_uses_the_url_from_the_environment(env: dict[str, str],
                                                     collector: Collector) -> None:
    """send-test without --api-url sends to MASSUGC_API_URL."""
    result = cli("send-test", env={**with_key(env), "MASSUGC_API_URL": collector.url})
    assert result.returncode == 0, result.stderr
    assert len(collector.events()) == 1


def test_send_test_refused_key_exits_1_says_what_to_do_and_never_prints_it(
        env: dict[str, str], api: FakeApi) -> None:
    """send-test on 401: exit 1, advice to check and set the key, the key never shown."""
    api.respond_with(401, {"error": "invalid_api_key", "message": "API key not recognised"})
    result = cli("send-test", "--api-url", api.url, env=with_key(env))
    assert result.returncode == 1
    assert "HTTP 401" in result.stdout
    assert "key set" in result.stderr and "key show" in result.stderr
    assert KEY not in result.stdout + result.stderr
    assert KEY[8:20] not in result.stdout + result.stderr
    assert api.captured[0].headers["X-API-Key"] == KEY


def test_send_test_without_a_key_exits_1_and_sends_nothing(env: dict[str, str],
                                                           api: FakeApi) -> None:
    """send-test with no key anywhere: exit 1, names MASSUGC_API_KEY and key set."""
    result = cli("send-test", "--api-url", api.url, env=env)
    assert result.returncode == 1
    assert "MASSUGC_API_KEY" in result.stderr and "key set" in result.stderr
    assert api.captured == []


def test_send_test_with_a_malformed_key_exits_1_without_echoing_it(env: dict[str, str],
                                                                   api: FakeApi) -> None:
    """send-test with a malformed MASSUGC_API_KEY: exit 1, says how to fix, value not shown."""
    bad = "sk-not-a-massugc-key-1234567890"
    result = cli("send-test", "--api-url", api.url, env=with_key(env, bad))
    assert result.returncode == 1
    assert "MASSUGC_API_KEY" in result.stderr and "key set" in result.stderr
    assert bad not in result.stdout + result.stderr
    assert api.captured == []


def test_send_test_refuses_plain_http_to_a_remote_host(env: dict[str, str]) -> None:
    """send-test to http:// on a non-loopback host: refused before connecting, exit 1."""
    result = cli("send-test", "--api-url", "http://api.example.invalid", env=with_key(env))
    assert result.returncode == 1
    assert "refusing plain http://" in result.stderr
    assert "https://" in result.stderr and "--allow-insecure-http" in result.stderr
    assert "Sending" not in result.stdout


def test_send_test_to_a_down_api_exits_1_with_advice(env: dict[str, str]) -> None:
    """send-test to a port with nothing listening: transient outcome, exit 1, what to check."""
    result = cli("send-test", "--api-url", f"http://127.0.0.1:{free_port()}",
                 env=with_key(env))
    assert result.returncode == 1
    assert "transient" in result.stdout
    assert "check the network" in result.stderr


# -- check ------------------------------------------------------------------------------


@pytest.mark.parametrize("environment", ["development", "production"])
def test_check_reference_config_with_a_key_and_a_live_api_passes(
        env: dict[str, str], collector: Collector, environment: str) -> None:
    """check on logging.yaml: with a key and a reachable API, exit 0 and nothing sent."""
    result = cli("check", str(REFERENCE_YAML), "--env", environment,
                 env={**with_key(env), "MASSUGC_API_URL": collector.url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"environment {environment!r}" in result.stdout
    assert "API reachable" in result.stdout
    assert "configuration looks good" in result.stdout
    assert collector.events() == []
    assert KEY not in result.stdout + result.stderr


def test_check_reference_test_environment_needs_no_key(env: dict[str, str]) -> None:
    """check --env test: nothing is sent in that environment, so no key is needed."""
    result = cli("check", str(REFERENCE_YAML), "--env", "test", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration looks good" in result.stdout


@pytest.mark.parametrize("environment", ["development", "production"])
def test_check_without_a_key_exits_1_and_says_how_to_set_one(
        env: dict[str, str], environment: str) -> None:
    """check without a key: exit 1, the message names MASSUGC_API_KEY and 'key set'."""
    result = cli("check", str(REFERENCE_YAML), "--env", environment, "--no-network", env=env)
    assert result.returncode == 1
    assert "no API key" in result.stdout
    assert "MASSUGC_API_KEY" in result.stdout and "massugc-logging key set" in result.stdout
    assert "fix each PROBLEM" in result.stderr


def test_check_picks_the_environment_from_massugc_env(env: dict[str, str]) -> None:
    """check without --env uses MASSUGC_ENV."""
    result = cli("check", str(REFERENCE_YAML), env={**env, "MASSUGC_ENV": "test"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "environment 'test'" in result.stdout


def test_check_unreachable_api_exits_1_unless_no_network(env: dict[str, str]) -> None:
    """check with a dead API URL: exit 1 naming it; --no-network skips the probe."""
    url = f"http://127.0.0.1:{free_port()}"
    probe_env = {**with_key(env), "MASSUGC_API_URL": url}
    probed = cli("check", str(REFERENCE_YAML), "--env", "development", env=probe_env)
    assert probed.returncode == 1
    assert f"the API at {url} is unreachable" in probed.stdout
    assert "--no-network" in probed.stdout
    skipped = cli("check", str(REFERENCE_YAML), "--env", "development", "--no-network",
                  env=probe_env)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr


def test_check_insecure_api_url_exits_1(env: dict[str, str]) -> None:
    """check with plain http:// to a remote host: exit 1, the problem says to use https."""
    result = cli("check", str(REFERENCE_YAML), "--env", "production", "--no-network",
                 env={**with_key(env), "MASSUGC_API_URL": "http://api.example.invalid"})
    assert result.returncode == 1
    assert "insecure API URL" in result.stdout
    assert "https://" in result.stdout


def test_check_yaml_syntax_error_names_the_file_and_line(env: dict[str, str],
                                                         tmp_path: Path) -> None:
    """check on broken YAML: exit 1; the message names the file, the line and the fix."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("environments:\n  development:\n    version: 1\n"
                      "    handlers: [console\n    root: {}\n", encoding="utf-8")
    result = cli("check", str(broken), env=with_key(env))
    assert result.returncode == 1
    assert str(broken) in result.stderr
    assert ", line 5" in result.stderr
    assert "Fix the syntax" in result.stderr


def test_check_unknown_environment_lists_the_known_ones(env: dict[str, str]) -> None:
    """check --env staging: exit 1; the message lists development, test, production."""
    result = cli("check", str(REFERENCE_YAML), "--env", "staging", env=with_key(env))
    assert result.returncode == 1
    assert "no environment named 'staging'" in result.stderr
    assert "development, test, production" in result.stderr
    assert "logging.yaml, line" in result.stderr


def test_check_missing_file_says_what_to_pass(env: dict[str, str], tmp_path: Path) -> None:
    """check on a path that does not exist: exit 1 and what to pass instead."""
    result = cli("check", str(tmp_path / "nope.yaml"), env=env)
    assert result.returncode == 1
    assert "no such file" in result.stderr
    assert "Pass the path" in result.stderr


def test_check_unset_variable_names_the_line_and_the_fix(env: dict[str, str],
                                                         tmp_path: Path) -> None:
    """check with ${VAR} unset and no default: exit 1, the line, and how to give a default."""
    config = tmp_path / "logging.yaml"
    config.write_text("default_environment: dev\nenvironments:\n  dev:\n    version: 1\n"
                      "    handlers:\n      out:\n        class: logging.StreamHandler\n"
                      "        level: ${LOG_LEVEL_NOT_SET}\n", encoding="utf-8")
    result = cli("check", str(config), env=env)
    assert result.returncode == 1
    assert f"{config}, line 8" in result.stderr
    assert "LOG_LEVEL_NOT_SET is not set" in result.stderr
    assert "${LOG_LEVEL_NOT_SET:-default}" in result.stderr


def test_check_reports_bad_handler_arguments_and_dictconfig_errors(
        env: dict[str, str], tmp_path: Path) -> None:
    """check: an unknown CloudHandler argument and an undefined formatter are both reported."""
    config = tmp_path / "logging.yaml"
    config.write_text(
        "version: 1\nhandlers:\n"
        "  cloud:\n    class: massugc_logging.CloudHandler\n    api_url: http://127.0.0.1:9\n"
        "    spool_pth: default\n"
        "  console:\n    class: logging.StreamHandler\n    formatter: missing\n",
        encoding="utf-8")
    result = cli("check", str(config), "--no-network", env=with_key(env))
    assert result.returncode == 1
    assert "unexpected keyword argument 'spool_pth'" in result.stdout
    assert "Unable to set formatter 'missing'" in result.stdout
    assert "2 problem(s)" in result.stderr


def test_check_flags_an_api_key_written_in_the_file(env: dict[str, str],
                                                    tmp_path: Path) -> None:
    """check: an API key written literally in the YAML is a problem, and it is not echoed."""
    config = tmp_path / "logging.yaml"
    config.write_text(
        "version: 1\nhandlers:\n  cloud:\n    class: massugc_logging.CloudHandler\n"
        f"    api_url: http://127.0.0.1:9\n    api_key: {KEY}\n", encoding="utf-8")
    result = cli("check", str(config), "--no-network", env=env)
    assert result.returncode == 1
    assert "the API key is written in the configuration" in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_check_touches_no_log_file_or_spool(env: dict[str, str], tmp_path: Path) -> None:
    """check on production creates neither the JSON log directory nor a spool."""
    logs = tmp_path / "logs"
    spool = tmp_path / "spool.sqlite3"
    result = cli("check", str(REFERENCE_YAML), "--env", "production", "--no-network",
                 env={**with_key(env), "MASSUGC_LOG_DIR": str(logs),
                      "MASSUGC_SPOOL_PATH": str(spool)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert not logs.exists()
    assert not spool.exists()


# -- spool ------------------------------------------------------------------------------


def test_spool_status_counts_what_a_down_api_left_behind(env: dict[str, str],
                                                         spool: Path) -> None:
    """spool status: the path, the pending count, the oldest time and the attempts."""
    result = spool_cli(spool, "status", env=env)
    assert result.returncode == 0, result.stderr
    assert str(spool) in result.stdout
    assert f"pending events: {SPOOLED}" in result.stdout
    assert "oldest:" in result.stdout and "dead-lettered:  0" in result.stdout


def test_spool_status_uses_massugc_spool_path(env: dict[str, str], spool: Path) -> None:
    """spool status without --spool reads MASSUGC_SPOOL_PATH."""
    result = cli("spool", "status", env={**env, "MASSUGC_SPOOL_PATH": str(spool)})
    assert result.returncode == 0, result.stderr
    assert f"pending events: {SPOOLED}" in result.stdout


@pytest.mark.parametrize("action", ["status", "export", "replay"])
def test_no_spool_yet_is_the_normal_state_of_a_fresh_install(env: dict[str, str],
                                                             tmp_path: Path,
                                                             action: str) -> None:
    """spool ACTION with no spool file: exit 0, nothing is kept yet, --spool named for
    another file, and nothing is created."""
    missing = tmp_path / "none.sqlite3"
    result = spool_cli(missing, action, env=env)
    assert result.returncode == 0, result.stderr
    assert "nothing is kept yet" in result.stdout and "--spool" in result.stdout
    assert not missing.exists()


def test_check_without_a_path_uses_the_configured_file_then_the_local_one(
        env: dict[str, str], tmp_path: Path) -> None:
    """check with no PATH: $MASSUGC_LOGGING_CONFIG, else ./logging.yaml."""
    chosen = tmp_path / "chosen.yaml"
    chosen.write_text((REPO / "logging.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    named = cli("check", "--no-network", "--env", "test",
                env={**env, "MASSUGC_LOGGING_CONFIG": str(chosen)}, cwd=tmp_path)
    assert named.returncode == 0, named.stdout + named.stderr
    assert f"checking {chosen}" in named.stdout
    local = cli("check", "--no-network", "--env", "test", env=env, cwd=REPO)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "checking logging.yaml" in local.stdout


def test_output_into_a_closed_pipe_ends_quietly(env: dict[str, str], tmp_path: Path) -> None:
    """massugc-logging spool status | head: no BrokenPipeError traceback."""
    path = tmp_path / "spool.sqlite3"
    store = Spool(path)
    store.add([(f"e{i}", b"{}", 1000.0 + i) for i in range(3)], 1000.0)
    store.close()
    proc = subprocess.Popen([*CLI, "spool", "status", "--spool", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    proc.wait(30)
    proc.stderr.close()
    assert "Traceback" not in err and "BrokenPipeError" not in err


@pytest.mark.parametrize("command", ["spool", "key", "serve"])
def test_every_subcommands_help_describes_its_actions_and_options(
        env: dict[str, str], command: str) -> None:
    """--help of spool, key and serve explains each action and option."""
    result = cli(command, "--help", env=env)
    assert result.returncode == 0
    words = {"spool": ["status", "replay", "export", "purge"],
             "key": ["set", "show", "remove", "migrate"],
             "serve": ["--host", "address", "--port"]}[command]
    assert all(w in result.stdout for w in words)
    assert "(" in result.stdout  # explained, not just listed


def test_spool_replay_delivers_everything_and_empties_the_spool(
        env: dict[str, str], spool: Path, collector: Collector, spooled_for: str) -> None:
    """spool replay against a live API: all delivered once, a progress bar, spool empty."""
    result = spool_cli(spool, "replay", "--api-url", collector.url, "--from", spooled_for,
                       env=with_key(env))
    assert result.returncode == 0, result.stderr
    assert f"replayed {SPOOLED} event(s)" in result.stdout
    assert f"replay [{'#' * 30}] {SPOOLED}/{SPOOLED}" in result.stderr
    runs = sorted(e["body"]["job_data"]["run_id"] for e in collector.events())
    assert runs == sorted(f"run-{i}" for i in range(SPOOLED))
    assert collector.duplicates() == 0
    assert pending_of(spool, env) == 0


def test_spool_replay_keeps_the_original_event_times(env: dict[str, str], spool: Path,
                                                     api: FakeApi, spooled_for: str) -> None:
    """spool replay sends the bodies as spooled: times are those of the events, not now."""
    exported = spool_cli(spool, "export", env=env)
    created = {json.loads(line)["event"]["job_data"]["run_id"]: json.loads(line)["created"]
               for line in exported.stdout.splitlines()}
    result = spool_cli(spool, "replay", "--api-url", api.url, "--from", spooled_for,
                       env=with_key(env))
    assert result.returncode == 0, result.stderr
    for captured in api.captured:
        body = captured.json
        assert body["job_data"]["failure_time"] == created[body["job_data"]["run_id"]]
        assert captured.headers["Idempotency-Key"]


def test_spool_replay_with_a_refused_key_stops_and_keeps_every_event(
        env: dict[str, str], spool: Path, api: FakeApi, spooled_for: str) -> None:
    """spool replay on 401: stops at once, exit 1, says so, every event stays spooled."""
    api.respond_with(401, {"error": "invalid_api_key", "message": "unknown key"}, times=10)
    result = spool_cli(spool, "replay", "--api-url", api.url, "--from", spooled_for,
                       env=with_key(env))
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr
    assert f"{SPOOLED} still pending" in result.stdout
    assert len(api.captured) == 1
    assert pending_of(spool, env) == SPOOLED


def test_spool_replay_dead_letters_a_rejected_event(env: dict[str, str], spool: Path,
                                                    api: FakeApi, spooled_for: str) -> None:
    """spool replay: a 422 dead-letters that event; the rest are delivered; status shows it."""
    api.respond_with(422, {"error": "validation_error", "message": "bad job_data"})
    result = spool_cli(spool, "replay", "--api-url", api.url, "--from", spooled_for,
                       env=with_key(env))
    assert result.returncode == 0, result.stderr
    assert "1 rejected and dead-lettered" in result.stdout
    status = spool_cli(spool, "status", env=env)
    assert "dead-lettered:  1" in status.stdout
    assert "HTTP 422" in status.stdout and "bad job_data" in status.stdout


def test_spool_replay_without_a_key_changes_nothing(env: dict[str, str], spool: Path,
                                                    api: FakeApi, spooled_for: str) -> None:
    """spool replay with no key: exit 1, the key hint, nothing sent, nothing removed."""
    result = spool_cli(spool, "replay", "--api-url", api.url, "--from", spooled_for, env=env)
    assert result.returncode == 1
    assert "MASSUGC_API_KEY" in result.stderr
    assert api.captured == []
    assert pending_of(spool, env) == SPOOLED


def test_spool_replay_leaves_events_a_running_app_holds(env: dict[str, str], tmp_path: Path,
                                                        collector: Collector) -> None:
    """spool replay while the app still holds its events: exit 1, says why and when to retry."""
    spool = tmp_path / "live.sqlite3"
    app_url = f"http://127.0.0.1:{free_port()}"
    with subprocess.Popen(
            [sys.executable, SCENARIO_APP, "--url", app_url,
             "--spool", str(spool), "--forever", "--interval", "0.01"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True) as app:
        try:
            assert app.stdout is not None
            for _ in range(3):
                app.stdout.readline()
            result = spool_cli(spool, "replay", "--api-url", collector.url, "--from",
                               app_url + "/api/desktop/usage/log", env=with_key(env))
        finally:
            app.kill()
            app.communicate()
    assert result.returncode == 1
    assert "held by a program that is still running" in result.stderr
    assert collector.events() == []


def test_spool_on_a_corrupt_file_says_to_move_it_aside(env: dict[str, str],
                                                       tmp_path: Path) -> None:
    """spool status on a file that is not a spool: exit 1, no traceback, move it aside."""
    bad = tmp_path / "spool.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    result = spool_cli(bad, "status", env=env)
    assert result.returncode == 1
    assert "move it aside" in result.stderr
    assert "Traceback" not in result.stderr


def test_spool_export_writes_valid_json_lines(env: dict[str, str], spool: Path,
                                              tmp_path: Path) -> None:
    """spool export -o FILE: one JSON object per pending event, with the wire body."""
    target = tmp_path / "export.jsonl"
    result = spool_cli(spool, "export", "-o", str(target), env=env)
    assert result.returncode == 0, result.stderr
    assert f"wrote {SPOOLED} event(s)" in result.stdout
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == SPOOLED
    assert {r["state"] for r in rows} == {"pending"}
    assert all(r["event"]["event_type"] == "video_generation" for r in rows)
    assert all(r["event"]["job_data"]["success"] is False for r in rows)
    assert len({r["event_id"] for r in rows}) == SPOOLED
    assert pending_of(spool, env) == SPOOLED


def test_spool_export_to_stdout_is_json_lines_only(env: dict[str, str], spool: Path) -> None:
    """spool export without -o writes only JSON lines on stdout (pipeable)."""
    result = spool_cli(spool, "export", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == SPOOLED
    assert all(isinstance(json.loads(line), dict) for line in lines)


def test_spool_export_dead_lists_only_dead_letters(env: dict[str, str], spool: Path,
                                                   api: FakeApi, spooled_for: str) -> None:
    """spool export --dead: just the dead-lettered events, with status and reason."""
    api.respond_with(422, {"error": "validation_error", "message": "bad job_data"})
    api.respond_with(503, {"error": "unavailable", "message": "down"}, times=50)
    spool_cli(spool, "replay", "--api-url", api.url, "--from", spooled_for,
                       env=with_key(env))
    result = spool_cli(spool, "export", "--dead", env=env)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["state"], r["status"]) for r in rows] == [("dead_letter", 422)]
    both = spool_cli(spool, "export", "--all", env=env)
    assert len(both.stdout.splitlines()) == SPOOLED


def test_spool_export_to_an_unwritable_path_exits_1(env: dict[str, str], spool: Path,
                                                    tmp_path: Path) -> None:
    """spool export -o into a missing directory: exit 1 and what to do, no traceback."""
    result = spool_cli(spool, "export", "-o", str(tmp_path / "no" / "such" / "x.jsonl"),
                       env=env)
    assert result.returncode == 1
    assert "choose another --output" in result.stderr
    assert "Traceback" not in result.stderr


def test_spool_purge_without_yes_and_no_input_refuses(env: dict[str, str],
                                                      spool: Path) -> None:
    """spool purge with stdin closed: nothing deleted, exit 1, says to pass --yes."""
    result = spool_cli(spool, "purge", env=env)
    assert result.returncode == 1
    assert f"Delete {SPOOLED} pending and 0 dead-lettered event(s)" in result.stderr
    assert "--yes" in result.stderr
    assert result.stdout == ""
    assert pending_of(spool, env) == SPOOLED


def test_spool_purge_answered_no_deletes_nothing(env: dict[str, str], spool: Path) -> None:
    """spool purge answered 'n': nothing deleted, exit 1."""
    result = spool_cli(spool, "purge", env=env, stdin="n\n")
    assert result.returncode == 1
    assert "nothing deleted" in result.stderr
    assert pending_of(spool, env) == SPOOLED


def test_spool_purge_answered_yes_deletes(env: dict[str, str], spool: Path) -> None:
    """spool purge answered 'y' on stdin deletes everything."""
    result = spool_cli(spool, "purge", env=env, stdin="y\n")
    assert result.returncode == 0, result.stderr
    assert f"deleted {SPOOLED} event(s)" in result.stdout
    assert pending_of(spool, env) == 0


def test_spool_purge_with_yes_deletes_without_asking(env: dict[str, str],
                                                     spool: Path) -> None:
    """spool purge --yes deletes every event and asks nothing."""
    result = spool_cli(spool, "purge", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert f"deleted {SPOOLED} event(s)" in result.stdout
    assert "[y/N]" not in result.stderr
    assert pending_of(spool, env) == 0


def test_spool_purge_dead_only_keeps_pending_events(env: dict[str, str], spool: Path,
                                                    api: FakeApi, spooled_for: str) -> None:
    """spool purge --dead-only --yes removes dead letters and leaves pending events."""
    api.respond_with(422, {"error": "validation_error", "message": "bad"})
    api.respond_with(503, {"error": "unavailable", "message": "down"}, times=50)
    spool_cli(spool, "replay", "--api-url", api.url, "--from", spooled_for,
                       env=with_key(env))
    result = spool_cli(spool, "purge", "--dead-only", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert "deleted 1 event(s)" in result.stdout
    assert pending_of(spool, env) == SPOOLED - 1


# -- key --------------------------------------------------------------------------------


def key_file(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "massugc-logging" / "api_key"


def test_key_set_reads_stdin_and_writes_a_private_key_file(env: dict[str, str]) -> None:
    """key set: the key from stdin is stored in the user's config dir, mode 0600."""
    result = cli("key", "set", env=env, stdin=KEY + "\n")
    assert result.returncode == 0, result.stderr
    path = key_file(env)
    assert str(path) in result.stdout
    assert path.read_text(encoding="ascii").strip() == KEY
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KEY not in result.stdout + result.stderr


def test_key_set_rejects_a_malformed_key_without_echoing_it(env: dict[str, str]) -> None:
    """key set with something that is not a key: exit 1, what to do, value not shown."""
    bad = "massugc_tooshort123"
    result = cli("key", "set", env=env, stdin=bad + "\n")
    assert result.returncode == 1
    assert "not a MassUGC API key" in result.stderr and "key set" in result.stderr
    assert bad not in result.stdout + result.stderr
    assert not key_file(env).exists()


def test_key_set_with_no_input_exits_1(env: dict[str, str]) -> None:
    """key set with stdin closed: exit 1 and how to give the key."""
    result = cli("key", "set", env=env)
    assert result.returncode == 1
    assert "no key given" in result.stderr


def test_key_set_notes_that_the_environment_variable_wins(env: dict[str, str]) -> None:
    """key set while MASSUGC_API_KEY is set: stored, with a note that the variable is used."""
    other = "massugc_" + "Q" * 32
    result = cli("key", "set", env=with_key(env, other), stdin=KEY + "\n")
    assert result.returncode == 0, result.stderr
    assert "MASSUGC_API_KEY is set" in result.stdout
    assert other not in result.stdout + result.stderr


def test_key_show_is_masked(env: dict[str, str]) -> None:
    """key show: the masked key and its source; the full key on neither stream."""
    cli("key", "set", env=env, stdin=KEY + "\n")
    result = cli("key", "show", env=env)
    assert result.returncode == 0, result.stderr
    assert "massugc_Ab…x9" in result.stdout and "(from file)" in result.stdout
    assert KEY not in result.stdout + result.stderr
    assert KEY[8:20] not in result.stdout + result.stderr


def test_key_show_masks_a_key_from_the_environment(env: dict[str, str]) -> None:
    """key show with MASSUGC_API_KEY: masked, and says it comes from the environment."""
    result = cli("key", "show", env=with_key(env))
    assert result.returncode == 0, result.stderr
    assert "(from environment)" in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_key_show_without_a_key_exits_1(env: dict[str, str]) -> None:
    """key show with no key anywhere: exit 1 and 'key set' as the way out."""
    result = cli("key", "show", env=env)
    assert result.returncode == 1
    assert "massugc-logging key set" in result.stderr


def test_key_remove_deletes_the_stored_key(env: dict[str, str]) -> None:
    """key remove: the key file is gone and key show finds nothing."""
    cli("key", "set", env=env, stdin=KEY + "\n")
    result = cli("key", "remove", env=env)
    assert result.returncode == 0, result.stderr
    assert str(key_file(env)) in result.stdout
    assert not key_file(env).exists()
    assert cli("key", "show", env=env).returncode == 1


def test_key_remove_with_nothing_stored_says_so(env: dict[str, str]) -> None:
    """key remove with nothing stored: exit 0, 'nothing was stored'."""
    result = cli("key", "remove", env=env)
    assert result.returncode == 0
    assert "nothing was stored" in result.stdout


def test_key_remove_notes_a_key_still_in_the_environment(env: dict[str, str]) -> None:
    """key remove while MASSUGC_API_KEY is set: says the variable still holds a key."""
    result = cli("key", "remove", env=with_key(env))
    assert result.returncode == 0
    assert "MASSUGC_API_KEY is still set" in result.stdout


def test_send_test_uses_the_key_stored_with_key_set(env: dict[str, str],
                                                    collector: Collector) -> None:
    """key set, then send-test without MASSUGC_API_KEY: the stored key is used."""
    assert cli("key", "set", env=env, stdin=KEY + "\n").returncode == 0
    result = cli("send-test", "--api-url", collector.url, env=env)
    assert result.returncode == 0, result.stderr
    assert len(collector.events()) == 1


def test_serve_exits_within_half_a_second_of_sigterm(env: dict[str, str]) -> None:
    """The collector stops promptly on SIGTERM, even with a keep-alive client connected."""
    import http.client

    proc = subprocess.Popen([*CLI, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    url = proc.stdout.readline().split(" on ")[1].split()[0]
    host, port = url.split("//")[1].split(":")
    client = http.client.HTTPConnection(host, int(port), timeout=5)
    client.request("GET", "/api/stats")
    client.getresponse().read()  # the connection stays open (keep-alive)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    took = time.monotonic() - start
    client.close()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == 0 and took < 0.5
