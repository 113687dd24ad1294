"""The collector's SQLite table: one connection, one lock, race-free dedup.

Besides the event body as received, each row keeps the columns the page and
the JSON API filter and group on: outcome, workflow type, error category,
error text, failure signature (:mod:`massugc_logging.groups`) and the time the
job *happened* (``occurred_at``, seconds since the epoch): the event's own
timestamp, or the time it arrived when that is later, so that a backlog
delivered after an outage counts when its jobs failed, and a desktop whose
clock runs ahead cannot put its events in the future. Files written by
earlier versions gain these columns when opened, filled from their bodies.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union, cast

from massugc_logging.groups import Failure, failure_signature

__all__ = ["DatabaseUnusable", "EventFilter", "EventStore", "NotACollectorDatabase",
           "format_time", "parse_time"]

_CREATE_TABLE = """CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT,
    received_at TEXT NOT NULL,
    success INTEGER NOT NULL,
    workflow_type TEXT NOT NULL,
    category TEXT,
    body TEXT NOT NULL
)"""
# NULL keys (no header) never collide; equal keys cannot both be stored.
_CREATE_KEY_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS events_idempotency_key ON events (idempotency_key)"
)
#: Columns added after 0.1.0, with their types; filled from the body for older rows.
_DERIVED_COLUMNS = (("occurred_at", "REAL"), ("error_message", "TEXT"), ("signature", "TEXT"))
_CREATE_TIME_INDEX = "CREATE INDEX IF NOT EXISTS events_occurred_at ON events (occurred_at)"


class DatabaseUnusable(Exception):
    """The collector cannot keep its events in ``path``: ``reason`` says why.

    Raised when the file (or its directory) cannot be created, opened or written.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(path, reason)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"cannot keep the collector's events in {self.path} ({self.reason})"


class NotACollectorDatabase(DatabaseUnusable):
    """``path`` holds something else: not SQLite, damaged, or another program's tables."""

    def __str__(self) -> str:
        return f"{self.path} is not a collector database ({self.reason})"


_SQLITE_HEADER = b"SQLite format 3\x00"


def _open_problem(path: Path, exc: Exception) -> DatabaseUnusable:
    """What an error while opening ``path`` means: the place, or the file's contents."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError) and (
            "unable to open" in text or "readonly" in text or "disk i/o" in text.lower()):
        return DatabaseUnusable(path, text)
    return NotACollectorDatabase(path, text)


def format_time(epoch: float) -> str:
    """Seconds since the epoch in the contract's format: UTC, milliseconds, ``Z``."""
    moment = datetime.fromtimestamp(epoch, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: object) -> Optional[float]:
    """The contract's timestamp as seconds since the epoch; None when it is not one."""
    if not isinstance(text, str) or not text.endswith("Z"):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _rate(failures: int, total: int) -> float:
    return failures / total if total else 0.0


@dataclass(frozen=True)
class EventFilter:
    """Which stored events to list; every field None means no restriction."""

    success: Optional[bool] = None
    workflow_type: Optional[str] = None
    category: Optional[str] = None
    signature: Optional[str] = None
    #: Only events with an id below this (paging back) or above it (polling forward).
    before_id: Optional[int] = None
    after_id: Optional[int] = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("success", None if self.success is None else int(self.success)),
                              ("workflow_type", self.workflow_type),
                              ("category", self.category), ("signature", self.signature)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.before_id is not None:
            clauses.append("id < ?")
            params.append(self.before_id)
        if self.after_id is not None:
            clauses.append("id > ?")
            params.append(self.after_id)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _derived(body: Mapping[str, Any], received: float) -> tuple[float, Optional[str]]:
    """``occurred_at`` and the error text of a stored body."""
    job = body.get("job_data")
    job = job if isinstance(job, Mapping) else {}
    stamp = parse_time(body.get("timestamp"))
    occurred = received if stamp is None else min(stamp, received)
    message = job.get("error_message")
    return occurred, message if isinstance(message, str) else None


def _check_place(path: Path) -> None:
    """Make ``path``'s directory and refuse a file that is not SQLite, before opening it."""
    if path.is_dir():
        raise DatabaseUnusable(path, "it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnusable(path, f"its directory cannot be created: "
                                     f"{exc.strerror or type(exc).__name__}") from None
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DatabaseUnusable(path, f"it cannot be read: "
                                     f"{exc.strerror or type(exc).__name__}") from None
    if head and head != _SQLITE_HEADER:
        raise NotACollectorDatabase(path, "it is not an SQLite file")


class EventStore:
    """Stored events and the queries the collector answers from them."""

    def __init__(self, db_path: Union[str, Path, None]) -> None:
        """Open (or create) the database; ``None`` keeps it in memory.

        Raises:
            NotACollectorDatabase: the file is not SQLite, is damaged, or holds
                another program's tables (it is left as it was).
            DatabaseUnusable: the file or its directory cannot be created or opened.
        """
        path = None if db_path is None else Path(db_path)
        if path is not None:
            _check_place(path)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                ":memory:" if path is None else str(path), check_same_thread=False,
                isolation_level=None, timeout=5.0,
            )
        except sqlite3.Error as exc:
            raise _open_problem(cast(Path, path), exc) from None
        try:
            with self._lock:
                if path is not None:
                    self._check_tables(path)
                self._conn.execute(_CREATE_TABLE)
                self._conn.execute(_CREATE_KEY_INDEX)
                self._add_derived_columns()
                self._conn.execute(_CREATE_TIME_INDEX)
        except BaseException as exc:
            self._conn.close()
            if path is None or not isinstance(exc, (sqlite3.Error, ValueError)):
                raise
            raise _open_problem(path, exc) from None

    def _check_tables(self, path: Path) -> None:
        """Refuse a database of another program: adding a table to it would change it."""
        tables = {row[0] for row in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        tables.discard("sqlite_sequence")
        if tables and "events" not in tables:
            listed = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
            raise NotACollectorDatabase(path, f"it holds another program's tables: {listed}")

    def _add_derived_columns(self) -> None:
        """Bring a file from an earlier version up to date (under the lock)."""
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(events)")}
        missing = [(name, kind) for name, kind in _DERIVED_COLUMNS if name not in present]
        if not missing:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for name, kind in missing:
                self._conn.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")
            rows = self._conn.execute(
                "SELECT id, received_at, success, category, body FROM events").fetchall()
            for event_id, received_at, success, category, text in rows:
                body = json.loads(text)
                received = parse_time(received_at) or 0.0
                occurred, message = _derived(body if isinstance(body, dict) else {}, received)
                signature = None if success else failure_signature(category, message)
                self._conn.execute(
                    "UPDATE events SET occurred_at = ?, error_message = ?, signature = ?"
                    " WHERE id = ?", (occurred, message, signature, event_id))
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def insert(
        self,
        idempotency_key: Optional[str],
        body: Mapping[str, Any],
        *,
        received: float,
        success: bool,
        workflow_type: str,
        category: Optional[str],
    ) -> tuple[int, bool]:
        """Store an event unless its key is already stored; return (row id, stored)."""
        # ensure_ascii keeps lone surrogates from the JSON out of SQLite's UTF-8.
        text = json.dumps(body, separators=(",", ":"))
        occurred, message = _derived(body, received)
        signature = None if success else failure_signature(category, message)
        with self._lock:
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO events (idempotency_key, received_at, success,"
                " workflow_type, category, body, occurred_at, error_message, signature)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (idempotency_key, format_time(received), int(success), workflow_type, category,
                 text, occurred, message, signature),
            )
            if cursor.rowcount == 1:
                return int(cast(int, cursor.lastrowid)), True
            row = self._conn.execute(
                "SELECT id FROM events WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
        return int(row[0]), False

    def events(
        self, limit: Optional[int] = None, where: Optional[EventFilter] = None
    ) -> list[dict[str, Any]]:
        """The most recent ``limit`` matching events (all when None), oldest first."""
        clause, params = (where or EventFilter()).where()
        with self._lock:
            rows = self._conn.execute(
                # The clause holds fixed column names and placeholders only.
                "SELECT id, idempotency_key, received_at, body, occurred_at, category,"  # noqa: S608
                f" signature FROM events{clause} ORDER BY id DESC LIMIT ?",
                (*params, -1 if limit is None else limit),
            ).fetchall()
        return [self._as_event(row) for row in reversed(rows)]

    def events_by_id(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The stored events with these ids, by id."""
        wanted = sorted(set(ids))
        found: dict[int, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                rows = self._conn.execute(
                    "SELECT id, idempotency_key, received_at, body, occurred_at,"  # noqa: S608
                    " category, signature FROM events"
                    f" WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                found.update((row[0], self._as_event(row)) for row in rows)
        return found

    @staticmethod
    def _as_event(row: Sequence[Any]) -> dict[str, Any]:
        return {
            "id": row[0], "idempotency_key": row[1], "received_at": row[2],
            "body": json.loads(row[3]),
            "occurred_at": format_time(row[4]) if row[4] is not None else row[2],
            "category": row[5], "signature": row[6],
        }

    def failures(self) -> list[Failure]:
        """Every stored failure, as :func:`massugc_logging.groups.group_failures` takes them."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, occurred_at, category, error_message, workflow_type, signature"
                " FROM events WHERE success = 0"
            ).fetchall()
        return [
            Failure(event_id=row[0], occurred_at=row[1] or 0.0, category=row[2] or "unknown",
                    error_message=row[3] or "", workflow_type=row[4] or "",
                    signature=row[5] or "")
            for row in rows
        ]

    def last_id(self) -> int:
        """The newest event's id (0 when there is none): changes whenever one is stored."""
        with self._lock:
            row = self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        return int(row[0])

    def counts(self, recent_since: float) -> dict[str, Any]:
        """Totals, failure rate by workflow type, failures by category; overall and recent."""
        with self._lock:
            total, failures, recent_total, recent_failures = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(success = 0), 0),"
                " COALESCE(SUM(occurred_at >= ?), 0),"
                " COALESCE(SUM(occurred_at >= ? AND success = 0), 0) FROM events",
                (recent_since, recent_since),
            ).fetchone()
            by_workflow = self._conn.execute(
                "SELECT workflow_type, COUNT(*), SUM(success = 0), SUM(occurred_at >= ?),"
                " SUM(occurred_at >= ? AND success = 0) FROM events"
                " GROUP BY workflow_type ORDER BY workflow_type",
                (recent_since, recent_since),
            ).fetchall()
            by_category = self._conn.execute(
                "SELECT COALESCE(category, 'unknown'), COUNT(*), SUM(occurred_at >= ?)"
                " FROM events WHERE success = 0 GROUP BY 1 ORDER BY 2 DESC, 1",
                (recent_since,),
            ).fetchall()
        return {
            "events": total,
            "successes": total - failures,
            "failures": failures,
            "failure_rate": _rate(failures, total),
            "recent": {
                "events": recent_total,
                "failures": recent_failures,
                "failure_rate": _rate(recent_failures, recent_total),
            },
            "by_workflow_type": {
                name: {"events": n, "failures": f, "failure_rate": _rate(f, n),
                       "recent_events": rn, "recent_failures": rf,
                       "recent_failure_rate": _rate(rf, rn)}
                for name, n, f, rn, rf in by_workflow
            },
            "by_category": {
                name: {"failures": n, "share_of_failures": _rate(n, failures),
                       "recent_failures": rn,
                       "recent_share_of_failures": _rate(rn, recent_failures)}
                for name, n, rn in by_category
            },
        }
