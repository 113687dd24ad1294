"""The app's start pays only for what the app's thread needs: the HTTP stack, the trust
store and the rule tables load on the handler's own threads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fakeapi import FakeApi

KEY = "massugc_" + "Ab3_dEf-9" * 3 + "Zq1x9"
#: Loaded by sending and by the payload's rules, never by the app's thread.
LOADED_LATER = ["urllib3", "ssl", "http.client", "sqlite3",
                "massugc_logging.pipeline.transport", "massugc_logging.pipeline.spool",
                "massugc_logging.pipeline.outbox", "massugc_logging.pipeline.delivery",
                "massugc_logging.pipeline.decisions", "massugc_logging.payload",
                "massugc_logging.redaction", "massugc_logging.payload_config",
                "massugc_logging.classify"]

PROBE = """
import json, logging, sys, threading
before = set(sys.modules)
from massugc_logging import CloudHandler
handler = CloudHandler(api_url=sys.argv[1], api_key=sys.argv[2], spool_path=sys.argv[3])
made = {name: name in sys.modules for name in json.loads(sys.argv[4])}
threads = sorted(t.name for t in threading.enumerate() if t.name.startswith("massugc"))
log = logging.getLogger("massugc.jobs")
log.addHandler(handler)
log.propagate = False
log.error("job failed", extra={"event_type": "video_generation", "run_id": "r1"})
delivered = handler.force_flush(10)
sent = {name: name in sys.modules for name in json.loads(sys.argv[4])}
after = sorted(t.name for t in threading.enumerate() if t.name.startswith("massugc"))
print(json.dumps({"made": made, "threads": threads, "delivered": delivered, "sent": sent,
                  "after": after}))
handler.close()
"""


def probe(api: FakeApi, tmp_path: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, api.url, KEY, str(tmp_path / "s.db"),
         json.dumps(LOADED_LATER)],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


@pytest.mark.slow
def test_making_a_handler_loads_no_http_stack_and_starts_one_thread(
        api: FakeApi, tmp_path: Path) -> None:
    """Right after CloudHandler(...): neither the spool, the engine, the payload's rules
    nor the HTTP stack is imported, and only the intake thread runs; after a delivered
    event, they are and the workers run."""
    answer = probe(api, tmp_path)
    assert answer["made"] == {name: False for name in LOADED_LATER}
    assert answer["threads"] == ["massugc-logging-intake"]
    assert answer["delivered"] is True
    sent = answer["sent"]
    assert isinstance(sent, dict)
    assert sent["urllib3"] and sent["massugc_logging.redaction"]
    after = answer["after"]
    assert isinstance(after, list) and len(after) > 1
    assert len(api.captured) == 1
