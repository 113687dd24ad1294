"""A fault-injecting stand-in for the MassUGC Cloud API on 127.0.0.1.

Tests script its responses (``respond_with``), switch its mode (ok, slow,
hang) and read what it captured. ``FakeApi().start_down()`` holds its port
without listening (connections are refused) until ``come_up()``: an API that
is down and comes back at the same URL, which is where a handler's events are
kept for.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional


@dataclass
class Captured:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    peer: int = 0
    #: Requests being handled when this one arrived, itself included.
    concurrency: int = 1
    #: The status the server answered with, and when (None until it answered).
    status: Optional[int] = None
    replied_at: Optional[float] = None
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.raw.decode("utf-8"))


@dataclass
class Scripted:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Sent as it is instead of ``body`` as JSON (an HTML page, say).
    raw: Optional[bytes] = None
    content_type: str = "application/json"


class FakeApi:
    """A threaded HTTP/1.1 server recording every request."""

    def __init__(self, ssl_context: Optional[ssl.SSLContext] = None,
                 host_name: str = "127.0.0.1") -> None:
        self.host_name = host_name
        self.captured: list[Captured] = []
        self.mode = "ok"
        self.delay = 0.0
        #: When set, every n-th request is answered 503 (a flaky API behind a balancer).
        self.fail_every: Optional[int] = None
        self.default = Scripted(200, {"code": 0, "message": "success", "data": {}})
        #: Paths answered 404 whatever the script says (a route that moved).
        self.missing_paths: set[str] = set()
        self._script: deque[Scripted] = deque()
        self._lock = threading.Condition()
        self._release_hang = threading.Event()
        self._in_flight = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes; without this, Nagle's algorithm
                # and delayed ACKs add ~40 ms to every keep-alive response.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with fake._lock:
                    fake._in_flight += 1
                    captured = Captured("POST", self.path, dict(self.headers.items()), raw,
                                        peer=self.client_address[1],
                                        concurrency=fake._in_flight)
                    fake.captured.append(captured)
                    if self.path in fake.missing_paths:
                        reply = Scripted(404, {"error": "not_found", "message": "no route"})
                    else:
                        reply = fake._script.popleft() if fake._script else fake.default
                    if fake.fail_every and len(fake.captured) % fake.fail_every == 0:
                        reply = Scripted(503, {"error": "unavailable", "message": "flaky"})
                    fake._lock.notify_all()
                self._answer(captured, reply)

            def _answer(self, captured: Captured, reply: Scripted) -> None:
                if fake.mode == "hang":
                    fake._release_hang.wait(60)
                    self.close_connection = True
                    self._done()
                    return
                if fake.mode == "slow":
                    time.sleep(fake.delay)
                payload = reply.raw if reply.raw is not None else (
                    b"" if reply.body is None else json.dumps(reply.body).encode())
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(payload)))
                # Counted out before the client can have the whole reply, so a client
                # that waits for it never overlaps with this request in the count.
                captured.status, captured.replied_at = reply.status, time.monotonic()
                self._done()
                self.end_headers()
                self.wfile.write(payload)

            def _done(self) -> None:
                with fake._lock:
                    fake._in_flight -= 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self._server.server_bind()
        self._server.daemon_threads = True
        self.scheme = "http"
        if ssl_context is not None:  # a TLS server: the handshake happens at accept
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_name}:{self.port}"

    def start(self) -> FakeApi:
        self._server.server_activate()
        self._thread.start()
        return self

    def start_down(self) -> FakeApi:
        """Hold the port without listening: every connection is refused until come_up()."""
        return self

    def come_up(self) -> FakeApi:
        """Start answering at the same URL."""
        return self.start()

    def stop(self) -> None:
        self._release_hang.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def respond_with(self, status: int, body: Any = None, headers: Optional[dict[str, str]] = None,
                     times: int = 1, *, raw: Optional[bytes] = None,
                     content_type: str = "application/json") -> None:
        """Answer the next ``times`` requests with this status (then the default)."""
        with self._lock:
            for _ in range(times):
                self._script.append(Scripted(status, body, dict(headers or {}), raw,
                                             content_type))

    def connections(self) -> int:
        """How many distinct client connections sent requests."""
        with self._lock:
            return len({c.peer for c in self.captured})

    def events(self) -> list[Any]:
        with self._lock:
            return [c.json for c in self.captured]

    def wait_for(self, predicate: Callable[[list[Captured]], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(captured)`` holds; False at the deadline."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self.captured):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def wait_for_count(self, n: int, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda c: len(c) >= n, timeout)


def free_port() -> int:
    """A loopback port with nothing listening on it (for the ``down`` mode)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0,
               interval: float = 0.01) -> bool:
    """Poll ``condition`` until true or the deadline; for state with no notification."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
