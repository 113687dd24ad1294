"""A counting HTTP sink for the benchmarks: run it in its own process.

    python benchmarks/sink.py --port 0 --mode ok|slow [--delay 0.2]

It prints its port on the first line of stdout, then serves on 127.0.0.1
until terminated. Every ``POST`` (other than ``/reset``) is answered ``200``
with a small JSON body, after ``--delay`` seconds in ``slow`` mode, and is
counted: connections, requests, distinct ``Idempotency-Key`` headers and distinct
``run_id`` values, read from a JSON body (``{"job_data": {"run_id": ...}}``,
as ``CloudHandler`` sends) or from a urlencoded form (``run_id=...``, as the
stdlib ``HTTPHandler`` sends a record's ``__dict__``).

``GET /count`` returns the counts as JSON, with the wall-clock times of the
first and the latest new ``run_id``; ``POST /reset`` clears them.

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
            self.first_at: Optional[float] = None
            self.last_at: Optional[float] = None

    def connected(self) -> None:
        """Count one accepted connection."""
        with self._lock:
            self.connections += 1

    def add(self, key: Optional[str], run_id: Optional[str]) -> None:
        """Count one request with its idempotency key and run id (either may be absent)."""
        now = time.time()
        with self._lock:
            self.posts += 1
            if key:
                self.keys.add(key)
            if run_id and run_id not in self.run_ids:
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
                "first_at": self.first_at,
                "last_at": self.last_at,
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

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        """``/count``: the counts; anything else: 404."""
        if self.path.startswith("/count"):
            self._reply(200, self.server.counts.snapshot())
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
        self.server.counts.add(
            self.headers.get("Idempotency-Key"),
            run_id_of(body, self.headers.get("Content-Type", "")),
        )
        if self.server.delay > 0:
            time.sleep(self.server.delay)
        self._reply(200, {"code": 0, "message": "success", "data": {}})


class SinkServer(ThreadingHTTPServer):
    """A threading HTTP server holding the counts and the response delay."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, delay: float) -> None:
        super().__init__(("127.0.0.1", port), SinkHandler)
        self.counts = Counts()
        self.delay = delay

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
    parser.add_argument("--mode", choices=("ok", "slow"), default="ok")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds, slow mode only")
    args = parser.parse_args(argv)
    server = SinkServer(args.port, args.delay if args.mode == "slow" else 0.0)
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
