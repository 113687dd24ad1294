"""A newcomer's first hour with the command line: each message says what is wrong and what to do."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_KEY
from fakeapi import FakeApi

from massugc_logging.cli import main
from massugc_logging.collector import Collector, NotACollectorDatabase
from massugc_logging.config import packaged_config_path
from massugc_logging.contract import API_KEY_PATTERN, LOCAL_COLLECTOR_KEY
from massugc_logging.pipeline.spool import Spool
from massugc_logging.pipeline.transport import TransportError, check_api_url

CLI = [sys.executable, "-m", "massugc_logging.cli"]
REFERENCE_URL_LINE = "api_url: ${MASSUGC_API_URL:-http://127.0.0.1:8765}"


@pytest.fixture(autouse=True)
def _no_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    """No command in this process or its children may read the real OS keyring."""
    monkeypatch.setitem(sys.modules, "keyring", None)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")


def write_config(tmp_path: Path, api_url: str) -> Path:
    """The reference logging.yaml with the development cloud handler's api_url replaced."""
    text = packaged_config_path().read_text(encoding="utf-8")
    assert REFERENCE_URL_LINE in text
    path = tmp_path / "logging.yaml"
    path.write_text(text.replace(REFERENCE_URL_LINE, f'api_url: "{api_url}"', 1),
                    encoding="utf-8")
    return path


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``massugc-logging ARGS`` in a fresh interpreter (this test's isolated environment)."""
    return subprocess.run([*CLI, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture
def serving() -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """``massugc-logging serve --port 0`` running, with its output lines on a queue."""
    with subprocess.Popen([*CLI, "serve", "--port", "0"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True) as proc:
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                lines.put(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            yield proc, lines
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)


def line_with(lines: queue.Queue[str], text: str, timeout: float = 30) -> str:
    """The first output line containing ``text``, waiting at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no line with {text!r} within {timeout} s"
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if text in line:
            return line


# -- 1. a key the local collector accepts ----------------------------------------------


def test_the_local_collector_key_is_well_formed() -> None:
    """The example key is 'massugc_' and 32 allowed characters, as the collector requires."""
    assert LOCAL_COLLECTOR_KEY.startswith("massugc_")
    assert len(LOCAL_COLLECTOR_KEY) == len("massugc_") + 32
    assert API_KEY_PATTERN.fullmatch(LOCAL_COLLECTOR_KEY)


def test_serve_banner_shows_a_key_it_accepts(
        serving: tuple[subprocess.Popen[str], queue.Queue[str]],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """serve says it accepts any well-formed key, and the URL and key it shows deliver."""
    _proc, lines = serving
    line_with(lines, "listening on")
    assert "accepts any well-formed API key" in line_with(lines, "well-formed")
    shown = line_with(lines, "MASSUGC_API_KEY=")
    settings = dict(word.split("=", 1) for word in shown.split() if "=" in word)
    assert settings["MASSUGC_API_KEY"] == LOCAL_COLLECTOR_KEY
    assert settings["MASSUGC_API_URL"].startswith("http://127.0.0.1:")
    monkeypatch.setenv("MASSUGC_API_KEY", settings["MASSUGC_API_KEY"])
    assert main(["send-test", "--api-url", settings["MASSUGC_API_URL"]]) == 0
    assert "Outcome: delivered" in capsys.readouterr().out


def test_init_says_how_to_give_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """init names a key the local collector accepts, and 'key set' for production."""
    assert main(["init", str(tmp_path)]) == 0
    said = capsys.readouterr().out
    assert f"MASSUGC_API_KEY={LOCAL_COLLECTOR_KEY}" in said
    assert "'massugc-logging key set'" in said and "production" in said


def test_check_on_loopback_without_a_key_offers_the_local_collector_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check: no key for a loopback URL says the local collector accepts the example key."""
    config = write_config(tmp_path, "http://127.0.0.1:8765")
    assert main(["check", str(config), "--no-network"]) == 1
    problem = next(x for x in capsys.readouterr().out.splitlines() if "no API key" in x)
    assert "accepts any well-formed key" in problem
    assert f"MASSUGC_API_KEY={LOCAL_COLLECTOR_KEY}" in problem
    assert "'massugc-logging key set'" in problem


def test_check_on_a_remote_api_without_a_key_does_not_offer_the_local_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check: no key for the real API points at 'key set' only, not at the example key."""
    config = write_config(tmp_path, "https://api.example.com")
    assert main(["check", str(config), "--no-network"]) == 1
    problem = next(x for x in capsys.readouterr().out.splitlines() if "no API key" in x)
    assert LOCAL_COLLECTOR_KEY not in problem
    assert "'massugc-logging key set'" in problem


# -- 2. serve --db on something that is not a collector database -------------------------


def test_serve_on_a_file_that_is_not_sqlite_says_so_in_one_line(
        tmp_path: Path) -> None:
    """serve --db on a text file: one plain line naming the file and --db, exit 1."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a database\n", encoding="utf-8")
    result = run_cli("serve", "--port", "0", "--db", str(notes))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("massugc-logging: ")
    assert str(notes) in lines[0] and "not a collector database" in lines[0]
    assert "--db" in lines[0] and "move" in lines[0]
    assert notes.read_text(encoding="utf-8") == "my notes, not a database\n"


def test_serve_with_db_where_no_directory_can_be_made_names_the_db(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """serve --db under a regular file: the database path and --db, not a port problem."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    target = blocker / "sub" / "events.sqlite3"
    assert main(["serve", "--port", "0", "--db", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("massugc-logging: ")
    assert str(target) in err and "--db" in err
    assert "--port" not in err


def test_collector_refuses_another_programs_database_and_leaves_it_alone(
        tmp_path: Path) -> None:
    """A SQLite file of another program (a spool) is refused, without adding a table to it."""
    path = tmp_path / "spool.sqlite3"
    Spool(path).close()
    before = path.read_bytes()
    with pytest.raises(NotACollectorDatabase, match="another program"):
        Collector(path)
    assert path.read_bytes() == before


# -- 3. a CA bundle that does not exist -------------------------------------------------


def test_send_test_with_a_missing_ca_bundle_says_to_fix_the_ca_bundle(
        api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """send-test --ca-bundle MISSING names the bundle and --ca-bundle, not --api-url."""
    monkeypatch.setenv("MASSUGC_API_KEY", TEST_KEY)
    missing = tmp_path / "missing.pem"
    assert main(["send-test", "--api-url", api.url, "--ca-bundle", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "CA bundle" in err and str(missing) in err and "does not exist" in err
    assert "--ca-bundle" in err and "--api-url" not in err
    assert TEST_KEY not in err
    assert api.captured == []


def test_send_test_with_a_missing_requests_ca_bundle_names_the_variable(
        api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A missing REQUESTS_CA_BUNDLE is named as the thing to fix."""
    monkeypatch.setenv("MASSUGC_API_KEY", TEST_KEY)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "gone.pem"))
    assert main(["send-test", "--api-url", api.url]) == 1
    err = capsys.readouterr().err
    assert "REQUESTS_CA_BUNDLE" in err and "does not exist" in err
    assert "--api-url" not in err


def test_spool_replay_with_a_missing_ca_bundle_says_to_fix_the_ca_bundle(
        api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """spool replay --ca-bundle MISSING: the same message as send-test."""
    monkeypatch.setenv("MASSUGC_API_KEY", TEST_KEY)
    spool = tmp_path / "spool.sqlite3"
    Spool(spool).close()
    missing = tmp_path / "missing.pem"
    assert main(["spool", "replay", "--spool", str(spool), "--api-url", api.url,
                 "--ca-bundle", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "CA bundle" in err and str(missing) in err and "--ca-bundle" in err
    assert "--api-url" not in err


def test_check_with_a_missing_ca_bundle_says_to_fix_the_option(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """check --ca-bundle MISSING: a PROBLEM naming the bundle and --ca-bundle."""
    monkeypatch.setenv("MASSUGC_API_KEY", TEST_KEY)
    config = write_config(tmp_path, "http://127.0.0.1:8765")
    missing = tmp_path / "missing.pem"
    assert main(["check", str(config), "--no-network", "--ca-bundle", str(missing)]) == 1
    problem = next(x for x in capsys.readouterr().out.splitlines() if "CA bundle" in x)
    assert problem.startswith("PROBLEM:")
    assert str(missing) in problem and "does not exist" in problem and "--ca-bundle" in problem


# -- 4. an API URL written without a scheme ----------------------------------------------


def no_scheme_message(url: str) -> str:
    with pytest.raises(TransportError) as caught:
        check_api_url(url)
    return str(caught.value)


def test_a_loopback_address_without_scheme_is_told_the_http_url() -> None:
    """'127.0.0.1:8765' has no scheme; write it as http://127.0.0.1:8765."""
    message = no_scheme_message("127.0.0.1:8765")
    assert "no scheme" in message and "'none'" not in message
    assert "http://127.0.0.1:8765" in message


def test_localhost_and_port_is_not_read_as_a_scheme() -> None:
    """'localhost:8765' has no scheme (not scheme 'localhost'); write http://localhost:8765."""
    message = no_scheme_message("localhost:8765")
    assert "no scheme" in message and "'localhost'" not in message
    assert "http://localhost:8765" in message


def test_a_remote_host_without_scheme_is_told_the_https_url() -> None:
    """'api.example.com' has no scheme; write it as https://api.example.com."""
    message = no_scheme_message("api.example.com")
    assert "no scheme" in message and "https://api.example.com" in message


def test_a_url_without_scheme_never_quotes_credentials() -> None:
    """A user name and password in a URL without a scheme are never repeated."""
    message = no_scheme_message("admin:hunter2-secret@api.example.com:8443")
    assert "no scheme" in message and "https://<host>" in message
    assert "hunter2" not in message and "admin" not in message


def test_a_key_pasted_as_the_url_is_never_quoted() -> None:
    """An API key given as the URL is reported as having no scheme, without the key."""
    message = no_scheme_message(TEST_KEY)
    assert "no scheme" in message and TEST_KEY not in message


def test_check_reports_a_url_without_scheme_with_the_url_to_write(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check: api_url 127.0.0.1:8765 is a PROBLEM saying to write http://127.0.0.1:8765."""
    config = write_config(tmp_path, "127.0.0.1:8765")
    assert main(["check", str(config), "--no-network"]) == 1
    problem = next(x for x in capsys.readouterr().out.splitlines() if "api_url" in x)
    assert problem.startswith("PROBLEM:")
    assert "no scheme" in problem and "http://127.0.0.1:8765" in problem
    assert "'none'" not in problem


# -- 5. demo with a development environment whose URL is refused -------------------------


@pytest.mark.parametrize(("api_url", "handler_says"), [
    ("ftp://x", "its scheme is 'ftp'"),
    ("http://api.example.com", "refusing plain http:// to api.example.com"),
], ids=["ftp", "remote-plain-http"])
def test_demo_with_a_refused_url_says_the_handler_cannot_send(
        tmp_path: Path, api_url: str, handler_says: str) -> None:
    """demo: a refused URL is named with the handler's own message, no 30 s wait, exit 1."""
    config = write_config(tmp_path, api_url)
    result = run_cli("demo", "--config", str(config), "--jobs", "3")
    assert result.returncode == 1, result.stderr
    problems = [x for x in result.stderr.splitlines() if x.startswith("massugc-logging: ")]
    assert len(problems) == 1, result.stderr
    assert "URL is refused" in problems[0] and handler_says in problems[0]
    assert "30 s" not in result.stderr
    assert os.fspath(config) in problems[0]
