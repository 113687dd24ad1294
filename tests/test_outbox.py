"""The handler's outbox: the spool file, memory in its place while the file is broken,
and a file another program locks left where it is (its callers wait, or try later)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Optional

import pytest

from massugc_logging.pipeline.outbox import BUSY_DELIVERY_RETRY, FallbackOutbox
from massugc_logging.pipeline.spool import MemorySpool, Settlement, Spool, SpoolError, Write

DEST = "https://api.example/api/desktop/usage/log"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def outbox_at(path: Path, clock: Clock, *, fail_opens: int = 0,
              recovered: Optional[list[int]] = None) -> FallbackOutbox:
    """An outbox on ``path`` whose first ``fail_opens`` opens find the disk full."""
    opens = [0]

    def open_file() -> Spool:
        opens[0] += 1
        if opens[0] <= fail_opens:
            raise SpoolError("database or disk is full")
        return Spool(path, destination=DEST, busy_timeout=0.1)

    return FallbackOutbox(open_file, lambda: MemorySpool(destination=DEST), path=path,
                          on_problem=lambda exc: None,
                          on_recovered=(recovered if recovered is not None else []).append,
                          clock=clock)


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    path = tmp_path / "s.sqlite3"
    Spool(path, destination=DEST).close()
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    yield path, locker
    locker.close()


def events(*ids: str) -> Write:
    return Write(events=tuple((i, b"{}", 1.0) for i in ids))


def test_a_locked_file_stays_the_outbox_and_delivery_is_refused_at_once(
        locked: tuple[Path, sqlite3.Connection], clock: Clock) -> None:
    """A write to a locked file raises busy (its caller keeps the events); delivery's
    calls are refused without waiting for the lock until the next try is due; once the
    file is free, all goes to it and nothing ever went to memory."""
    path, locker = locked
    outbox = outbox_at(path, clock)
    with pytest.raises(SpoolError) as caught:
        outbox.write(events("e1"), 1000.0)
    assert caught.value.busy and not outbox.using_memory
    started = time.monotonic()
    for call in (lambda: outbox.lease(10, 1000.0), lambda: outbox.next_due(1000.0),
                 lambda: outbox.settle(Settlement(delivered=((1, "e0"),)), 1000.0)):
        with pytest.raises(SpoolError):
            call()
    assert time.monotonic() - started < 0.05  # no call waited for the lock
    locker.execute("ROLLBACK")
    with pytest.raises(SpoolError):  # still within the pause
        outbox.lease(10, 1000.0)
    outbox.write(events("e1"), 1000.0)  # the intake's next try: it gets through
    assert [e.event_id for e in outbox.lease(10, 1000.0)] == ["e1"]
    clock.now += BUSY_DELIVERY_RETRY
    assert outbox.pending_count() == 1
    outbox.close()


def test_a_broken_file_is_swapped_whole_for_memory_and_back(tmp_path: Path,
                                                           clock: Clock) -> None:
    """The file cannot be opened (disk full): memory is the outbox, with what sending
    learnt; once the pause is over and the file opens, the backlog and that knowledge
    move into it and it is the outbox again."""
    path = tmp_path / "s.sqlite3"
    recovered: list[int] = []
    outbox = outbox_at(path, clock, fail_opens=2, recovered=recovered)
    outbox.write(events("e1", "e2"), 1000.0)
    outbox.remember("https://api.example", "route", "/api/desktop/usage", 9e9)
    assert outbox.using_memory
    clock.now += 1.0  # the first pause: the file is still full
    outbox.write(events("e3"), 1001.0)
    assert outbox.using_memory
    clock.now += 2.0  # the pause doubled; now the file opens
    outbox.write(events("e4"), 1002.0)
    assert not outbox.using_memory and recovered == [3]
    outbox.close()
    kept = Spool(path, destination=DEST)
    assert sorted(e.event_id for e in kept.pending()) == ["e1", "e2", "e3", "e4"]
    assert kept.recall("https://api.example", 1003.0) == {"route": "/api/desktop/usage"}
    kept.close()


def test_an_outcome_for_an_event_of_the_store_left_behind_is_ignored(tmp_path: Path,
                                                                    clock: Clock) -> None:
    """An event leased from memory and delivered after the file took memory's place: its
    outcome finds no such row in the file, changes nothing there, and the event (moved
    into the file) is simply sent again; the API drops the copy by its key."""
    path = tmp_path / "s.sqlite3"
    outbox = outbox_at(path, clock, fail_opens=1)
    outbox.write(events("e1"), 1000.0)
    leased = outbox.lease(10, 1000.0)
    clock.now += 1.0
    outbox.write(events("e2"), 1001.0)
    assert not outbox.using_memory
    outbox.settle(Settlement(delivered=tuple((e.row_id, e.event_id) for e in leased)), 1002.0)
    assert sorted(e.event_id for e in outbox.lease(10, 1003.0)) == ["e1", "e2"]
    outbox.close()


def test_outcomes_written_after_the_file_was_recreated_settle_only_their_own_events(
        tmp_path: Path, clock: Clock) -> None:
    """The spool file is deleted while requests for its events are in flight; memory
    stands in, then a new file at the same path takes memory's events, numbered from 1
    again. The outcomes of the old file's events, written now, touch only the events
    they were for. Matched by row id alone, they removed two events never sent ("late"
    and "later" took the delivered ids 11 and 12)."""
    path = tmp_path / "s.sqlite3"
    outbox = outbox_at(path, clock)
    outbox.write(events(*(f"e{i}" for i in range(20))), 1000.0)
    early = outbox.lease(10, 1000.0)
    outbox.settle(Settlement(delivered=tuple((e.row_id, e.event_id) for e in early)), 1000.0)
    in_flight = outbox.lease(10, 1000.0)  # e10 to e19, rows 11 to 20
    assert [e.row_id for e in in_flight] == list(range(11, 21))
    path.unlink()  # a cleaner tidies the data directory
    outbox.write(events("late"), 1001.0)
    assert outbox.using_memory
    clock.now += 5.0  # the pause is over: a new file opens and takes memory's events
    outbox.write(events("later"), 1002.0)
    assert not outbox.using_memory
    delivered, retried = in_flight[:5], in_flight[5:]
    outbox.settle(Settlement(
        delivered=tuple((e.row_id, e.event_id) for e in delivered),
        rescheduled=tuple((e.row_id, e.event_id, 1500.0) for e in retried)), 1003.0)
    outbox.release()
    # What was delivered comes again (the API drops the copy by its key); nothing that was
    # not delivered is gone.
    waiting = {e.event_id for e in outbox.lease(100, 1004.0)}
    assert waiting == {f"e{i}" for i in range(10, 20)} | {"late", "later"}
    outbox.close()


@pytest.mark.parametrize("store", ["file", "memory"])
def test_an_outcome_applies_only_to_the_row_that_holds_its_event(tmp_path: Path,
                                                                store: str) -> None:
    """A delivery, a retry or a rejection names its event by row id and event id; a row
    with that id holding another event is left as it is."""
    outbox = (Spool(tmp_path / "s.sqlite3", destination=DEST) if store == "file"
              else MemorySpool(destination=DEST))
    outbox.write(events("a", "b", "c"), 1000.0)
    rows = {e.event_id: e for e in outbox.lease(10, 1000.0)}
    a, b, c = rows["a"], rows["b"], rows["c"]
    outbox.settle(Settlement(delivered=((a.row_id, "other-a"),),
                             rescheduled=((b.row_id, "other-b", 2000.0),),
                             dead=((replace(c, event_id="other-c"), 422, "bad"),)), 1001.0)
    outbox.release()
    due = outbox.lease(10, 1002.0)
    assert sorted(e.event_id for e in due) == ["a", "b", "c"]
    assert [e.attempts for e in due] == [0, 0, 0]  # b's retry was not counted either
    assert outbox.dead_letters() == []  # nor c rejected
    outbox.release()
    outbox.settle(Settlement(delivered=((a.row_id, "a"),), rescheduled=((b.row_id, "b", 2000.0),),
                             dead=((c, 422, "bad"),)), 1003.0)
    outbox.release()
    assert [e.event_id for e in outbox.lease(10, 1004.0)] == []  # a gone, b later, c dead
    assert outbox.pending_count() == 1
    assert [d.event_id for d in outbox.dead_letters()] == ["c"]
    outbox.close()
