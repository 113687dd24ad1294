"""CloudHandler end to end against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import logging
import logging.config
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi, free_port

from massugc_logging import CloudHandler
from massugc_logging.contract import validate_event

JOB = {"event_type": "video_generation", "job_name": "Campaign", "product": "Widget",
       "workflow_type": "avatar"}


@pytest.fixture
def make_handler(tmp_path: Path, key: str) -> Iterator[Any]:
    made: list[CloudHandler] = []

    def make(url: str, **kw: Any) -> CloudHandler:
        kw.setdefault("spool_path", tmp_path / "spool.sqlite3")
        kw.setdefault("shutdown_timeout", 3.0)
        handler = CloudHandler(api_url=url, api_key=key, **kw)
        made.append(handler)
        return handler

    yield make
    for h in made:
        h.close()


def jobs_logger(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger("massugc.jobs")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def test_a_failure_arrives_with_the_contract_headers_and_body(api: FakeApi, make_handler: Any,
                                                              key: str) -> None:
    """One logger.error call posts the contract's body with its headers."""
    handler = make_handler(api.url)
    jobs_logger(handler).error("job failed", extra={**JOB, "run_id": "r1",
                                                    "error_message": "bad"})
    assert handler.force_flush(5)
    assert len(api.captured) == 1
    req = api.captured[0]
    assert req.path == "/api/desktop/usage/log"
    assert req.headers["X-API-Key"] == key
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"].startswith("massugc-logging/")
    assert "(" in req.headers["User-Agent"]
    assert len(req.headers["Idempotency-Key"]) == 36
    body = req.json
    assert validate_event(body) == []
    assert body["job_data"]["error_message"] == "bad"
    assert body["job_data"]["run_id"] == "r1"


def test_endpoint_is_configurable_for_older_servers(api: FakeApi, make_handler: Any) -> None:
    """endpoint=/api/desktop/usage posts there."""
    handler = make_handler(api.url, endpoint="/api/desktop/usage")
    jobs_logger(handler).info("ok", extra=JOB)
    assert handler.force_flush(5)
    assert api.captured[0].path == "/api/desktop/usage"


def test_hundred_events_in_hundred_distinct_events_received(api: FakeApi,
                                                            make_handler: Any) -> None:
    """Every event arrives once, each with its own idempotency key."""
    handler = make_handler(api.url)
    log = jobs_logger(handler)
    for i in range(100):
        log.error("job failed", extra={**JOB, "run_id": f"run-{i}"})
    assert handler.force_flush(10)
    assert len(api.captured) == 100
    assert len({c.headers["Idempotency-Key"] for c in api.captured}) == 100
    assert {c.json["job_data"]["run_id"] for c in api.captured} == {f"run-{i}" for i in range(100)}
    stats = handler.stats()
    assert stats["sent"] == 100 and stats["enqueued"] == 100 and stats["pending"] == 0


def test_records_without_the_event_type_are_not_sent(api: FakeApi, make_handler: Any) -> None:
    """Ordinary log records are ignored by the cloud handler."""
    handler = make_handler(api.url)
    log = jobs_logger(handler)
    log.error("plain error")
    log.error("other type", extra={"event_type": "something_else"})
    log.info("job ok", extra=JOB)
    assert handler.force_flush(5)
    assert len(api.captured) == 1
    assert handler.stats()["enqueued"] == 1


def test_emit_never_sends_on_the_calling_thread(api: FakeApi, make_handler: Any) -> None:
    """The request is made from the handler's thread, so a slow server costs the app nothing."""
    api.mode, api.delay = "slow", 0.5
    handler = make_handler(api.url)
    log = jobs_logger(handler)
    start = time.perf_counter()
    for _ in range(20):
        log.error("job failed", extra=JOB)
    assert time.perf_counter() - start < 0.4  # twenty emits vs. one 0.5 s request
    assert api.wait_for_count(1, 5)
    api.delay = 0.0  # the rest go quickly, and close does not wait out slow requests


def test_recursion_safe_with_the_handler_on_root_at_debug(api: FakeApi,
                                                          make_handler: Any) -> None:
    """The package's own records (a warning said from a delivery thread) never re-enter
    the handler, even tagged as events, and nothing deadlocks."""
    api.respond_with(200, raw=b"<html>Sign in to the network</html>",
                     content_type="text/html")  # said once, as a warning, then retried
    handler = make_handler(api.url)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    seen: list[str] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.name)
            # A hostile app handler that tags everything as an event.
            record.event_type = "video_generation"

    root.addHandler(Spy())
    root.handlers.reverse()  # the spy runs first and tags records before CloudHandler sees them
    logging.getLogger("massugc.jobs").error("job failed", extra=JOB)
    assert handler.force_flush(10)
    assert "massugc_logging" in seen, seen
    assert len(api.captured) == 2  # the event, twice: nothing else was sent
    assert len({c.headers["Idempotency-Key"] for c in api.captured}) == 1


def test_close_with_the_server_unreachable_returns_within_shutdown_timeout(
        make_handler: Any) -> None:
    """An unreachable API cannot hold up close()."""
    handler = make_handler(f"http://127.0.0.1:{free_port()}", shutdown_timeout=1.0,
                           timeout=(5, 5))
    log = jobs_logger(handler)
    for i in range(50):
        log.error("job failed", extra={**JOB, "run_id": str(i)})
    start = time.monotonic()
    handler.close()
    assert time.monotonic() - start < 2.0
    assert handler.stats()["spooled"] == 50


def test_close_with_a_server_that_never_replies_returns_within_shutdown_timeout(
        api: FakeApi, make_handler: Any) -> None:
    """Accept-and-never-reply cannot hold up close()."""
    api.mode = "hang"
    handler = make_handler(api.url, shutdown_timeout=1.0, timeout=(5, 30))
    jobs_logger(handler).error("job failed", extra=JOB)
    assert api.wait_for_count(1, 5)
    start = time.monotonic()
    handler.close()
    assert time.monotonic() - start < 2.0


def test_close_twice_and_after_logging_shutdown_is_harmless(api: FakeApi,
                                                            make_handler: Any) -> None:
    """close() is idempotent."""
    handler = make_handler(api.url)
    jobs_logger(handler).error("job failed", extra=JOB)
    handler.close()
    handler.close()
    assert len(api.captured) == 1


def test_dictconfig_from_the_repository_logging_yaml(api: FakeApi, tmp_path: Path,
                                                     key: str, monkeypatch: Any) -> None:
    """The reference logging.yaml configures a working cloud handler."""
    monkeypatch.setenv("MASSUGC_API_URL", api.url)
    monkeypatch.setenv("MASSUGC_API_KEY", key)
    monkeypatch.chdir(tmp_path)
    config_path = Path(__file__).resolve().parent.parent / "logging.yaml"
    from massugc_logging.config import configure

    configure(config_path, env="production",
              environ={"MASSUGC_SPOOL_PATH": str(tmp_path / "s.sqlite3"),
                       "MASSUGC_LOG_DIR": str(tmp_path / "logs")})
    log = logging.getLogger("massugc.jobs")
    log.error("job failed", extra={**JOB, "run_id": "yaml-1", "error_message": "x"})
    cloud = [h for h in log.handlers if isinstance(h, CloudHandler)]
    assert len(cloud) == 1 and cloud[0].force_flush(5)
    assert api.captured[0].json["job_data"]["run_id"] == "yaml-1"
    assert validate_event(api.captured[0].json) == []
    # The JSON-lines file got the record too, as one JSON object per line.
    import json

    lines = (tmp_path / "logs" / "massugc.jsonl").read_text().splitlines()
    assert any(json.loads(line)["message"] == "job failed" for line in lines)


def test_handler_repr_and_stats_never_show_the_key(api: FakeApi, make_handler: Any,
                                                   key: str) -> None:
    """The key is not in repr() or stats()."""
    handler = make_handler(api.url)
    assert key not in repr(handler)
    assert key not in str(handler.stats())
    assert key[8:20] not in repr(handler.__dict__)


def test_emit_is_thread_safe_under_concurrent_app_threads(api: FakeApi,
                                                          make_handler: Any) -> None:
    """Eight app threads logging at once lose nothing."""
    handler = make_handler(api.url)
    log = jobs_logger(handler)

    def work(t: int) -> None:
        for i in range(25):
            log.error("job failed", extra={**JOB, "run_id": f"{t}-{i}"})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert handler.force_flush(10)
    assert len({c.json["job_data"]["run_id"] for c in api.captured}) == 200



def test_an_event_emitted_after_close_is_kept_for_the_next_run(down_api: FakeApi,
                                                               tmp_path: Path, key: str) -> None:
    """After close() there is no thread, but the event still lands in the durable spool."""
    api = down_api
    spool = tmp_path / "spool.sqlite3"
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=spool, shutdown_timeout=0.2)
    log = jobs_logger(handler)
    handler.close()
    log.error("job failed", extra={**JOB, "run_id": "late"})
    assert handler.stats()["spooled"] == 1
    api.come_up()
    successor = CloudHandler(api_url=api.url, api_key=key, spool_path=spool)
    assert successor.force_flush(5)
    assert [c.json["job_data"]["run_id"] for c in api.captured] == ["late"]
    successor.close()


def test_no_thread_is_started_during_interpreter_shutdown(tmp_path: Path, key: str) -> None:
    """A handler created while the interpreter finalizes starts no thread and exits cleanly."""
    import subprocess
    import sys

    code = f"""
import logging, sys, threading
from massugc_logging import CloudHandler

class LateCreator:
    def __del__(self):
        h = CloudHandler(api_url="http://127.0.0.1:9", api_key={key!r},
                         spool_path={str(tmp_path / 's.sqlite3')!r})
        print("threads", threading.active_count(), "finalizing", sys.is_finalizing(),
              flush=True)
        h.close()

keep = LateCreator()
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "finalizing True" in result.stdout, result.stdout + result.stderr
    assert "threads 1 " in result.stdout


@pytest.mark.skipif(sys.version_info < (3, 12), reason="dictConfig QueueHandler needs 3.12+")
def test_stdlib_queue_handler_form_works_on_3_12(api: FakeApi, key: str, tmp_path: Path,
                                                  monkeypatch: Any) -> None:
    """On 3.12+ a stdlib QueueHandler with handlers: [cloud], applied by configure(), delivers."""
    from massugc_logging import configure

    monkeypatch.setenv("MASSUGC_API_KEY", key)
    config = tmp_path / "logging.yaml"
    config.write_text(f"""
version: 1
disable_existing_loggers: false
handlers:
  cloud:
    class: massugc_logging.CloudHandler
    api_url: {api.url}
    spool_path: {tmp_path / "s.sqlite3"}
  queue:
    class: logging.handlers.QueueHandler
    handlers: [cloud]
loggers:
  massugc.jobs: {{handlers: [queue], level: INFO, propagate: false}}
""")
    configure(config)
    try:
        raise ValueError("bad frame")
    except ValueError:
        logging.getLogger("massugc.jobs").exception("job failed", extra=JOB)
    assert api.wait_for_count(1, 10)
    assert api.captured[0].json["job_data"]["error_message"] == "ValueError: bad frame"
    logging.getLogger("massugc.jobs").handlers[0].listener.stop()  # type: ignore[attr-defined]


def test_error_category_is_sent_only_when_opted_in(api: FakeApi, make_handler: Any) -> None:
    """extra_fields: [error_category] adds the classifier's category; the default does not."""
    plain = make_handler(api.url, spool_path=None)
    opted = make_handler(api.url, spool_path=None, extra_fields=["error_category"],
                         classification_rules=[{"category": "storage_upload",
                                                "keywords": ["render farm"]}])
    for handler in (plain, opted):
        log = jobs_logger(handler)
        log.error("job failed", extra={**JOB, "error_message": "ffmpeg: moov atom not found"})
        log.error("job failed", extra={**JOB, "error_message": "render farm unreachable"})
        log.info("job ok", extra=JOB)
        assert handler.force_flush(5)
    plain_jobs = [c.json["job_data"] for c in api.captured[:3]]
    opted_jobs = [c.json["job_data"] for c in api.captured[3:]]
    assert all("error_category" not in j for j in plain_jobs)
    categories = {j.get("error_message"): j.get("error_category") for j in opted_jobs}
    assert categories == {"ffmpeg: moov atom not found": "video_generation",
                          "render farm unreachable": "storage_upload", None: None}
