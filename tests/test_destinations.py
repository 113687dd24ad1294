"""Destinations never mix: each event goes only to the API it was logged for, whatever
environment shares the spool file with it."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakeapi import FakeApi

from massugc_logging import CloudHandler
from massugc_logging.pipeline.addresses import destination_of
from massugc_logging.pipeline.spool import Spool

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RUNNER = str(Path(__file__).resolve().parent / "desktop_runner.py")
CLI = [sys.executable, "-m", "massugc_logging.cli"]


@pytest.fixture
def machine(tmp_path: Path, key: str) -> dict[str, str]:
    """One user's machine: its home with the app's key file; the default spool."""
    home = tmp_path / "home"
    (home / ".zyra-video-agent").mkdir(parents=True)
    (home / ".zyra-video-agent" / ".massugc_api_key").write_text(
        base64.b64encode(key.encode()).decode())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASSUGC_")}
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                "XDG_DATA_HOME": str(home / ".local" / "share"),
                "XDG_STATE_HOME": str(home / ".local" / "state"),
                "NO_PROXY": "127.0.0.1,localhost"})
    return env


def run(env: dict[str, str], *jobs: str) -> None:
    result = subprocess.run([sys.executable, RUNNER, "--config", str(REPO / "logging.yaml"),
                             *jobs], env=env, capture_output=True, text=True, timeout=60,
                            check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr


def spool_of(machine: dict[str, str]) -> Path:
    return Path(machine["XDG_DATA_HOME"]) / "massugc-logging" / "spool.sqlite3"


def wait_out_the_remembered_pause(spool: Path, api_url: str, limit: float = 65.0) -> None:
    """Until the pause the last run remembered for ``api_url`` is over: a run started
    sooner rightly waits it out (the API refused connections a moment ago)."""
    deadline = time.monotonic() + limit
    while True:
        conn = sqlite3.connect(spool)
        try:
            rows = conn.execute("SELECT value FROM api_memory WHERE api_url = ? AND name = ?",
                                (api_url, "health")).fetchall()
        finally:
            conn.close()
        health = json.loads(rows[0][0]) if rows else {}
        over_at = health.get("written_at", 0.0) + health.get("resume_in", 0.0)
        if time.time() >= over_at:
            return
        assert time.monotonic() < deadline, health
        time.sleep(min(0.05, over_at - time.time() + 0.01))


def run_ids(api: FakeApi) -> list[str]:
    return sorted(c.json["job_data"]["run_id"] for c in api.captured)


def test_a_development_run_then_a_production_run_keep_their_events_apart(
        machine: dict[str, str], api: FakeApi, down_api: FakeApi) -> None:
    """Development with no collector running keeps 2 events; production on the same
    machine (the same default spool) sends only its own; the collector, once started,
    gets the 2 development events."""
    collector, production = down_api, api
    run({**machine, "MASSUGC_ENV": "development", "MASSUGC_API_URL": collector.url},
        "fail:dev-1", "ok:dev-2")
    run({**machine, "MASSUGC_ENV": "production", "MASSUGC_API_URL": production.url},
        "ok:prod-1")
    assert run_ids(production) == ["prod-1"]
    store = Spool(spool_of(machine))
    assert store.counts_by_destination() == {  # the development events wait for theirs
        destination_of(collector.url, "/api/desktop/usage/log"): 2}
    store.close()
    collector.come_up()
    wait_out_the_remembered_pause(spool_of(machine), collector.url)
    run({**machine, "MASSUGC_ENV": "development", "MASSUGC_API_URL": collector.url})
    assert collector.wait_for_count(2, 10)
    assert run_ids(collector) == ["dev-1", "dev-2"]
    assert run_ids(production) == ["prod-1"]


def test_spool_status_counts_events_per_destination(machine: dict[str, str], tmp_path: Path,
                                                    key: str) -> None:
    """spool status shows how many events wait for each API."""
    spool = tmp_path / "shared.sqlite3"
    for url, n in (("http://127.0.0.1:9/dev", 2), ("https://api.example", 3)):
        store = Spool(spool, destination=destination_of(url, "/api/desktop/usage/log"))
        store.add([(f"{url}-{i}", b"{}", 1000.0 + i) for i in range(n)], 1000.0)
        store.close()
    result = subprocess.run([*CLI, "spool", "status", "--spool", str(spool)], env=machine,
                            capture_output=True, text=True, timeout=60, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "pending events: 5" in result.stdout
    assert "2  for http://127.0.0.1:9/dev/api/desktop/usage/log" in result.stdout
    assert "3  for https://api.example/api/desktop/usage/log" in result.stdout


def test_spool_replay_sends_only_the_events_logged_for_that_api(
        machine: dict[str, str], api: FakeApi, tmp_path: Path, key: str) -> None:
    """replay --api-url X sends X's events and says what else waits; --from picks others."""
    spool = tmp_path / "shared.sqlite3"
    mine = destination_of(api.url, "/api/desktop/usage/log")
    other = destination_of("https://api.example", "/api/desktop/usage/log")
    for destination, run_id in ((mine, "mine"), (other, "other")):
        store = Spool(spool, destination=destination)
        body = json.dumps({"event_type": "video_generation", "job_data": {"run_id": run_id}})
        store.add([(run_id, body.encode(), time.time())], time.time())
        store.release()
        store.close()
    env = {**machine, "MASSUGC_API_KEY": key}
    replay = [*CLI, "spool", "replay", "--spool", str(spool), "--api-url", api.url]
    first = subprocess.run(replay, env=env, capture_output=True, text=True, timeout=60,
                           check=False, stdin=subprocess.DEVNULL)
    assert first.returncode == 0, first.stderr
    assert run_ids(api) == ["mine"]
    again = subprocess.run(replay, env=env, capture_output=True, text=True, timeout=60,
                           check=False, stdin=subprocess.DEVNULL)
    assert "nothing to replay" in again.stdout and other in again.stdout
    chosen = subprocess.run([*replay, "--from", other], env=env, capture_output=True,
                            text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert chosen.returncode == 0, chosen.stderr
    assert run_ids(api) == ["mine", "other"]


def test_events_of_release_0_1_are_sent_only_where_replay_is_told(
        machine: dict[str, str], api: FakeApi, tmp_path: Path, key: str) -> None:
    """A 0.1 spool's rows name no destination: a handler leaves them; replay --from
    unaddressed sends them to the API it is given."""
    spool = tmp_path / "old.sqlite3"
    store = Spool(spool)  # no destination: what 0.1 wrote
    body = json.dumps({"event_type": "video_generation", "job_data": {"run_id": "old"}})
    store.add([("old", body.encode(), time.time())], time.time())
    store.release()
    store.close()
    conn = sqlite3.connect(spool, isolation_level=None)
    conn.execute("UPDATE outbox SET destination = NULL")
    conn.close()
    handler = CloudHandler(api_url=api.url, api_key=key, spool_path=spool)
    assert handler.force_flush(3) and api.captured == []
    handler.close()
    result = subprocess.run([*CLI, "spool", "replay", "--spool", str(spool), "--api-url",
                             api.url, "--from", "unaddressed"],
                            env={**machine, "MASSUGC_API_KEY": key}, capture_output=True,
                            text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert run_ids(api) == ["old"]
