"""Running jobs in the spool: kept when a report_job block starts, replaced by the outcome,
turned into one failure when their process is gone or the app shuts down."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Union

import pytest

from massugc_logging.payload import restamp_failure
from massugc_logging.pipeline.outbox import FallbackOutbox
from massugc_logging.pipeline.spool import (
    MemorySpool,
    RunningJob,
    Spool,
    Write,
)

DEST = "https://api.example/api/desktop/usage/log"


def body(run_id: str, message: str = "stopped") -> bytes:
    return json.dumps({"event_type": "video_generation", "timestamp": "2026-01-01T00:00:00.000Z",
                       "job_data": {"run_id": run_id, "success": False,
                                    "error_message": message,
                                    "failure_time": "2026-01-01T00:00:00.000Z"}}).encode()


def job(token: str, started: float = 1000.0) -> RunningJob:
    return RunningJob(token, f"event-{token}", body(token), started)


def dead_owner() -> str:
    """The owner tag of a process that has ended (a reaped child)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return f"{socket.gethostname()}|{proc.stdout.strip()}||abc"


Store = Union[Spool, MemorySpool]


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = (Spool(tmp_path / "s.sqlite3", destination=DEST) if request.param == "file"
                   else MemorySpool(destination=DEST))
    yield made
    made.close()


def test_a_job_that_starts_and_ends_in_one_write_leaves_nothing_running(store: Store) -> None:
    """Start and outcome in the same intake batch: the outcome is kept, the job is not."""
    store.write(Write(events=(("outcome", b"{}", 1.0),), started=(job("t1"),),
                      finished=("t1",)), 2000.0)
    assert store.abandon_running(lambda b, now: b, 3000.0) == 0
    assert [e.event_id for e in store.lease(10, 3000.0)] == ["outcome"]


def test_shutdown_turns_open_jobs_into_restamped_failures(store: Store) -> None:
    """abandon_running: each open job becomes its failure event, with the new message and
    the shutdown's time; a finished job does not."""
    store.write(Write(started=(job("open"), job("done"))), 2000.0)
    store.write(Write(events=(("done-outcome", b"{}", 1.0),), finished=("done",)), 2001.0)
    when = 1_800_000_000.0
    assert store.abandon_running(lambda b, now: restamp_failure(b, "shut down", now), when) == 1
    events = store.lease(10, when)
    stand_in = next(e for e in events if e.event_id == "event-open")
    data = json.loads(stand_in.body)
    assert data["job_data"]["error_message"] == "shut down"
    assert data["job_data"]["failure_time"] == data["timestamp"] == "2027-01-15T08:00:00.000Z"
    assert store.abandon_running(lambda b, now: b, when) == 0


def test_a_late_outcome_supersedes_a_stand_in_not_yet_sent(store: Store) -> None:
    """The real outcome of a job turned into a shutdown failure replaces it while unsent."""
    store.write(Write(started=(job("late"),)), 2000.0)
    store.abandon_running(lambda b, now: b, 2001.0)
    result = store.write(Write(events=(("real", b"{}", 1.0),), finished=("late",)), 2002.0)
    assert result.superseded == 1
    assert [e.event_id for e in store.lease(10, 3000.0)] == ["real"]


def test_jobs_of_a_process_that_is_gone_become_one_failure_each(tmp_path: Path) -> None:
    """recover_abandoned: a dead owner's running jobs go to the outbox once, for the
    destination they were logged for; a second recovery finds nothing."""
    path = tmp_path / "s.sqlite3"
    crashed = Spool(path, destination=DEST, owner=dead_owner())
    crashed.write(Write(started=(job("a"), job("b"))), 2000.0)
    crashed.close()
    other = Spool(path, destination="http://127.0.0.1:8765/api/desktop/usage/log")
    assert other.recover_abandoned(3000.0) == 2
    assert other.recover_abandoned(3000.0) == 0
    assert other.lease(10, 3000.0) == []  # not this handler's destination
    assert other.counts_by_destination() == {DEST: 2}
    other.close()
    mine = Spool(path, destination=DEST)
    assert sorted(e.event_id for e in mine.lease(10, 3000.0)) == ["event-a", "event-b"]
    mine.close()


def test_a_live_owners_running_jobs_are_left_alone(tmp_path: Path) -> None:
    """Another live process's jobs (here another spool of this process) are still running."""
    path = tmp_path / "s.sqlite3"
    alive = Spool(path, destination=DEST)
    alive.write(Write(started=(job("busy"),)), 2000.0)
    other = Spool(path, destination=DEST)
    assert other.recover_abandoned(time.time()) == 0
    assert [j.token for j in other.running()] == ["busy"]
    alive.close()
    other.close()


def test_a_reused_pid_is_not_taken_for_the_owner(tmp_path: Path) -> None:
    """An owner whose pid is alive but whose process started at another time is gone."""
    import os

    path = tmp_path / "s.sqlite3"
    # This pid is alive, but the tag names a different start: a reused pid.
    impostor = f"{socket.gethostname()}|{os.getppid()}|0@not-this-boot|abc"
    dead = Spool(path, destination=DEST, owner=impostor)
    dead.write(Write(started=(job("x"),)), 2000.0)
    dead.close()
    survivor = Spool(path, destination=DEST)
    assert survivor.recover_abandoned(3000.0) == 1
    survivor.close()


def test_a_job_finished_while_memory_stood_in_is_not_reported_abandoned(
        tmp_path: Path) -> None:
    """Started in the file; the file is deleted (a cleaner) and the job finishes while
    memory stands in: when the file is back, no running row is left in it, so no later
    start reports the job as abandoned, and the outcome is in it."""
    path = tmp_path / "s.sqlite3"
    clock = [0.0]
    outbox = FallbackOutbox(lambda: Spool(path, destination=DEST, busy_timeout=0.1),
                            lambda: MemorySpool(destination=DEST), path=path,
                            on_problem=lambda exc: None, on_recovered=lambda n: None,
                            clock=lambda: clock[0])
    outbox.write(Write(started=(job("j"),)), 2000.0)
    path.unlink()
    outbox.write(Write(events=(("outcome", b"{}", 1.0),), finished=("j",)), 2001.0)
    assert outbox.using_memory
    clock[0] += 60.0  # the file's next try is due
    outbox.write(Write(events=(("later", b"{}", 2.0),)), 2002.0)
    assert not outbox.using_memory
    check = Spool(path, destination=DEST, owner=dead_owner())
    assert check.running() == []
    assert sorted(e.event_id for e in check.pending()) == ["later", "outcome"]
    check.close()
    outbox.close()


def test_a_restamp_of_something_that_is_not_an_event_changes_nothing() -> None:
    """restamp_failure leaves a body it cannot read as it is."""
    assert restamp_failure(b"not json", "x", 1.0) == b"not json"


def test_a_job_started_while_the_file_was_busy_and_ended_after_is_one_event(
        tmp_path: Path) -> None:
    """Another program locks the file as the job starts: the write says so (busy) and
    keeps nothing anywhere else; written again once the file is free, the job's outcome
    closes it and shutdown finds nothing running."""
    import sqlite3

    from massugc_logging.pipeline.spool import SpoolError

    path = tmp_path / "s.sqlite3"
    outbox = FallbackOutbox(lambda: Spool(path, destination=DEST, busy_timeout=0.1),
                            lambda: MemorySpool(destination=DEST), path=path,
                            on_problem=lambda exc: None, on_recovered=lambda n: None)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    started = Write(started=(job("busy-start"),))
    with pytest.raises(SpoolError) as caught:
        outbox.write(started, 2000.0)
    assert caught.value.busy and not outbox.using_memory
    locker.execute("ROLLBACK")
    locker.close()
    outbox.write(started, 2000.5)  # what the intake does a moment later
    outbox.write(Write(events=(("real", b"{}", 1.0),), finished=("busy-start",)), 2001.0)
    assert outbox.abandon_running(lambda b, now: b, 2002.0) == 0
    assert [e.event_id for e in outbox.lease(10, 3000.0)] == ["real"]
    outbox.close()
    outbox.close()


def test_an_earlier_process_that_had_our_pid_is_taken_for_gone(tmp_path: Path) -> None:
    """An owner tag with this process's pid but another start (pid reuse: Windows, or pid 1
    in a container on every run) is a dead process: its jobs are recovered."""
    import os

    path = tmp_path / "s.sqlite3"
    earlier = f"{socket.gethostname()}|{os.getpid()}|1@earlier-boot|abc"
    dead = Spool(path, destination=DEST, owner=earlier)
    dead.write(Write(started=(job("x"),)), 2000.0)
    dead.close()
    survivor = Spool(path, destination=DEST)
    assert survivor.recover_abandoned(3000.0) == 1
    assert survivor.lease(10, 3000.0)[0].event_id == "event-x"
    survivor.close()


def test_two_processes_recovering_at_once_report_each_job_once(tmp_path: Path) -> None:
    """Two spool connections recover the same dead owner's jobs at the same moment: the
    transaction lets exactly one of them have each job."""
    import threading

    path = tmp_path / "s.sqlite3"
    crashed = Spool(path, destination=DEST, owner=dead_owner())
    crashed.write(Write(started=tuple(job(f"j{i}") for i in range(20))), 2000.0)
    crashed.close()
    starters = [Spool(path, destination=DEST) for _ in range(2)]
    barrier = threading.Barrier(2)
    found: list[int] = []

    def recover(spool: Spool) -> None:
        barrier.wait()
        found.append(spool.recover_abandoned(3000.0))

    threads = [threading.Thread(target=recover, args=(s,)) for s in starters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(found) == [0, 20]
    assert starters[0].counts_by_destination() == {DEST: 20}
    for spool in starters:
        spool.close()


def test_running_jobs_of_a_handler_closed_earlier_in_this_process_are_shut_down_too(
        tmp_path: Path) -> None:
    """A reconfiguration closed the first handler; at exit the second one reports both
    handlers' open jobs, each for its own destination."""
    path = tmp_path / "s.sqlite3"
    first = Spool(path, destination="first")
    first.write(Write(started=(job("a"),)), 2000.0)
    first.close()
    second = Spool(path, destination="second")
    second.write(Write(started=(job("b"),)), 2000.0)
    assert second.abandon_running(lambda b, now: b, 3000.0) == 2
    assert second.counts_by_destination() == {"first": 1, "second": 1}
    second.close()
