"""The pipeline's lifecycle, stage by stage: made, started by its first event, writing
ahead, delivering, backing off and resuming, flushing, shutting down. Driven with a
fake clock and a scripted API: no socket is opened and nothing sleeps (every wait is
on a condition, with a deadline)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from massugc_logging.outcome import Outcome, OutcomeKind
from massugc_logging.payload_config import payload_settings
from massugc_logging.pipeline.lifecycle import Pipeline, PipelineConfig
from massugc_logging.pipeline.retry import RetryPolicy
from massugc_logging.pipeline.spool import Spool, SpooledEvent

KEY = "massugc_" + "Ab3_dEf-9" * 3 + "Zq1x9"
API = "http://127.0.0.1:9"  # never connected to: the scripted API answers
OK = Outcome(OutcomeKind.DELIVERED, 200)
UNAVAILABLE = Outcome(OutcomeKind.TRANSIENT, 503, reason="unavailable")


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class ScriptedApi:
    """Answers each request with the next scripted outcome, then OK."""

    def __init__(self) -> None:
        self.script: list[Outcome] = []
        self.requests: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, event: SpooledEvent) -> Outcome:
        with self._lock:
            self.requests.append(event.event_id)
            return self.script.pop(0) if self.script else OK


def record(run_id: str) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "massugc.jobs", "levelno": logging.ERROR,
                                  "levelname": "ERROR", "msg": "job failed",
                                  "event_type": "video_generation", "run_id": run_id,
                                  "error_message": "render failed"})


def soon(seconds: float = 10.0) -> float:
    """A deadline for waiting on the pipeline's threads (real time)."""
    return time.monotonic() + seconds


@pytest.fixture
def api() -> ScriptedApi:
    return ScriptedApi()


@pytest.fixture
def clocks() -> tuple[Clock, Clock]:
    return Clock(1000.0), Clock(1_800_000_000.0)


@pytest.fixture
def pipeline(tmp_path: Path, api: ScriptedApi,
             clocks: tuple[Clock, Clock]) -> Iterator[Pipeline]:
    clock, wall = clocks
    config = PipelineConfig(
        api_url=API, endpoint="/api/desktop/usage/log", api_key=KEY,
        spool_path=tmp_path / "spool.sqlite3", timeout=(1.0, 1.0),
        settings=lambda secrets: payload_settings(known_secrets=secrets),
        # A first retry 30 s out on the fake clock: nothing is due until the test says.
        policy=RetryPolicy(backoff_base=30.0, backoff_cap=30.0), max_in_flight=2)
    made = Pipeline(config, rng=lambda: 0.999, clock=clock, wall=wall, send=api)
    yield made
    made.shutdown(2.0)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("massugc-logging-delivery")]


def test_each_stage_of_the_lifecycle(pipeline: Pipeline, api: ScriptedApi,
                                     clocks: tuple[Clock, Clock], tmp_path: Path) -> None:
    clock, wall = clocks
    spool = tmp_path / "spool.sqlite3"

    # Made: one thread, the intake; no file opened, nothing read or sent yet.
    assert pipeline.intake.alive() and worker_threads() == []
    assert not spool.exists() and pipeline.transport is None
    assert pipeline.stats()["state"] == "idle"

    # The first event starts it: the spool is opened, the workers start. The API will
    # answer it 503.
    api.script.append(UNAVAILABLE)
    pipeline.submit(record("r1"))
    assert pipeline.write_out(soon())
    assert spool.exists() and len(worker_threads()) == 3  # max_in_flight + 1
    assert pipeline.stats()["spooled"] == 1

    # After the 503 the event waits its backoff on the fake clock, so a drain gives up at
    # once instead of waiting 30 s.
    started = time.monotonic()
    assert not pipeline.drain(soon())
    assert time.monotonic() - started < 5.0
    assert api.requests == [api.requests[0]] and pipeline.stats()["retried"] == 1
    assert pipeline.stats()["state"] == "backing_off"

    # 31 s later on the fake clock it goes again, with a second event, once each.
    clock.now += 31.0
    wall.now += 31.0
    pipeline.submit(record("r2"))
    assert pipeline.drain(soon())
    assert len(api.requests) == 3 and len(set(api.requests)) == 2
    stats = pipeline.stats()
    assert stats["sent"] == 2 and stats["pending"] == 0 and stats["state"] == "idle"
    kept = Spool(spool, destination=pipeline.destination)
    assert kept.pending() == []  # written as delivered once all was drained
    kept.close()

    # Shut down: every thread ends; what is logged after goes straight to the file, for
    # the next run to send, and nothing more is sent by this one.
    pipeline.shutdown(2.0)
    assert not pipeline.intake.alive() and worker_threads() == []
    pipeline.submit(record("late"))
    assert pipeline.stats()["spooled"] == 3 and pipeline.stats()["dropped"] == {}
    kept = Spool(spool, destination=pipeline.destination)
    assert [e.created for e in kept.pending()] == [pytest.approx(time.time(), abs=60)]
    kept.close()
    assert len(api.requests) == 3


def test_a_pipeline_closed_before_its_first_event_starts_and_stops_cleanly(
        pipeline: Pipeline, api: ScriptedApi, tmp_path: Path) -> None:
    """Closed before anything was logged: it still opens the spool (to recover jobs a
    dead process left) and stops within its budget, sending nothing."""
    started = time.monotonic()
    pipeline.shutdown(2.0)
    assert time.monotonic() - started < 3.0
    assert not pipeline.intake.alive() and worker_threads() == []
    assert api.requests == [] and (tmp_path / "spool.sqlite3").exists()


def test_with_no_thread_to_start_the_shutdown_delivers_on_its_own_thread(
        pipeline: Pipeline, api: ScriptedApi, clocks: tuple[Clock, Clock],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.12.0 and 3.12.1 refuse new threads once the interpreter begins to exit
    (an app that logs and returns at once starts its workers then): the shutdown sends
    on the thread that closes, instead of leaving every event for the next run."""
    from massugc_logging.pipeline import delivery

    def refused(thread: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(delivery, "start_leaving_signals_to_the_main_thread", refused)
    clocks[1].now = time.time()  # records are stamped now: not yet past the age bound
    pipeline.submit(record("r1"))
    pipeline.submit(record("r2"))
    assert pipeline.write_out(soon())
    assert worker_threads() == [] and api.requests == []
    pipeline.shutdown(2.0)
    assert len(set(api.requests)) == 2
    assert pipeline.stats()["sent"] == 2 and pipeline.stats()["pending"] == 0


@pytest.mark.parametrize("then", ["force_flush", "exit"])
def test_a_backlog_at_start_waits_its_spread_unless_the_app_flushes_or_exits(
        pipeline: Pipeline, api: ScriptedApi, clocks: tuple[Clock, Clock],
        tmp_path: Path, then: str) -> None:
    """Events kept by an earlier run: the start waits a random moment (up to 30 s of the
    fake clock, which does not move), so nothing is sent; a flush (drain) or the exit
    wants them now and sends all of them, the backlog and the new event."""
    wall = clocks[1]
    wall.now = time.time()  # records are stamped now: not yet past the age bound
    kept = Spool(tmp_path / "spool.sqlite3", destination=pipeline.destination)
    kept.add([(f"kept-{i}", b'{"kept": true}', wall.now - 60.0) for i in range(3)], wall.now)
    kept.release()  # as the earlier run's exit does
    kept.close()
    pipeline.submit(record("r1"))
    assert pipeline.write_out(soon())
    engine = pipeline.engine
    assert engine is not None
    wake = engine.next_wake()
    assert wake is not None and wake > clocks[0].now  # waiting out its spread
    assert api.requests == []
    if then == "force_flush":
        assert pipeline.drain(soon())
        assert pipeline.stats()["pending"] == 0
    else:
        pipeline.shutdown(2.0)
    assert len(set(api.requests)) == 4
