"""What the API really says and what desktops really do: a 200 that is not the API's, a
route that moved, the API's own 403 codes, a deleted or locked spool, a clock set back, the
values apps pass. Each ends with every event delivered once, or kept and said once."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi, wait_until

from massugc_logging import CloudHandler
from massugc_logging.pipeline.spool import Spool

KEY = "massugc_" + "Ab3_dEf-9" * 3 + "Zq1x9"
OTHER_KEY = "massugc_" + "Q" * 31 + "9"
FAILURE = {"event_type": "video_generation", "error_message": "render failed"}
SUCCESS = {"event_type": "video_generation", "output_path": "out.mp4"}
PORTAL = (b"<!DOCTYPE html><html><head><title>Sign in to Guest Wi-Fi</title></head>"
          b"<body><form action='/login'>...</form></body></html>")


def handler_for(api: FakeApi, tmp_path: Path, jobs: logging.Logger, **kw: Any) -> CloudHandler:
    kw.setdefault("spool_path", tmp_path / "spool.sqlite3")
    kw.setdefault("api_key", KEY)
    handler = CloudHandler(api_url=api.url, **kw)
    jobs.addHandler(handler)
    return handler


def received(api: FakeApi, status: int = 200) -> list[str]:
    return sorted(c.json["job_data"]["run_id"] for c in api.captured if c.status == status)


def said(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


# -- only the API's answer counts as a delivery -------------------------------------------


def test_a_captive_portals_html_200_is_not_a_delivery(
        api: FakeApi, tmp_path: Path, jobs: logging.Logger,
        caplog: pytest.LogCaptureFixture) -> None:
    """Three events meet a sign-in page answering 200 text/html: none counts as sent, each
    is sent again and delivered once the API itself answers, and it is said once."""
    caplog.set_level(logging.WARNING, logger="massugc_logging")
    api.respond_with(200, raw=PORTAL, content_type="text/html; charset=utf-8", times=3)
    handler = handler_for(api, tmp_path, jobs, max_in_flight=1)
    for i in range(3):
        jobs.error("job failed", extra={**FAILURE, "run_id": f"portal-{i}"})
    assert handler.force_flush(10)
    assert len(api.captured) == 6
    assert sorted(c.json["job_data"]["run_id"] for c in api.captured
                  if c.status == 200 and c.replied_at and c in api.captured[3:]) == [
        "portal-0", "portal-1", "portal-2"]
    stats = handler.stats()
    assert stats["sent"] == 3 and stats["retried"] == 3
    assert said(caplog, "an HTML page answered for the API") == 1
    handler.close()


def test_a_200_whose_body_is_neither_json_nor_empty_is_retried(
        api: FakeApi, tmp_path: Path, jobs: logging.Logger) -> None:
    """A proxy's plain-text 200 is not the API's answer either: the event is sent again."""
    api.respond_with(200, raw=b"OK from the proxy", content_type="text/plain")
    handler = handler_for(api, tmp_path, jobs)
    jobs.error("job failed", extra={**FAILURE, "run_id": "text"})
    assert handler.force_flush(10)
    assert [c.json["job_data"]["run_id"] for c in api.captured] == ["text", "text"]
    assert handler.stats()["retried"] == 1
    handler.close()


@pytest.mark.parametrize("status", [200, 204])
def test_an_empty_2xx_still_counts_as_delivered(api: FakeApi, tmp_path: Path,
                                                jobs: logging.Logger, status: int) -> None:
    """An empty 200 or a 204 is the API accepting the event: sent once."""
    api.respond_with(status)
    handler = handler_for(api, tmp_path, jobs)
    jobs.error("job failed", extra={**FAILURE, "run_id": "empty"})
    assert handler.force_flush(10)
    assert len(api.captured) == 1 and handler.stats()["sent"] == 1
    handler.close()


def test_a_200_whose_json_code_is_not_0_is_the_api_refusing_the_event(
        api: FakeApi, tmp_path: Path, jobs: logging.Logger,
        caplog: pytest.LogCaptureFixture) -> None:
    """{"code": 1, "message": "invalid payload"}: dead-lettered with the API's message,
    said once; the events after it are delivered."""
    caplog.set_level(logging.WARNING, logger="massugc_logging")
    api.respond_with(200, {"code": 1, "message": "invalid payload"}, times=2)
    handler = handler_for(api, tmp_path, jobs, max_in_flight=1)
    for i in range(3):
        jobs.error("job failed", extra={**FAILURE, "run_id": f"refused-{i}"})
    assert not handler.force_flush(10)  # two were lost for good, and flush says so
    stats = handler.stats()
    assert stats["dead_lettered"] == 2 and stats["sent"] == 1
    assert said(caplog, "invalid payload") == 1
    kept = Spool(tmp_path / "spool.sqlite3")
    dead = kept.dead_letters()
    kept.close()
    assert ["invalid payload" in d.reason for d in dead] == [True, True]
    handler.close()


# -- a route is not an event --------------------------------------------------------------


def test_a_moved_route_is_found_remembered_and_nothing_is_dead_lettered(
        api: FakeApi, tmp_path: Path, jobs: logging.Logger) -> None:
    """/api/desktop/usage/log answers 404, /api/desktop/usage works: every event arrives,
    none is dead-lettered, and the next run goes straight to the route that answered."""
    api.missing_paths.add("/api/desktop/usage/log")
    handler = handler_for(api, tmp_path, jobs)
    for i in range(5):
        jobs.error("job failed", extra={**FAILURE, "run_id": f"moved-{i}"})
    assert handler.force_flush(10)
    assert received(api) == [f"moved-{i}" for i in range(5)]
    assert handler.stats()["dead_lettered"] == 0
    handler.close()
    jobs.removeHandler(handler)
    api.captured.clear()
    again = handler_for(api, tmp_path, jobs)
    jobs.error("job failed", extra={**FAILURE, "run_id": "next-run"})
    assert again.force_flush(10)
    assert [c.path for c in api.captured] == ["/api/desktop/usage"]
    again.close()


def test_when_no_route_answers_every_event_is_held_and_it_is_said_once(
        api: FakeApi, tmp_path: Path, jobs: logging.Logger,
        caplog: pytest.LogCaptureFixture) -> None:
    """Both known paths answer 404: nothing is dead-lettered, sending is held at the
    circuit's slow pace, and one error names the paths tried."""
    caplog.set_level(logging.WARNING, logger="massugc_logging")
    api.missing_paths.update({"/api/desktop/usage/log", "/api/desktop/usage"})
    handler = handler_for(api, tmp_path, jobs)
    for i in range(10):
        jobs.error("job failed", extra={**FAILURE, "run_id": f"lost-{i}"})
    assert wait_until(lambda: handler.stats()["state"] == "circuit_open", 10)
    time.sleep(1.5)  # let the slow probing show: a handful of requests, not hundreds
    stats = handler.stats()
    assert stats["dead_lettered"] == 0 and stats["pending"] == 10
    assert len(api.captured) <= 8
    assert said(caplog, "/api/desktop/usage/log, /api/desktop/usage") == 1
    api.missing_paths.clear()
    handler.close()


# -- the API's own 403s ---------------------------------------------------------------------


def test_device_mismatch_holds_all_sending_until_the_key_changes(
        api: FakeApi, tmp_path: Path, jobs: logging.Logger,
        caplog: pytest.LogCaptureFixture) -> None:
    """403 device_mismatch: every event held, one line that says what the user can do;
    a new key resumes sending at once."""
    caplog.set_level(logging.WARNING, logger="massugc_logging")
    api.respond_with(403, {"error": "device_mismatch", "message": "key bound to another "
                                                                  "device"})
    handler = handler_for(api, tmp_path, jobs)
    jobs.error("job failed", extra={**FAILURE, "run_id": "dm-1"})
    assert wait_until(lambda: handler.stats()["state"] == "device_mismatch", 10)
    jobs.error("job failed", extra={**FAILURE, "run_id": "dm-2"})
    time.sleep(0.3)
    assert len(api.captured) == 1
    assert said(caplog, "in use on another device") == 1
    handler.set_api_key(OTHER_KEY)
    assert handler.force_flush(10)
    assert received(api) == ["dm-1", "dm-2"]
    handler.close()


def test_insufficient_credits_holds_only_the_successes(
        api: FakeApi, tmp_path: Path, jobs: logging.Logger,
        caplog: pytest.LogCaptureFixture) -> None:
    """403 insufficient_credits on a success: later successes wait, failures (which cost
    no credits) keep flowing; stats name the hold; a new key releases it."""
    caplog.set_level(logging.WARNING, logger="massugc_logging")
    api.respond_with(403, {"error": "insufficient_credits", "message": "no credits left"})
    handler = handler_for(api, tmp_path, jobs, max_in_flight=1)
    jobs.info("job succeeded", extra={**SUCCESS, "run_id": "s-1"})
    assert wait_until(lambda: "insufficient_credits" in handler.stats()["holds"], 10)
    jobs.info("job succeeded", extra={**SUCCESS, "run_id": "s-2"})
    for i in range(3):
        jobs.error("job failed", extra={**FAILURE, "run_id": f"f-{i}"})
    assert api.wait_for(lambda c: sum(x.status == 200 for x in c) >= 3, 10)
    time.sleep(0.3)
    assert received(api) == ["f-0", "f-1", "f-2"]
    assert said(caplog, "no credits left") == 1
    handler.set_api_key(OTHER_KEY)
    assert handler.force_flush(10)
    assert received(api) == ["f-0", "f-1", "f-2", "s-1", "s-2"]
    handler.close()


# -- values that apps pass -----------------------------------------------------------------


def test_a_uuid_run_id_keeps_its_identity_and_its_idempotency_key(
        api: FakeApi, tmp_path: Path, jobs: logging.Logger) -> None:
    """run_id=uuid.UUID: sent as its text, and the same report twice has one key."""
    run_id = uuid.uuid4()
    handler = handler_for(api, tmp_path, jobs)
    jobs.error("job failed", extra={**FAILURE, "run_id": run_id})
    jobs.error("job failed", extra={**FAILURE, "run_id": run_id})
    assert handler.force_flush(10)
    assert [c.json["job_data"]["run_id"] for c in api.captured] == [str(run_id)] * 2
    assert len({c.headers["Idempotency-Key"] for c in api.captured}) == 1
    handler.close()


# -- the spool, as desktops treat it ----------------------------------------------------------


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def test_a_spool_directory_deleted_while_the_app_runs_loses_nothing(
        down_api: FakeApi, tmp_path: Path) -> None:
    """A cleaner deletes the spool's directory mid-run: the events kept before and the 5
    logged after reach the API in the next run, and the deletion is said once."""
    spool_dir = tmp_path / "data"
    result = run_python(f"""
        import logging, shutil, time
        from massugc_logging import CloudHandler
        handler = CloudHandler(api_url="{down_api.url}", api_key="{KEY}",
                               spool_path={str(spool_dir / "spool.sqlite3")!r},
                               shutdown_timeout=1)
        log = logging.getLogger("massugc.jobs")
        log.addHandler(handler)
        log.propagate = False
        logging.getLogger("massugc_logging").addHandler(logging.StreamHandler())
        job = {{"event_type": "video_generation", "error_message": "x"}}
        for i in range(3):
            log.error("job failed", extra={{**job, "run_id": f"before-{{i}}"}})
        handler.force_flush(0.5)
        shutil.rmtree({str(spool_dir)!r})
        for i in range(5):
            log.error("job failed", extra={{**job, "run_id": f"after-{{i}}"}})
            time.sleep(0.3)  # the file is recreated at the next try, a second later
        handler.force_flush(2)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("deleted, moved or replaced") == 1, result.stderr
    down_api.come_up()
    handler = CloudHandler(api_url=down_api.url, api_key=KEY,
                           spool_path=spool_dir / "spool.sqlite3")
    assert handler.force_flush(10)
    handler.close()
    expected = [f"after-{i}" for i in range(5)] + [f"before-{i}" for i in range(3)]
    assert received(down_api) == sorted(expected)


def test_a_spool_locked_by_another_program_never_stretches_exit_or_blocks_emit(
        down_api: FakeApi, tmp_path: Path) -> None:
    """Another program holds the spool's write lock for the whole run: exit stays within
    shutdown_timeout + 1 s, and after close() a logging call returns at once."""
    path = tmp_path / "spool.sqlite3"
    Spool(path).close()
    locker = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
         "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        result = run_python(f"""
            import logging, time
            from massugc_logging import CloudHandler
            handler = CloudHandler(api_url="{down_api.url}", api_key="{KEY}",
                                   spool_path={str(path)!r}, shutdown_timeout=2)
            log = logging.getLogger("massugc.jobs")
            log.addHandler(handler)
            log.propagate = False
            for i in range(50):
                log.error("job failed", extra={{"event_type": "video_generation",
                                               "run_id": f"r{{i}}", "error_message": "x"}})
            start = time.monotonic()
            logging.shutdown()
            print("exit", time.monotonic() - start)
            start = time.monotonic()
            log.error("job failed", extra={{"event_type": "video_generation",
                                           "run_id": "late", "error_message": "x"}})
            print("late", time.monotonic() - start, handler.stats()["dropped"].get("closed"))
        """)
    finally:
        locker.kill()
        locker.communicate()
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert float(lines["exit"]) <= 2 + 1
    late, dropped = lines["late"].split()
    assert float(late) < 0.05 and dropped == "1"


def test_while_another_program_locks_the_spool_events_wait_bounded_and_counted(
        api: FakeApi, tmp_path: Path) -> None:
    """A backup holds the spool's write lock: logged events wait in the handler's queue
    (at most queue_size of them, the rest dropped and counted), nothing goes elsewhere;
    once the lock goes they are written and delivered, each counted once."""
    import sqlite3

    path = tmp_path / "spool.sqlite3"
    Spool(path).close()
    handler = CloudHandler(api_url=api.url, api_key=KEY, spool_path=path, queue_size=5)
    log = logging.getLogger("massugc.jobs.locked")
    log.addHandler(handler)
    log.propagate = False
    assert handler.force_flush(5)  # started
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        for i in range(20):
            log.error("job failed", extra={"event_type": "video_generation",
                                           "run_id": f"r{i}", "error_message": "x"})
        assert wait_until(lambda: handler.stats()["problems"].get("spool_busy") == 1, 5)
        stats = handler.stats()
        dropped = stats["dropped"].get("queue_full", 0)
        # The queue holds 5, and the intake holds the one batch it could not write: what
        # was queued when it took it, at most 5 more (10 was seen on a busy machine).
        assert dropped >= 20 - 5 - 5
        assert stats["pending"] == 20 - dropped and not stats["spool_in_memory"]
        assert api.captured == []
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert api.wait_for_count(20 - dropped, 10)
    assert len(set(received(api))) == 20 - dropped
    assert handler.stats()["spooled"] == 20 - dropped
    handler.close()
    log.removeHandler(handler)


def test_a_wall_clock_set_back_an_hour_never_stalls_delivery(down_api: FakeApi,
                                                             tmp_path: Path) -> None:
    """The clock goes back an hour while the API is down (NTP, a laptop waking): once the
    API is back, the kept events and new ones are delivered at once."""
    code = textwrap.dedent(f"""
        import logging, sys, time
        real = time.time
        offset = [0.0]
        time.time = lambda: real() - offset[0]
        from massugc_logging import CloudHandler
        handler = CloudHandler(api_url="{down_api.url}", api_key="{KEY}",
                               spool_path={str(tmp_path / "spool.sqlite3")!r})
        log = logging.getLogger("massugc.jobs")
        log.addHandler(handler)
        log.propagate = False
        job = {{"event_type": "video_generation", "error_message": "x"}}
        for i in range(3):
            log.error("job failed", extra={{**job, "run_id": f"old-{{i}}"}})
        deadline = real() + 10
        while handler.stats()["state"] != "circuit_open" and real() < deadline:
            time.sleep(0.01)
        offset[0] = 3600.0
        print("set back", flush=True)
        sys.stdin.readline()
        for i in range(2):
            log.error("job failed", extra={{**job, "run_id": f"new-{{i}}"}})
        print("flushed", handler.force_flush(20), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "set back"
    down_api.come_up()
    started = time.monotonic()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=60)
    assert "flushed True" in out, err
    assert time.monotonic() - started < 10
    assert received(down_api) == ["new-0", "new-1", "old-0", "old-1", "old-2"]


def test_the_spool_is_bounded_in_bytes_oldest_first(tmp_path: Path) -> None:
    """spool_max_bytes: past it, the oldest events go first, and are counted."""
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, destination="d", max_bytes=256 * 1024)
    body = b"x" * 4096
    dropped = 0
    for i in range(200):
        dropped += spool.add([(f"e{i}", body, 1000.0 + i)], 1000.0).dropped_full
    kept = [e.event_id for e in spool.pending()]
    spool.close()
    assert dropped > 100 and len(kept) == 200 - dropped
    assert kept == [f"e{i}" for i in range(dropped, 200)]
    shutil.rmtree(tmp_path / "nothing", ignore_errors=True)


# -- the key's own value, in any common encoding ---------------------------------------------


def key_leaks(text: str) -> list[str]:
    """The forms of the key found in ``text`` (any 16-character run of its secret part, its
    base64 or its hex)."""
    import base64

    body = KEY[len("massugc_"):]
    forms = {"body": body, "base64": base64.b64encode(KEY.encode()).decode().rstrip("="),
             "hex": KEY.encode().hex()}
    flat = "".join(text.split()).lower()
    return [name for name, form in forms.items()
            if any(form[i:i + 16].lower() in flat for i in range(len(form) - 15))]


def test_the_key_is_scrubbed_from_events_in_any_common_encoding(
        api: FakeApi, tmp_path: Path, jobs: logging.Logger) -> None:
    """The key base64-encoded (the app's key-file form), wrapped across two lines, as hex,
    or cut short to 20 of its characters, in an error text: none of it leaves."""
    import base64

    secret_forms = [
        f"key file holds {base64.b64encode(KEY.encode()).decode()}",
        f"header was X:\n  {KEY[:20]}\n  {KEY[20:]}",
        f"debug dump {KEY.encode().hex()}",
        f"truncated {KEY[10:30]}...",
    ]
    handler = handler_for(api, tmp_path, jobs)
    for i, text in enumerate(secret_forms):
        jobs.error("job failed", extra={"event_type": "video_generation",
                                         "run_id": f"k{i}", "error_message": text})
    assert handler.force_flush(10)
    handler.close()
    for captured in api.captured:
        assert key_leaks(captured.raw.decode()) == [], captured.json["job_data"]
        assert "[REDACTED]" in captured.json["job_data"]["error_message"]


def test_the_direct_client_scrubs_its_key_in_any_encoding_too(api: FakeApi) -> None:
    """UsageClient knows the key it sends: its base64 is scrubbed from a hand-built payload."""
    import base64

    from massugc_logging import UsageClient

    client = UsageClient(api.url, KEY)
    client.log_usage_data({"event_type": "video_generation", "job_data": {
        "run_id": "c1", "success": False,
        "error_message": "saved " + base64.b64encode(KEY.encode()).decode()}})
    client.close()
    assert key_leaks(api.captured[0].raw.decode()) == []


def test_a_server_echoing_the_encoded_key_never_gets_it_into_a_log_line(
        api: FakeApi, tmp_path: Path, jobs: logging.Logger,
        caplog: pytest.LogCaptureFixture) -> None:
    """An error answer quoting the key's base64: the reason logged and kept has none of it."""
    import base64

    caplog.set_level(logging.DEBUG, logger="massugc_logging")
    echoed = base64.b64encode(KEY.encode()).decode()
    api.respond_with(422, {"error": "validation_error", "message": f"bad key {echoed}"})
    handler = handler_for(api, tmp_path, jobs)
    jobs.error("job failed", extra={**FAILURE, "run_id": "echo"})
    handler.force_flush(10)
    handler.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "validation_error" in logged
    assert key_leaks(logged) == []
    kept = Spool(tmp_path / "spool.sqlite3")
    dead = kept.dead_letters()
    kept.close()
    assert key_leaks(dead[0].reason) == []


def test_check_and_stats_show_which_hold_is_in_force(api: FakeApi, tmp_path: Path,
                                                     jobs: logging.Logger) -> None:
    """After a device_mismatch: stats() says so, and so does 'check', from the spool."""
    from massugc_logging.checks import check_configuration

    api.respond_with(403, {"error": "device_mismatch", "message": "bound elsewhere"})
    spool = tmp_path / "spool.sqlite3"
    handler = handler_for(api, tmp_path, jobs, spool_path=spool)
    jobs.error("job failed", extra={**FAILURE, "run_id": "held"})
    assert wait_until(lambda: handler.stats()["state"] == "device_mismatch", 10)
    handler.close()
    config = tmp_path / "logging.yaml"
    config.write_text(f"version: 1\nhandlers:\n  cloud:\n    class: massugc_logging.CloudHandler"
                      f"\n    api_url: {api.url}\n    spool_path: {spool}\n"
                      "root:\n  handlers: [cloud]\n", encoding="utf-8")
    report = check_configuration(config, probe=False)
    assert any("sending is held: device_mismatch" in note for note in report.notes), report
