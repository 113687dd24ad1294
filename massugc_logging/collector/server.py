"""The collector's HTTP layer: framing, headers, routing; the answers come from the Collector.

It speaks the wire contract of :mod:`massugc_logging.contract` on the same
endpoints as the cloud (``/api/desktop/usage/log`` and the legacy
``/api/desktop/usage``), with the same status codes and error bodies. HTTP
runs on a ``ThreadingHTTPServer`` with HTTP/1.1 keep-alive; the handler uses
only the collector's public interface.

Status codes for ``POST``, checked in this order: 401 (missing or malformed
``X-API-Key``), 415 (not ``application/json``), 411 (no ``Content-Length``),
413 (larger than ``max_body_bytes``, decided from the header alone), 400
(malformed JSON), 422 (contract violations), then 200 for a stored event or a
duplicate.

Read endpoints: ``/`` (the page, :mod:`.page`), ``/api/events`` (``limit``,
``outcome``, ``workflow``, ``category``, ``group``, ``before``, ``after``),
``/api/stats`` and ``/api/groups`` (``window``: seconds or ``15m``, ``1h``,
``7d``), ``/healthz``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, urlsplit

from massugc_logging._version import __version__
from massugc_logging.collector import page
from massugc_logging.collector.core import LOGGER_NAME
from massugc_logging.collector.query import count_param, event_filter, last_param, parse_window
from massugc_logging.contract import API_KEY_PATTERN, DEFAULT_ENDPOINT, LEGACY_ENDPOINT

if TYPE_CHECKING:
    from massugc_logging.collector.core import Collector

__all__ = ["CollectorServer"]

_log = logging.getLogger(LOGGER_NAME)

INGEST_PATHS = (DEFAULT_ENDPOINT, LEGACY_ENDPOINT)
READ_PATHS = ("/", "/api/events", "/api/stats", "/api/groups", "/healthz")
MAX_IDEMPOTENCY_KEY_CHARS = 200

#: Idle keep-alive connections are dropped after this many seconds.
IDLE_CONNECTION_TIMEOUT = 30.0
#: After refusing a body unread, keep discarding what the client still sends
#: for this long (or this much) so that it can read the answer; see _linger.
_LINGER_SECONDS = 2.0
_LINGER_MAX_BYTES = 64 * 1024 * 1024

_DIGITS = re.compile(r"[0-9]+")


class CollectorServer(ThreadingHTTPServer):
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
        return cast(CollectorServer, self.server).collector

    def handle_one_request(self) -> None:
        if not cast(CollectorServer, self.server).await_request(self.connection):
            self.close_connection = True
            return
        super().handle_one_request()

    def parse_request(self) -> bool:
        cast(CollectorServer, self.server).begin_request(self.connection)
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
                collector.record("requests")
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
            collector.report_internal_error(exc, f"{self.command} {self.path[:200]}")
            self.close_connection = True
            if not self._responded:
                self._must_close = True
                self._send_error(500, "internal_error", "the collector failed on this request")

    def _read(self, path: str, query: Mapping[str, list[str]]) -> None:
        collector = self.collector
        if path == "/healthz":
            self._send_json(200, {"status": "ok"})
            return
        try:
            window_s = parse_window(last_param(query, "window"))
            if path == "/api/stats":
                self._send_json(200, collector.stats(window_s))
            elif path == "/api/groups":
                self._send_json(200, collector.groups_report(window_s))
            elif path == "/api/events":
                limit = count_param(query, "limit")
                events = collector.events(limit, event_filter(query))
                self._send_json(200, {"events": events, "count": len(events)})
            else:
                html_text, headers = page.respond(collector, query, window_s)
                self._send(200, html_text.encode("utf-8", "replace"),
                           "text/html; charset=utf-8", headers)
        except ValueError as exc:
            self._send_error(400, "bad_request", str(exc))

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
        idempotency_key = self.headers.get("Idempotency-Key", "").strip() or None
        if idempotency_key is not None and len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
            self._reject(400, "invalid_idempotency_key",
                         f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters")
            return
        result = collector.ingest(body, idempotency_key)
        if result.problems:
            self._reject(422, "validation_error", result.problems[0],
                         details=list(result.problems))
        else:
            self._send_json(200, {"code": 0, "message": "success" if result.stored
                                  else "duplicate", "data": {"id": result.event_id}})

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
        self.collector.record(f"rejected_{status}")
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
        if cast(CollectorServer, self.server).stopping:
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


