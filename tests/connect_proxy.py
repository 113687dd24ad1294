"""A small forward proxy on 127.0.0.1 for the network tests.

``CONNECT host:port`` opens a tunnel to the address its own table maps that
host to (so a name such as ``api.test`` resolves only through the proxy, as
behind a company proxy); every byte a client sends, tunnel included, is kept
in ``seen``. A plain-http request through it is recorded and refused with 502:
the tests use that to show that loopback traffic never goes through a proxy.
"""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from typing import Any


class ConnectProxy:
    """A threaded CONNECT proxy with a host table of its own."""

    def __init__(self, hosts: dict[str, tuple[str, int]]) -> None:
        self.hosts = hosts
        self.seen = bytearray()
        self.connects: list[str] = []
        self.plain_requests: list[bytes] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _record(self, data: bytes) -> None:
        with self._lock:
            self.seen.extend(data)

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        self._record(head)
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, target, _ = [*request_line.split(" "), "", ""][:3]
        if method != "CONNECT":
            with self._lock:
                self.plain_requests.append(head)
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port = target.rpartition(":")
        with self._lock:
            self.connects.append(target)
        address = self.hosts.get(host, (host, int(port or 443)))
        try:
            upstream = socket.create_connection(address, timeout=5)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._pipe(client, upstream)

    def _pipe(self, client: socket.socket, upstream: Any) -> None:
        with upstream:
            sockets = [client, upstream]
            while True:
                readable, _, _ = select.select(sockets, [], [], 10)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        self._record(data)
                        upstream.sendall(data)
                    else:
                        client.sendall(data)
