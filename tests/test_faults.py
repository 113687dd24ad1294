"""Delivery under a misbehaving API: storms, rate limits, rejections and a refused key."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi, wait_until

from massugc_logging import CloudHandler

JOB = {"event_type": "video_generation", "error_message": "x"}
FAST = {"backoff_base": 0.01, "backoff_cap": 0.05, "circuit_threshold": 50}


@pytest.fixture
def handler_for(tmp_path: Path, key: str) -> Iterator[Any]:
    made: list[CloudHandler] = []

    def make(api: FakeApi, **kw: Any) -> CloudHandler:
        kw.setdefault("retry", FAST)
        handler = CloudHandler(api_url=api.url, api_key=key,
                               spool_path=tmp_path / "s.sqlite3", **kw)
        log = logging.getLogger("massugc.jobs")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        made.append(handler)
        return handler

    yield make
    for h in made:
        h.close()


def emit(n: int, prefix: str = "r") -> None:
    for i in range(n):
        logging.getLogger("massugc.jobs").error("job failed",
                                                extra={**JOB, "run_id": f"{prefix}-{i}"})


#: A retry budget that time refills at once: for tests of the storm, not of the budget.
UNBUDGETED = {**FAST, "retry_budget_per_second": 1_000_000.0}


def test_503_storm_then_recovery_loses_nothing(api: FakeApi, handler_for: Any) -> None:
    """Twenty 503s in a row, then recovery: every event arrives."""
    api.respond_with(503, {"error": "unavailable", "message": "down"}, times=20)
    handler = handler_for(api, retry=UNBUDGETED)
    emit(30)
    assert handler.force_flush(20)
    delivered = {c.json["job_data"]["run_id"] for c in api.captured[20:]}
    assert delivered == {f"r-{i}" for i in range(30)}
    assert handler.stats()["retried"] == 20


def test_only_one_request_is_in_flight_while_the_api_fails(api: FakeApi,
                                                           handler_for: Any) -> None:
    """While requests fail, one is in flight at a time; each failed event is retried later
    while the others go on, and every event arrives exactly once."""
    api.respond_with(503, times=5)
    handler = handler_for(api, retry=UNBUDGETED)
    emit(50)
    assert handler.force_flush(20)
    assert all(c.concurrency == 1 for c in api.captured[:6])
    assert len(api.captured) == 55
    delivered = [c.json["job_data"]["run_id"] for c in api.captured if c.status == 200]
    assert sorted(delivered) == sorted(f"r-{i}" for i in range(50))


def test_503s_with_no_success_spend_the_retry_budget_then_sending_pauses(
        api: FakeApi, handler_for: Any) -> None:
    """With the default budget: the first 503 is retried at once, the next ones wait
    (2 to 4 probe intervals, then 8 to 16), and every event still arrives once.

    The probe interval is a tenth of its default (the default's 2 to 4 s and 8 to 16 s
    are the decision tests'), so that the pauses are real but short."""
    api.respond_with(503, {"error": "unavailable", "message": "busy"}, times=3)
    step = 0.1
    handler = handler_for(api, retry={"probe_interval": step})
    emit(5)
    assert handler.force_flush(10), handler.stats()
    at = [c.at for c in api.captured]
    assert at[1] - at[0] < 1.5 * step  # the one token: at once
    assert 2 * step <= at[2] - at[1] <= 4.5 * step  # one token owed
    assert 8 * step <= at[3] - at[2] <= 16.5 * step  # two owed
    delivered = [c.json["job_data"]["run_id"] for c in api.captured if c.status == 200]
    assert sorted(delivered) == [f"r-{i}" for i in range(5)]


def test_429_with_retry_after_is_honoured(api: FakeApi, handler_for: Any) -> None:
    """After 429 with Retry-After: 2, no request comes within those 2 seconds."""
    api.respond_with(429, {"error": "rate_limited", "message": "slow down"},
                     headers={"Retry-After": "2"})
    handler = handler_for(api)
    emit(3)
    assert api.wait_for_count(1, 5)
    assert handler.force_flush(10)
    first, second = api.captured[0].at, api.captured[1].at
    assert second - first >= 2.0
    assert len(api.captured) == 4


def test_422_is_sent_once_dead_lettered_and_never_retried(api: FakeApi, handler_for: Any,
                                                          caplog: Any) -> None:
    """A permanent rejection is not retried; it is kept as dead-lettered and said once."""
    caplog.set_level(logging.ERROR, logger="massugc_logging")
    api.respond_with(422, {"error": "validation_error", "message": "run_id: bad"})
    handler = handler_for(api)
    emit(1, "rejected")
    assert not handler.force_flush(5)  # settled, but not delivered: flush says so
    emit(1, "accepted")
    assert handler.force_flush(5)
    runs = [c.json["job_data"]["run_id"] for c in api.captured]
    assert runs == ["rejected-0", "accepted-0"]
    stats = handler.stats()
    assert stats["dead_lettered"] == 1 and stats["pending"] == 0
    (dead,) = handler._pipeline.outbox.dead_letters()
    assert dead.status == 422 and "run_id: bad" in dead.reason
    lines = [r.getMessage() for r in caplog.records if "rejected an event" in r.getMessage()]
    assert len(lines) == 1 and "422" in lines[0]


def test_401_pauses_sending_keeps_events_and_says_so_once(api: FakeApi, handler_for: Any,
                                                          caplog: Any, key: str) -> None:
    """A refused key pauses delivery, keeps every event, and names no key."""
    caplog.set_level(logging.ERROR, logger="massugc_logging")
    api.default.status = 401
    api.default.body = {"error": "invalid_api_key", "message": "Invalid API key"}
    handler = handler_for(api, retry={**FAST, "auth_pause": 60})
    emit(5)
    assert api.wait_for_count(1, 5)
    assert not handler.force_flush(1)
    assert len(api.captured) == 1
    assert handler.stats()["pending"] == 5
    lines = [r.getMessage() for r in caplog.records if "refused the API key" in r.getMessage()]
    assert len(lines) == 1
    assert key not in lines[0] and key[8:] not in caplog.text
    # A new key resumes delivery of everything kept.
    api.default.status = 200
    handler.set_api_key(key)
    assert handler.force_flush(5)
    assert {c.json["job_data"]["run_id"] for c in api.captured[1:]} == {f"r-{i}" for i in range(5)}


def test_circuit_opens_after_repeated_failures_and_stops_trying(api: FakeApi,
                                                                handler_for: Any) -> None:
    """After circuit_threshold failures there are no more requests during the cool-down."""
    api.default.status = 503
    handler = handler_for(api, retry={"backoff_base": 0.01, "backoff_cap": 0.02,
                                      "circuit_threshold": 3, "circuit_cooldown": 30})
    emit(10)
    assert api.wait_for_count(3, 5)
    time.sleep(0.5)  # a window in which a storm would show; the assertion is the count
    assert len(api.captured) == 3
    assert handler.stats()["state"] == "circuit_open"
    assert handler.stats()["pending"] == 10


def test_idle_handler_makes_no_requests_and_wakes_on_an_event(api: FakeApi,
                                                              handler_for: Any) -> None:
    """No polling: nothing is sent while idle, and an event is sent at once."""
    handler = handler_for(api)
    assert not api.wait_for_count(1, 0.3)
    emit(1)
    assert api.wait_for_count(1, 5)
    assert handler.force_flush(2)


def test_several_requests_in_flight_while_healthy_one_while_failing(api: FakeApi,
                                                                   handler_for: Any) -> None:
    """A healthy API gets max_in_flight requests at once; a failing one, one at a time."""
    api.mode, api.delay = "slow", 0.05
    handler = handler_for(api, max_in_flight=4)
    emit(40, "healthy")
    start = time.monotonic()
    assert handler.force_flush(20)
    assert max(c.concurrency for c in api.captured) == 4
    assert time.monotonic() - start < 40 * 0.05 / 2  # well under one at a time
    healthy = len(api.captured)
    api.respond_with(503, times=8)
    emit(20, "outage")
    assert handler.force_flush(20)
    during = api.captured[healthy:]
    failed = [c for c in during if c.status == 503]
    assert len(failed) == 8
    first_reply = min(c.replied_at for c in failed if c.replied_at is not None)
    last_reply = max(c.replied_at for c in failed if c.replied_at is not None)
    # Once the first 503 reached the handler, every request until the outage ended went
    # alone (30 ms of grace for requests already on their way when it was answered).
    probing = [c for c in during if first_reply + 0.03 < c.at <= last_reply]
    assert probing and all(c.concurrency == 1 for c in probing)
    assert {c.json["job_data"]["run_id"] for c in api.captured} >= {
        f"outage-{i}" for i in range(20)}


def test_max_in_flight_one_sends_strictly_one_at_a_time(api: FakeApi, handler_for: Any) -> None:
    """max_in_flight=1 never overlaps requests."""
    api.mode, api.delay = "slow", 0.01
    handler = handler_for(api, max_in_flight=1)
    emit(20)
    assert handler.force_flush(10)
    assert max(c.concurrency for c in api.captured) == 1


def test_a_flaky_api_delivers_everything_once_without_pausing(api: FakeApi, tmp_path: Path,
                                                              key: str, caplog: Any) -> None:
    """Every third request 503: all 300 events arrive exactly once, within seconds, and
    sending never pauses as if the API were down."""
    caplog.set_level(logging.WARNING, logger="massugc_logging")
    api.fail_every = 3
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=tmp_path / "s.sqlite3")
    logging.getLogger("massugc.jobs").addHandler(handler)
    start = time.monotonic()
    emit(300)
    assert handler.force_flush(30), handler.stats()
    took = time.monotonic() - start
    delivered = [c.json["job_data"]["run_id"] for c in api.captured if c.status == 200]
    assert sorted(delivered) == sorted(f"r-{i}" for i in range(300))
    assert took < 10.0
    assert "cannot deliver" not in caplog.text
    handler.close()


def test_after_a_short_outage_delivery_resumes_within_seconds(down_api: FakeApi,
                                                              tmp_path: Path,
                                                              key: str) -> None:
    """Connections refused for 3 s, then the API is up: the circuit opens, and the first
    event after recovery arrives within a few seconds, not after a two-minute cool-down."""
    api = down_api
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=tmp_path / "s.sqlite3")
    logging.getLogger("massugc.jobs").addHandler(handler)
    started = time.monotonic()
    emit(20)
    assert wait_until(lambda: handler.stats()["state"] == "circuit_open", 5)
    time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))  # the outage lasts 3 s
    recovered = time.monotonic()
    api.come_up()
    assert handler.force_flush(20), handler.stats()
    first_ok = min(c.at for c in api.captured if c.status == 200)
    assert first_ok - recovered < 6.0
    assert len(api.captured) == 20  # nothing reached it while it was down
    handler.close()
