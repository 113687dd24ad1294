"""The HTTP transport: the only module that talks HTTP.

It posts one event with ``urllib3`` and returns an :class:`Outcome`; it never
raises a ``urllib3`` exception to its caller. Errors are translated at this
boundary::

    TransportError            configuration the transport refuses to use
    └── InsecureURLError      plain http:// to a host that is not loopback

Which certificates are trusted is chosen once, by :mod:`massugc_logging.pipeline.trust`.
A loopback API URL never goes through a proxy: the key must not leave the machine.

Every response is classified once, here (a 2xx whose body cannot be read in
time is still DELIVERED: the server has accepted the event):

=================================  ===============  ===============================
response                           outcome          what the sender does
=================================  ===============  ===============================
2xx: JSON (``code`` 0 or none),    DELIVERED        remove from the spool
empty, or 204
2xx: JSON with ``code`` other      PERMANENT        dead-letter with the API's
than 0                                              message
2xx: an HTML page or another       TRANSIENT        keep, back off: a captive
body that is not JSON                               portal or proxy answered
408, 429, 5xx, timeout,            TRANSIENT        keep, back off, honour
connection error, redirect                          Retry-After
404 or 405 on every known path     NO_ROUTE         keep every event, probe slowly
403 ``device_mismatch``            DEVICE_MISMATCH  keep every event, pause sending
403 ``insufficient_credits``       NO_CREDITS       hold successes; failures flow
401, other 403, no key             AUTH             keep every event, pause sending
certificate does not verify        UNTRUSTED        keep every event, probe slowly
any other 4xx                      PERMANENT        dead-letter, never retry
=================================  ===============  ===============================

A 404 or 405 means the path is wrong, not the event: the transport tries the
other known usage-log path (``/api/desktop/usage/log``, ``/api/desktop/usage``)
at once and keeps the one that answers (``on_route`` is told, so the handler
can remember it per API URL across restarts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager, ProxyManager
from urllib3.util import make_headers

from massugc_logging.contract import API_KEY_PATTERN, DEFAULT_ENDPOINT
from massugc_logging.outcome import Outcome, OutcomeKind
from massugc_logging.pipeline.addresses import (
    DEFAULT_TIMEOUT,
    KNOWN_ENDPOINTS,
    InsecureURLError,
    Timeout,
    TransportError,
    app_headers,
    check_api_url,
    check_headers,
    coerce_timeout,
    default_user_agent,
    environ_proxy,
    is_loopback,
    proxy_credentials,
)
from massugc_logging.pipeline.direct import MAX_RESPONSE_BYTES, DirectConnections, tls_context_for
from massugc_logging.pipeline.retry import parse_retry_after
from massugc_logging.pipeline.trust import (
    Trust,
    TrustError,
    certificate_reason,
    is_certificate_failure,
    resolve_trust,
)
from massugc_logging.redaction import KnownSecrets

if TYPE_CHECKING:  # urllib3 2.x names its response base class; 1.26 has HTTPResponse only
    from urllib3.response import BaseHTTPResponse

_MAX_RESPONSE_BYTES = MAX_RESPONSE_BYTES
_MAX_REASON_CHARS = 300
_NO_ROUTE_STATUSES = (404, 405)
#: What a 2xx that is a web page most likely is.
NOT_THE_API = ("an HTML page answered for the API (a captive portal, a proxy's sign-in page "
               "or a maintenance page?)")


class SecretKey(Protocol):
    """Anything that holds the API key and shows it only on request."""

    def reveal(self) -> str:
        """The key itself, for the ``X-API-Key`` header only."""


class _Requests:
    """The requests in flight through one transport: per thread, when it started and the
    connection it uses, so that the transport can cut off a request at its deadline by
    shutting that connection's socket down. urllib3's timeouts bound each socket
    operation, not the request: a server that trickles its answer a byte at a time could
    hold one for ever."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self._connection: dict[int, HTTPConnection] = {}
        self._cut_off: set[int] = set()

    def begin(self) -> None:
        with self._lock:
            self._started[threading.get_ident()] = time.monotonic()

    def using(self, connection: HTTPConnection) -> None:
        with self._lock:
            ident = threading.get_ident()
            if ident in self._started:
                self._connection[ident] = connection

    def end(self) -> bool:
        """The calling thread's request is over; True if it was cut off."""
        ident = threading.get_ident()
        with self._lock:
            self._started.pop(ident, None)
            self._connection.pop(ident, None)
            if ident in self._cut_off:
                self._cut_off.discard(ident)
                return True
            return False

    def was_cut_off(self) -> bool:
        """Whether the calling thread's request was cut off."""
        with self._lock:
            return threading.get_ident() in self._cut_off

    def earliest(self) -> Optional[float]:
        """When the oldest request not yet cut off started (monotonic)."""
        with self._lock:
            times = [t for i, t in self._started.items() if i not in self._cut_off]
        return min(times) if times else None

    def cut_off(self, older_than: float) -> int:
        """Shut down the sockets of requests started before ``older_than``; how many."""
        with self._lock:
            overdue = [i for i, t in self._started.items()
                       if t <= older_than and i not in self._cut_off]
            self._cut_off.update(overdue)
            socks = [getattr(self._connection.get(i), "sock", None) for i in overdue]
        for sock in socks:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        return len(overdue)


def _tracked_pool_classes(requests_: _Requests) -> dict[str, type]:
    """Connection pools whose connections tell ``requests_`` which thread uses them."""

    class TrackedHTTPConnection(HTTPConnection):
        debuglevel = 0  # http.client's debug printing shows the key (see pipeline.direct)

        def putrequest(self, *args: Any, **kwargs: Any) -> None:
            requests_.using(self)
            super().putrequest(*args, **kwargs)

    class TrackedHTTPSConnection(HTTPSConnection):
        debuglevel = 0

        def putrequest(self, *args: Any, **kwargs: Any) -> None:
            requests_.using(self)
            super().putrequest(*args, **kwargs)

    class TrackedHTTPPool(HTTPConnectionPool):
        ConnectionCls = TrackedHTTPConnection

    class TrackedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = TrackedHTTPSConnection

    return {"http": TrackedHTTPPool, "https": TrackedHTTPSPool}


def _pool_manager(trust: Trust, maxsize: int, proxy: Optional[str],
                  requests_: _Requests) -> PoolManager:
    """A urllib3 pool manager for one API: verifying by ``trust``, ``maxsize`` keep-alive
    connections, through ``proxy`` if one is set (a CONNECT tunnel for https), its
    connections tracked by ``requests_`` so that a request can be cut off at its
    deadline."""
    tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
    if trust.ssl_context is not None:
        tls["ssl_context"] = trust.ssl_context
    elif isinstance(trust.verify, str):
        tls["ca_cert_dir" if os.path.isdir(trust.verify) else "ca_certs"] = trust.verify
    else:
        import certifi  # noqa: PLC0415 - only without the system store (Python 3.9)

        tls["ca_certs"] = certifi.where()
    options: dict[str, Any] = {"num_pools": 2, "maxsize": maxsize, "block": False, **tls}
    if proxy is None:
        manager = PoolManager(**options)
    elif proxy.lower().startswith("socks"):
        from urllib3.contrib.socks import SOCKSProxyManager  # noqa: PLC0415 - needs PySocks

        return SOCKSProxyManager(proxy, **options)
    else:
        user, password = proxy_credentials(proxy)
        headers = make_headers(proxy_basic_auth=f"{user}:{password}") if user else None
        manager = ProxyManager(proxy, proxy_headers=headers, **options)
    manager.pool_classes_by_scheme = _tracked_pool_classes(requests_)
    return manager


def _reason_from_body(body: Any, fallback: str) -> str:
    """``code: message`` from an error body like ``{"error": ..., "message": ...}``."""
    if isinstance(body, Mapping):
        code = body.get("error")
        message = body.get("message")
        parts = [str(p) for p in (code, message) if isinstance(p, (str, int)) and str(p)]
        if parts:
            return ": ".join(parts)[:_MAX_REASON_CHARS]
    return fallback


class Transport:
    """Posts events to ``{api_url}{endpoint}`` over keep-alive connections.

    With no proxy, each thread keeps its own ``http.client`` connection
    (:mod:`massugc_logging.pipeline.direct`); through a proxy, urllib3's pool
    manager speaks the CONNECT tunnel or SOCKS. The probe of ``check`` goes through
    urllib3 either way.
    """

    def __init__(
        self,
        api_url: str,
        api_key: Optional[SecretKey],
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout: Timeout = DEFAULT_TIMEOUT,
        allow_insecure_http: bool = False,
        max_connections: int = 1,
        ca_bundle: Optional[str] = None,
        user_agent: Optional[str] = None,
        headers: Optional[Mapping[str, Any]] = None,
        on_route: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.api_url = check_api_url(api_url, allow_insecure_http=allow_insecure_http)
        self._extra_headers, agent = check_headers(headers, user_agent)
        try:
            self.trust: Trust = resolve_trust(ca_bundle)
        except TrustError as exc:
            raise TransportError(str(exc)) from None
        self.host = urlsplit(self.api_url).hostname or ""
        if not endpoint.startswith("/"):
            endpoint = "/" + endpoint
        #: Where events are addressed: the configured endpoint (the route in use may differ).
        self.url = self.api_url + endpoint
        self.endpoints = (endpoint, *(e for e in KNOWN_ENDPOINTS if e != endpoint))
        self._route = endpoint
        self._on_route = on_route
        self.timeout = coerce_timeout(timeout)
        self._timeouts = urllib3.Timeout(connect=self.timeout[0], read=self.timeout[1])
        self._key = api_key
        #: The keys this transport has sent with, scrubbed from what servers send back.
        self._secrets = KnownSecrets()
        if api_key is not None:
            self._secrets.add(api_key.reveal())
        self._user_agent = agent or default_user_agent()
        self._max_connections = max(1, int(max_connections))
        self._requests = _Requests()
        self._inherited: list[PoolManager] = []
        # The environment is read once, here, not on every request: proxies follow
        # HTTPS_PROXY/HTTP_PROXY/NO_PROXY as requests would, and ~/.netrc (which
        # could add an Authorization header to our requests) is never consulted.
        # Loopback traffic is allowed in plain http because it stays on this
        # machine: a proxy would carry the key off it, so loopback never uses one.
        self._proxy: Optional[str] = environ_proxy(self.url)
        self._base_path = urlsplit(self.api_url).path.rstrip("/")
        self._tls_context = (tls_context_for(self.trust.ssl_context, self.trust.verify)
                             if self.api_url.startswith("https:") else None)
        self._inherited_direct: list[DirectConnections] = []
        self._pool = self._new_pool()

    def __repr__(self) -> str:
        key = "set" if self._key is not None else "missing"
        return f"<Transport url={self.url!r} key={key}>"

    def _new_pool(self) -> PoolManager:
        parts = urlsplit(self.api_url)
        #: Without a proxy, each thread's own connection (see pipeline.direct).
        self._direct: Optional[DirectConnections] = DirectConnections(
            parts.scheme, parts.hostname or "", parts.port, self.timeout, self._tls_context,
            self._fixed_headers(), self._requests.using, self._requests.was_cut_off,
        ) if self._proxy is None else None
        manager = _pool_manager(self.trust, self._max_connections, self._proxy, self._requests)
        # One host: its connection pool is looked up once, not parsed from the URL on
        # every request. Plain http through a proxy needs the manager (absolute URLs).
        self._host_pool: Optional[HTTPConnectionPool] = (
            manager.connection_from_url(self.url)
            if self._proxy is None or self.url.startswith("https:") else None)
        return manager

    def _fixed_headers(self) -> dict[str, str]:
        """The headers every event's request carries (the key and the id vary)."""
        return {**self._extra_headers, "Content-Type": "application/json",
                "Accept": "application/json", "User-Agent": self._user_agent}

    def renew_session(self) -> None:
        """Start new connections in a forked child; the parent's pooled sockets are
        left alone (closing a shared socket here would not disturb the parent, but
        using one, or shutting one down, would cut into the parent's requests)."""
        # Kept, so that their finalizers never touch the parent's sockets.
        self._inherited.append(self._pool)
        if self._direct is not None:
            self._inherited_direct.append(self._direct)
        self._requests = _Requests()
        self._pool = self._new_pool()

    def set_key(self, api_key: Optional[SecretKey]) -> None:
        """Use a new API key from the next request on."""
        self._key = api_key
        if api_key is not None:
            self._secrets.add(api_key.reveal())

    @property
    def route(self) -> str:
        """The usage-log path requests go to now."""
        return self._route

    def use_route(self, endpoint: str) -> None:
        """Send to ``endpoint`` from now on (one of :attr:`endpoints`: a route remembered
        from an earlier run)."""
        if endpoint in self.endpoints:
            self._route = endpoint

    @property
    def request_deadline(self) -> float:
        """Seconds one request may take in all: the connect and read timeouts together."""
        return self.timeout[0] + self.timeout[1]

    def send(self, body: bytes, event_id: str) -> Outcome:
        """POST one encoded event; classify the response. Never raises.

        A request still unanswered at :attr:`request_deadline` (connect and read timeouts
        together), once :meth:`cut_off_overdue` has run, ends as a transient outcome ("no
        complete answer within the request deadline"); a 2xx whose body was still coming
        counts as delivered.
        """
        self._requests.begin()
        try:
            outcome = self._send(body, event_id)
        except Exception as exc:
            outcome = Outcome(OutcomeKind.TRANSIENT, reason=f"unexpected {type(exc).__name__}")
        if self._requests.end() and not outcome.delivered:
            return Outcome(OutcomeKind.TRANSIENT,
                           reason="no complete answer within the request deadline",
                           timed_out=True)
        return outcome

    def next_deadline(self) -> Optional[float]:
        """When the oldest request in flight reaches its deadline (monotonic); None when
        none is in flight."""
        earliest = self._requests.earliest()
        return None if earliest is None else earliest + self.request_deadline

    def cut_off_overdue(self) -> int:
        """Cut off every request past its deadline (its socket is shut down, so the blocked
        read returns at once); how many."""
        return self._requests.cut_off(time.monotonic() - self.request_deadline)

    def abort_all(self) -> None:
        """Cut off every request in flight through this transport (at shutdown)."""
        self._requests.cut_off(float("inf"))

    def _send(self, body: bytes, event_id: str) -> Outcome:
        if self._key is None:
            return Outcome(OutcomeKind.AUTH, reason="no API key configured")
        route = self._route
        outcome = self._post(route, body, event_id)
        if outcome.status not in _NO_ROUTE_STATUSES:
            return outcome
        for other in self.endpoints:
            if other == route:
                continue
            tried = self._post(other, body, event_id)
            if tried.status not in _NO_ROUTE_STATUSES:
                if tried.status is not None and tried.status < 500:
                    self._route = other  # it answers there: keep it
                    if self._on_route is not None:
                        with contextlib.suppress(Exception):
                            self._on_route(other)
                return tried
        return Outcome(OutcomeKind.NO_ROUTE, status=outcome.status, reason=(
            f"HTTP {outcome.status} on every usage-log path tried at {self.api_url} ("
            + ", ".join(self.endpoints) + "): check api_url and endpoint"))

    def _post(self, path: str, body: bytes, event_id: str) -> Outcome:
        """POST one event to ``path`` of the API; classify the answer. Never raises."""
        assert self._key is not None
        varying = {"X-API-Key": self._key.reveal(), "Idempotency-Key": event_id}
        if self._direct is not None:
            try:
                answer = self._direct.post(self._base_path + path, body, varying)
            except Exception as exc:
                return self._failure(exc)
            return self._classified(answer.status, answer.headers, answer.body,
                                    answer.complete)
        headers = {**self._fixed_headers(), **varying}
        try:
            if self._host_pool is not None:
                response = self._host_pool.urlopen(
                    "POST", self._base_path + path, body=body, headers=headers,
                    retries=False, redirect=False, timeout=self._timeouts,
                    preload_content=False)
            else:
                response = self._pool.urlopen(
                    "POST", self.api_url + path, body=body, headers=headers, retries=False,
                    redirect=False, timeout=self._timeouts, preload_content=False,
                    assert_same_host=False)
        except Exception as exc:
            return self._failure(exc)
        try:
            raw, complete = _read_bounded(response)
        except Exception:
            # For a 2xx the event is in: the server said so before the body stalled.
            raw, complete = b"", False
            response.close()
        return self._classified(response.status, response.headers, raw, complete)

    def _classified(self, status: int, headers: Mapping[str, str], raw: bytes,
                    complete: bool) -> Outcome:
        outcome = classify_response(status, headers, raw, now=time.time(), complete=complete)
        if outcome.reason:
            outcome = dataclasses.replace(outcome, reason=self._without_key(outcome.reason))
        return outcome

    def _failure(self, exc: BaseException) -> Outcome:
        """A request that got no answer, as an outcome (urllib3's errors end here)."""
        if isinstance(exc, (urllib3.exceptions.SSLError, ssl.SSLError)):
            return self._tls_failure(exc)
        cause = getattr(exc, "original_error", None) or exc.__cause__
        if isinstance(exc, urllib3.exceptions.ProxyError) and isinstance(
                cause, (urllib3.exceptions.SSLError, ssl.SSLError)):
            return self._tls_failure(cause)
        if isinstance(exc, urllib3.exceptions.ProxyError):
            return Outcome(OutcomeKind.TRANSIENT, reason="the proxy refused or failed the "
                           "connection; check HTTPS_PROXY and NO_PROXY")
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            return Outcome(OutcomeKind.TRANSIENT, reason=_connection_reason(exc))
        if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError, socket.timeout)):
            return Outcome(OutcomeKind.TRANSIENT, reason="timed out", timed_out=True)
        if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError,
                            BrokenPipeError, ConnectionAbortedError)):
            return Outcome(OutcomeKind.TRANSIENT, reason="connection closed by the server")
        if isinstance(exc, http.client.HTTPException):
            return Outcome(OutcomeKind.TRANSIENT, reason="the answer could not be read "
                           "(not HTTP, or cut short)")
        if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
            return Outcome(OutcomeKind.TRANSIENT, reason=_connection_reason(exc))
        return Outcome(OutcomeKind.TRANSIENT, reason=f"request failed: {type(exc).__name__}")

    def _tls_failure(self, exc: BaseException) -> Outcome:
        """An SSL error: an untrusted certificate (said with its reason and the fix), or
        another handshake failure (transient)."""
        text = str(exc)
        if not is_certificate_failure(text):
            return Outcome(OutcomeKind.TRANSIENT, reason="TLS handshake failed")
        return Outcome(OutcomeKind.UNTRUSTED, reason=(
            f"the TLS certificate of {self.host} did not verify: {certificate_reason(text)} "
            f"(trusting: {self.trust.description})"))

    def probe(self) -> Outcome:
        """One ``HEAD`` of the API's base URL, through the same trust and proxies as the
        events, without the key: whether the API can be reached and its certificate
        verifies. Any HTTP answer counts as reached."""
        try:
            response = self._pool.urlopen(
                "HEAD", self.api_url + "/", retries=False, redirect=False,
                timeout=self._timeouts, preload_content=False, assert_same_host=False,
                headers={"User-Agent": self._user_agent})
        except Exception as exc:
            return self._failure(exc)
        response.close()
        return Outcome(OutcomeKind.DELIVERED, status=response.status)

    def _without_key(self, text: str) -> str:
        """Remove the key, in any common encoding, and anything shaped like one, from text
        the server sent back."""
        return API_KEY_PATTERN.sub("[REDACTED]", self._secrets.scrub(text))

    def close(self) -> None:
        """Close pooled connections."""
        with contextlib.suppress(Exception):
            self._pool.clear()
        if self._direct is not None:
            with contextlib.suppress(Exception):
                self._direct.close()


def _read_bounded(response: BaseHTTPResponse) -> tuple[bytes, bool]:
    """The response body, at most ``_MAX_RESPONSE_BYTES`` of it (a hostile server cannot
    make the sender buffer megabytes), and whether that was all of it; the connection
    goes back to the pool only when the whole body was read."""
    raw = response.read(_MAX_RESPONSE_BYTES)
    if response.length_remaining != 0 and response.read(1):
        response.close()  # more than we take: this connection is not reused
        return raw, False
    response.release_conn()
    return raw, True


def _connection_reason(exc: BaseException) -> str:
    """A short description of a connection failure without URLs or headers."""
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text or (
        "getaddrinfo" in text
    ) or "name resolution" in text:
        return "host name could not be resolved"
    if "ssl" in text or "certificate" in text:
        return "TLS error (certificate verification failed or handshake error)"
    if "reset" in text or "aborted" in text or "remotedisconnected" in text:
        return "connection closed by the server"
    return "connection error"


def classify_response(
    status: int, headers: Mapping[str, str], raw: bytes, *, now: float, complete: bool = True
) -> Outcome:
    """Turn a status, headers and body into an :class:`Outcome` (pure).

    ``complete`` is False when the body was cut at the size bound or stalled: a 2xx
    whose body cannot be read whole still counts as the API's answer.
    """
    body: Any = None
    parsed = False
    if raw:
        try:
            body = json.loads(raw.decode("utf-8", "replace"))
            parsed = True
        except ValueError:
            body = None
    if 200 <= status < 300:
        return _classify_success(status, headers, raw, body, parsed=parsed, complete=complete)
    fallback = f"HTTP {status}"
    if status == 407:
        return Outcome(OutcomeKind.TRANSIENT, status=status, reason=(
            "the proxy asks for credentials (HTTP 407): check the user and password in "
            "HTTPS_PROXY or HTTP_PROXY"))
    if status == 403 and isinstance(body, Mapping):
        code = body.get("error")
        if code == "device_mismatch":
            return Outcome(OutcomeKind.DEVICE_MISMATCH, status=status,
                           reason=_reason_from_body(body, fallback), response=body)
        if code == "insufficient_credits":
            return Outcome(OutcomeKind.NO_CREDITS, status=status,
                           reason=_reason_from_body(body, fallback), response=body)
    if status in (401, 403):
        return Outcome(OutcomeKind.AUTH, status=status,
                       reason=_reason_from_body(body, fallback), response=body)
    if status in (408, 429) or status >= 500:
        return Outcome(
            OutcomeKind.TRANSIENT,
            status=status,
            retry_after=parse_retry_after(headers.get("Retry-After"), now),
            reason=_reason_from_body(body, fallback),
            response=body,
        )
    if 400 <= status < 500:
        return Outcome(OutcomeKind.PERMANENT, status=status,
                       reason=_reason_from_body(body, fallback), response=body)
    location = headers.get("Location", "")
    where = f" to {urlsplit(location).path or '/'}" if location else ""
    return Outcome(
        OutcomeKind.TRANSIENT,
        status=status,
        reason=f"unexpected HTTP {status}{where}; check api_url and endpoint",
    )


def _classify_success(status: int, headers: Mapping[str, str], raw: bytes, body: Any, *,
                      parsed: bool, complete: bool) -> Outcome:
    """A 2xx counts as delivered unless it is plainly not the API's answer: a web page, a
    body that is neither JSON nor empty, or a JSON ``code`` other than 0 (the API's own
    refusal)."""
    media = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    text = raw.lstrip()
    if status == 204 or not text:
        return Outcome(OutcomeKind.DELIVERED, status=status)
    if media in ("text/html", "application/xhtml+xml") or text[:1] == b"<":
        return Outcome(OutcomeKind.TRANSIENT, status=status, reason=NOT_THE_API)
    if not parsed:
        if not complete and "json" in media:
            return Outcome(OutcomeKind.DELIVERED, status=status)  # cut short, but the API's
        return Outcome(OutcomeKind.TRANSIENT, status=status, reason=(
            f"the answer to the event was not the API's ({media or 'no content type'}, not "
            "JSON): a proxy or a captive portal between here and the API?"))
    code = body.get("code") if isinstance(body, Mapping) else None
    if code is not None and code not in (0, "0") and not isinstance(code, bool):
        message = body.get("message") if isinstance(body, Mapping) else None
        detail = f"code {code}" + (f": {message}" if isinstance(message, (str, int)) else "")
        return Outcome(OutcomeKind.PERMANENT, status=status,
                       reason=f"the API refused the event ({detail})"[:_MAX_REASON_CHARS],
                       response=body)
    return Outcome(OutcomeKind.DELIVERED, status=status, response=body)


__all__ = [
    "DEFAULT_TIMEOUT",
    "KNOWN_ENDPOINTS",
    "NOT_THE_API",
    "InsecureURLError",
    "Outcome",
    "OutcomeKind",
    "Timeout",
    "Transport",
    "TransportError",
    "app_headers",
    "check_api_url",
    "check_headers",
    "classify_response",
    "default_user_agent",
    "is_loopback",
]
