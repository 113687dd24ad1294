"""A local stand-in for the MassUGC Cloud API, for development, demos and tests.

Not a production server. It speaks the wire contract of
:mod:`massugc_logging.contract` on the same endpoints (``/api/desktop/usage/log``
and the legacy ``/api/desktop/usage``), answers with the same status codes and
error bodies, drops duplicates by ``Idempotency-Key``, keeps events in SQLite
and shows them on a small HTML page. It does not check keys beyond their
shape, and has no TLS, no rate limits and no multi-process story. One SQLite
connection sits behind one lock; HTTP runs on a ``ThreadingHTTPServer`` on a
daemon thread, with HTTP/1.1 keep-alive.

Status codes for ``POST``, checked in this order: 401 (missing or malformed
``X-API-Key``), 415 (not ``application/json``), 411 (no ``Content-Length``),
413 (larger than ``max_body_bytes``, decided from the header alone), 400
(malformed JSON), 422 (contract violations), then 200 for a stored event or a
duplicate.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import re
import signal
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Callable, Optional, Union, cast
from urllib.parse import parse_qs, urlsplit

from massugc_logging._version import __version__
from massugc_logging.classify import Classifier
from massugc_logging.contract import (
    API_KEY_PATTERN,
    DEFAULT_ENDPOINT,
    LEGACY_ENDPOINT,
    validate_event,
)
from massugc_logging.diagnostics import Diagnostics

__all__ = ["Collector", "serve_forever"]

LOGGER_NAME = "massugc_logging.collector"
_log = logging.getLogger(LOGGER_NAME)

INGEST_PATHS = (DEFAULT_ENDPOINT, LEGACY_ENDPOINT)
READ_PATHS = ("/", "/api/events", "/api/stats", "/healthz")
PAGE_EVENTS = 100
MAX_IDEMPOTENCY_KEY_CHARS = 200
ERROR_MESSAGE_DISPLAY_CHARS = 200

#: Idle keep-alive connections are dropped after this many seconds.
IDLE_CONNECTION_TIMEOUT = 30.0
#: After refusing a body unread, keep discarding what the client still sends
#: for this long (or this much) so that it can read the answer; see _linger.
_LINGER_SECONDS = 2.0
_LINGER_MAX_BYTES = 64 * 1024 * 1024
#: How long stop() lets requests in progress finish before cutting them off.
_STOP_GRACE_SECONDS = 5.0

_DIGITS = re.compile(r"[0-9]+")

PAGE_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
    ("X-Content-Type-Options", "nosniff"),
)


def _utc_now() -> str:
    """Now, in the contract's format: UTC, milliseconds, ``Z``."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _rate(failures: int, total: int) -> float:
    return failures / total if total else 0.0


class _EventStore:
    """The collector's SQLite table: one connection, one lock, race-free dedup."""

    _SCHEMA = (
        """CREATE TABLE IF NOT EXISTS events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            idempotency_key TEXT,
            received_at TEXT NOT NULL,
            success INTEGER NOT NULL,
            workflow_type TEXT NOT NULL,
            category TEXT,
            body TEXT NOT NULL
        )""",
        # NULL keys (no header) never collide; equal keys cannot both be stored.
        "CREATE UNIQUE INDEX IF NOT EXISTS events_idempotency_key ON events (idempotency_key)",
    )

    def __init__(self, db_path: Union[str, Path, None]) -> None:
        if db_path is None:
            target = ":memory:"
        else:
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            target = str(db_path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            target, check_same_thread=False, isolation_level=None, timeout=5.0
        )
        with self._lock:
            for statement in self._SCHEMA:
                self._conn.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def insert(
        self,
        idempotency_key: Optional[str],
        body: Mapping[str, Any],
        *,
        success: bool,
        workflow_type: str,
        category: Optional[str],
    ) -> tuple[int, bool]:
        """Store an event unless its key is already stored; return (row id, stored)."""
        # ensure_ascii keeps lone surrogates from the JSON out of SQLite's UTF-8.
        text = json.dumps(body, separators=(",", ":"))
        with self._lock:
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO events"
                " (idempotency_key, received_at, success, workflow_type, category, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (idempotency_key, _utc_now(), int(success), workflow_type, category, text),
            )
            if cursor.rowcount == 1:
                return int(cast(int, cursor.lastrowid)), True
            row = self._conn.execute(
                "SELECT id FROM events WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
        return int(row[0]), False

    def events(self, limit: Optional[int] = None) -> list[dict[str, Any]]:
        """The most recent ``limit`` events (all when None), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, idempotency_key, received_at, body FROM events"
                " ORDER BY id DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        return [
            {"id": row[0], "idempotency_key": row[1], "received_at": row[2],
             "body": json.loads(row[3])}
            for row in reversed(rows)
        ]

    def category_of(self, ids: Iterable[int]) -> dict[int, Optional[str]]:
        """The stored error category of each event id (None for successes)."""
        wanted = list(ids)
        if not wanted:
            return {}
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, category FROM events WHERE id >= ? AND id <= ?",
                (min(wanted), max(wanted)),
            ).fetchall()
        return {row[0]: row[1] for row in rows}

    def counts(self) -> dict[str, Any]:
        """Totals, failure rate by workflow type, failures (and their share) by category."""
        with self._lock:
            total, failures = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(success = 0), 0) FROM events"
            ).fetchone()
            by_workflow = self._conn.execute(
                "SELECT workflow_type, COUNT(*), SUM(success = 0) FROM events"
                " GROUP BY workflow_type ORDER BY workflow_type"
            ).fetchall()
            by_category = self._conn.execute(
                "SELECT COALESCE(category, 'unknown'), COUNT(*) FROM events WHERE success = 0"
                " GROUP BY 1 ORDER BY 2 DESC, 1"
            ).fetchall()
        return {
            "events": total,
            "successes": total - failures,
            "failures": failures,
            "failure_rate": _rate(failures, total),
            "by_workflow_type": {
                name: {"events": n, "failures": f, "failure_rate": _rate(f, n)}
                for name, n, f in by_workflow
            },
            "by_category": {
                name: {"failures": n, "share_of_failures": _rate(n, failures)}
                for name, n in by_category
            },
        }


class _Server(ThreadingHTTPServer):
    """Knows which connections sit idle between keep-alive requests, so stop() is prompt.

    On stop, idle connections are shut at once; a connection in the middle of
    a request finishes it (answered with ``Connection: close``) and then ends.
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], collector: Collector) -> None:
        self.collector = collector
        self.stopping = False
        self._idle: dict[socket.socket, bool] = {}  # open connection -> waiting for a request
        self._idle_changed = threading.Condition()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._idle_changed:
            self._idle[request] = True
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._idle_changed:
            self._idle.pop(request, None)
            self._idle_changed.notify_all()
        super().shutdown_request(request)

    def await_request(self, conn: socket.socket) -> bool:
        """A handler is about to wait for its next request; False means stop instead."""
        with self._idle_changed:
            if self.stopping:
                return False
            self._idle[conn] = True
            return True

    def begin_request(self, conn: socket.socket) -> None:
        """A handler has read a request line and is busy until it has answered."""
        with self._idle_changed:
            if conn in self._idle:
                self._idle[conn] = False

    def end_connections(self, timeout: float) -> None:
        """Shut idle connections now, let busy ones finish, force what is left at ``timeout``."""
        with self._idle_changed:
            self.stopping = True
            self._shut(conn for conn, idle in self._idle.items() if idle)
            if not self._idle_changed.wait_for(lambda: not self._idle, timeout):
                self._shut(list(self._idle))
                self._idle_changed.wait_for(lambda: not self._idle, 1.0)

    @staticmethod
    def _shut(connections: Iterable[socket.socket]) -> None:
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr; a client hanging up is not news.
        _log.debug("error serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """Routes one request; every response carries Content-Length (keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = f"massugc-collector/{__version__}"
    timeout = IDLE_CONNECTION_TIMEOUT
    # Headers and body go out in separate writes; with Nagle on, keep-alive
    # clients would wait ~40 ms for a delayed ACK on every request.
    disable_nagle_algorithm = True

    _must_close = False
    _linger = False
    _responded = False

    @property
    def collector(self) -> Collector:
        return cast(_Server, self.server).collector

    def handle_one_request(self) -> None:
        if not cast(_Server, self.server).await_request(self.connection):
            self.close_connection = True
            return
        super().handle_one_request()

    def parse_request(self) -> bool:
        cast(_Server, self.server).begin_request(self.connection)
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    # -- routing ---------------------------------------------------------

    def _dispatch(self) -> None:
        self._must_close = self._linger = self._responded = False
        collector = self.collector
        try:
            if self.command == "POST":
                collector._diagnostics.count("requests")
            url = urlsplit(self.path)
            path = url.path.rstrip("/") or "/"
            if path in INGEST_PATHS:
                if self.command == "POST":
                    self._ingest()
                else:
                    self._skip_body()
                    self._send_error(405, "method_not_allowed", "use POST", allow="POST")
            elif path in READ_PATHS:
                self._skip_body()
                if self.command in ("GET", "HEAD"):
                    self._read(path, parse_qs(url.query))
                else:
                    self._send_error(405, "method_not_allowed", "use GET", allow="GET, HEAD")
            else:
                self._skip_body()
                self._send_error(404, "not_found", "no such endpoint")
        except Exception as exc:
            collector._diagnostics.count("internal_errors")
            collector._diagnostics.say_once(
                f"internal:{type(exc).__name__}", logging.WARNING,
                "collector: unexpected %s while handling %s %s (repeats are logged at DEBUG)",
                type(exc).__name__, self.command, self.path[:200],
            )
            _log.debug("collector: internal error", exc_info=True)
            self.close_connection = True
            if not self._responded:
                self._must_close = True
                self._send_error(500, "internal_error", "the collector failed on this request")

    def _read(self, path: str, query: Mapping[str, list[str]]) -> None:
        collector = self.collector
        if path == "/healthz":
            self._send_json(200, {"status": "ok"})
        elif path == "/api/stats":
            self._send_json(200, collector.stats())
        elif path == "/api/events":
            limit: Optional[int] = None
            if "limit" in query:
                raw = query["limit"][-1].strip()
                if not _DIGITS.fullmatch(raw):
                    self._send_error(400, "bad_request", "limit must be a non-negative integer")
                    return
                limit = int(raw)
            events = collector._store.events(limit)
            self._send_json(200, {"events": events, "count": len(events)})
        else:
            page = _render_page(collector, collector._store.events(PAGE_EVENTS))
            self._send(200, page.encode("utf-8", "replace"), "text/html; charset=utf-8",
                       PAGE_HEADERS)

    # -- ingest ----------------------------------------------------------

    def _ingest(self) -> None:
        collector = self.collector
        key = self.headers.get("X-API-Key", "")
        if not API_KEY_PATTERN.fullmatch(key.strip()):
            self._skip_body()
            self._reject(401, "unauthorized",
                         "missing or malformed X-API-Key header (expected 'massugc_' followed "
                         "by 32 characters of A-Z, a-z, 0-9, '_' or '-')")
            return
        media_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            self._skip_body()
            self._reject(415, "unsupported_media_type", "Content-Type must be application/json")
            return
        lengths = self.headers.get_all("Content-Length") or []
        if "Transfer-Encoding" in self.headers or not lengths:
            self._must_close = self._linger = "Transfer-Encoding" in self.headers
            self._reject(411, "length_required", "send the body with a Content-Length header")
            return
        if len(lengths) > 1 or not _DIGITS.fullmatch(lengths[0].strip()):
            self._must_close = self._linger = True
            self._reject(400, "bad_request", "invalid Content-Length header")
            return
        length = int(lengths[0].strip())
        if length > collector.max_body_bytes:
            self._must_close = self._linger = True
            self._reject(413, "payload_too_large",
                         f"body is {length} bytes; the limit is {collector.max_body_bytes}")
            return
        raw = self.rfile.read(length)
        if len(raw) < length:
            self._must_close = True
            self._reject(400, "bad_request", "body shorter than Content-Length")
            return
        try:
            body = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            self._reject(400, "invalid_json", f"body is not valid JSON: {reason}"[:300])
            return
        problems = validate_event(body)
        if problems:
            self._reject(422, "validation_error", problems[0], details=problems)
            return
        idempotency_key = self.headers.get("Idempotency-Key", "").strip() or None
        if idempotency_key is not None and len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
            self._reject(400, "invalid_idempotency_key",
                         f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters")
            return
        event_id, stored = collector._store_event(idempotency_key, body)
        if stored:
            collector._diagnostics.count("stored")
            self._send_json(200, {"code": 0, "message": "success", "data": {"id": event_id}})
        else:
            collector._diagnostics.count("duplicates")
            self._send_json(200, {"code": 0, "message": "duplicate", "data": {"id": event_id}})

    def _skip_body(self) -> None:
        """Consume a small declared body so the connection stays usable; else close it."""
        lengths = self.headers.get_all("Content-Length") or []
        if "Transfer-Encoding" in self.headers or len(lengths) > 1:
            self._must_close = self._linger = True
        elif lengths:
            raw = lengths[0].strip()
            if not _DIGITS.fullmatch(raw) or int(raw) > self.collector.max_body_bytes:
                self._must_close = self._linger = True
            elif int(raw) and len(self.rfile.read(int(raw))) < int(raw):
                self._must_close = True

    # -- responses -------------------------------------------------------

    def _reject(self, status: int, code: str, message: str, **extra: Any) -> None:
        self.collector._diagnostics.count(f"rejected_{status}")
        self._send_error(status, code, message, **extra)

    def _send_error(self, status: int, code: str, message: str, *, allow: str = "",
                    **extra: Any) -> None:
        headers = (("Allow", allow),) if allow else ()
        self._send_json(status, {"error": code, "message": message, **extra}, headers)

    def _send_json(self, status: int, payload: Mapping[str, Any],
                   headers: Iterable[tuple[str, str]] = ()) -> None:
        self._send(status, json.dumps(payload).encode("ascii"), "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str,
              headers: Iterable[tuple[str, str]] = ()) -> None:
        self._responded = True
        if cast(_Server, self.server).stopping:
            self._must_close = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        if self._must_close:
            self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if self._linger:
            self._discard_unread_body()

    def _discard_unread_body(self) -> None:
        """Discard (never buffer) what the client still sends, then let the socket close.

        Closing a socket with unread data sends a reset, and the client would
        see "connection reset" instead of the 413 it was sent; so, for a
        bounded time, read and drop the rest of its body after answering.
        """
        conn = self.connection
        try:
            conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_SECONDS
            discarded = 0
            while discarded < _LINGER_MAX_BYTES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                conn.settimeout(remaining)
                chunk = conn.recv(65536)
                if not chunk:
                    break
                discarded += len(chunk)
        except OSError:
            pass


def _reject_constant(name: str) -> Any:
    """``json.loads`` hook: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


# -- the page -------------------------------------------------------------

_PAGE_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}.ok{color:#176f2c}.fail{color:#b00020;font-weight:600}
td.msg{max-width:40em;word-break:break-word;font-family:monospace;font-size:12px}
.note{color:#666}
"""


def _e(value: object) -> str:
    """HTML-escape any value for text and attribute positions."""
    return html.escape("" if value is None else str(value), quote=True)


def _shorten(text: str, limit: int = ERROR_MESSAGE_DISPLAY_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _render_page(collector: Collector, events: list[dict[str, Any]]) -> str:
    """The HTML overview: summaries, then the latest events newest first, all escaped."""
    stats = collector.stats()
    categories = collector._store.category_of(e["id"] for e in events)
    workflow_rows = "".join(
        f"<tr><td>{_e(name or '(none)')}</td><td>{row['events']}</td>"
        f"<td>{row['failures']}</td><td>{row['failure_rate']:.1%}</td></tr>"
        for name, row in stats["by_workflow_type"].items()
    ) or '<tr><td colspan="4" class="note">no events yet</td></tr>'
    category_rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{row['failures']}</td>"
        f"<td>{row['share_of_failures']:.1%}</td></tr>"
        for name, row in stats["by_category"].items()
    ) or '<tr><td colspan="3" class="note">no failures</td></tr>'
    event_rows = []
    for event in reversed(events):
        body: dict[str, Any] = event["body"] if isinstance(event["body"], dict) else {}
        job: dict[str, Any] = body["job_data"] if isinstance(body.get("job_data"), dict) else {}
        success = job.get("success") is True
        message = job.get("error_message")
        event_rows.append(
            "<tr>"
            f"<td>{_e(body.get('timestamp') or event['received_at'])}</td>"
            + ('<td class="ok">success</td>' if success else '<td class="fail">failure</td>')
            + f"<td>{_e(job.get('workflow_type'))}</td>"
            f"<td>{_e(job.get('job_name'))}</td>"
            f"<td>{_e(job.get('run_id'))}</td>"
            f"<td>{_e(categories.get(event['id']) or '')}</td>"
            f'<td class="msg">{_e(_shorten(message) if isinstance(message, str) else "")}</td>'
            "</tr>"
        )
    latest = "".join(event_rows) or '<tr><td colspan="7" class="note">no events yet</td></tr>'
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>MassUGC local collector</title>"
        f"<style>{_PAGE_STYLE}</style></head><body>"
        "<h1>MassUGC local collector</h1>"
        f"<p class=\"note\">{stats['events']} events stored, {stats['duplicates']} duplicates "
        f"dropped, {stats['requests_seen']} requests. For development, demos and tests; "
        "not a production server.</p>"
        "<h2>Failure rate by workflow type</h2><table>"
        "<tr><th>workflow_type</th><th>events</th><th>failures</th><th>failure rate</th></tr>"
        f"{workflow_rows}</table>"
        "<h2>Failures by error category</h2><table>"
        "<tr><th>category</th><th>failures</th><th>share of failures</th></tr>"
        f"{category_rows}</table>"
        f"<h2>Latest {PAGE_EVENTS} events</h2><table>"
        "<tr><th>time (UTC)</th><th>outcome</th><th>workflow_type</th><th>job_name</th>"
        "<th>run_id</th><th>error category</th><th>error message</th></tr>"
        f"{latest}</table></body></html>\n"
    )


# -- the public face ------------------------------------------------------


class Collector:
    """A local MassUGC Cloud API: start() it, point a handler at ``url``, read ``events()``.

    ``db_path`` None keeps events in memory. Leaving a ``with`` block (or
    ``stop()``) stops serving; stored events stay readable until ``close()``
    or garbage collection, and ``start()`` again serves on the same port.
    """

    def __init__(
        self,
        db_path: Union[str, Path, None] = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_bytes: int = 1_048_576,
        classifier: Optional[Classifier] = None,
    ) -> None:
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) \
                or max_body_bytes < 1:
            raise ValueError("max_body_bytes must be a positive integer")
        self.host = host
        self.port = port
        self.max_body_bytes = max_body_bytes
        self.classifier = classifier if classifier is not None else Classifier()
        self._store = _EventStore(db_path)
        self._close_store = weakref.finalize(self, self._store.close)
        self._diagnostics = Diagnostics(_log)
        self._lock = threading.Lock()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._url: Optional[str] = None

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        return f"<Collector {state} {self._url or '(never started)'}>"

    @property
    def url(self) -> str:
        """``http://<host>:<port>``, the base URL to give a handler or client."""
        if self._url is None:
            raise RuntimeError("the collector has not been started; call start() first")
        return self._url

    def start(self) -> Collector:
        """Serve on a daemon thread (a no-op when already serving); returns self."""
        with self._lock:
            if self._server is not None:
                return self
            server = _Server((self.host, self.port), self)
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

    def events(self) -> list[dict[str, Any]]:
        """Stored events, oldest first: ``{"id", "idempotency_key", "received_at", "body"}``."""
        return self._store.events()

    def requests_seen(self) -> int:
        """POST requests received on any path, including rejected ones and duplicates."""
        return self._diagnostics.snapshot().get("requests", 0)

    def duplicates(self) -> int:
        """POSTs whose Idempotency-Key was already stored (answered 200, not stored again)."""
        return self._diagnostics.snapshot().get("duplicates", 0)

    def stats(self) -> dict[str, Any]:
        """What ``GET /api/stats`` returns: totals and failure rates by workflow and category."""
        counters = self._diagnostics.snapshot()
        stats = self._store.counts()
        stats["requests_seen"] = counters.get("requests", 0)
        stats["duplicates"] = counters.get("duplicates", 0)
        stats["rejected"] = {
            name[len("rejected_"):]: n for name, n in sorted(counters.items())
            if name.startswith("rejected_")
        }
        return stats

    def _store_event(self, idempotency_key: Optional[str], body: Mapping[str, Any]) -> tuple[
            int, bool]:
        """Store a validated event with its derived columns; return (id, stored)."""
        job = body["job_data"]
        success = job["success"] is True
        category: Optional[str] = None
        if not success:
            given = job.get("error_category")
            if isinstance(given, str) and given.strip():
                category = given.strip()
            else:
                category = self.classifier.classify(text=job.get("error_message") or "").category
        return self._store.insert(
            idempotency_key, body, success=success,
            workflow_type=str(job.get("workflow_type") or ""), category=category,
        )


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
