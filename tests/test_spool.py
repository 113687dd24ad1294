"""The SQLite spool, and the handler's behaviour at its limits."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi, free_port, wait_until

from massugc_logging import CloudHandler
from massugc_logging.pipeline.spool import MemorySpool, Spool, SpoolError, new_owner

JOB = {"event_type": "video_generation", "error_message": "x"}


def events(n: int, start: float = 1000.0) -> list[tuple[str, bytes, float]]:
    return [(f"id-{i}", b'{"n":%d}' % i, start + i) for i in range(n)]


def test_spool_file_is_private(tmp_path: Path) -> None:
    """The spool file is created with mode 0600."""
    spool = Spool(tmp_path / "dir" / "s.sqlite3")
    spool.add(events(1), time.time())
    if os.name == "posix":
        assert stat.S_IMODE((tmp_path / "dir" / "s.sqlite3").stat().st_mode) == 0o600
    spool.close()


def test_events_survive_reopening_and_come_back_oldest_first(tmp_path: Path) -> None:
    """A second spool on the same file sees the events, ordered by creation time."""
    path = tmp_path / "s.sqlite3"
    first = Spool(path)
    first.add([("late", b"2", 2000.0), ("early", b"1", 1000.0)], time.time())
    first.release()
    first.close()
    second = Spool(path, lease_seconds=60)
    assert [e.event_id for e in second.lease(10, time.time())] == ["early", "late"]
    second.close()


def test_a_live_owner_keeps_its_lease(tmp_path: Path) -> None:
    """Another live owner's fresh events (here: another spool of this process) are not taken."""
    path = tmp_path / "s.sqlite3"
    alive = Spool(path)
    alive.add(events(3), time.time())
    other = Spool(path)
    assert other.lease(10, time.time()) == []
    assert len(other.lease(10, time.time() + 10_000)) == 3  # expired lease: taken over
    alive.close()
    other.close()


def test_leases_of_a_dead_process_are_taken_back_at_once(tmp_path: Path) -> None:
    """A crashed owner's events are delivered by the next process without waiting."""
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    path = tmp_path / "s.sqlite3"
    crashed = Spool(path, owner=f"{socket.gethostname()}|{dead.stdout.strip()}|abc")
    crashed.add(events(2), time.time())
    crashed.close()
    survivor = Spool(path, lease_seconds=600)
    assert len(survivor.lease(10, time.time())) == 2
    survivor.close()


def test_bound_by_count_drops_oldest_first(tmp_path: Path) -> None:
    """Over max_events, the oldest events go and are counted."""
    spool = Spool(tmp_path / "s.sqlite3", max_events=5)
    result = spool.add(events(8), time.time())
    assert result.dropped_full == 3
    assert [e.event_id for e in spool.pending()] == ["id-3", "id-4", "id-5", "id-6", "id-7"]
    spool.close()


def test_bound_by_age_expires_old_events(tmp_path: Path) -> None:
    """Events older than max_age are dropped."""
    spool = Spool(tmp_path / "s.sqlite3", max_age=100)
    spool.add(events(3, start=1000.0), 1000.0)
    assert spool.expire(now=1101.5) == 2
    assert spool.pending_count() == 1
    spool.close()


def test_dead_letter_keeps_status_and_reason(tmp_path: Path) -> None:
    """A rejected event moves to the dead-letter table."""
    spool = Spool(tmp_path / "s.sqlite3")
    spool.add(events(1), time.time())
    (event,) = spool.lease(1, time.time())
    spool.dead_letter(event, 422, "validation_error: bad", time.time())
    assert spool.pending_count() == 0
    (dead,) = spool.dead_letters()
    assert (dead.event_id, dead.status, dead.reason) == ("id-0", 422, "validation_error: bad")
    spool.close()


def test_corrupt_file_is_refused_clearly(tmp_path: Path) -> None:
    """A file that is not SQLite raises SpoolError naming the file."""
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match=r"s\.sqlite3"):
        Spool(path)


def test_connections_opening_a_new_spool_at_once_all_open_it(tmp_path: Path) -> None:
    """Connections that open one new file at the same moment (two processes starting
    together) each get it: SQLite refuses some of them at once, without waiting its busy
    timeout, while another turns the file to WAL or closes it, and the spool waits
    instead. Before it did, about 7 of 100 such races here refused one connection."""
    refused: list[SpoolError] = []

    def open_and_close(path: Path, start: threading.Barrier) -> None:
        start.wait()
        for _ in range(5):
            try:
                Spool(path, busy_timeout=1.0).close()
            except SpoolError as exc:
                refused.append(exc)

    for race in range(150):
        path = tmp_path / f"race-{race}.sqlite3"
        start = threading.Barrier(3)
        threads = [threading.Thread(target=open_and_close, args=(path, start))
                   for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert refused == []


def test_memory_spool_has_the_same_bound() -> None:
    """The in-memory fallback drops the oldest too."""
    spool = MemorySpool(max_events=2)
    assert spool.add(events(3), time.time()).dropped_full == 1
    assert [e.event_id for e in spool.lease(10, time.time())] == ["id-1", "id-2"]


def test_owner_tags_are_unique() -> None:
    """Two spools in one process never share an owner tag."""
    assert new_owner() != new_owner()


def test_handler_with_a_corrupt_spool_says_so_once_and_carries_on_in_memory(
        api: FakeApi, tmp_path: Path, key: str, caplog: Any) -> None:
    """A corrupt spool is reported once; events are still delivered."""
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"garbage" * 1000)
    caplog.set_level(logging.ERROR, logger="massugc_logging")
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=path)
    log = logging.getLogger("massugc.jobs")
    log.addHandler(handler)
    for _ in range(3):
        log.error("job failed", extra=JOB)
    assert handler.force_flush(5)
    assert len(api.captured) == 3
    messages = [r.getMessage() for r in caplog.records if "spool" in r.getMessage()]
    assert len(messages) == 1 and "in memory" in messages[0]
    handler.close()


def test_spool_path_none_is_memory_only(api: FakeApi, key: str) -> None:
    """spool_path=None never touches disk and still delivers."""
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=None)
    logging.getLogger("massugc.jobs").addHandler(handler)
    logging.getLogger("massugc.jobs").error("job failed", extra=JOB)
    assert handler.force_flush(5)
    assert handler.stats()["spool"] is None
    handler.close()


def test_default_spool_lives_in_the_user_data_directory(key: str) -> None:
    """Without spool_path the spool goes to the platform's data directory."""
    handler = CloudHandler(api_url=f"http://127.0.0.1:{free_port()}", api_key=key)
    assert "massugc-logging" in handler.stats()["spool"]
    assert wait_until(lambda: Path(handler.stats()["spool"]).exists(), 5)  # the intake opens it
    handler.close()


def test_full_queue_drops_without_blocking_and_says_so_once(key: str, tmp_path: Path,
                                                            caplog: Any) -> None:
    """A full queue counts drops and warns once, with no traceback per record."""
    caplog.set_level(logging.WARNING, logger="massugc_logging")
    handler = CloudHandler(api_url=f"http://127.0.0.1:{free_port()}", api_key=key,
                           spool_path=tmp_path / "s.sqlite3", queue_size=1)
    log = logging.getLogger("massugc.jobs")
    log.addHandler(handler)
    assert handler.force_flush(5)  # started: the outbox is open
    # Hold the intake so the queue cannot drain while we fill it.
    with handler._pipeline.outbox._lock:  # type: ignore[union-attr]
        start = time.perf_counter()
        for _ in range(200):
            log.error("job failed", extra=JOB)
        assert time.perf_counter() - start < 1.0
    dropped = handler.stats()["dropped"].get("queue_full", 0)
    assert dropped >= 190
    warnings = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(warnings) == 1
    handler.close()


def test_stats_report_every_counter(api: FakeApi, key: str, tmp_path: Path) -> None:
    """stats() holds the documented keys with consistent values."""
    api.respond_with(503, times=1)
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=tmp_path / "s.sqlite3",
                           retry={"backoff_base": 0.01, "backoff_cap": 0.02})
    logging.getLogger("massugc.jobs").addHandler(handler)
    logging.getLogger("massugc.jobs").error("job failed", extra=JOB)
    assert handler.force_flush(5), handler.stats()
    stats = handler.stats()
    for name in ("enqueued", "sent", "retried", "spooled", "pending", "dropped",
                 "dead_lettered", "last_error", "last_status"):
        assert name in stats
    assert (stats["enqueued"], stats["sent"], stats["retried"], stats["spooled"]) == (1, 1, 1, 1)
    assert stats["pending"] == 0 and stats["last_status"] == 200
    assert wait_until(lambda: handler.stats()["state"] in ("idle", "sending"), 2)
    handler.close()


def test_close_releases_the_claim_on_unsent_events(tmp_path: Path, key: str) -> None:
    """After close(), another live process can send what is left without waiting."""
    path = tmp_path / "s.sqlite3"
    handler = CloudHandler(api_url=f"http://127.0.0.1:{free_port()}", api_key=key,
                           spool_path=path, shutdown_timeout=0.2)
    logging.getLogger("massugc.jobs").addHandler(handler)
    logging.getLogger("massugc.jobs").error("job failed", extra=JOB)
    handler.close()
    other = Spool(path, destination=handler.destination, lease_seconds=600)
    # Not yet past the 120 s lease, but released: due once its own retry time has come.
    assert len(other.lease(10, time.time() + 61)) == 1
    other.close()
