"""No secret leaves the machine: the key and credentials in error text, end to end."""

from __future__ import annotations

import http.client
import logging
import pickle
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi, free_port

from massugc_logging import ApiKey, CloudHandler, InvalidApiKey
from massugc_logging.pipeline.transport import Transport


class _Everything(logging.Handler):
    """Formats every record, traceback included, at every level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def fragments(key: str) -> list[str]:
    """The key and pieces of it long enough to matter."""
    return [key, key[8:], key[10:30]]


def assert_absent(key: str, text: str) -> None:
    for piece in fragments(key):
        assert piece not in text


def test_the_key_never_appears_in_payloads_logs_reprs_or_the_spool(
        api: FakeApi, tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole session with DEBUG everywhere, http.client's debug printing turned on for
    every connection too: the key is only ever in the X-API-Key header."""
    monkeypatch.setattr(http.client.HTTPConnection, "debuglevel", 1)
    everything = _Everything()
    root = logging.getLogger()
    root.addHandler(everything)
    root.setLevel(logging.DEBUG)
    spool = tmp_path / "spool.sqlite3"
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=spool,
                           retry={"backoff_base": 0.01, "backoff_cap": 0.02})
    log = logging.getLogger("massugc.jobs")
    log.addHandler(handler)
    api.respond_with(503, times=2)
    api.respond_with(422, {"error": "validation_error", "message": "bad"})
    api.respond_with(401, {"error": "invalid_api_key", "message": f"key {key} is invalid"})
    for i in range(4):
        log.error("job failed", extra={"event_type": "video_generation", "run_id": str(i),
                                       "error_message": f"auth failed for key {key}"})
    assert api.wait_for_count(4, 10)  # 503, 503, 422, then 401 pauses sending
    handler.force_flush(1)
    for request in api.captured:
        assert request.headers["X-API-Key"] == key
        assert_absent(key, request.raw.decode())
        assert_absent(key, request.path)
    assert_absent(key, "\n".join(everything.lines))
    assert any(line.startswith("massugc_logging") for line in everything.lines)
    printed = capsys.readouterr()
    assert_absent(key, printed.out + printed.err)
    assert_absent(key, repr(handler))
    assert_absent(key, repr(vars(handler)))
    assert_absent(key, str(handler.stats()))
    handler.close()
    for path in tmp_path.glob("spool.sqlite3*"):
        assert key.encode() not in path.read_bytes()
        assert key[8:].encode() not in path.read_bytes()


def test_invalid_key_messages_never_echo_the_key() -> None:
    """A malformed key is refused without being repeated."""
    bad = "massugc_" + "x" * 31 + "!"
    with pytest.raises(InvalidApiKey) as caught:
        ApiKey(bad)
    assert_absent(bad, str(caught.value))
    assert_absent(bad, repr(caught.value))


def test_api_key_is_masked_everywhere_and_cannot_be_pickled(key: str) -> None:
    """repr, str, format and logging show a masked key; pickling is refused."""
    secret = ApiKey(key)
    shown_forms = (repr(secret), str(secret), f"{secret}",
                   "%s" % secret, "{}".format(secret))  # noqa: UP031, UP032 - each formatting path
    for shown in shown_forms:
        assert_absent(key, shown)
        assert shown.count("…") == 1
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_transport_repr_and_failures_do_not_show_the_key(key: str) -> None:
    """A refused connection's outcome and the transport's repr carry no key."""
    transport = Transport(f"http://127.0.0.1:{free_port()}", ApiKey(key), timeout=1)
    outcome = transport.send(b"{}", "id")
    assert_absent(key, repr(outcome))
    assert_absent(key, repr(transport))
    transport.close()


def test_a_key_in_the_environment_is_used_but_never_logged(api: FakeApi, tmp_path: Path,
                                                           key: str, monkeypatch: Any,
                                                           caplog: Any) -> None:
    """MASSUGC_API_KEY is read, sent as the header, and absent from every log line."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MASSUGC_API_KEY", key)
    handler = CloudHandler(api_url=api.url, spool_path=tmp_path / "s.sqlite3")
    logging.getLogger("massugc.jobs").addHandler(handler)
    logging.getLogger("massugc.jobs").info("ok", extra={"event_type": "video_generation"})
    assert handler.force_flush(5)
    assert api.captured[0].headers["X-API-Key"] == key
    assert_absent(key, caplog.text)
    handler.close()


def test_a_malformed_key_is_reported_once_without_the_key_and_events_are_kept(
        api: FakeApi, tmp_path: Path, caplog: Any) -> None:
    """A bad key format holds events and says so plainly, never echoing the key."""
    bad = "massugc_short"
    caplog.set_level(logging.WARNING, logger="massugc_logging")
    handler = CloudHandler(api_url=api.url, api_key=bad, spool_path=tmp_path / "s.sqlite3")
    logging.getLogger("massugc.jobs").addHandler(handler)
    logging.getLogger("massugc.jobs").error("x", extra={"event_type": "video_generation"})
    assert not handler.force_flush(1)
    assert api.captured == []
    assert handler.stats()["pending"] == 1 and handler.stats()["state"] == "held"
    assert "short" not in caplog.text
    assert "API key" in caplog.text
    handler.close()


def test_credentials_in_error_text_are_redacted_before_sending(api: FakeApi, tmp_path: Path,
                                                               key: str) -> None:
    """Tokens, signed URLs and home paths in an error never reach the server."""
    import os

    home = os.path.expanduser("~")
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=tmp_path / "s.sqlite3")
    logging.getLogger("massugc.jobs").addHandler(handler)
    error = (f"ffmpeg -i {home}/Videos/in.mp4 -headers 'Authorization: Bearer abc.def.ghi' "
             "https://bucket.s3.amazonaws.com/v.mp4?X-Amz-Signature=deadbeef failed; "
             f"password=hunter2 key {key}")
    logging.getLogger("massugc.jobs").error("job failed", extra={
        "event_type": "video_generation", "error_message": error})
    assert handler.force_flush(5)
    sent = api.captured[0].json["job_data"]["error_message"]
    for secret in (home, "abc.def.ghi", "deadbeef", "hunter2", key):
        assert secret not in sent
    assert "~/Videos/in.mp4" in sent and "https://bucket.s3.amazonaws.com/v.mp4" in sent
    handler.close()
