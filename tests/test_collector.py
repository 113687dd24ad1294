"""The local collector, over real HTTP on 127.0.0.1: statuses, dedup, page, stats, storage."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union
from urllib.parse import urlsplit

import pytest
import requests

import massugc_logging
from massugc_logging.classify import Classifier
from massugc_logging.collector import Collector, serve_forever
from massugc_logging.contract import DEFAULT_ENDPOINT, LEGACY_ENDPOINT, validate_event

KEY = "massugc_" + "k3Y_-" * 6 + "ab"
assert len(KEY) == 40
WHEN = "2025-07-30T12:34:56.789Z"


def make_event(*, success: bool = False, **job_fields: Any) -> dict[str, Any]:
    """A body that satisfies contract.validate_event, with job fields overridden."""
    job: dict[str, Any] = {
        "job_name": "Campaign Name", "product": "Product Name", "persona": "Tech Reviewer",
        "setting": "Studio", "emotion": "Enthusiastic", "hook": "Check this out!",
        "brand_name": "Brand Name", "language": "English", "run_id": str(uuid.uuid4()),
        "output_path": None, "success": success, "workflow_type": "avatar",
    }
    if success:
        job.update(output_path="/renders/out.mp4", generation_time=WHEN)
    else:
        job.update(error_message="Descriptive error message", failure_time=WHEN)
    job.update(job_fields)
    body = {"event_type": "video_generation", "job_data": job, "timestamp": WHEN,
            "source": "massugc-video-service", "version": "1.0.0"}
    assert validate_event(body) == []
    return body


def post(
    session: requests.Session,
    collector: Collector,
    body: Union[dict[str, Any], bytes],
    *,
    key: Optional[str] = KEY,
    idempotency_key: Optional[str] = None,
    path: str = DEFAULT_ENDPOINT,
    content_type: str = "application/json",
) -> requests.Response:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["X-API-Key"] = key
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return session.post(collector.url + path, data=data, headers=headers, timeout=10)


def read_response(fp: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """Parse one HTTP/1.1 response with a Content-Length from a socket file."""
    status = int(fp.readline().split()[1])
    headers: dict[str, str] = {}
    while True:
        line = fp.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, fp.read(int(headers.get("content-length", "0")))


def raw_exchange(collector: Collector, request: bytes, responses: int = 1,
                 ) -> list[tuple[int, dict[str, str], bytes]]:
    """Send raw bytes on one connection and read ``responses`` answers."""
    url = urlsplit(collector.url)
    with socket.create_connection((str(url.hostname), int(url.port or 0)), timeout=10) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as fp:
            return [read_response(fp) for _ in range(responses)]


def raw_post(body: bytes, *, key: str = KEY, extra: str = "") -> bytes:
    return (
        f"POST {DEFAULT_ENDPOINT} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector().start()
    yield server
    server.close()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


# -- accepting events -------------------------------------------------------


def test_valid_event_is_stored_and_acknowledged(
    collector: Collector, session: requests.Session
) -> None:
    """A valid event gets 200 with the success body and is stored as posted."""
    body = make_event()
    response = post(session, collector, body, idempotency_key="evt-1")
    assert response.status_code == 200
    assert response.json() == {"code": 0, "message": "success",
                               "data": {"id": collector.events()[0]["id"]}}
    [event] = collector.events()
    assert event["body"] == body
    assert event["idempotency_key"] == "evt-1"
    assert event["received_at"].endswith("Z") and len(event["received_at"]) == 24


def test_legacy_endpoint_accepts_events(collector: Collector, session: requests.Session) -> None:
    """The older /api/desktop/usage path behaves like the documented one."""
    response = post(session, collector, make_event(success=True), path=LEGACY_ENDPOINT)
    assert response.status_code == 200
    assert len(collector.events()) == 1


def test_events_are_returned_oldest_first(collector: Collector, session: requests.Session) -> None:
    """events() lists stored events in arrival order."""
    for name in ("first", "second", "third"):
        post(session, collector, make_event(job_name=name))
    assert [e["body"]["job_data"]["job_name"] for e in collector.events()] == [
        "first", "second", "third"]


@pytest.mark.parametrize("key", [None, "", "massugc_short", "sk-" + "a" * 37, KEY + "x"])
def test_missing_or_malformed_key_is_401_without_echo(
    collector: Collector, session: requests.Session, key: Optional[str]
) -> None:
    """No key or a wrongly shaped key is refused with 401, and the key is not echoed."""
    response = post(session, collector, make_event(), key=key)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    if key:
        assert key not in response.text
    assert collector.events() == []


def test_non_json_content_type_is_415(collector: Collector, session: requests.Session) -> None:
    """A body that is not declared as application/json is refused with 415."""
    response = post(session, collector, make_event(), content_type="text/plain")
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


def test_json_content_type_with_charset_is_accepted(
    collector: Collector, session: requests.Session
) -> None:
    """Parameters after the media type do not matter."""
    response = post(session, collector, make_event(),
                    content_type="application/json; charset=utf-8")
    assert response.status_code == 200


def test_missing_content_length_is_411(collector: Collector) -> None:
    """A POST without Content-Length is refused with 411."""
    request = (
        f"POST {DEFAULT_ENDPOINT} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        "Content-Type: application/json\r\n\r\n"
    ).encode()
    [(status, _, body)] = raw_exchange(collector, request)
    assert status == 411
    assert json.loads(body)["error"] == "length_required"


def test_chunked_body_is_411_and_closes_the_connection(collector: Collector) -> None:
    """A chunked body has no length to check up front: 411, then the connection closes."""
    request = (
        f"POST {DEFAULT_ENDPOINT} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    ).encode()
    [(status, headers, _)] = raw_exchange(collector, request)
    assert status == 411
    assert headers["connection"] == "close"


def test_invalid_content_length_is_400(collector: Collector) -> None:
    """A Content-Length that is not a number is refused with 400."""
    request = raw_post(b"{}").replace(b"Content-Length: 2", b"Content-Length: two")
    [(status, headers, _)] = raw_exchange(collector, request)
    assert status == 400
    assert headers["connection"] == "close"


def test_oversized_body_is_413(session: requests.Session) -> None:
    """A body over max_body_bytes is refused with 413 and nothing is stored."""
    with Collector(max_body_bytes=1024) as small:
        body = make_event(error_message="x" * 4096)
        response = post(session, small, body)
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"
        assert small.events() == []
        assert post(session, small, make_event()).status_code == 200
        small.close()


def test_large_body_over_the_default_limit_is_413(
    collector: Collector, session: requests.Session
) -> None:
    """Two MiB against the default 1 MiB limit: the client still reads a clean 413."""
    response = post(session, collector, make_event(error_message="y" * (2 * 1024 * 1024)))
    assert response.status_code == 413


def test_413_is_decided_from_the_header_without_reading_the_body(collector: Collector) -> None:
    """Declaring a gigabyte is enough for 413: the server does not wait for the body."""
    request = (
        f"POST {DEFAULT_ENDPOINT} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    ).encode()
    started = time.monotonic()
    [(status, headers, _)] = raw_exchange(collector, request)
    assert status == 413
    assert headers["connection"] == "close"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe\x00", b"[" * 100_000,
                                 b'{"a": NaN}'])
def test_malformed_json_is_400(
    collector: Collector, session: requests.Session, raw: bytes
) -> None:
    """Bodies that are not JSON (including NaN and absurd nesting) get 400 invalid_json."""
    response = post(session, collector, raw)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


def test_contract_violation_is_422_naming_the_field(
    collector: Collector, session: requests.Session
) -> None:
    """A body breaking the contract gets 422, the first problem and all of them."""
    body = make_event()
    del body["job_data"]["success"]
    body["timestamp"] = "2025-07-30 12:34:56"
    response = post(session, collector, body)
    assert response.status_code == 422
    payload = response.json()
    assert payload["error"] == "validation_error"
    assert payload["message"] == payload["details"][0]
    assert any(p.startswith("job_data.success") for p in payload["details"])
    assert any(p.startswith("timestamp") for p in payload["details"])
    assert collector.events() == []


def test_json_that_is_not_an_object_is_422(
    collector: Collector, session: requests.Session
) -> None:
    """A JSON array is valid JSON but not an event."""
    response = post(session, collector, b"[1, 2]")
    assert response.status_code == 422
    assert response.json()["message"].startswith("body:")


def test_overlong_idempotency_key_is_400(collector: Collector, session: requests.Session) -> None:
    """An absurd Idempotency-Key is refused rather than stored."""
    response = post(session, collector, make_event(), idempotency_key="k" * 500)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_idempotency_key"


# -- duplicates and concurrency ---------------------------------------------


def test_duplicate_idempotency_key_is_acknowledged_not_stored(
    collector: Collector, session: requests.Session
) -> None:
    """A repeated key gets 200 'duplicate' with the first id; the event is stored once."""
    body = make_event()
    first = post(session, collector, body, idempotency_key="same")
    second = post(session, collector, body, idempotency_key="same")
    assert second.status_code == 200
    assert second.json() == {"code": 0, "message": "duplicate", "data": first.json()["data"]}
    assert len(collector.events()) == 1
    assert collector.duplicates() == 1


def test_missing_idempotency_key_stores_every_post(
    collector: Collector, session: requests.Session
) -> None:
    """Without an Idempotency-Key there is nothing to deduplicate on."""
    body = make_event()
    post(session, collector, body)
    post(session, collector, body)
    assert len(collector.events()) == 2
    assert collector.duplicates() == 0


def test_concurrent_identical_posts_are_stored_once(collector: Collector) -> None:
    """Twenty threads posting the same key at once store exactly one event."""
    body = make_event()
    barrier = threading.Barrier(20)
    results: list[tuple[int, int]] = []
    lock = threading.Lock()

    def worker() -> None:
        with requests.Session() as s:
            barrier.wait(timeout=10)
            response = post(s, collector, body, idempotency_key="shared-key")
            with lock:
                results.append((response.status_code, response.json()["data"]["id"]))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 20
    assert {status for status, _ in results} == {200}
    assert len({event_id for _, event_id in results}) == 1
    assert len(collector.events()) == 1
    assert collector.duplicates() == 19
    assert collector.requests_seen() == 20


def test_concurrent_distinct_posts_are_all_stored(collector: Collector) -> None:
    """Eight keep-alive clients posting fifty events each: all four hundred are stored."""
    failures: list[int] = []

    def worker(n: int) -> None:
        with requests.Session() as s:
            for i in range(50):
                response = post(s, collector, make_event(job_name=f"w{n}-{i}"),
                                idempotency_key=f"w{n}-{i}")
                if response.status_code != 200:
                    failures.append(response.status_code)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    events = collector.events()
    assert len(events) == 400
    assert len({e["idempotency_key"] for e in events}) == 400
    assert collector.requests_seen() == 400


def test_requests_seen_counts_rejected_and_duplicate_posts(
    collector: Collector, session: requests.Session
) -> None:
    """Every POST counts, whatever its answer."""
    post(session, collector, make_event(), idempotency_key="a")
    post(session, collector, make_event(), idempotency_key="a")
    post(session, collector, make_event(), key=None)
    post(session, collector, b"{")
    assert collector.requests_seen() == 4
    assert collector.stats()["rejected"] == {"400": 1, "401": 1}


def test_connection_stays_usable_after_a_rejection(collector: Collector) -> None:
    """A refused request's body is consumed, so the next request on the socket works."""
    body = json.dumps(make_event()).encode()
    request = raw_post(body, key="wrong") + raw_post(body)
    [(first, _, _), (second, _, answer)] = raw_exchange(collector, request, responses=2)
    assert (first, second) == (401, 200)
    assert json.loads(answer)["message"] == "success"


# -- reading ------------------------------------------------------------------


def test_head_on_the_page_sends_headers_only(collector: Collector) -> None:
    """HEAD answers like GET with Content-Length and no body."""
    request = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    url = urlsplit(collector.url)
    with socket.create_connection((str(url.hostname), int(url.port or 0)), timeout=10) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as fp:
            status = int(fp.readline().split()[1])
            length = 0
            while (line := fp.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert (status, length > 0) == (200, True)
            assert read_response(fp)[0] == 200  # no body was sent in between


def test_stats_reports_failure_rates_by_workflow_and_category(
    collector: Collector, session: requests.Session
) -> None:
    """/api/stats counts events, duplicates and failures by workflow type and category."""
    post(session, collector, make_event(success=True), idempotency_key="s1")
    post(session, collector, make_event(success=True), idempotency_key="s1")
    post(session, collector, make_event(error_message="Connection reset by peer"))
    post(session, collector, make_event(error_message="anything", error_category="rate_limit"))
    post(session, collector, make_event(workflow_type="massugc",
                                        error_message="moov atom not found"))
    post(session, collector, make_event(workflow_type="", error_message="???"))
    stats = session.get(collector.url + "/api/stats", timeout=10).json()
    assert stats["events"] == 5
    assert (stats["successes"], stats["failures"]) == (1, 4)
    assert stats["failure_rate"] == pytest.approx(0.8)
    assert stats["duplicates"] == 1
    assert stats["requests_seen"] == 6
    overall = {name: {k: row[k] for k in ("events", "failures", "failure_rate")}
               for name, row in stats["by_workflow_type"].items()}
    assert overall == {
        "": {"events": 1, "failures": 1, "failure_rate": 1.0},
        "avatar": {"events": 3, "failures": 2, "failure_rate": pytest.approx(2 / 3)},
        "massugc": {"events": 1, "failures": 1, "failure_rate": 1.0},
    }
    assert {name: (row["failures"], row["share_of_failures"])
            for name, row in stats["by_category"].items()} == {
        name: (1, 0.25) for name in ("network", "rate_limit", "unknown", "video_generation")
    }
    direct = collector.stats()
    assert {k: v for k, v in stats.items() if k not in ("generated_at", "recent")} == {
        k: v for k, v in direct.items() if k not in ("generated_at", "recent")}


def test_stats_on_an_empty_collector(collector: Collector, session: requests.Session) -> None:
    """No events means zero rates, not a division error."""
    stats = session.get(collector.url + "/api/stats", timeout=10).json()
    assert (stats["events"], stats["failure_rate"], stats["by_category"]) == (0, 0.0, {})


def test_custom_classifier_categorises_failures(session: requests.Session) -> None:
    """A collector given a Classifier uses its rules for uncategorised failures."""
    classifier = Classifier.from_config([{"category": "render_farm", "keywords": ["farm"]}])
    with Collector(classifier=classifier) as custom:
        post(session, custom, make_event(error_message="farm node 7 died"))
        assert list(custom.stats()["by_category"]) == ["render_farm"]
        custom.close()


def test_events_endpoint_lists_events_with_optional_limit(
    collector: Collector, session: requests.Session
) -> None:
    """/api/events returns stored events oldest first; limit keeps the latest n."""
    for name in ("a", "b", "c"):
        post(session, collector, make_event(job_name=name))
    everything = session.get(collector.url + "/api/events", timeout=10).json()
    assert everything["count"] == 3
    assert everything["events"] == collector.events()
    latest = session.get(collector.url + "/api/events?limit=2", timeout=10).json()
    assert [e["body"]["job_data"]["job_name"] for e in latest["events"]] == ["b", "c"]
    assert latest["count"] == 2


@pytest.mark.parametrize("limit", ["-1", "abc", "1.5"])
def test_events_endpoint_rejects_a_bad_limit(
    collector: Collector, session: requests.Session, limit: str
) -> None:
    """A limit that is not a non-negative integer is a 400."""
    response = session.get(collector.url + f"/api/events?limit={limit}", timeout=10)
    assert response.status_code == 400


def test_healthz(collector: Collector, session: requests.Session) -> None:
    """/healthz answers 200 while serving."""
    response = session.get(collector.url + "/healthz", timeout=10)
    assert response.status_code == 200


def test_unknown_path_is_404_json(collector: Collector, session: requests.Session) -> None:
    """Unknown paths get a JSON 404, for GET and POST alike."""
    for response in (session.get(collector.url + "/nope", timeout=10),
                     post(session, collector, make_event(), path="/api/other")):
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", DEFAULT_ENDPOINT, "POST"), ("PUT", LEGACY_ENDPOINT, "POST"),
     ("POST", "/api/stats", "GET, HEAD"), ("DELETE", "/", "GET, HEAD")],
)
def test_wrong_method_is_405(
    collector: Collector, session: requests.Session, method: str, path: str, allow: str
) -> None:
    """A known path with the wrong method gets 405 and an Allow header."""
    response = session.request(method, collector.url + path, data=b"{}", timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert response.json()["error"] == "method_not_allowed"


def test_garbage_does_not_take_the_server_down(
    collector: Collector, session: requests.Session
) -> None:
    """A nonsense request line is answered and the server keeps serving."""
    url = urlsplit(collector.url)
    with socket.create_connection((str(url.hostname), int(url.port or 0)), timeout=10) as sock:
        sock.sendall(b"\x00\x01 garbage \xff\r\n\r\n")
        with sock.makefile("rb") as fp:
            assert b"400" in fp.read()  # answered (as HTTP/0.9, given no version), then closed
    assert session.get(collector.url + "/healthz", timeout=10).status_code == 200


def test_request_logging_goes_to_debug_not_stderr(
    collector: Collector, session: requests.Session, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Per-request lines are DEBUG records on massugc_logging.collector, not stderr noise."""
    caplog.set_level(logging.DEBUG, logger="massugc_logging.collector")
    session.get(collector.url + "/healthz", timeout=10)
    session.get(collector.url + "/missing", timeout=10)
    assert capfd.readouterr().err == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "massugc_logging.collector"]
    assert any("GET /healthz" in line for line in lines)
    assert all(r.levelno == logging.DEBUG for r in caplog.records
               if r.name == "massugc_logging.collector")


# -- lifecycle ------------------------------------------------------------------


def test_file_database_persists_across_restart(tmp_path: Path) -> None:
    """Events and their keys survive a new Collector on the same file."""
    db = tmp_path / "sub" / "collector.sqlite3"
    body = make_event()
    with requests.Session() as s:
        first = Collector(db).start()
        post(s, first, body, idempotency_key="persisted")
        first.close()
        second = Collector(db).start()
        try:
            assert [e["body"] for e in second.events()] == [body]
            again = post(s, second, body, idempotency_key="persisted")
            assert again.json()["message"] == "duplicate"
        finally:
            second.close()


def test_restart_serves_on_the_same_url(collector: Collector, session: requests.Session) -> None:
    """stop() then start() comes back on the same port, events intact."""
    post(session, collector, make_event())
    url = collector.url
    collector.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(url + "/healthz", timeout=5)
    collector.start()
    assert collector.url == url
    assert session.get(url + "/healthz", timeout=10).status_code == 200
    assert len(collector.events()) == 1


def test_stop_is_prompt_with_idle_keep_alive_clients(collector: Collector) -> None:
    """An idle keep-alive connection does not hold up stop(), and stop() is idempotent."""
    with requests.Session() as s:
        assert s.get(collector.url + "/healthz", timeout=10).status_code == 200
        started = time.monotonic()
        collector.stop()
        collector.stop()
        assert time.monotonic() - started < 3


def test_url_before_start_is_an_error() -> None:
    """A collector that never started has no URL to give."""
    idle = Collector()
    try:
        with pytest.raises(RuntimeError, match="start"):
            _ = idle.url
    finally:
        idle.close()


def test_serve_forever_stops_on_its_event() -> None:
    """serve_forever reports its URL, serves, and returns when asked to stop."""
    stop = threading.Event()
    urls: list[str] = []
    ready = threading.Event()

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    thread = threading.Thread(target=serve_forever, args=(None, "127.0.0.1", 0),
                              kwargs={"ready": on_ready, "stop_event": stop})
    thread.start()
    try:
        assert ready.wait(10)
        with requests.Session() as s:
            assert s.get(urls[0] + "/healthz", timeout=10).status_code == 200
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM semantics are POSIX")
def test_serve_forever_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    """Run as a process, it prints nothing itself and exits 0 on SIGTERM."""
    root = str(Path(massugc_logging.__file__).resolve().parent.parent)
    script = (
        "from massugc_logging.collector import serve_forever\n"
        f"serve_forever({str(tmp_path / 'c.db')!r}, '127.0.0.1', 0,"
        " ready=lambda url: print(url, flush=True))\n"
    )
    env = {**os.environ, "PYTHONPATH": root}
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            with requests.Session() as s:
                assert s.get(url + "/healthz", timeout=10).status_code == 200
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert (out, err) == ("", "")
