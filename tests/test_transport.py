"""The transport's boundary: URL checks and response classification."""

from __future__ import annotations

import pytest
from fakeapi import FakeApi, free_port, wait_until

from massugc_logging.keystore import ApiKey
from massugc_logging.pipeline.transport import (
    InsecureURLError,
    OutcomeKind,
    Transport,
    TransportError,
    check_api_url,
    classify_response,
)


@pytest.mark.parametrize(("status", "kind"), [
    (200, OutcomeKind.DELIVERED), (201, OutcomeKind.DELIVERED), (204, OutcomeKind.DELIVERED),
    (408, OutcomeKind.TRANSIENT), (429, OutcomeKind.TRANSIENT), (500, OutcomeKind.TRANSIENT),
    (502, OutcomeKind.TRANSIENT), (503, OutcomeKind.TRANSIENT), (504, OutcomeKind.TRANSIENT),
    (401, OutcomeKind.AUTH), (403, OutcomeKind.AUTH),
    (400, OutcomeKind.PERMANENT), (404, OutcomeKind.PERMANENT), (422, OutcomeKind.PERMANENT),
    (301, OutcomeKind.TRANSIENT),
])
def test_every_status_is_classified(status: int, kind: OutcomeKind) -> None:
    """Delivered, transient, permanent and auth, as the contract says."""
    assert classify_response(status, {}, b"", now=0.0).kind is kind


def test_error_body_becomes_the_reason() -> None:
    """``{"error", "message"}`` bodies are kept as the reason."""
    outcome = classify_response(422, {}, b'{"error":"validation_error","message":"bad run_id"}',
                                now=0.0)
    assert outcome.reason == "validation_error: bad run_id"


def test_retry_after_is_read_on_transient_responses() -> None:
    """429 with Retry-After carries the delay."""
    assert classify_response(429, {"Retry-After": "2"}, b"", now=0.0).retry_after == 2.0


def test_plain_http_is_refused_for_remote_hosts() -> None:
    """The key must not travel unencrypted except to loopback."""
    with pytest.raises(InsecureURLError, match="allow_insecure_http"):
        check_api_url("http://api.example.com")
    assert check_api_url("http://api.example.com", allow_insecure_http=True)
    assert check_api_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_api_url("http://localhost:1")
    assert check_api_url("http://[::1]:1")


def test_urls_with_credentials_or_queries_are_refused() -> None:
    """The key travels only in a header, never in a URL."""
    with pytest.raises(TransportError):
        check_api_url("https://user:pw@api.example.com")
    with pytest.raises(TransportError):
        check_api_url("https://api.example.com?api_key=x")
    with pytest.raises(TransportError):
        check_api_url("ftp://api.example.com")


def test_connection_refused_is_transient_and_never_raises(key: str) -> None:
    """A closed port gives a transient outcome, not an exception."""
    transport = Transport(f"http://127.0.0.1:{free_port()}", ApiKey(key), timeout=1)
    outcome = transport.send(b"{}", "id-1")
    assert outcome.kind is OutcomeKind.TRANSIENT and outcome.reason == "connection refused"
    assert not outcome.overloaded  # the circuit paces those, not the retry budget
    transport.close()


def test_read_timeout_is_transient(api: FakeApi, key: str) -> None:
    """A server that never answers is cut off by the read timeout."""
    api.mode = "hang"
    transport = Transport(api.url, ApiKey(key), timeout=(1, 0.3))
    outcome = transport.send(b"{}", "id-1")
    assert outcome.kind is OutcomeKind.TRANSIENT and outcome.reason == "timed out"
    assert outcome.timed_out and outcome.overloaded  # the retry budget pays for its retry
    transport.close()


def test_missing_key_is_an_auth_outcome_without_a_request(api: FakeApi) -> None:
    """No key: nothing is sent, and the outcome says why."""
    transport = Transport(api.url, None)
    assert transport.send(b"{}", "id").kind is OutcomeKind.AUTH
    assert api.captured == []
    transport.close()


def test_keep_alive_reuses_one_connection(api: FakeApi, key: str) -> None:
    """Several sends share one TCP connection."""
    transport = Transport(api.url, ApiKey(key))
    for i in range(5):
        assert transport.send(b"{}", f"id-{i}").delivered
    assert len(api.captured) == 5
    assert api.connections() == 1
    transport.close()


def test_a_proxy_asking_for_credentials_is_transient_not_a_rejected_event() -> None:
    """407 comes from the proxy, not the API: the event is kept, and the reason says so."""
    from massugc_logging.pipeline.transport import OutcomeKind, classify_response

    outcome = classify_response(407, {}, b"", now=0.0)
    assert outcome.kind is OutcomeKind.TRANSIENT and "proxy" in outcome.reason


def test_the_transport_cuts_off_a_request_past_its_deadline(key: str) -> None:
    """A server that trickles its status line a byte at a time (no read ever times out):
    past the deadline, cut_off_overdue() ends the request as a transient outcome that says
    why, and it no longer sets a deadline."""
    import socket
    import threading
    import time

    from massugc_logging.keystore import ApiKey
    from massugc_logging.pipeline.transport import Transport

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\n":
                if stop.wait(0.1):
                    return
                conn.sendall(bytes([byte]))

    threading.Thread(target=trickle, daemon=True).start()
    transport = Transport(f"http://127.0.0.1:{server.getsockname()[1]}", ApiKey(key),
                          timeout=(0.2, 0.3))
    outcomes = []
    sender = threading.Thread(target=lambda: outcomes.append(transport.send(b"{}", "e1")))
    sender.start()
    assert wait_until(lambda: transport.next_deadline() is not None, 5)  # it has begun
    deadline = transport.next_deadline()
    assert deadline is not None
    assert transport.cut_off_overdue() == 0  # not yet past 0.5 s
    time.sleep(max(0.0, deadline - time.monotonic()) + 0.01)  # the deadline itself
    assert transport.cut_off_overdue() == 1
    sender.join(5)
    stop.set()
    server.close()
    assert outcomes[0].kind is OutcomeKind.TRANSIENT
    assert "request deadline" in outcomes[0].reason
    assert transport.next_deadline() is None
    transport.close()
