"""Shared fixtures: a fake API on loopback, a valid key, and logging hygiene."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakeapi import FakeApi

TEST_KEY = "massugc_" + "Ab3_dEf-9" * 3 + "Zq1x9"
assert len(TEST_KEY) == 8 + 32


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Logging is global state: put back handlers and levels after each test."""
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved = {
        name: (list(lg.handlers), lg.level, lg.propagate, lg.disabled)
        for name, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    yield
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger):
            continue
        for h in list(lg.handlers):
            if name not in saved or h not in saved[name][0]:
                lg.removeHandler(h)
                h.close()
        if name in saved:
            lg.handlers[:] = saved[name][0]
            lg.level, lg.propagate, lg.disabled = saved[name][1:]
        else:
            lg.level, lg.propagate, lg.disabled = logging.NOTSET, True, False
    for h in list(root.handlers):
        if h not in saved_root[0]:
            root.removeHandler(h)
            h.close()
    root.handlers[:] = saved_root[0]
    root.level = saved_root[1]
    logging.Logger.manager._clear_cache()


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real key, key store or user data directory leaks into a test."""
    monkeypatch.delenv("MASSUGC_API_KEY", raising=False)
    monkeypatch.delenv("MASSUGC_API_URL", raising=False)
    monkeypatch.delenv("MASSUGC_ENV", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
                     "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi().start()
    yield server
    server.stop()


@pytest.fixture
def down_api() -> Iterator[FakeApi]:
    """An API that refuses connections at its URL until ``down_api.come_up()``."""
    server = FakeApi().start_down()
    yield server
    server.stop()


@pytest.fixture
def jobs() -> logging.Logger:
    """The app's job logger, on its own: level INFO, not propagating to the root."""
    log = logging.getLogger("massugc.jobs")
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


@pytest.fixture
def key() -> str:
    return TEST_KEY


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Collect after each test, so that a SQLite connection or a socket a test leaves
    open is reported in that test (Python 3.13 warns of an unclosed database when it is
    collected, and the warning is an error here), not in whichever test runs next.

    What survives is then frozen: the next collection looks only at what later tests
    made, instead of walking every object of the session after each of a thousand tests
    (most of the suite's time went there). A cycle a test leaves alive and some later
    test orphans is collected at the end of the session."""
    yield
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True, scope="session")
def _collect_what_was_frozen() -> Iterator[None]:
    """At the end of the session, collect what each test's freeze set aside: a cycle a
    test left alive (held by a thread that outlived it, say) and later orphaned still
    has its unclosed-resource warning raised, if only at the end."""
    yield
    gc.unfreeze()
    gc.collect()
