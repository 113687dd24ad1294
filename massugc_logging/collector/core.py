"""The collector itself: ingest, the questions support asks of the stored events, lifecycle.

:class:`Collector` is the public face. Its ingest interface, :meth:`Collector.ingest`,
takes a parsed event as the cloud would and is what the HTTP layer
(:mod:`.server`) calls once a request's framing and headers are checked; its
queries (:meth:`~Collector.stats`, :meth:`~Collector.groups`,
:meth:`~Collector.events`) back the JSON API and the page (:mod:`.page`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Callable, Optional, Union

from massugc_logging.classify import Classifier
from massugc_logging.collector.query import DEFAULT_WINDOW_S
from massugc_logging.collector.store import EventFilter, EventStore, format_time
from massugc_logging.contract import validate_event
from massugc_logging.diagnostics import Diagnostics, Topic
from massugc_logging.groups import FailureGroup, group_failures

__all__ = ["Collector", "Ingested", "serve_forever"]

LOGGER_NAME = "massugc_logging.collector"
_log = logging.getLogger(LOGGER_NAME)

#: How long stop() lets requests in progress finish before cutting them off.
_STOP_GRACE_SECONDS = 5.0

@dataclass(frozen=True)
class Ingested:
    """What became of one event: stored, a duplicate of ``event_id``, or refused."""

    event_id: Optional[int]
    stored: bool
    #: Contract violations (the event was refused, with 422) or empty.
    problems: tuple[str, ...] = ()


class Collector:
    """A local MassUGC Cloud API: start() it, point a handler at ``url``, read ``events()``.

    ``db_path`` None keeps events in memory. Leaving a ``with`` block (or
    ``stop()``) stops serving; stored events stay readable until ``close()``
    or garbage collection, and ``start()`` again serves on the same port.
    ``clock`` (seconds since the epoch) stamps arrivals and places the
    recent window; tests pass their own.
    """

    def __init__(
        self,
        db_path: Union[str, Path, None] = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_bytes: int = 1_048_576,
        classifier: Optional[Classifier] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) \
                or max_body_bytes < 1:
            raise ValueError("max_body_bytes must be a positive integer")
        self.host = host
        self.port = port
        self.max_body_bytes = max_body_bytes
        self.classifier = classifier if classifier is not None else Classifier()
        self.clock = clock
        self._store = EventStore(db_path)
        self._close_store = weakref.finalize(self, self._store.close)
        self._traffic = Diagnostics(_log)
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: Optional[threading.Thread] = None
        self._url: Optional[str] = None

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        return f"<Collector {state} {self._url or '(never started)'}>"

    # -- ingest ----------------------------------------------------------------

    def ingest(self, body: Any, idempotency_key: Optional[str] = None) -> Ingested:
        """Validate a parsed event against the contract and store it, once per key.

        The event's category is the one it carries (``error_category``) or,
        failing that, this collector's classifier's verdict on its error text.
        """
        problems = validate_event(body)
        if problems:
            return Ingested(None, False, tuple(problems))
        job = body["job_data"]
        success = job["success"] is True
        category: Optional[str] = None
        if not success:
            given = job.get("error_category")
            if isinstance(given, str) and given.strip():
                category = given.strip()
            else:
                category = self.classifier.classify(text=job.get("error_message") or "").category
        event_id, stored = self._store.insert(
            idempotency_key, body, received=self.clock(), success=success,
            workflow_type=str(job.get("workflow_type") or ""), category=category,
        )
        self.record("stored" if stored else "duplicates")
        return Ingested(event_id, stored)

    def record(self, name: str) -> None:
        """Count one occurrence of ``name`` (requests, rejected_401, ...) for :meth:`stats`."""
        self._traffic.count(name)

    def report_internal_error(self, exc: BaseException, where: str) -> None:
        """Log a failure of the collector's own code once at WARNING, repeats at DEBUG."""
        self.record("internal_errors")
        self._traffic.say_once(
            Topic.COLLECTOR_INTERNAL, logging.WARNING,
            "collector: unexpected %s while handling %s (repeats are logged at DEBUG)",
            type(exc).__name__, where[:200], about=type(exc).__name__,
        )
        _log.debug("collector: internal error", exc_info=exc)

    # -- what support asks -----------------------------------------------------

    def events(
        self, limit: Optional[int] = None, where: Optional[EventFilter] = None
    ) -> list[dict[str, Any]]:
        """Stored events, oldest first: ``{"id", "idempotency_key", "received_at", "body",
        "occurred_at", "category", "signature"}``; the newest ``limit`` when given."""
        return self._store.events(limit, where)

    def events_by_id(self, ids: Any) -> dict[int, dict[str, Any]]:
        """Stored events by id, for the ids that exist."""
        return self._store.events_by_id(ids)

    def last_event_id(self) -> int:
        """The newest stored event's id, 0 when none: a cheap "anything new?" check."""
        return self._store.last_id()

    def requests_seen(self) -> int:
        """POST requests received on any path, including rejected ones and duplicates."""
        return self._traffic.snapshot().get("requests", 0)

    def duplicates(self) -> int:
        """POSTs whose Idempotency-Key was already stored (answered 200, not stored again)."""
        return self._traffic.snapshot().get("duplicates", 0)

    def stats(self, window_s: int = DEFAULT_WINDOW_S) -> dict[str, Any]:
        """What ``GET /api/stats`` returns: totals and failure rates, overall and recent.

        ``recent`` (and each row's ``recent_*``) counts jobs that happened in the
        last ``window_s`` seconds, beside the all-time figures.
        """
        now = self.clock()
        counters = self._traffic.snapshot()
        stats = self._store.counts(now - window_s)
        stats["recent"].update(window_s=window_s, since=format_time(now - window_s))
        stats["generated_at"] = format_time(now)
        stats["last_event_id"] = self._store.last_id()
        stats["requests_seen"] = counters.get("requests", 0)
        stats["duplicates"] = counters.get("duplicates", 0)
        stats["rejected"] = {
            name[len("rejected_"):]: n for name, n in sorted(counters.items())
            if name.startswith("rejected_")
        }
        return stats

    def groups(self, window_s: int = DEFAULT_WINDOW_S) -> list[FailureGroup]:
        """Stored failures grouped by signature, newest activity first."""
        return group_failures(self._store.failures(), recent_since=self.clock() - window_s)

    def groups_report(self, window_s: int = DEFAULT_WINDOW_S) -> dict[str, Any]:
        """What ``GET /api/groups`` returns: the groups with their examples, times as text."""
        now = self.clock()
        groups = self.groups(window_s)
        shown = {i for g in groups for i in g.recent_event_ids}
        events = self.events_by_id(shown)
        return {
            "generated_at": format_time(now),
            "window_s": window_s,
            "recent_since": format_time(now - window_s),
            "count": len(groups),
            "groups": [group_as_json(g, events) for g in groups],
        }

    # -- lifecycle -------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://<host>:<port>``, the base URL to give a handler or client."""
        if self._url is None:
            raise RuntimeError("the collector has not been started; call start() first")
        return self._url

    def start(self) -> Collector:
        """Serve on a daemon thread (a no-op when already serving); returns self."""
        # Imported here: the server module imports this one for its routes' types.
        from massugc_logging.collector.server import CollectorServer  # noqa: PLC0415

        with self._lock:
            if self._server is not None:
                return self
            server = CollectorServer((self.host, self.port), self)
            host, port = server.server_address[:2]
            self.port = int(port)  # a restart after stop() reuses the port
            self._url = f"http://{host!s}:{self.port}"
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.1},
                name="massugc-collector", daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving and end open connections; idempotent."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        server.end_connections(timeout=_STOP_GRACE_SECONDS)
        server.server_close()
        thread.join(timeout=5.0)

    def close(self) -> None:
        """Stop serving and close the database; idempotent."""
        self.stop()
        self._close_store()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()


def _event_summary(event: Mapping[str, Any]) -> dict[str, Any]:
    body = event.get("body")
    job = body.get("job_data") if isinstance(body, dict) else None
    job = job if isinstance(job, dict) else {}
    return {
        "event_id": event.get("id"),
        "occurred_at": event.get("occurred_at"),
        "workflow_type": job.get("workflow_type"),
        "job_name": job.get("job_name"),
        "run_id": job.get("run_id"),
    }


def group_as_json(group: FailureGroup, events: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """One group for the JSON API, its example and recent events filled from ``events``."""
    example = group.example
    example_event = events.get(example.event_id) if example is not None else None
    return {
        "signature": group.signature,
        "category": group.category,
        "exception_type": group.exception_type,
        "title": group.title,
        "count": group.count,
        "first_seen": format_time(group.first_seen),
        "last_seen": format_time(group.last_seen),
        "recent_count": group.recent_count,
        "share_of_recent_failures": group.share_of_recent_failures,
        "workflows": dict(group.workflows),
        "example": None if example is None else {
            **(_event_summary(example_event) if example_event is not None else {
                "event_id": example.event_id, "occurred_at": format_time(example.occurred_at),
                "workflow_type": example.workflow_type, "job_name": None, "run_id": None}),
            "error_message": example.error_message,
        },
        "recent_events": [_event_summary(events[i]) for i in group.recent_event_ids
                          if i in events],
    }


def serve_forever(
    db_path: Union[str, Path, None],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: Optional[Callable[[str], None]] = None,
    stop_event: Optional[threading.Event] = None,
) -> None:
    """Run a collector until KeyboardInterrupt, SIGTERM or ``stop_event``; for the CLI.

    Prints nothing: ``ready(url)`` is called once the collector is serving.
    SIGTERM is handled only when called from the main thread.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    collector = Collector(db_path, host, port).start()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous: Any = None

    def on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    try:
        if in_main_thread:
            previous = signal.signal(signal.SIGTERM, on_sigterm)
        if ready is not None:
            ready(collector.url)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        collector.close()
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)
