"""Hostile input never reaches the app as an exception and never loses the event."""

from __future__ import annotations

import datetime
import decimal
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi

from massugc_logging import CloudHandler
from massugc_logging.contract import validate_event


class RaisesOnStr:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class StrRaisingError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def hostile_extras() -> list[dict[str, Any]]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return [
        {"job_name": b"\xff\xfe bytes", "product": Path("/tmp/x"),
         "persona": datetime.date.today()},
        {"hook": decimal.Decimal("1.5"), "setting": {1, 2}, "emotion": math.nan},
        {"brand_name": RaisesOnStr(), "job_name": loop, "language": math.inf},
        {"job_name": "lone \ud800 surrogate", "error_message": "bad \udfff text"},
        {"error_message": "x" * 10_000_000},
        {"success": "yes", "run_id": 42, "output_path": 3.5},
        {},
        {"error_message": RaisesOnStr()},
        {"workflow_type": ["avatar"], "run_id": None},
    ]


def test_hostile_extras_never_raise_and_every_event_arrives(api: FakeApi, tmp_path: Path,
                                                            key: str) -> None:
    """Each hostile record is sent as a valid event; emit returns quickly and quietly."""
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=tmp_path / "s.sqlite3")
    handler.handleError = lambda record: pytest.fail("handleError called")  # type: ignore[method-assign]
    log = logging.getLogger("massugc.jobs")
    log.addHandler(handler)
    log.propagate = False  # pytest's own capture handler raises on the bad format below
    cases = hostile_extras()
    for i, extras in enumerate(cases):
        start = time.perf_counter()
        log.error("job failed", extra={"event_type": "video_generation", **extras,
                                       "run_id": extras.get("run_id", f"h-{i}")})
        assert time.perf_counter() - start < 0.05
    log.error("job %d failed %s", "not-a-number", extra={"event_type": "video_generation"})
    try:
        raise StrRaisingError()
    except StrRaisingError:
        log.exception("job failed", extra={"event_type": "video_generation"})
    assert handler.force_flush(20)
    assert len(api.captured) == len(cases) + 2
    for request in api.captured:
        assert validate_event(request.json) == [], request.json
    biggest = max(len(r.json["job_data"]["error_message"]) for r in api.captured
                  if "error_message" in r.json["job_data"])
    assert biggest <= 4096
    messages = [r.json["job_data"].get("error_message") for r in api.captured]
    assert "StrRaisingError" in messages
    assert handler.stats()["problems"].get("field_warnings", 0) > 0
    handler.close()


def test_a_stripped_record_from_a_stdlib_queue_handler_is_still_sent(api: FakeApi,
                                                                     tmp_path: Path,
                                                                     key: str) -> None:
    """Behind the stdlib QueueHandler recipe, the exception line survives the stripping."""
    import logging.handlers
    import queue

    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=tmp_path / "s.sqlite3")
    q: queue.Queue[logging.LogRecord] = queue.Queue()
    listener = logging.handlers.QueueListener(q, handler)
    listener.start()
    log = logging.getLogger("massugc.jobs")
    log.addHandler(logging.handlers.QueueHandler(q))
    try:
        raise OSError("disk on fire")
    except OSError:
        log.exception("job failed", extra={"event_type": "video_generation", "run_id": "q1"})
    listener.stop()
    assert handler.force_flush(5)
    assert api.captured[0].json["job_data"]["error_message"] == "OSError: disk on fire"
    handler.close()


def test_emit_swallows_its_own_failures(tmp_path: Path, key: str) -> None:
    """Even a broken queue cannot make emit raise into app code."""
    handler = CloudHandler(api_url="http://127.0.0.1:9", api_key=key,
                           spool_path=tmp_path / "s.sqlite3")

    class Broken:
        def accept(self, item: Any) -> bool:
            raise RuntimeError("boom")

    real = handler._pipeline.intake
    handler._pipeline.intake = Broken()  # type: ignore[assignment]
    record = logging.LogRecord("massugc.jobs", logging.ERROR, __file__, 1, "x", None,
                               sys.exc_info())
    record.event_type = "video_generation"
    handler.handle(record)
    handler._pipeline.intake = real
    assert handler.stats()["dropped"]["internal_error"] == 1
    handler.close()
