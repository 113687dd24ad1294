"""The spool: a write-ahead outbox of events not yet delivered.

The only module that touches SQLite. Every event is written here before its
first send attempt and removed once delivered, so it survives an outage, a
normal exit and ``kill -9``, and the next process that opens the same file
delivers it, oldest first, with its original times.

Each event carries its own schedule (``next_attempt_at``, wall-clock seconds)
and attempt count, so a transient failure delays that event alone and a
restart keeps its backoff. A file written by release 0.1.0, which had no
schedule, is migrated in place when it is opened: its events are due at once.

Ownership: each row belongs to the process that wrote or last leased it
(``owner`` = host, pid and a random token) until ``lease_until``. Another
process takes a row over when that lease has expired, or at once when the
owner ran on this host and its pid is gone (it crashed or was killed).
Several processes can share one file (WAL mode, short ``BEGIN IMMEDIATE``
transactions); delivery is at least once and the ``Idempotency-Key`` lets the
server drop a rare duplicate. An owner is told dead by its process's start
time as well as its pid (:mod:`massugc_logging.pipeline.processes`), so a reused pid is
never taken for the owner, on Windows as on POSIX.

Destinations: every event is addressed to the API it was logged for (its API
URL and endpoint, :func:`destination_of`), and a spool opened for one
destination leases only that destination's events. A development run that
kept events for the local collector never hands them to a production run on
the same file, and the other way round. Rows kept by release 0.1.x name no
destination: they stay *unaddressed*, are never sent by a handler, and are
sent only where ``massugc-logging spool replay --from unaddressed`` is told.

Running jobs: a job inside ``report_job`` is kept here as running, with the
failure event that stands for it should its process die (:class:`RunningJob`).
Its real outcome removes it in the transaction that writes the outcome; a
process that starts on the file turns the running jobs of owners that are gone
into those failure events (:meth:`Spool.recover_abandoned`), in one
transaction, so two processes starting at once report each job once.

:class:`MemorySpool` has the same interface (the :class:`Outbox` protocol)
and no durability: it is used for ``spool_path: null`` and, through
:class:`massugc_logging.pipeline.outbox.FallbackOutbox`, while the file cannot be used.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, TypeVar, Union

from massugc_logging.payload import costs_credits

DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_LEASE_SECONDS = 120.0
DEFAULT_BUSY_TIMEOUT = 5.0
#: A schedule further ahead than this is taken as a clock that jumped back: due now. A
#: handler passes its own, just over the longest backoff an event can be given.
SCHEDULE_HORIZON = 2 * 3600.0
#: ``PRAGMA user_version`` of this schema (0.1.0 files have 0: no per-event schedule;
#: 0.1.x files have 2: no destination, no running jobs).
SCHEMA_VERSION = 3
#: Row ids of the memory spool start here so they never collide with SQLite ones.
_MEMORY_ID_BASE = 1 << 50
#: A running job whose owner cannot be probed (it ran under another host name) is
#: taken for abandoned after this long: no job runs for a day.
ABANDONED_AFTER = 24 * 3600.0

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL,
    body        BLOB NOT NULL,
    created     REAL NOT NULL,
    spooled_at  REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    owner       TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    destination TEXT,
    job_token   TEXT,
    costs_credits INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_by_age ON outbox (created, id);
CREATE TABLE IF NOT EXISTS dead_letter (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL,
    body        BLOB NOT NULL,
    created     REAL NOT NULL,
    status      INTEGER,
    reason      TEXT NOT NULL,
    dead_at     REAL NOT NULL,
    destination TEXT
);
CREATE TABLE IF NOT EXISTS api_memory (
    api_url     TEXT NOT NULL,
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    until       REAL NOT NULL,
    PRIMARY KEY (api_url, name)
);
CREATE TABLE IF NOT EXISTS running_job (
    token       TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    body        BLOB NOT NULL,
    created     REAL NOT NULL,
    owner       TEXT NOT NULL,
    destination TEXT,
    PRIMARY KEY (token, destination)
);
"""


class SpoolError(Exception):
    """The spool file cannot be opened or written (corrupt, unwritable, locked).

    ``busy`` is True when another connection held the file locked past the busy
    timeout: a passing condition (a backup, an antivirus scan), not a broken file.
    ``gone`` is True when the file was deleted, moved or replaced while in use.
    """

    def __init__(self, message: str, *, busy: bool = False, gone: bool = False) -> None:
        super().__init__(message)
        self.busy = busy
        #: The file was deleted, moved or replaced under this process.
        self.gone = gone


def _is_busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


#: How ``spool status`` names the rows of release 0.1.x, which name no destination.
UNADDRESSED = "unaddressed"


@dataclass(frozen=True)
class SpooledEvent:
    """One row of the outbox, as leased for delivery."""

    row_id: int
    event_id: str
    body: bytes
    created: float
    attempts: int
    #: Where the event was logged for (None: a row of release 0.1.x).
    destination: Optional[str] = None


@dataclass(frozen=True)
class Kept:
    """An event moved between stores (memory and file) with what it carries along: its
    due time and, for the stand-in failure of a job, the job's token."""

    event: SpooledEvent
    due: float = 0.0
    job_token: Optional[str] = None


@dataclass(frozen=True)
class RunningJob:
    """A job that started and has not reported an outcome yet.

    ``body`` is the failure event that stands for the job should its process end
    before the job reports (``success: false``, the job's fields, redacted), with
    ``event_id`` its ``Idempotency-Key``; ``token`` names the job in the outcome
    that will replace it.
    """

    token: str
    event_id: str
    body: bytes
    created: float


@dataclass(frozen=True)
class Write:
    """What the intake writes in one transaction: new events, jobs that started, and
    the tokens of jobs whose outcome is among the events (or was lost on its way)."""

    events: tuple[tuple[str, bytes, float], ...] = ()
    started: tuple[RunningJob, ...] = ()
    finished: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.events or self.started or self.finished)


@dataclass(frozen=True)
class Settlement:
    """Outcomes to record in one transaction: delivered events ``(row id, event id)``,
    rescheduled ones ``(row id, event id, new due time)``, and events the API rejected
    for good.

    An outcome names its event by both ids, and a store applies it only to the row that
    has both: the row id alone may name another event by the time the outcome is
    written (the file was deleted while the request was in flight, and a new file at
    the same path numbers its rows from 1 again). An outcome that finds no such row
    changes nothing; the event is sent again, and the API drops the copy by its
    ``Idempotency-Key``.
    """

    delivered: tuple[tuple[int, str], ...] = ()
    rescheduled: tuple[tuple[int, str, float], ...] = ()
    dead: tuple[tuple[SpooledEvent, Optional[int], str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.delivered or self.rescheduled or self.dead)


@dataclass(frozen=True)
class DeadLetter:
    """An event the API rejected for good, with its status and reason."""

    row_id: int
    event_id: str
    body: bytes
    created: float
    status: Optional[int]
    reason: str
    dead_at: float
    destination: Optional[str] = None


@dataclass(frozen=True)
class AddResult:
    """Row ids assigned to new events, and how many old ones were dropped to make room."""

    row_ids: tuple[int, ...]
    dropped_full: int
    #: Presumed failures of jobs whose real outcome came in before they were sent.
    superseded: int = 0


#: Turns the stand-in failure of a job open at shutdown into the event to send:
#: ``(body, now) -> body`` (a new message and time; see ``payload.restamp_failure``).
Restamp = Callable[[bytes, float], bytes]


class Outbox(Protocol):
    """What intake and delivery need of a store of undelivered events.

    :class:`Spool` (SQLite) and :class:`MemorySpool` implement it; so does
    :class:`massugc_logging.pipeline.outbox.FallbackOutbox`, the file with memory in its
    place while the file is broken.
    """

    @property
    def path(self) -> Optional[Path]:
        """The file behind it; None when events live in memory only."""

    @property
    def using_memory(self) -> bool:
        """True while events live in memory (by choice, or while the file cannot be used)."""

    def start(self, now: float) -> None:
        """Open what needs opening, on the thread that will write (never the app's)."""

    def add(self, events: Sequence[tuple[str, bytes, float]], now: float) -> AddResult:
        """Write ``(event_id, body, created)`` events ahead of delivery."""

    def write(self, write: Write, now: float) -> AddResult:
        """Write events, running jobs and finished jobs in one transaction."""

    def lease(self, limit: int, now: float, exclude: Collection[int] = (), *,
              costly: bool = True) -> list[SpooledEvent]:
        """Up to ``limit`` events due at ``now``, oldest first, not in ``exclude``; without
        those that cost credits when ``costly`` is False."""

    def next_due(self, now: float, exclude: Collection[int] = (), *,
                 costly: bool = True) -> Optional[float]:
        """When the next event this outbox would lease becomes due; None when none is kept."""

    def settle(self, settlement: Settlement, now: float) -> None:
        """Record outcomes: remove delivered, reschedule, dead-letter."""

    def expire(self, now: float) -> int:
        """Drop events older than the age bound; return how many."""

    def pending_count(self) -> int:
        """Events waiting for delivery to this outbox's destination."""

    def recover_abandoned(self, now: float) -> int:
        """Turn the running jobs of processes that are gone into their failure events."""

    def counts_by_destination(self) -> dict[Optional[str], int]:
        """Events waiting, by destination (None: release 0.1.x's, which name none)."""

    def remember(self, api_url: str, name: str, value: str, until: float) -> None:
        """Keep what sending learnt about an API (wall-clock ``until``) for the next run."""

    def recall(self, api_url: str, now: float) -> dict[str, str]:
        """What earlier runs learnt about an API and is still true at ``now``, by name."""

    def abandon_running(self, restamp: Restamp, now: float) -> int:
        """Turn this process's running jobs into failure events now (at shutdown)."""

    def dead_letters(self, limit: int = 1_000_000) -> list[DeadLetter]:
        """Events the API refused for good, oldest first."""

    def release(self) -> None:
        """Give up this process's claims so any process may send its events."""

    def close(self) -> None:
        """Release resources; safe to call twice."""

    def prepare_fork(self) -> None:
        """Before ``os.fork()``: hold the locks, so that no write is half done at the fork."""

    def after_fork_parent(self) -> None:
        """In the parent after ``os.fork()``: let go of what :meth:`prepare_fork` held."""

    def after_fork_child(self) -> None:
        """In the child after ``os.fork()``: fresh locks and connections of its own."""


@functools.lru_cache(maxsize=4)
def _start_of(pid: int) -> str:
    """The start marker of this process, read once per pid (a forked child has its own)."""
    from massugc_logging.pipeline.processes import process_start_marker  # noqa: PLC0415

    return process_start_marker() or ""


def new_owner() -> str:
    """An owner tag unique to this process and spool instance: ``host|pid|start|token``
    (``start`` names the process's start, so that a later process with the same pid is
    never taken for this one)."""
    pid = os.getpid()
    return f"{socket.gethostname()}|{pid}|{_start_of(pid)}|{secrets.token_hex(6)}"


def _parse_owner(owner: str) -> Optional[tuple[str, int, Optional[str]]]:
    """``(host, pid, start marker)`` of an owner tag; tags of release 0.1.x have no start."""
    parts = owner.split("|")
    try:
        pid = int(parts[1])
    except (IndexError, ValueError):
        return None
    start = parts[2] or None if len(parts) >= 4 else None
    return parts[0], pid, start


def _owner_is_dead(owner: str, me: str) -> bool:
    """True when ``owner`` ran on this host in a process that is certainly gone: no
    process has its pid, or the one that has it started at another time."""
    parsed = _parse_owner(owner)
    if parsed is None or owner == me:
        return False
    host, pid, start = parsed
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        # This very process (another spool of it), unless the owner started at another
        # time: an earlier process that had our pid (pids are reused quickly on Windows,
        # and an app in a container is pid 1 on every run).
        return start is not None and start != _start_of(pid)
    from massugc_logging.pipeline.processes import process_is_gone  # noqa: PLC0415

    return process_is_gone(pid, start)


def _abandoned(owner: str, started: float, now: float, me: str) -> bool:
    """Whether a running job of ``owner``, started at ``started``, was left by its process:
    the process is gone, or it ran under another host name (which cannot be probed) and
    the job started more than :data:`ABANDONED_AFTER` ago."""
    if _owner_is_dead(owner, me):
        return True
    parsed = _parse_owner(owner)
    return (parsed is not None and parsed[0] != socket.gethostname()
            and started < now - ABANDONED_AFTER)


class Spool:
    """A SQLite outbox (WAL mode, file mode 0600) shared safely between processes.

    Args:
        path: the file.
        destination: where the events this spool writes are going, and the only
            events it leases (:func:`destination_of`); None for release 0.1.x's
            unaddressed rows, and for tools that only read.
        max_events, max_age, max_bytes: the bounds (over the whole file); over
            them the oldest events go first, and are counted.
        lease_seconds: how long a leased event stays this process's.
        owner: the owner tag (a new one by default).
        busy_timeout: how long a write waits for another connection's lock.
        schedule_horizon: a due time or lease further ahead than this can only come
            from a wall clock set back: it is over.
    """

    def __init__(
        self,
        path: Union[str, Path],
        *,
        destination: Optional[str] = None,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_age: float = DEFAULT_MAX_AGE,
        max_bytes: int = DEFAULT_MAX_BYTES,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        owner: Optional[str] = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        schedule_horizon: float = SCHEDULE_HORIZON,
    ) -> None:
        self.path: Optional[Path] = Path(path).expanduser()
        self._file = self.path
        self.destination = destination
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.schedule_horizon = schedule_horizon
        self.max_age = max_age
        self.lease_seconds = lease_seconds
        self.owner = owner or new_owner()
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn = self._open()

    def __repr__(self) -> str:
        return f"<Spool path={str(self._file)!r}>"

    def _open(self) -> sqlite3.Connection:
        """Open the file, trying again while it is busy, up to the busy timeout.

        SQLite does not call its busy handler while another connection turns a new file
        to WAL, recovers after a killed process or cleans up as the last one closes:
        the open fails at once with "database is locked". Two processes starting on one
        spool meet exactly that, so the wait is done here.
        """
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.005
        while True:
            try:
                # Each try waits only what is left, so the whole open keeps the bound.
                return self._open_once(max(0.0, deadline - time.monotonic()))
            except SpoolError as exc:
                if not exc.busy or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _open_once(self, wait: float) -> sqlite3.Connection:
        """One try at opening the file; SQLite's busy handler waits at most ``wait``
        seconds meanwhile, and the busy timeout once it is open."""
        path = self._file
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            if os.name == "posix":
                os.chmod(path, 0o600)
            conn = sqlite3.connect(str(path), timeout=wait, isolation_level=None,
                                   check_same_thread=False)
            self._identity = _identity(path)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open the spool file {path}: {exc}",
                             busy=_is_busy(exc)) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode survives a killed process; only an OS crash can lose
            # the last transactions, and it saves an fsync per event.
            conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(conn)
            conn.executescript(_SCHEMA)
            conn.execute("PRAGMA quick_check").fetchone()
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        except sqlite3.Error as exc:
            conn.close()
            if _is_busy(exc):
                raise SpoolError(f"the spool file {path} is locked by another program ({exc})",
                                 busy=True) from exc
            raise SpoolError(
                f"the spool file {path} is not a usable SQLite database ({exc}); "
                "move it aside to start a new one"
            ) from exc
        return conn

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a write waits for another connection's lock before it fails."""
        self._busy_timeout = seconds
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    @contextlib.contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one ``BEGIN IMMEDIATE`` transaction; commit or roll back.

        Raises:
            SpoolError: any SQLite error, naming what was being done.
        """
        try:
            with self._lock:
                conn = self._conn
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot {doing} the spool file {self._file}: {exc}",
                             busy=_is_busy(exc)) from exc

    #: Events live in the file.
    using_memory = False

    def start(self, now: float) -> None:
        """Nothing to do: the file was opened when the spool was made."""

    def still_there(self) -> bool:
        """Whether the path still names the file this spool opened: a cleaner, a user or
        another program may delete, replace or move it while the app runs, and writes
        would go on into a file nobody will ever read."""
        try:
            return _identity(self._file) == self._identity
        except OSError:
            return False

    def _check_identity(self) -> None:
        if not self.still_there():
            raise SpoolError(f"the spool file {self._file} was deleted, moved or replaced "
                             "while in use", gone=True)

    def add(self, events: Sequence[tuple[str, bytes, float]], now: float) -> AddResult:
        """Write events ``(event_id, body, created)``, owned by this process; enforce the bound.

        Raises:
            SpoolError: the write failed (disk full, file gone read-only, corrupt, locked).
        """
        return self.write(Write(events=tuple(events)), now)

    def write(self, write: Write, now: float) -> AddResult:
        """Write new events and running jobs, and close finished jobs, in one transaction.

        A finished job's running row goes, and so does the stand-in failure of it that
        shutdown or recovery put in the outbox and nobody has sent yet: the real outcome
        supersedes the presumed one.

        Raises:
            SpoolError: the write failed.
        """
        if not write:
            return AddResult((), 0)
        self._check_identity()
        rows = [(eid, body, created, 0, 0.0, None) for eid, body, created in write.events]
        with self._transaction("write to") as conn:
            # Started before finished: a job may start and end within one batch.
            self._start(conn, write.started)
            superseded = self._finish(conn, write.finished)
            ids, excess = self._insert(conn, rows, now)
        return AddResult(ids, excess, superseded)

    def _finish(self, conn: sqlite3.Connection, tokens: Sequence[str]) -> int:
        """Close finished jobs of this destination: their running rows, and their stand-in
        failures that nobody has tried to send yet (lock and transaction held)."""
        if not tokens:
            return 0
        conn.executemany("DELETE FROM running_job WHERE token = ? AND destination IS ?",
                         [(t, self.destination) for t in tokens])
        superseded = 0
        for token in tokens:
            cur = conn.execute("DELETE FROM outbox WHERE job_token = ? AND destination IS ?"
                               " AND attempts = 0 AND owner IS NULL", (token, self.destination))
            superseded += int(cur.rowcount or 0)
        return superseded

    def adopt(self, rows: Sequence[Kept], now: float, jobs: Write = Write()) -> AddResult:
        """Write what was kept elsewhere (in memory while this file was unusable), in one
        transaction: events with their attempt counts and due times, and the running and
        finished jobs of ``jobs``.

        Raises:
            SpoolError: the write failed.
        """
        if not rows and not jobs:
            return AddResult((), 0)
        self._check_identity()
        with self._transaction("write to") as conn:
            self._start(conn, jobs.started)
            self._finish(conn, jobs.finished)
            ids, excess = self._insert(
                conn, [(k.event.event_id, k.event.body, k.event.created, k.event.attempts,
                        k.due, k.job_token) for k in rows], now)
        return AddResult(ids, excess)

    def _start(self, conn: sqlite3.Connection, jobs: Sequence[RunningJob]) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO running_job (token, event_id, body, created, owner,"
            " destination) VALUES (?, ?, ?, ?, ?, ?)",
            [(job.token, job.event_id, job.body, job.created, self.owner, self.destination)
             for job in jobs])

    def _insert(self, conn: sqlite3.Connection,
                rows: Sequence[tuple[str, bytes, float, int, float, Optional[str]]],
                now: float) -> tuple[tuple[int, ...], int]:
        """Insert outbox rows ``(event_id, body, created, attempts, due, job_token)`` for
        this destination and drop the oldest beyond the bound (lock and transaction held)."""
        ids = []
        for event_id, body, created, attempts, due, token in rows:
            cur = conn.execute(
                "INSERT INTO outbox (event_id, body, created, spooled_at, attempts, owner,"
                " lease_until, next_attempt_at, destination, job_token, costs_credits)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event_id, body, created, now, attempts, self.owner,
                 now + self.lease_seconds, due, self.destination, token,
                 int(costs_credits(body))),
            )
            ids.append(int(cur.lastrowid or 0))
        if not rows:
            return (), 0
        (count,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
        excess = max(0, int(count) - self.max_events)
        if excess:
            self._drop_oldest(conn, excess)
        return tuple(ids), excess + self._bound_bytes(conn, int(count) - excess)

    @staticmethod
    def _drop_oldest(conn: sqlite3.Connection, n: int) -> None:
        conn.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
                     " ORDER BY created, id LIMIT ?)", (n,))

    def _bound_bytes(self, conn: sqlite3.Connection, count: int) -> int:
        """Drop the oldest events while the file's used pages exceed ``max_bytes``; return
        how many went. Reading the page counts costs nothing per write, unlike summing
        the bodies."""
        dropped = 0
        for _ in range(8):
            used = _used_bytes(conn)
            if used <= self.max_bytes or count <= 0:
                break
            # A guess from the mean row size, never less than one row a round.
            n = max(1, min(count, -(-(used - self.max_bytes) * count // max(used, 1))))
            self._drop_oldest(conn, n)
            dropped += n
            count -= n
        return dropped

    def _take_back_from_the_dead(self, conn: sqlite3.Connection, now: float) -> None:
        """Expire the leases of owners on this host whose process is gone."""
        others = [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT owner FROM outbox WHERE owner IS NOT NULL"
                " AND owner != ? AND lease_until >= ? AND destination IS ?",
                (self.owner, now, self.destination),
            )
        ]
        for owner in others:
            if _owner_is_dead(owner, self.owner):
                conn.execute("UPDATE outbox SET lease_until = 0 WHERE owner = ?", (owner,))

    def lease(self, limit: int, now: float, exclude: Collection[int] = (), *,
              costly: bool = True) -> list[SpooledEvent]:
        """Take up to ``limit`` of this destination's events due at ``now``, oldest first,
        and hold them for a while.

        Leasable: owned by this spool, or with an expired lease, or owned by a
        process on this host that no longer exists. Due: ``next_attempt_at`` has
        come (or lies beyond :data:`SCHEDULE_HORIZON`, which only a clock set
        back can cause). ``exclude`` names rows the caller already holds; with
        ``costly=False`` events that cost credits (successes) are left.
        """
        with self._transaction("read") as conn:
            self._take_back_from_the_dead(conn, now)
            rows = conn.execute(
                "SELECT id, event_id, body, created, attempts FROM outbox"
                " WHERE destination IS ? AND (owner = ? OR owner IS NULL OR lease_until < ?"
                " OR lease_until > ?)"
                " AND (next_attempt_at <= ? OR next_attempt_at > ?) AND costs_credits <= ?"
                " ORDER BY created, id LIMIT ?",
                (self.destination, self.owner, now, now + self.lease_seconds + 1.0, now,
                 now + self.schedule_horizon, int(costly), limit + len(exclude)),
            ).fetchall()
            rows = [r for r in rows if r[0] not in exclude][:limit]
            if rows:
                conn.executemany(
                    "UPDATE outbox SET owner = ?, lease_until = ? WHERE id = ?",
                    [(self.owner, now + self.lease_seconds, r[0]) for r in rows],
                )
        return [SpooledEvent(int(r[0]), str(r[1]), bytes(r[2]), float(r[3]), int(r[4]),
                             self.destination) for r in rows]

    def next_due(self, now: float, exclude: Collection[int] = (), *,
                 costly: bool = True) -> Optional[float]:
        """The earliest ``next_attempt_at`` among this destination's events it could lease
        (with ``costly=False``, among those that cost no credits)."""
        rows = self._guarded(lambda: self._conn.execute(
            "SELECT id, next_attempt_at FROM outbox"
            " WHERE destination IS ? AND (owner = ? OR owner IS NULL OR lease_until < ?"
            " OR lease_until > ?) AND costs_credits <= ? ORDER BY next_attempt_at LIMIT ?",
            (self.destination, self.owner, now, now + self.lease_seconds + 1.0, int(costly),
             len(exclude) + 1)).fetchall())
        for row_id, due_at in rows:
            if row_id not in exclude:
                due = float(due_at)
                return now if due > now + self.schedule_horizon else due
        return None

    def settle(self, settlement: Settlement, now: float) -> None:
        """Record a batch of outcomes in one transaction."""
        if not settlement:
            return
        with self._transaction("update") as conn:
            if settlement.delivered:
                conn.executemany("DELETE FROM outbox WHERE id = ? AND event_id = ?",
                                 settlement.delivered)
            if settlement.rescheduled:
                conn.executemany(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?"
                    " WHERE id = ? AND event_id = ?",
                    [(due, r, e) for r, e, due in settlement.rescheduled])
            for event, status, reason in settlement.dead:
                removed = conn.execute("DELETE FROM outbox WHERE id = ? AND event_id = ?",
                                       (event.row_id, event.event_id)).rowcount
                if removed:
                    conn.execute(
                        "INSERT INTO dead_letter (event_id, body, created, status, reason,"
                        " dead_at, destination) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (event.event_id, event.body, event.created, status, reason, now,
                         event.destination))
            if settlement.dead:  # the dead letters are bounded like the outbox
                conn.execute("DELETE FROM dead_letter WHERE id <= (SELECT max(id) FROM"
                             " dead_letter) - ?", (self.max_events,))

    def dead_letter(self, event: SpooledEvent, status: Optional[int], reason: str,
                    now: float) -> None:
        """Move an event the API rejected for good to the dead-letter table."""
        self.settle(Settlement(dead=((event, status, reason),)), now)

    def expire(self, now: float) -> int:
        """Drop events older than ``max_age``; return how many."""
        def run() -> int:
            conn = self._conn
            cur = conn.execute("DELETE FROM outbox WHERE created < ?", (now - self.max_age,))
            return int(cur.rowcount or 0)
        return self._guarded(run)

    # -- running jobs ---------------------------------------------------------------

    def recover_abandoned(self, now: float) -> int:
        """Turn the running jobs whose process is gone into their failure events, and
        take back the events such a process held for this destination.

        One transaction: of processes starting on the file at once, exactly one
        reports each job. A job whose owner ran under another host name (which
        cannot be probed) counts as abandoned after :data:`ABANDONED_AFTER`. The
        events keep the destination their job was logged for. Taking back the held
        events here, at start, lets a flush right after see them as waiting.
        """
        with self._transaction("recover running jobs in") as conn:
            self._take_back_from_the_dead(conn, now)
            rows = conn.execute("SELECT token, event_id, body, created, owner, destination"
                                " FROM running_job WHERE owner != ?", (self.owner,)).fetchall()
            gone = [r for r in rows if _abandoned(str(r[4]), float(r[3]), now, self.owner)]
            for token, event_id, body, created, _owner, destination in gone:
                conn.execute("DELETE FROM running_job WHERE token = ?", (token,))
                conn.execute(
                    "INSERT INTO outbox (event_id, body, created, spooled_at, attempts, owner,"
                    " lease_until, next_attempt_at, destination, job_token)"
                    " VALUES (?, ?, ?, ?, 0, NULL, 0, 0, ?, ?)",
                    (event_id, body, created, now, destination, token))
        return len(gone)

    def abandon_running(self, restamp: Restamp, now: float) -> int:
        """Turn the running jobs of this process (this spool's, and those of any handler of
        this process closed earlier, such as by a reconfiguration) into failure events for
        sending now (shutdown), restamped by ``restamp``, each for its own destination.

        They go in unleased, like a recovered job's: a lease means a request in flight.
        """
        prefix = self.owner.rsplit("|", 1)[0] + "|"
        with self._transaction("update") as conn:
            rows = conn.execute(
                "SELECT token, event_id, body, destination FROM running_job"
                " WHERE substr(owner, 1, ?) = ?", (len(prefix), prefix)).fetchall()
            conn.execute("DELETE FROM running_job WHERE substr(owner, 1, ?) = ?",
                         (len(prefix), prefix))
            for token, event_id, body, destination in rows:
                conn.execute(
                    "INSERT INTO outbox (event_id, body, created, spooled_at, attempts, owner,"
                    " lease_until, next_attempt_at, destination, job_token, costs_credits)"
                    " VALUES (?, ?, ?, ?, 0, NULL, 0, 0, ?, ?, 0)",
                    (event_id, restamp(bytes(body), now), now, now, destination, token))
        return len(rows)

    def salvage(self) -> tuple[list[Kept], list[RunningJob]]:
        """What this spool's own connection can still read of its destination's events and
        of its running jobs (with their due times), after its file was deleted or replaced:
        an unlinked file stays readable through an open connection."""
        def read() -> tuple[list[Kept], list[RunningJob]]:
            events = [Kept(SpooledEvent(int(r[0]), str(r[1]), bytes(r[2]), float(r[3]),
                                        int(r[4]), self.destination), float(r[5]),
                           None if r[6] is None else str(r[6]))
                      for r in self._conn.execute(
                          "SELECT id, event_id, body, created, attempts, next_attempt_at,"
                          " job_token FROM outbox WHERE destination IS ? ORDER BY created, id",
                          (self.destination,))]
            jobs = [RunningJob(str(r[0]), str(r[1]), bytes(r[2]), float(r[3]))
                    for r in self._conn.execute(
                        "SELECT token, event_id, body, created FROM running_job"
                        " WHERE owner = ?", (self.owner,))]
            return events, jobs
        try:
            return self._guarded(read)
        except SpoolError:
            return [], []

    def running(self) -> list[RunningJob]:
        """Jobs kept as running (any owner), oldest first: for inspection."""
        rows = self._guarded(lambda: self._conn.execute(
            "SELECT token, event_id, body, created FROM running_job ORDER BY created"
        ).fetchall())
        return [RunningJob(str(r[0]), str(r[1]), bytes(r[2]), float(r[3])) for r in rows]

    # -- inspection -------------------------------------------------------------------

    def pending_count(self) -> int:
        """Events waiting for this spool's destination."""
        return self._guarded(lambda: int(self._conn.execute(
            "SELECT count(*) FROM outbox WHERE destination IS ?",
            (self.destination,)).fetchone()[0]))

    def remember(self, api_url: str, name: str, value: str, until: float) -> None:
        """Keep what sending learnt about an API (the route that answers, a pause) until
        ``until`` (wall clock), for this and later runs."""
        with self._transaction("write to") as conn:
            conn.execute("INSERT OR REPLACE INTO api_memory (api_url, name, value, until)"
                         " VALUES (?, ?, ?, ?)", (api_url, name, value, until))

    def recall(self, api_url: str, now: float) -> dict[str, str]:
        """What earlier runs learnt about ``api_url`` and is still true at ``now``."""
        rows = self._guarded(lambda: self._conn.execute(
            "SELECT name, value FROM api_memory WHERE api_url = ? AND until > ?",
            (api_url, now)).fetchall())
        return {str(name): str(value) for name, value in rows}

    def total_count(self) -> int:
        """Events waiting, for every destination."""
        return self._guarded(
            lambda: int(self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0]))

    def counts_by_destination(self) -> dict[Optional[str], int]:
        """Events waiting, by destination (None: release 0.1.x's unaddressed rows)."""
        rows = self._guarded(lambda: self._conn.execute(
            "SELECT destination, count(*) FROM outbox GROUP BY destination"
            " ORDER BY destination").fetchall())
        return {(None if d is None else str(d)): int(n) for d, n in rows}

    def dead_letter_count(self) -> int:
        """Events in the dead-letter table."""
        return self._guarded(
            lambda: int(self._conn.execute("SELECT count(*) FROM dead_letter").fetchone()[0]))

    def pending(self, limit: int = 1_000_000) -> list[SpooledEvent]:
        """Read (without leasing) pending events of every destination, oldest first: for
        inspection and export."""
        rows = self._guarded(lambda: self._conn.execute(
            "SELECT id, event_id, body, created, attempts, destination FROM outbox"
            " ORDER BY created, id LIMIT ?", (limit,)).fetchall())
        return [SpooledEvent(int(r[0]), str(r[1]), bytes(r[2]), float(r[3]), int(r[4]),
                             None if r[5] is None else str(r[5])) for r in rows]

    def dead_letters(self, limit: int = 1_000_000) -> list[DeadLetter]:
        """Read dead-lettered events, oldest first."""
        rows = self._guarded(lambda: self._conn.execute(
            "SELECT id, event_id, body, created, status, reason, dead_at, destination"
            " FROM dead_letter ORDER BY id LIMIT ?", (limit,)).fetchall())
        return [DeadLetter(int(r[0]), str(r[1]), bytes(r[2]), float(r[3]),
                           None if r[4] is None else int(r[4]), str(r[5]), float(r[6]),
                           None if r[7] is None else str(r[7]))
                for r in rows]

    def purge(self, *, dead_letters_only: bool = False) -> int:
        """Delete everything pending (and dead-lettered); return how many rows went."""
        def run() -> int:
            total = 0
            tables = ("dead_letter",) if dead_letters_only else (
                "outbox", "dead_letter", "running_job")
            for table in tables:
                cur = self._conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
                total += int(cur.rowcount or 0)
            return total
        return self._guarded(run)

    def _guarded(self, op: Callable[[], _T]) -> _T:
        """Run ``op`` under the lock, translating SQLite errors to :class:`SpoolError`."""
        try:
            with self._lock:
                return op()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool file {self._file}: {exc}", busy=_is_busy(exc)) from exc

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def release(self) -> None:
        """Give up this spool's claims, so another process may send its events at once."""
        with self._transaction("update") as conn:
            conn.execute("UPDATE outbox SET lease_until = 0 WHERE owner = ?", (self.owner,))

    def prepare_fork(self) -> None:
        """Before ``os.fork()``: hold the lock so no transaction is open at the fork."""
        self._lock.acquire()

    def after_fork_parent(self) -> None:
        """In the parent after ``os.fork()``: carry on."""
        self._lock.release()

    def after_fork_child(self) -> None:
        """In the child after ``os.fork()``: close the inherited connection, open a new one.

        The parent held the lock across the fork, so the inherited connection is
        idle; closing it resets SQLite's per-process lock bookkeeping, which a
        new connection beside it would otherwise share in a stale state. The
        child is a process of its own: a new owner tag, and none of the parent's
        running jobs.

        Raises:
            SpoolError: the file cannot be reopened.
        """
        self._lock = threading.Lock()
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self.owner = new_owner()
        self._conn = self._open()


def recall_from_file(path: Path, api_url: str, now: float) -> dict[str, str]:
    """What the spool file at ``path`` remembers of ``api_url`` (as :meth:`Spool.recall`),
    read without writing anything: for ``massugc-logging check``. Empty when the file or
    the table is not there, or the file cannot be read."""
    if not path.is_file():
        return {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5)
    except sqlite3.Error:
        return {}
    try:
        rows = conn.execute("SELECT name, value FROM api_memory WHERE api_url = ? AND until > ?",
                            (api_url, now)).fetchall()
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    return {str(name): str(value) for name, value in rows}


def _identity(path: Path) -> tuple[int, int]:
    """What tells one file from another at the same path: its device and inode (on Windows,
    the volume serial number and file index)."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _used_bytes(conn: sqlite3.Connection) -> int:
    """The bytes of the database's pages in use (free pages left by deletes not counted)."""
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    return (int(pages) - int(free)) * int(size)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a file of an older schema up to this one, in one transaction.

    Release 0.1.0's outbox had no ``next_attempt_at``: the column is added with
    0, so every event it kept is due at once. Release 0.1.x's rows had no
    ``destination``: they stay unaddressed (NULL), and no handler sends them.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if int(version) >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "outbox" in tables:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
            for name, declaration in (("next_attempt_at", "REAL NOT NULL DEFAULT 0"),
                                      ("destination", "TEXT"), ("job_token", "TEXT"),
                                      ("costs_credits", "INTEGER NOT NULL DEFAULT 0")):
                if name not in columns:
                    conn.execute(f"ALTER TABLE outbox ADD COLUMN {name} {declaration}")
        if "dead_letter" in tables:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(dead_letter)")}
            if "destination" not in columns:
                conn.execute("ALTER TABLE dead_letter ADD COLUMN destination TEXT")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@dataclass
class _MemoryRow:
    event: SpooledEvent
    due: float = 0.0
    job_token: Optional[str] = None


class _SizedRows(OrderedDict):  # type: ignore[type-arg]
    """Memory rows by id that keep the sum of their bodies' sizes, for the byte bound."""

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def __setitem__(self, key: int, row: _MemoryRow) -> None:
        old = super().get(key)
        if old is not None:
            self.size -= len(old.event.body)
        super().__setitem__(key, row)
        self.size += len(row.event.body)

    def __delitem__(self, key: int) -> None:
        self.size -= len(self[key].event.body)
        super().__delitem__(key)

    def pop(self, key: int, *default: Any) -> Any:
        if key in self:
            row = super().pop(key)
            self.size -= len(row.event.body)
            return row
        return default[0] if default else super().pop(key)

    def popitem(self, last: bool = True) -> tuple[int, _MemoryRow]:
        key, row = super().popitem(last=last)
        self.size -= len(row.event.body)
        return key, row

    def clear(self) -> None:
        super().clear()
        self.size = 0


class MemorySpool:
    """The same interface as :class:`Spool`, in memory: lost when the process ends."""

    path: Optional[Path] = None
    #: Events live in memory only.
    using_memory = True

    def __init__(self, *, max_events: int = DEFAULT_MAX_EVENTS,
                 max_age: float = DEFAULT_MAX_AGE, destination: Optional[str] = None,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 schedule_horizon: float = SCHEDULE_HORIZON) -> None:
        self.max_events = max_events
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.schedule_horizon = schedule_horizon
        self.destination = destination
        self._lock = threading.Lock()
        self._rows = _SizedRows()
        self._running: dict[str, RunningJob] = {}
        self._dead: list[DeadLetter] = []
        self._memory: dict[tuple[str, str], tuple[str, float]] = {}
        self._next_id = _MEMORY_ID_BASE

    def __repr__(self) -> str:
        return "<MemorySpool>"

    def start(self, now: float) -> None:
        """Nothing to open."""

    def add(self, events: Sequence[tuple[str, bytes, float]], now: float) -> AddResult:
        """Keep events in memory; drop the oldest beyond ``max_events``."""
        return self.write(Write(events=tuple(events)), now)

    def write(self, write: Write, now: float) -> AddResult:
        """Keep events and running jobs; close finished jobs (as :meth:`Spool.write`)."""
        with self._lock:
            for job in write.started:  # started before finished, as in Spool.write
                self._running[job.token] = job
            superseded = 0
            for token in write.finished:
                self._running.pop(token, None)
                stale = [rid for rid, r in self._rows.items()
                         if r.job_token == token and r.event.attempts == 0]
                for rid in stale:
                    del self._rows[rid]
                superseded += len(stale)
            ids = self._insert([(e, 0.0, None) for e in write.events])
            dropped = self._bound()
        return AddResult(ids, dropped, superseded)

    def _insert(self, rows: Sequence[tuple[tuple[str, bytes, float], float, Optional[str]]]
                ) -> tuple[int, ...]:
        ids = []
        for (event_id, body, created), due, token in rows:
            self._next_id += 1
            self._rows[self._next_id] = _MemoryRow(
                SpooledEvent(self._next_id, event_id, body, created, 0, self.destination),
                due, token)
            ids.append(self._next_id)
        return tuple(ids)

    def _bound(self) -> int:
        dropped = 0
        while self._rows and (len(self._rows) > self.max_events
                              or self._rows.size > self.max_bytes):
            self._rows.popitem(last=False)
            dropped += 1
        return dropped

    def _ordered(self) -> list[_MemoryRow]:
        return sorted(self._rows.values(), key=lambda r: (r.event.created, r.event.row_id))

    def lease(self, limit: int, now: float, exclude: Collection[int] = (), *,
              costly: bool = True) -> list[SpooledEvent]:
        """The oldest ``limit`` due events not in ``exclude`` (nor costing credits, unless
        ``costly``)."""
        with self._lock:
            due = [r.event for r in self._ordered()
                   if (r.due <= now or r.due > now + self.schedule_horizon)
                   and r.event.row_id not in exclude
                   and (costly or not costs_credits(r.event.body))]
            return due[:limit]

    def next_due(self, now: float, exclude: Collection[int] = (), *,
                 costly: bool = True) -> Optional[float]:
        """The earliest due time of the events held (not in ``exclude``)."""
        with self._lock:
            times = [r.due for rid, r in self._rows.items() if rid not in exclude
                     and (costly or not costs_credits(r.event.body))]
        if not times:
            return None
        due = min(times)
        return now if due > now + self.schedule_horizon else due

    def settle(self, settlement: Settlement, now: float) -> None:
        """Forget delivered events, reschedule, dead-letter (bounded)."""
        with self._lock:
            for rid, event_id in settlement.delivered:
                self._forget_row(rid, event_id)
            for rid, event_id, due in settlement.rescheduled:
                row = self._rows.get(rid)
                if row is not None and row.event.event_id == event_id:
                    e = row.event
                    self._rows[rid] = _MemoryRow(
                        SpooledEvent(e.row_id, e.event_id, e.body, e.created, e.attempts + 1,
                                     e.destination), due, row.job_token)
            for event, status, reason in settlement.dead:
                if not self._forget_row(event.row_id, event.event_id):
                    continue
                self._dead.append(DeadLetter(event.row_id, event.event_id, event.body,
                                             event.created, status, reason, now,
                                             event.destination))
            del self._dead[:-self.max_events]

    def _forget_row(self, row_id: int, event_id: str) -> bool:
        """Remove the row ``row_id`` if it holds ``event_id`` (lock held); whether it did."""
        row = self._rows.get(row_id)
        if row is None or row.event.event_id != event_id:
            return False
        del self._rows[row_id]
        return True

    def dead_letter(self, event: SpooledEvent, status: Optional[int], reason: str,
                    now: float) -> None:
        """Move an event to the (bounded) dead-letter list."""
        self.settle(Settlement(dead=((event, status, reason),)), now)

    def recover_abandoned(self, now: float) -> int:
        """Nothing to recover: no other process's jobs are kept here."""
        return 0

    def counts_by_destination(self) -> dict[Optional[str], int]:
        """Memory holds only this handler's events."""
        return {self.destination: len(self._rows)} if self._rows else {}

    def remember(self, api_url: str, name: str, value: str, until: float) -> None:
        """Keep it for this run only."""
        with self._lock:
            self._memory[(api_url, name)] = (value, until)

    def recall(self, api_url: str, now: float) -> dict[str, str]:
        """What this run learnt about ``api_url`` that is still true."""
        with self._lock:
            return {name: value for (url, name), (value, until) in self._memory.items()
                    if url == api_url and until > now}

    def remembered(self) -> list[tuple[str, str, str, float]]:
        """Everything kept by :meth:`remember`, as ``(api_url, name, value, until)`` (to move
        it to a file)."""
        with self._lock:
            return [(url, name, value, until)
                    for (url, name), (value, until) in self._memory.items()]

    def abandon_running(self, restamp: Restamp, now: float) -> int:
        """Turn the running jobs into failure events now (at shutdown)."""
        with self._lock:
            jobs, self._running = list(self._running.values()), {}
            self._insert([((job.event_id, restamp(job.body, now), now), 0.0, job.token)
                          for job in jobs])
            self._bound()
        return len(jobs)

    def take_all(self, exclude: Collection[int] = ()) -> list[Kept]:
        """Remove and return every event not in ``exclude``, with its due time and job
        token (to move them to a file)."""
        with self._lock:
            rows = [Kept(r.event, r.due, r.job_token) for r in self._ordered()
                    if r.event.row_id not in exclude]
            for kept in rows:
                del self._rows[kept.event.row_id]
            return rows

    def keep(self, rows: Sequence[Kept], jobs: Sequence[RunningJob] = ()) -> None:
        """Keep events read back from a file that is gone, under new memory ids, with their
        attempts, due times and job tokens, and its running jobs."""
        with self._lock:
            for kept in rows:
                event = kept.event
                self._next_id += 1
                self._rows[self._next_id] = _MemoryRow(
                    SpooledEvent(self._next_id, event.event_id, event.body, event.created,
                                 event.attempts, self.destination), kept.due, kept.job_token)
            for job in jobs:
                self._running.setdefault(job.token, job)
            self._bound()

    def take_running(self) -> list[RunningJob]:
        """Remove and return the running jobs (to move them to a file)."""
        with self._lock:
            jobs, self._running = list(self._running.values()), {}
            return jobs

    def put_back(self, rows: Sequence[Kept], running: Sequence[RunningJob] = ()) -> None:
        """Keep again what :meth:`take_all` and :meth:`take_running` returned (their move
        to a file failed)."""
        with self._lock:
            for kept in rows:
                self._rows[kept.event.row_id] = _MemoryRow(kept.event, kept.due, kept.job_token)
            for job in running:
                self._running.setdefault(job.token, job)

    def expire(self, now: float) -> int:
        """Drop events older than ``max_age``."""
        with self._lock:
            old = [rid for rid, r in self._rows.items() if r.event.created < now - self.max_age]
            for rid in old:
                del self._rows[rid]
            return len(old)

    def pending_count(self) -> int:
        """Events held."""
        return len(self._rows)

    def running_count(self) -> int:
        """Running jobs held."""
        return len(self._running)

    def dead_letter_count(self) -> int:
        """Events dead-lettered."""
        return len(self._dead)

    def pending(self, limit: int = 1_000_000) -> list[SpooledEvent]:
        """Held events, oldest first."""
        with self._lock:
            return [r.event for r in self._ordered()][:limit]

    def dead_letters(self, limit: int = 1_000_000) -> list[DeadLetter]:
        """Dead-lettered events."""
        with self._lock:
            return list(self._dead[:limit])

    def purge(self, *, dead_letters_only: bool = False) -> int:
        """Forget everything."""
        with self._lock:
            n = len(self._dead) + (0 if dead_letters_only else len(self._rows))
            self._dead.clear()
            if not dead_letters_only:
                self._rows.clear()
            return n

    def close(self) -> None:
        """Nothing to close."""

    def release(self) -> None:
        """Nothing to release: no other process can see these events."""

    def prepare_fork(self) -> None:
        """Before ``os.fork()``: hold the lock."""
        self._lock.acquire()

    def after_fork_parent(self) -> None:
        """In the parent after ``os.fork()``: carry on."""
        self._lock.release()

    def after_fork_child(self) -> None:
        """In the child: the parent's in-memory backlog and jobs are the parent's; drop them."""
        self._lock = threading.Lock()
        self._rows = _SizedRows()
        self._running = {}
        self._dead = []
