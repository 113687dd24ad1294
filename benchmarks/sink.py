"""A counting HTTP sink for the benchmarks: run it in its own process.

    python benchmarks/sink.py --port 0 --mode ok|slow|flaky|error503|ratelimit [--delay 0.2]
                              [--listen-after SECONDS]

It prints its port on the first line of stdout, then serves on 127.0.0.1
until terminated. Every ``POST`` (other than ``/reset``) is answered, by mode:

* ``ok``: ``200`` with a small JSON body; ``slow``: the same after ``--delay`` seconds;
* ``flaky``: every third request ``503``, the others ``200`` (a deploy, or one bad
  instance behind a load balancer);
* ``error503``: always ``503``;
* ``ratelimit``: ``429`` with ``Retry-After: 1`` for the first 2 s after the first
  request, then ``200``.

``--listen-after`` binds the port only after that many seconds (an outage:
connections are refused until then); ``--port`` must then name a port.

Each request is counted: connections, requests, requests in flight at once,
distinct ``Idempotency-Key`` headers, and the ``run_id`` values answered 200
(distinct, and how many were answered 200 more than once), read from a JSON body
(``{"job_data": {"run_id": ...}}``, as ``CloudHandler`` sends) or from a
urlencoded form (``run_id=...``, as the stdlib ``HTTPHandler`` sends a record's
``__dict__``).

``GET /count`` returns the counts as JSON, with the wall-clock times of the
first and the latest new ``run_id``, of the server's start of listening, and of
the first requests (up to 10,000); ``POST /reset`` clears them.

HTTP/1.1 keep-alive, always a ``Content-Length``, and ``TCP_NODELAY`` on
every accepted socket: without it Nagle's algorithm and delayed ACKs add
about 40 ms to a keep-alive response.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs


class Counts:
    """Thread-safe counters of what the sink received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything received so far."""
        with self._lock:
            self.posts = 0
            self.connections = 0
            self.keys: set[str] = set()
            self.run_ids: set[str] = set()
            self.duplicates = 0
            self.first_at: Optional[float] = None
            self.last_at: Optional[float] = None
            self.in_flight = 0
            self.max_in_flight = 0
            self.post_times: list[float] = []

    def connected(self) -> None:
        """Count one accepted connection."""
        with self._lock:
            self.connections += 1

    def arrived(self) -> float:
        """Count one request arriving; return the time."""
        now = time.time()
        with self._lock:
            self.posts += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if len(self.post_times) < 10_000:
                self.post_times.append(now)
        return now

    def answered(self, key: Optional[str], run_id: Optional[str], status: int) -> None:
        """Count one answer, with the request's idempotency key and run id (may be absent)."""
        now = time.time()
        with self._lock:
            self.in_flight -= 1
            if key:
                self.keys.add(key)
            if status != 200 or not run_id:
                return
            if run_id in self.run_ids:
                self.duplicates += 1
                return
            self.run_ids.add(run_id)
            if self.first_at is None:
                self.first_at = now
            self.last_at = now

    def snapshot(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict."""
        with self._lock:
            return {
                "posts": self.posts,
                "connections": self.connections,
                "keys": len(self.keys),
                "run_ids": len(self.run_ids),
                "duplicates": self.duplicates,
                "first_at": self.first_at,
                "last_at": self.last_at,
                "max_in_flight": self.max_in_flight,
                "post_times": list(self.post_times),
            }


def run_id_of(body: bytes, content_type: str) -> Optional[str]:
    """The ``run_id`` carried by a JSON or urlencoded body, if any."""
    try:
        if "json" in content_type:
            data = json.loads(body.decode("utf-8"))
            job = data.get("job_data") if isinstance(data, dict) else None
            value = job.get("run_id") if isinstance(job, dict) else None
            return str(value) if value else None
        form = parse_qs(body.decode("utf-8", "replace"))
        values = form.get("run_id")
        return values[0] if values else None
    except (ValueError, AttributeError):
        return None


class SinkHandler(BaseHTTPRequestHandler):
    """Answers POSTs with 200 (after a delay in slow mode) and counts them."""

    protocol_version = "HTTP/1.1"
    server: SinkServer

    def setup(self) -> None:
        """Disable Nagle on the accepted socket so small responses go out at once."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.counts.connected()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the sink logs nothing."""

    def _reply(self, status: int, payload: dict[str, Any],
               headers: Optional[dict[str, str]] = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        """``/count``: the counts; anything else: 404."""
        if self.path.startswith("/count"):
            self._reply(200, dict(self.server.counts.snapshot(),
                                  listening_at=self.server.listening_at))
        else:
            self._reply(404, {"error": "not_found", "message": "no such path"})

    def do_POST(self) -> None:
        """``/reset`` clears the counts; any other path is an event to count."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/reset"):
            self.server.counts.reset()
            self._reply(200, {"code": 0, "message": "reset"})
            return
        counts = self.server.counts
        now = counts.arrived()
        status, headers = self.server.answer(now)
        if self.server.delay > 0:
            time.sleep(self.server.delay)
        counts.answered(self.headers.get("Idempotency-Key"),
                        run_id_of(body, self.headers.get("Content-Type", "")), status)
        if status == 200:
            self._reply(200, {"code": 0, "message": "success", "data": {}})
        elif status == 429:
            self._reply(429, {"error": "rate_limited", "message": "slow down"}, headers)
        else:
            self._reply(status, {"error": "unavailable", "message": "try again"}, headers)


class SinkServer(ThreadingHTTPServer):
    """A threading HTTP server holding the counts and the response delay."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, delay: float, mode: str = "ok") -> None:
        super().__init__(("127.0.0.1", port), SinkHandler)
        self.counts = Counts()
        self.delay = delay
        self.mode = mode
        self.listening_at = time.time()
        self._answers = 0
        self._first_request: Optional[float] = None
        self._answer_lock = threading.Lock()

    def answer(self, now: float) -> tuple[int, dict[str, str]]:
        """The status (and headers) for the next request, by mode."""
        with self._answer_lock:
            self._answers += 1
            n = self._answers
            if self._first_request is None:
                self._first_request = now
            since_first = now - self._first_request
        if self.mode == "flaky" and n % 3 == 0:
            return 503, {}
        if self.mode == "error503":
            return 503, {}
        if self.mode == "ratelimit" and since_first < 2.0:
            return 429, {"Retry-After": "1"}
        return 200, {}

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client hangs up (the stdlib HTTPHandler resets its
        connection without reading the response); report anything else."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def main(argv: Optional[list[str]] = None) -> int:
    """Serve until terminated; print the port first."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=("ok", "slow", "flaky", "error503", "ratelimit"),
                        default="ok")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds, slow mode only")
    parser.add_argument("--listen-after", type=float, default=0.0,
                        help="refuse connections (nothing listening) for this many seconds")
    args = parser.parse_args(argv)
    if args.listen_after > 0:
        if not args.port:
            parser.error("--listen-after needs --port")
        print(args.port, flush=True)
        time.sleep(args.listen_after)
    server = SinkServer(args.port, args.delay if args.mode == "slow" else 0.0, args.mode)
    if not args.listen_after:
        print(server.server_address[1], flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
