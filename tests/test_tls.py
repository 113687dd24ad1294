"""TLS and proxies as users have them: private CAs, the system trust store, a CONNECT
proxy, and errors that say what to do. Real TLS servers on 127.0.0.1 with certificates
made per test session by trustme, as urllib3's own tests do; no mocks."""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from connect_proxy import ConnectProxy
from fakeapi import FakeApi, wait_until

from massugc_logging import CloudHandler, UsageClient
from massugc_logging.outcome import OutcomeKind
from massugc_logging.pipeline.transport import Transport, TransportError

JOB = {"event_type": "video_generation", "error_message": "x"}


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="Example Corp TLS inspection")


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "company-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def tls_api(ca: trustme.CA, *names: str, host_name: str = "localhost",
            **cert: Any) -> FakeApi:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or (host_name,)), **cert).configure_cert(context)
    return FakeApi(ssl_context=context, host_name=host_name).start()


@pytest.fixture
def secure_api(ca: trustme.CA) -> Iterator[FakeApi]:
    server = tls_api(ca)
    yield server
    server.stop()


def attach(handler: CloudHandler) -> logging.Logger:
    log = logging.getLogger("massugc.jobs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return log


def test_default_trust_rejects_a_private_ca_and_says_what_to_do(
        secure_api: FakeApi, tmp_path: Path, key: str, caplog: Any) -> None:
    """With no CA configured: nothing is delivered, events are kept, and one local line
    names the host, the reason and the fix; it is not retried as a network blip."""
    caplog.set_level(logging.WARNING, logger="massugc_logging")
    handler = CloudHandler(api_url=secure_api.url, api_key=key, spool_path=tmp_path / "s.db")
    log = attach(handler)
    for _ in range(5):
        log.error("job failed", extra=JOB)
    assert not handler.force_flush(3)
    stats = handler.stats()
    assert stats["state"] == "circuit_open" and stats["pending"] == 5 and stats["sent"] == 0
    assert stats["retried"] <= 5  # probed about a second apart and slower, not hammered
    assert secure_api.captured == []
    lines = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.WARNING and r.name.startswith("massugc_logging")]
    assert len(lines) == 1, lines
    (line,) = lines
    assert "localhost" in line and "unknown CA" in line and "ca_bundle" in line
    assert "REQUESTS_CA_BUNDLE" in line and "Retrying cannot help" in line
    assert key not in caplog.text and key[8:] not in caplog.text
    handler.close()


def test_ca_bundle_delivers_every_event(secure_api: FakeApi, ca_pem: Path, tmp_path: Path,
                                        key: str) -> None:
    """ca_bundle naming the private CA: everything arrives, and stats() says what is trusted."""
    handler = CloudHandler(api_url=secure_api.url, api_key=key, spool_path=tmp_path / "s.db",
                           ca_bundle=str(ca_pem))
    log = attach(handler)
    for i in range(20):
        log.error("job failed", extra={**JOB, "run_id": f"r{i}"})
    assert handler.force_flush(10)
    assert len(secure_api.captured) == 20
    assert handler.stats()["trust"] == f"ca_bundle {ca_pem}"
    handler.close()


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_the_ca_bundle_variables_are_honoured(secure_api: FakeApi, ca_pem: Path,
                                              tmp_path: Path, key: str, variable: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """REQUESTS_CA_BUNDLE, or SSL_CERT_FILE, pointing at the CA is enough."""
    monkeypatch.setenv(variable, str(ca_pem))
    handler = CloudHandler(api_url=secure_api.url, api_key=key, spool_path=tmp_path / "s.db")
    attach(handler).error("job failed", extra=JOB)
    assert handler.force_flush(10)
    assert len(secure_api.captured) == 1
    assert handler.stats()["trust"] == f"{variable} {ca_pem}"
    handler.close()


def hashed_ca_directory(ca: trustme.CA, where: Path) -> Path:
    """A directory of CA certificates named by subject hash, as OpenSSL looks them up."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to name a certificate directory by subject hash")
    where.mkdir()
    pem = where / "company-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    digest = subprocess.run([openssl, "x509", "-hash", "-noout", "-in", str(pem)],
                            capture_output=True, text=True, check=True).stdout.strip()
    (where / f"{digest}.0").write_bytes(pem.read_bytes())
    return where


def test_ca_bundle_may_be_a_directory(secure_api: FakeApi, ca: trustme.CA, tmp_path: Path,
                                      key: str) -> None:
    """A directory of certificates (hashed names) works as ca_bundle too."""
    directory = hashed_ca_directory(ca, tmp_path / "certs")
    handler = CloudHandler(api_url=secure_api.url, api_key=key, spool_path=tmp_path / "s.db",
                           ca_bundle=str(directory))
    attach(handler).error("job failed", extra=JOB)
    assert handler.force_flush(10)
    assert len(secure_api.captured) == 1
    handler.close()


@pytest.mark.skipif(sys.version_info < (3, 10), reason="the system trust store needs 3.10+")
def test_a_ca_the_operating_system_trusts_needs_no_setting(
        secure_api: FakeApi, ca: trustme.CA, tmp_path: Path, key: str) -> None:
    """With the CA in the system's store (on Linux, OpenSSL's certificate directory, here
    pointed at by SSL_CERT_DIR in a fresh process), the default trust delivers."""
    directory = hashed_ca_directory(ca, tmp_path / "system-certs")
    env = {k: v for k, v in os.environ.items()
           if k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")}
    env["SSL_CERT_DIR"] = str(directory)
    code = (
        "import logging, sys\n"
        "from massugc_logging import CloudHandler\n"
        f"h = CloudHandler(api_url={secure_api.url!r}, api_key={key!r}, spool_path=None)\n"
        "logging.getLogger('massugc.jobs').addHandler(h)\n"
        "logging.getLogger('massugc.jobs').error('job failed',"
        " extra={'event_type': 'video_generation'})\n"
        "delivered = h.force_flush(10)\n"  # the trust store loads with the first send
        "print(h.stats()['trust'], delivered)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "system trust store True", result.stderr
    assert len(secure_api.captured) == 1


def test_a_wrong_host_name_is_refused_with_its_own_reason(ca: trustme.CA, ca_pem: Path,
                                                          tmp_path: Path, key: str) -> None:
    """A certificate for another name: refused, and the outcome says so."""
    server = tls_api(ca, "other.test")
    try:
        transport = Transport(server.url, None, ca_bundle=str(ca_pem))
        outcome = transport.probe()
        transport.close()
    finally:
        server.stop()
    assert outcome.kind is OutcomeKind.UNTRUSTED
    assert "another host name" in outcome.reason and "localhost" in outcome.reason


def test_an_expired_certificate_is_refused_with_its_own_reason(ca: trustme.CA, ca_pem: Path,
                                                               key: str) -> None:
    """An expired certificate: refused as expired, not as an unknown CA."""
    now = datetime.datetime.now(datetime.timezone.utc)
    server = tls_api(ca, not_before=now - datetime.timedelta(days=30),
                     not_after=now - datetime.timedelta(days=1))
    try:
        client = UsageClient(api_url=server.url, api_key=key, ca_bundle=str(ca_pem))
        outcome = client.send_usage_data({"event_type": "video_generation", "job_data": {}})
        client.close()
    finally:
        server.stop()
    assert outcome.kind is OutcomeKind.UNTRUSTED
    assert "expired" in outcome.reason
    assert key not in outcome.reason


def test_a_missing_ca_bundle_is_a_clear_configuration_error(tmp_path: Path) -> None:
    """A ca_bundle that does not exist is refused at configuration, naming the path."""
    with pytest.raises(TransportError, match="does not exist"):
        Transport("https://localhost:1", None, ca_bundle=str(tmp_path / "nope.pem"))


def test_events_reach_an_api_only_the_proxy_can_resolve_and_the_proxy_never_sees_the_key(
        ca: trustme.CA, ca_pem: Path, tmp_path: Path, key: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY to a CONNECT proxy that maps api.test to a TLS server on 127.0.0.1:
    events arrive through the tunnel; the proxy sees the CONNECT, never the key."""
    server = tls_api(ca, "api.test", host_name="api.test")
    proxy = ConnectProxy({"api.test": ("127.0.0.1", server.port)})
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost")
        handler = CloudHandler(api_url=server.url, api_key=key, spool_path=tmp_path / "s.db",
                               ca_bundle=str(ca_pem))
        log = attach(handler)
        for i in range(3):
            log.error("job failed", extra={**JOB, "run_id": f"p{i}"})
        assert handler.force_flush(10), handler.stats()
        handler.close()
        assert sorted(c.json["job_data"]["run_id"] for c in server.captured) == [
            "p0", "p1", "p2"]
        assert proxy.connects and all(c == f"api.test:{server.port}" for c in proxy.connects)
        assert key.encode() not in bytes(proxy.seen)
        assert b"X-API-Key" not in bytes(proxy.seen)
    finally:
        proxy.stop()
        server.stop()


def test_a_loopback_api_never_goes_through_a_proxy(api: FakeApi, tmp_path: Path, key: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY set, NO_PROXY unset, api_url on 127.0.0.1: the event goes straight to the
    local collector, and the proxy receives nothing (it would have the key in clear)."""
    proxy = ConnectProxy({})
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        handler = CloudHandler(api_url=api.url, api_key=key, spool_path=tmp_path / "s.db")
        attach(handler).error("job failed", extra=JOB)
        assert handler.force_flush(10)
        handler.close()
        assert len(api.captured) == 1
        assert proxy.seen == bytearray() and proxy.plain_requests == []
    finally:
        proxy.stop()


@pytest.mark.parametrize("url", [
    "https:/ops:hunter2@127.0.0.1:1",
    "https://ops:hunter2@api.example.com",
    "htps://api.example.com/?api_key=massugc_" + "Zq1x9" * 6 + "ab",
    "https://api.example.com/?token=hunter2",
])
def test_a_mistyped_api_url_is_named_without_its_secrets(url: str, tmp_path: Path, key: str,
                                                         caplog: Any) -> None:
    """The configuration error says what is wrong and quotes no password, query or key."""
    caplog.set_level(logging.ERROR, logger="massugc_logging")
    handler = CloudHandler(api_url=url, api_key=key, spool_path=tmp_path / "s.db")
    assert handler.stats()["state"] == "held"
    handler.close()
    (line,) = [r.getMessage() for r in caplog.records]
    assert "api_url" in line
    for secret in ("hunter2", "massugc_Zq1x9", "api_key=", "token="):
        assert secret not in line
    assert "hunter2" not in repr(handler)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "massugc_logging.cli", *args],
                          capture_output=True, text=True, env=env, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


def cli_env(key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")}
    env["MASSUGC_API_KEY"] = key
    return env


def test_send_test_diagnoses_an_untrusted_certificate_and_exits_1(
        secure_api: FakeApi, ca_pem: Path, key: str) -> None:
    """send-test: the same diagnosis as the handler, exit 1; with --ca-bundle, exit 0."""
    env = cli_env(key)
    failed = cli("send-test", "--api-url", secure_api.url, env=env)
    assert failed.returncode == 1
    text = failed.stdout + failed.stderr
    assert "unknown CA" in text and "--ca-bundle" in text and key not in text
    ok = cli("send-test", "--api-url", secure_api.url, "--ca-bundle", str(ca_pem), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"ca_bundle {ca_pem}" in ok.stdout
    assert wait_until(lambda: len(secure_api.captured) == 1, 5)


def test_check_shows_the_trust_and_diagnoses_an_untrusted_certificate(
        secure_api: FakeApi, ca_pem: Path, key: str, tmp_path: Path) -> None:
    """check: names what is trusted; an untrusted certificate is a PROBLEM, exit 1."""
    config = tmp_path / "logging.yaml"
    config.write_text(
        "version: 1\nhandlers:\n  cloud:\n    class: massugc_logging.CloudHandler\n"
        f"    api_url: {secure_api.url}\n    spool_path: null\n"
        "root:\n  handlers: [cloud]\n", encoding="utf-8")
    env = cli_env(key)
    failed = cli("check", str(config), env=env)
    assert failed.returncode == 1
    assert "PROBLEM" in failed.stdout and "unknown CA" in failed.stdout
    assert "trusting system trust store" in failed.stdout or sys.version_info < (3, 10)
    ok = cli("check", str(config), "--ca-bundle", str(ca_pem), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"trusting ca_bundle {ca_pem}" in ok.stdout
    assert "API reachable" in ok.stdout

