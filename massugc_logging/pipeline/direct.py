"""Requests straight to the API: one keep-alive ``http.client`` connection per thread.

For one small POST at a time on a fast network, urllib3's pool and response layers
cost about as much CPU as the request itself. With no proxy in the way the transport
needs none of them: each delivery thread keeps its own connection (so no pool, no
lock), made by the standard library with the transport's TLS context, and reads the
answer with the standard library's parser. A proxy still goes through urllib3, which
speaks CONNECT tunnels and SOCKS.

What urllib3 did and this module does the same way:

* a connection the server closed while it sat idle is noticed before it is used
  (urllib3's ``wait_for_read`` with no wait), and a new one is made;
* the connect timeout bounds making the connection (the TLS handshake included) and
  the read timeout each read after it; Nagle's algorithm is off;
* a connection whose answer was not read whole, or that failed in any way, is
  closed, never used again;
* the status line and the headers are read as ``http.client`` reads them (the same
  limits, the same errors), without its detour through the email package.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Optional

from urllib3.util.wait import wait_for_read

#: What a connection reads of an answer at most; more makes the answer incomplete.
MAX_RESPONSE_BYTES = 64 * 1024
#: The headers an answer is classified by (looked up in any case).
ANSWER_HEADERS = ("Content-Type", "Retry-After", "Location")


class Answer:
    """A status, the headers and (up to :data:`MAX_RESPONSE_BYTES` of) the body."""

    __slots__ = ("body", "complete", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes,
                 complete: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        #: False when the body was cut at the bound or stalled: a 2xx is still an answer.
        self.complete = complete


#: How a request fails on a connection the server had already closed.
_CLOSED_UNDER_US = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ConnectionAbortedError)
#: The longest status or header line read, and the most header lines (as http.client).
_MAX_LINE = 65536
_MAX_HEADERS = 100


class _Headers(dict):  # type: ignore[type-arg]
    """An answer's headers by lower-case name (a repeated one keeps its values joined
    with commas, as HTTP allows): what ``HTTPResponse.getheader`` asks of them."""

    def get_all(self, name: str, default: Any = None) -> Any:
        value = dict.get(self, name.lower())
        return default if value is None else [value]

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)


class _LeanResponse(http.client.HTTPResponse):
    """``http.client``'s response, its status line and headers read without the email
    package (which costs a quarter of the sender's CPU on a fast network); the body is
    read by ``http.client`` as before, by the same attributes ``begin`` sets."""

    def begin(self) -> None:
        already: Optional[object] = self.headers  # typeshed says never None; it starts so
        if already is not None:
            return
        while True:
            version, status, reason = self._status_line()
            headers = self._header_lines()
            if status != http.client.CONTINUE:
                break
        self.code = self.status = status
        self.reason = reason
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = headers  # type: ignore[assignment]
        encoding = headers.get("transfer-encoding")
        self.chunked = encoding is not None and encoding.lower() == "chunked"
        self.chunk_left = None
        connection = (headers.get("connection") or "").lower()
        if self.version == 11:
            self.will_close = "close" in connection
        else:
            self.will_close = "keep-alive" not in connection and "keep-alive" not in headers
        length = headers.get("content-length")
        self.length = None
        if length is not None and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) \
                or 100 <= status < 200:
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True  # the body ends when the connection does

    def _line(self, what: str) -> bytes:
        assert self.fp is not None
        line = self.fp.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong(what)
        return line

    def _status_line(self) -> tuple[str, int, str]:
        line = self._line("status line")
        if not line:
            raise http.client.RemoteDisconnected("Remote end closed connection without"
                                                 " response")
        parts = line.decode("iso-8859-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            self.close()
            raise http.client.BadStatusLine(repr(line))
        try:
            status = int(parts[1])
        except ValueError:
            raise http.client.BadStatusLine(repr(line)) from None
        if not 100 <= status <= 999:
            raise http.client.BadStatusLine(repr(line))
        return parts[0], status, parts[2].strip() if len(parts) > 2 else ""

    def _header_lines(self) -> _Headers:
        headers = _Headers()
        last: Optional[str] = None
        for _ in range(_MAX_HEADERS + 1):
            line = self._line("header line")
            if line in (b"\r\n", b"\n", b""):
                return headers
            text = line.decode("iso-8859-1")
            if text[:1] in (" ", "\t") and last is not None:  # an obsolete folded line
                headers[last] = f"{headers[last]} {text.strip()}"
                continue
            name, _, value = text.partition(":")
            last = name.strip().lower()
            value = value.strip()
            headers[last] = f"{headers[last]}, {value}" if last in headers else value
        raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")


class _Connection:
    """One keep-alive connection to the API, made on first use and again after it was
    closed. A request is written whole, head and body in one write (``http.client``
    writes them apart: a second system call, and with Nagle's algorithm off a second
    packet that wakes the server twice); the answer is read by :class:`_LeanResponse`."""

    __slots__ = ("__weakref__", "_address", "_context", "_host", "_timeout", "sock")

    def __init__(self, host: str, port: int, timeout: tuple[float, float],
                 context: Optional[ssl.SSLContext]) -> None:
        self._host = host
        self._address = (host, port)
        self._timeout = timeout
        self._context = context
        self.sock: Optional[socket.socket] = None

    def _connect(self) -> socket.socket:
        connect_timeout, read_timeout = self._timeout
        sock = socket.create_connection(self._address, connect_timeout)
        try:
            if self._context is not None:  # the handshake is bounded by connect_timeout
                sock = self._context.wrap_socket(sock, server_hostname=self._host)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(read_timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        return sock

    def usable(self) -> bool:
        """Whether the kept connection can carry a request: not closed by the server
        while idle (a readable idle socket is at its end, or holds junk)."""
        return self.sock is not None and not wait_for_read(self.sock, timeout=0.0)

    def exchange(self, request: bytes) -> Answer:
        """Write ``request``, read the answer; closed on any failure."""
        try:
            sock = self.sock if self.sock is not None else self._connect()
            sock.sendall(request)
            response = _LeanResponse(sock, method="POST")
            response.begin()
        except BaseException:
            self.close()
            raise
        try:
            data, complete = _read_bounded(response)
        except Exception:
            # For a 2xx the event is in: the server said so before the body stalled.
            data, complete = b"", False
        if not complete or response.will_close:
            response.close()
            self.close()
        return Answer(response.status, {name: value for name in ANSWER_HEADERS
                                        if (value := response.getheader(name)) is not None},
                      data, complete)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class _Owned:
    """A thread's connection, closed when the thread ends (its thread-local data goes):
    an app thread that sent once leaves no socket behind."""

    __slots__ = ("__weakref__", "connection")

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # a finalizer never raises
            self.connection.close()


class DirectConnections:
    """Keep-alive connections to one host, one per calling thread, for POSTs with a fixed
    set of headers and three that change (the key, the event's id, the length).

    Args:
        scheme: ``"http"`` or ``"https"``.
        host, port: where the API listens (port None: the scheme's).
        timeout: ``(connect, read)`` seconds.
        context: the TLS context that verifies the server (https only).
        headers: the headers every request carries (checked when configured: no CR or LF).
        using: told of each connection just before a request goes out on it, so that
            a request past its deadline can be cut off by shutting its socket down.
        cut_off: whether the calling thread's request was cut off (it is not tried again).

    Raises:
        ValueError: a header cannot be sent (not Latin-1, or a character HTTP forbids).
    """

    def __init__(self, scheme: str, host: str, port: Optional[int], timeout: tuple[float, float],
                 context: Optional[ssl.SSLContext], headers: Mapping[str, str],
                 using: Callable[[Any], None],
                 cut_off: Callable[[], bool] = lambda: False) -> None:
        default_port = 443 if scheme == "https" else 80
        self._port = port or default_port
        self._host = host
        self._timeout = timeout
        self._context = context if scheme == "https" else None
        shown_host = f"[{host}]" if ":" in host else host
        if self._port != default_port:
            shown_host = f"{shown_host}:{self._port}"
        fixed = {"Host": shown_host, "Accept-Encoding": "identity", **headers}
        #: The head's fixed lines, made once: checked and encoded as http.client would.
        self._fixed = b"".join(_header_line(name, value) for name, value in fixed.items())
        self._using = using
        self._cut_off = cut_off
        self._local = threading.local()
        #: Every thread's connection, for close(); one goes when its thread ends.
        self._all: weakref.WeakSet[_Owned] = weakref.WeakSet()
        self._lock = threading.Lock()

    def _connection(self) -> _Connection:
        owned: Optional[_Owned] = getattr(self._local, "owned", None)
        if owned is None:
            owned = _Owned(_Connection(self._host, self._port, self._timeout, self._context))
            self._local.owned = owned
            with self._lock:
                self._all.add(owned)
        connection = owned.connection
        if connection.sock is not None and not connection.usable():
            connection.close()
        return connection

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST ``body`` to ``path`` with the fixed headers and ``headers``; the answer,
        its body bounded. Raises what ``socket``, ``ssl`` and ``http.client`` raise when
        no answer came, and ValueError for a header or path HTTP cannot carry.

        A kept-alive connection the server closed just as the request went out (its FIN
        was still on its way when the idle check ran) fails before any answer: the
        request is made once more on a new connection. The event's Idempotency-Key makes
        that safe even had the server read it.
        """
        request = self._request(path, body, headers)
        connection = self._connection()
        reused = connection.sock is not None
        self._using(connection)
        try:
            return connection.exchange(request)
        except _CLOSED_UNDER_US:
            if not reused or self._cut_off():
                raise
        self._using(connection)
        return connection.exchange(request)

    def _request(self, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        if not path.startswith("/") or _FORBIDDEN_IN_PATH.search(path):
            raise ValueError("the request path holds a character HTTP does not allow")
        varying = b"".join(_header_line(name, value) for name, value in headers.items())
        return b"".join((b"POST ", path.encode("ascii"), b" HTTP/1.1\r\n", self._fixed,
                         varying, b"Content-Length: %d\r\n\r\n" % len(body), body))

    def close(self) -> None:
        """Close every connection (the threads' own are made again if used)."""
        with self._lock:
            owned = list(self._all)
        for each in owned:
            each.connection.close()


#: What a header name may be, and what a value or a path may not hold (as http.client).
_HEADER_NAME = re.compile(r"[^:\s][^:\r\n]*")
_FORBIDDEN_IN_VALUE = re.compile(r"\n(?![ \t])|\r(?![ \t\n])")
_FORBIDDEN_IN_PATH = re.compile(r"[\x00-\x20\x7f]")


def _header_line(name: str, value: str) -> bytes:
    """``name: value`` and CRLF, encoded as http.client encodes them; ValueError for
    what it would refuse."""
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    text = str(value)
    if _FORBIDDEN_IN_VALUE.search(text):
        raise ValueError(f"the value of header {name!r} holds a line break")
    try:
        return b"%s: %s\r\n" % (name.encode("ascii"), text.encode("latin-1"))
    except UnicodeEncodeError:
        raise ValueError(f"the value of header {name!r} is not Latin-1") from None


def _read_bounded(response: http.client.HTTPResponse) -> tuple[bytes, bool]:
    """At most :data:`MAX_RESPONSE_BYTES` of the body (a hostile server cannot make the
    sender buffer megabytes), and whether that was all of it."""
    data = response.read(MAX_RESPONSE_BYTES)
    if response.isclosed():
        return data, True
    if response.read(1):
        response.close()
        return data, False
    return data, True


def tls_context_for(ssl_context: Optional[ssl.SSLContext], verify: Any) -> ssl.SSLContext:
    """The context that verifies the API's certificate: the system store's, or one made
    from a CA bundle (a file or a directory), or from certifi's."""
    if ssl_context is not None:
        return ssl_context
    import os  # noqa: PLC0415

    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    import certifi  # noqa: PLC0415 - only without the system store (Python 3.9)

    return ssl.create_default_context(cafile=certifi.where())
