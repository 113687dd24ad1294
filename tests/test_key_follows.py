"""The key follows the app: a key that appears, changes or goes away in the key store (the
app's own base64 file included) reaches a running handler without a restart."""

from __future__ import annotations

import base64
import logging
import logging.config
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi, wait_until

from massugc_logging import CloudHandler, InvalidApiKey, set_api_key
from massugc_logging.keystore import ApiKey, KeyStore
from massugc_logging.pipeline import keyfollow
from massugc_logging.pipeline.keyfollow import KeyFollower, KeyState

OTHER_KEY = "massugc_" + "Q" * 31 + "9"
JOB = {"event_type": "video_generation", "error_message": "x"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def app_key_file(home: Path) -> Path:
    return home / ".zyra-video-agent" / ".massugc_api_key"


def write_app_key(path: Path, key: str) -> None:
    """What the app's Settings page does: the key, base64-encoded, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(base64.b64encode(key.encode()).decode())
    path.chmod(0o600)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"  # conftest points HOME here


def keys_sent(api: FakeApi) -> list[str]:
    return [c.headers["X-API-Key"] for c in api.captured]


# -- the follower on its own -------------------------------------------------------------


def test_the_store_is_read_again_every_minute_and_every_two_seconds_while_held(
        tmp_path: Path) -> None:
    """due(): after 60 s while sending, after 2 s while waiting for a key."""
    clock = Clock()
    follower = KeyFollower(KeyStore(config_dir=tmp_path, legacy_path=tmp_path / "app"),
                           clock=clock)
    clock.now += 1.9
    assert not follower.due(True) and not follower.due(False)
    clock.now += 0.2
    assert follower.due(True) and not follower.due(False)
    clock.now += 58
    assert follower.due(False)


def test_a_pinned_key_is_never_read_again_until_unpinned(tmp_path: Path, key: str) -> None:
    """A key given directly is used as given; pin(None) follows the store at once."""
    clock = Clock()
    store = KeyStore(config_dir=tmp_path, legacy_path=tmp_path / "app")
    follower = KeyFollower(store, KeyState(ApiKey(key), "argument"), clock=clock)
    store.store(OTHER_KEY)
    clock.now += 3600
    assert not follower.due(True) and follower.refresh() is None
    follower.pin(None)
    assert follower.due(False)
    changed = follower.refresh()
    assert changed is not None and changed.key == ApiKey(OTHER_KEY)


def test_refresh_reports_only_a_change(tmp_path: Path, key: str) -> None:
    """refresh() returns the new state when the key changed, None when it did not."""
    store = KeyStore(config_dir=tmp_path, legacy_path=tmp_path / "app")
    follower = KeyFollower(store)
    assert follower.state.key is None
    assert follower.refresh() is None
    store.store(key)
    assert follower.refresh() == KeyState(ApiKey(key), "file")
    assert follower.refresh() is None


# -- a running handler -------------------------------------------------------------------


def test_a_key_written_to_the_apps_file_releases_held_events(
        api: FakeApi, home: Path, tmp_path: Path, key: str, jobs: logging.Logger) -> None:
    """No key at start: events wait; the app's Settings page writes its key file; within a
    few seconds the handler sends them with that key, no restart."""
    handler = CloudHandler(api_url=api.url, spool_path=tmp_path / "s.db")
    jobs.addHandler(handler)
    jobs.error("job failed", extra=JOB)
    assert wait_until(lambda: handler.stats()["state"] == "held", 10)
    write_app_key(app_key_file(home), key)
    assert api.wait_for_count(1, 10)
    assert keys_sent(api) == [key]
    assert handler.stats()["key_source"] == "legacy-file"
    handler.close()


def test_a_refused_key_replaced_in_the_apps_file_is_used_before_the_pause_ends(
        api: FakeApi, home: Path, tmp_path: Path, key: str, jobs: logging.Logger) -> None:
    """The API refuses the key (a 300 s pause); the user pastes a new key in Settings: the
    event goes with it within seconds."""
    write_app_key(app_key_file(home), key)
    api.respond_with(401, {"error": "invalid_api_key", "message": "unknown key"})
    handler = CloudHandler(api_url=api.url, spool_path=tmp_path / "s.db")
    jobs.addHandler(handler)
    jobs.error("job failed", extra=JOB)
    assert wait_until(lambda: handler.stats()["state"] == "auth_paused", 10)
    write_app_key(app_key_file(home), OTHER_KEY)
    assert api.wait_for_count(2, 10)
    assert keys_sent(api) == [key, OTHER_KEY]
    assert handler.force_flush(5)
    handler.close()


def test_a_key_deleted_in_the_app_stops_sending_and_keeps_the_events(
        api: FakeApi, home: Path, tmp_path: Path, key: str, jobs: logging.Logger,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The app removes its key (Settings): the next reading of the store holds sending; the
    events stay in the spool. (The minute between readings is shortened for the test.)"""
    monkeypatch.setattr(keyfollow, "KEY_CHECK_INTERVAL", 0.2)
    write_app_key(app_key_file(home), key)
    handler = CloudHandler(api_url=api.url, spool_path=tmp_path / "s.db")
    jobs.addHandler(handler)
    jobs.error("job failed", extra=JOB)
    assert handler.force_flush(5)
    app_key_file(home).unlink()
    assert wait_until(lambda: handler._pipeline.keys.due(False), 5)
    jobs.error("job failed", extra=JOB)
    assert wait_until(lambda: handler.stats()["state"] == "held", 10)
    assert len(api.captured) == 1
    assert handler.stats()["pending"] == 1
    handler.close()


def test_set_api_key_reaches_handlers_made_by_dictconfig(api: FakeApi, tmp_path: Path,
                                                         key: str) -> None:
    """massugc_logging.set_api_key(key) applies to every live CloudHandler, including one
    dictConfig made and nobody holds a reference to."""
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "handlers": {"cloud": {"class": "massugc_logging.CloudHandler", "api_url": api.url,
                               "spool_path": str(tmp_path / "s.db")}},
        "loggers": {"massugc.jobs": {"level": "INFO", "handlers": ["cloud"],
                                     "propagate": False}}})
    log = logging.getLogger("massugc.jobs")
    log.error("job failed", extra=JOB)
    assert set_api_key(key) >= 1
    assert api.wait_for_count(1, 10)
    assert keys_sent(api) == [key]


def test_set_api_key_refuses_a_malformed_key_without_showing_it() -> None:
    """A value that is not a key raises InvalidApiKey; the message never holds the value."""
    secret = "massugc_short-and-secret"
    with pytest.raises(InvalidApiKey) as info:
        set_api_key(secret)
    assert secret not in str(info.value)


def test_set_api_key_none_follows_the_store_again(api: FakeApi, home: Path, tmp_path: Path,
                                                  key: str, jobs: logging.Logger) -> None:
    """A key pinned with set_api_key wins over the store; None goes back to the store."""
    write_app_key(app_key_file(home), OTHER_KEY)
    handler = CloudHandler(api_url=api.url, spool_path=tmp_path / "s.db")
    jobs.addHandler(handler)
    handler.set_api_key(key)
    jobs.error("job failed", extra=JOB)
    assert handler.force_flush(5)
    handler.set_api_key(None)
    assert wait_until(lambda: handler.stats()["key_source"] == "legacy-file", 5)
    jobs.error("job failed", extra={**JOB, "run_id": "second"})
    assert handler.force_flush(5)
    assert keys_sent(api) == [key, OTHER_KEY]
    handler.close()


def test_the_key_store_is_read_on_a_handler_thread_never_the_apps(
        api: FakeApi, home: Path, tmp_path: Path, key: str, jobs: logging.Logger,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After start, every reading of the store happens on one of the handler's threads."""
    import threading

    readers: list[str] = []
    original = KeyStore.resolve

    def spy(self: KeyStore, *args: Any, **kwargs: Any) -> Any:
        readers.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    handler = CloudHandler(api_url=api.url, spool_path=tmp_path / "s.db")
    monkeypatch.setattr(KeyStore, "resolve", spy)
    jobs.addHandler(handler)
    jobs.error("job failed", extra=JOB)
    write_app_key(app_key_file(home), key)
    assert api.wait_for_count(1, 10)
    assert readers and all(name.startswith("massugc-logging-") for name in readers)
    handler.close()
