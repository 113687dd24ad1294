"""The transport's own connections (pipeline.direct) against a server that answers raw
bytes: the HTTP/1.x answers real servers and proxies give, each read as http.client
reads them."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

import pytest
from fakeapi import wait_until

from massugc_logging.keystore import ApiKey
from massugc_logging.pipeline.direct import MAX_RESPONSE_BYTES
from massugc_logging.pipeline.transport import OutcomeKind, Transport


@dataclass
class Reply:
    """What the server writes for one request, and whether it closes the connection."""

    raw: bytes
    close: bool = False


@dataclass
class RawServer:
    """Answers each request with the next scripted reply (then a plain 200)."""

    replies: list[Reply] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed_by_client: int = 0
    sock: socket.socket = field(default_factory=socket.socket)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def start(self) -> RawServer:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buffered = b""
            while True:
                request, buffered = _read_request(conn, buffered)
                if request is None:
                    with self.lock:
                        self.closed_by_client += 1
                    return
                with self.lock:
                    self.requests.append(request)
                    reply = self.replies.pop(0) if self.replies else Reply(OK)
                try:
                    conn.sendall(reply.raw)
                except OSError:  # the client stopped reading (an answer too big)
                    return
                if reply.close:
                    return


def _read_request(conn: socket.socket, buffered: bytes) -> tuple[Optional[bytes], bytes]:
    """One request (head and Content-Length body) from ``conn``; None when it closed."""
    while b"\r\n\r\n" not in buffered:
        try:
            chunk = conn.recv(65536)
        except OSError:  # reset: the client closed with our answer unread
            return None, b""
        if not chunk:
            return None, b""
        buffered += chunk
    head, _, rest = buffered.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"ok\":1}"


@pytest.fixture
def server() -> Iterator[RawServer]:
    running = RawServer().start()
    yield running
    running.sock.close()


@pytest.fixture
def transport(server: RawServer, key: str) -> Iterator[Transport]:
    made = Transport(server.url, ApiKey(key), timeout=(2, 2))
    yield made
    made.close()


def test_a_request_goes_out_whole_in_one_write_with_its_headers(
        server: RawServer, transport: Transport, key: str) -> None:
    """Head and body arrive together, with the key, the content type and the event's id."""
    assert transport.send(b'{"event":1}', "e-1").delivered
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/desktop/usage/log HTTP/1.1\r\n")
    assert f"X-API-Key: {key}".encode() in head and b"Idempotency-Key: e-1" in head
    assert body == b'{"event":1}'


def test_a_chunked_answer_is_read_and_the_connection_kept(
        server: RawServer, transport: Transport) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n4\r\n{\"co\r\n6\r\nde\":0}\r\n0\r\n\r\n")
    server.replies += [Reply(chunked), Reply(chunked)]
    assert transport.send(b"{}", "e-1").delivered
    assert transport.send(b"{}", "e-2").delivered
    assert server.connections == 1


def test_an_answer_that_ends_with_the_connection_is_read_whole(
        server: RawServer, transport: Transport) -> None:
    """HTTP/1.0 without a length: the body ends when the server closes; the next request
    goes on a new connection."""
    server.replies.append(Reply(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n"
                                b"{\"code\": 7, \"message\": \"no\"}", close=True))
    outcome = transport.send(b"{}", "e-1")
    assert outcome.kind is OutcomeKind.PERMANENT and "code 7" in (outcome.reason or "")
    assert transport.send(b"{}", "e-2").delivered
    assert server.connections == 2


def test_a_connection_the_server_closed_while_idle_is_not_used(
        server: RawServer, transport: Transport) -> None:
    """The server closes after answering (keep-alive timed out, say): the next request
    notices before it is sent and makes a new connection; nothing fails."""
    server.replies.append(Reply(OK, close=True))
    assert transport.send(b"{}", "e-1").delivered
    for attempt in range(3):
        assert transport.send(b"{}", f"e-{attempt + 2}").delivered
    assert server.connections == 2


def test_headers_are_read_in_any_case_folded_and_repeated(
        server: RawServer, transport: Transport) -> None:
    """A 503's Retry-After in lower case, after a folded header and a repeated one."""
    server.replies.append(Reply(
        b"HTTP/1.1 503 Service Unavailable\r\nx-note: one\r\n two\r\nVia: a\r\nVia: b\r\n"
        b"retry-after: 7\r\ncontent-type: application/json\r\nContent-Length: 2\r\n\r\n{}"))
    outcome = transport.send(b"{}", "e-1")
    assert outcome.kind is OutcomeKind.TRANSIENT and outcome.retry_after == 7.0


def test_an_interim_100_continue_is_skipped(server: RawServer, transport: Transport) -> None:
    server.replies.append(Reply(b"HTTP/1.1 100 Continue\r\n\r\n" + OK))
    assert transport.send(b"{}", "e-1").delivered


def test_an_answer_too_big_is_cut_and_its_connection_dropped(
        server: RawServer, transport: Transport) -> None:
    """A 2xx JSON answer larger than the bound still counts (the API said yes); the
    connection, with the rest of it unread, is not used again."""
    big = b"[" + b"1," * MAX_RESPONSE_BYTES + b"1]"
    server.replies.append(Reply(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\n\r\n" % len(big) + big))
    assert transport.send(b"{}", "e-1").delivered
    assert transport.send(b"{}", "e-2").delivered
    assert server.connections == 2


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "connection closed by the server"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "the answer could not be read (not HTTP, or cut short)"),
    (b"HTTP/1.1 abc OK\r\n\r\n", "the answer could not be read (not HTTP, or cut short)"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: 1\r\n" * 101 + b"\r\n",
     "the answer could not be read (not HTTP, or cut short)"),
])
def test_what_is_not_an_answer_is_transient_and_the_next_request_works(
        server: RawServer, transport: Transport, raw: bytes, reason: str) -> None:
    server.replies.append(Reply(raw, close=True))
    outcome = transport.send(b"{}", "e-1")
    assert outcome.kind is OutcomeKind.TRANSIENT and outcome.reason == reason
    assert transport.send(b"{}", "e-2").delivered


def test_each_thread_keeps_its_own_connection(server: RawServer, transport: Transport) -> None:
    """Four threads sending at once: four connections, each reused, none shared."""
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def send(n: int) -> None:
        barrier.wait(5)
        results.extend(transport.send(b"{}", f"t{n}-{i}").delivered for i in range(5))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [True] * 20
    assert server.connections == 4


def test_a_thread_that_ends_leaves_no_connection_open(server: RawServer,
                                                      transport: Transport) -> None:
    """An app thread that sent once (UsageClient) takes its connection with it: the
    server sees it closed, and no ResourceWarning is left for the collector."""
    sender = threading.Thread(target=lambda: transport.send(b"{}", "e-1"))
    sender.start()
    sender.join(10)
    assert wait_until(lambda: server.closed_by_client == 1, 5)
    assert server.connections == 1 and len(server.requests) == 1
