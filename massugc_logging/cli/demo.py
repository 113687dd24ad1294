"""``demo``: simulated jobs through a logging.yaml into a local collector, verified."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.config
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from massugc_logging.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    Output,
)
from massugc_logging.cli.init import reference_config
from massugc_logging.collector import Collector
from massugc_logging.config import (
    ConfigError,
    configure,
)
from massugc_logging.diagnostics import LOGGER_NAME
from massugc_logging.groups import most_active_first
from massugc_logging.handler import CloudHandler
from massugc_logging.pipeline.transport import TransportError, check_api_url

_WORKFLOWS = ("avatar", "massugc", "randomized")
_DEMO_FAILURES = (
    "ffmpeg -y -i /Users/{user}/Videos/MassUGC/{job}/avatar.mp4 -i "
    "/Users/{user}/Videos/MassUGC/{job}/voice.mp3 -c:v libx264 out.mp4 exited with code 1: "
    "moov atom not found",
    "ElevenLabs request failed: 401 Unauthorized (headers: {{'xi-api-key': "
    "'sk_3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c', 'Authorization': 'Bearer eyJhbGciOiJIUzI1NiJ9."
    "eyJzdWIiOiJkZW1vIn0.c2lnbmF0dXJl'}})",
    "Upload to https://storage.googleapis.com/massugc-renders/{job}.mp4?X-Goog-Algorithm="
    "GOOG4-RSA-SHA256&X-Goog-Credential=svc%40proj.iam&X-Goog-Signature=8f3a9c failed: "
    "403 Forbidden",
    "OpenAI script generation failed: Rate limit reached for gpt-4o (api_key=sk-proj-"
    "AbCdEfGhIjKlMnOpQrStUvWx)",
    "PermissionError: [Errno 13] Permission denied: 'C:\\Users\\{user}\\AppData\\Local\\"
    "MassUGC\\cache\\{job}.wav'",
    "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='api.heygen.com', "
    "port=443): Max retries exceeded (Caused by NewConnectionError: Connection refused)",
)


_AVATAR_OUTAGE = (
    "Avatar render failed for /Users/{user}/Videos/MassUGC/{job}/avatar.mp4: lipsync model "
    "returned no frames (render node {n} busy)"
)


def _demo_failure(workflow: str, index: int) -> Optional[int]:
    """Which error template (if any) the ``index``-th job of a workflow fails with.

    The avatar renderer has an outage from its 5th to its 10th job (a burst that
    raises one alert, then recovers); the other workflows fail now and then, away
    from the burst, with the realistic errors above.
    """
    if workflow == "avatar":
        return -1 if 4 <= index <= 9 else None
    # The signed-URL upload fails in both workflows: one problem, two places.
    occasional = {"massugc": {1: 2, 12: 1}, "randomized": {0: 5, 2: 0, 13: 2}}[workflow]
    return occasional.get(index)


def demo_jobs(count: int, user: str) -> list[dict[str, Any]]:
    """Simulated jobs across the three workflows, some failing with secret-laden errors."""
    jobs = []
    for i in range(count):
        workflow = _WORKFLOWS[i % len(_WORKFLOWS)]
        job = f"Campaign-{i + 1:02d}"
        fields: dict[str, Any] = {
            "event_type": "video_generation", "job_name": job, "product": "Glow Serum",
            "persona": "Tech Reviewer", "setting": "Studio", "emotion": "Enthusiastic",
            "hook": "Check this out!", "brand_name": "Lumen", "language": "English",
            "run_id": str(uuid.uuid4()), "workflow_type": workflow,
        }
        failure = _demo_failure(workflow, i // len(_WORKFLOWS))
        if failure is None:
            fields["output_path"] = f"/Users/{user}/Videos/MassUGC/{job}/final.mp4"
        elif failure < 0:
            fields["error_message"] = _AVATAR_OUTAGE.format(user=user, job=job, n=i % 4)
        else:
            fields["error_message"] = _DEMO_FAILURES[failure].format(user=user, job=job)
        jobs.append(fields)
    return jobs


class _AlertCounter(logging.Handler):
    """Counts the alert records the demo's jobs raise."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.states: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.states.append(str(getattr(record, "state", "")))


def _percent(row: Any) -> str:
    """``12% (3/25)`` from a collector stats row."""
    if not isinstance(row, dict):
        return str(row)
    rate = row.get("failure_rate", 0.0)
    return f"{rate * 100:.0f}% ({row.get('failures', '?')}/{row.get('events', '?')})"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, rule, *body])


def _cloud_handlers(log: logging.Logger) -> list[CloudHandler]:
    """The cloud handlers a record logged on ``log`` reaches (its own and its ancestors')."""
    found: list[CloudHandler] = []
    node: Optional[logging.Logger] = log
    while node is not None:
        found.extend(h for h in node.handlers if isinstance(h, CloudHandler) and h not in found)
        if not node.propagate:
            break
        node = node.parent
    return found


class _Said(logging.Handler):
    """What this package says (warnings and errors) while the configuration is applied."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:
            self.handleError(record)


def _held_problem(handler: CloudHandler, config: Path, applied: Any, said: list[str],
                  collector_url: str) -> str:
    """Why ``handler`` (held: it cannot send at all) sends nothing, and what to change."""
    name = handler.name or "cloud"
    reason = " ".join(m for m in said if m.startswith("CloudHandler")) or \
        f"its delivery state is {handler.stats()['state']!r}."
    specs = applied.get("handlers") if isinstance(applied, dict) else None
    spec = specs.get(handler.name) if isinstance(specs, dict) else None
    spec = spec if isinstance(spec, dict) else {}
    try:
        check_api_url(str(spec.get("api_url") or collector_url),
                      allow_insecure_http=bool(spec.get("allow_insecure_http")))
    except TransportError:
        return (f"the cloud handler {name!r} of {config} (development) sent nothing because "
                f"its API URL is refused; the handler said: {reason} The demo points "
                "MASSUGC_API_URL at the local collector: write api_url: "
                "${MASSUGC_API_URL:-http://127.0.0.1:8765} there, as the reference logging.yaml "
                "does")
    return (f"the cloud handler {name!r} of {config} (development) sent nothing; the handler "
            f"said: {reason} Run 'massugc-logging check {config} --env development' to see "
            "what to fix")


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    """Run simulated jobs through logging.yaml into a local collector; verify delivery."""
    config = Path(args.config) if args.config else reference_config()
    if config is None:
        out.problem("no logging.yaml here and none shipped in the package; pass --config "
                    "PATH, or write one with 'massugc-logging init'")
        return EXIT_PROBLEM
    workdir = Path(tempfile.mkdtemp(prefix="massugc-demo-"))
    try:
        return _run_demo(args, out, config, workdir)
    finally:
        logging.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


def _run_demo(args: argparse.Namespace, out: Output, config: Path, workdir: Path) -> int:
    demo_key = "massugc_demo" + uuid.uuid4().hex[:28]
    user = "alice"
    with Collector(workdir / "collector.sqlite3").start() as collector:
        out.say(f"Local collector on {collector.url}; config {config} (development)")
        environ = {"MASSUGC_API_URL": collector.url, "MASSUGC_API_KEY": demo_key,
                   "MASSUGC_SPOOL_PATH": str(workdir / "spool.sqlite3"),
                   "MASSUGC_LOG_DIR": str(workdir / "logs"),
                   # The console keeps to alerts and problems; the table shows the jobs.
                   "MASSUGC_CONSOLE_LEVEL": "WARNING"}
        saved = {k: os.environ.get(k) for k in environ}
        os.environ.update(environ)
        # A cloud handler says what stops it (a refused URL, say) once, while it is made.
        said = _Said()
        package_log = logging.getLogger(LOGGER_NAME)
        package_log.addHandler(said)
        try:
            applied = configure(config, env="development")
        except ConfigError as exc:
            out.problem(str(exc))
            return EXIT_PROBLEM
        finally:
            package_log.removeHandler(said)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        log = logging.getLogger("massugc.jobs")
        handlers = _cloud_handlers(log)
        if not handlers:
            out.problem(f"the development environment of {config} sends no 'massugc.jobs' "
                        "record to a massugc_logging.CloudHandler; add one (see the reference "
                        "logging.yaml)")
            return EXIT_PROBLEM
        held = [h for h in handlers if h.stats()["state"] == "held"]
        if held:
            out.problem(_held_problem(held[0], config, applied, said.messages, collector.url))
            return EXIT_PROBLEM
        for message in said.messages:  # as Python would have shown them without a handler
            print(message, file=out.err, flush=True)
        jobs = demo_jobs(args.jobs, user)
        log.propagate = False  # job lines stay off the console; alerts and problems show
        alerts = _AlertCounter()
        logging.getLogger("massugc.alerts").addHandler(alerts)
        for i, fields in enumerate(jobs, 1):
            if "error_message" in fields:
                log.error("job failed", extra=fields)
            else:
                log.info("job succeeded", extra=fields)
            out.progress(i, len(jobs), "jobs")
        flushing = time.monotonic()
        delivered = all([h.force_flush(30) for h in handlers])
        waited = time.monotonic() - flushing
        states = ", ".join(sorted({str(h.stats()["state"]) for h in handlers}))
        events = collector.events()
        by_run: dict[str, int] = {}
        for e in events:
            run_id = e["body"]["job_data"]["run_id"]
            by_run[run_id] = by_run.get(run_id, 0) + 1
        rows = [
            [f"{group.count}x", group.category, ", ".join(group.workflows),
             (group.title[:78] + "…") if len(group.title) > 78 else group.title]
            for group in most_active_first(collector.groups())
        ]
        out.say()
        out.say("What is failing, grouped by cause as the collector received it (redacted "
                "before leaving the app):")
        out.say(_table(rows, ["count", "category", "workflows", "example"]))
        stats = collector.stats()
        out.say()
        out.say("Failure rate by workflow_type: " + ", ".join(
            f"{name} {_percent(row)}" for name, row in sorted(stats["by_workflow_type"].items())))
        out.say("Failures by category: " + ", ".join(
            f"{name} {row.get('failures', row) if isinstance(row, dict) else row}"
            for name, row in sorted(stats["by_category"].items())))
        out.say(f"Alerts raised on massugc.alerts: {alerts.states.count('firing')} firing, "
                f"{alerts.states.count('resolved')} resolved")
        expected = {j["run_id"] for j in jobs}
        exactly_once = set(by_run) == expected and all(n == 1 for n in by_run.values())
        failures = sum(1 for j in jobs if "error_message" in j)
        out.say()
        out.say(f"{len(jobs)} jobs logged ({failures} failed); the collector received "
                f"{len(events)} events, {collector.duplicates()} duplicate(s) dropped.")
        leaked = [e for e in events if user in json.dumps(e["body"])
                  or "sk_3f9a" in json.dumps(e["body"])]
        if leaked:
            out.problem(f"{len(leaked)} event(s) still carry a home path or a token")
        logging.shutdown()
        if delivered and exactly_once and not leaked:
            out.say(f"Every event arrived exactly once. Failures page: {collector.url}/ "
                    "(open while the demo runs with --keep-serving).")
            if args.keep_serving:
                out.say("Serving until Ctrl-C ...")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
            return EXIT_OK
        if not delivered and waited >= 29:
            out.problem("not every event was delivered within 30 s; the console lines above "
                        "say why")
        elif not delivered:
            out.problem(f"not every event could be delivered (the cloud handler is {states}); "
                        "the console lines above say why")
        out.problem("not every event arrived exactly once; see the table above, and run "
                    "'massugc-logging check' on the configuration")
        return EXIT_PROBLEM


# -- send-test ----------------------------------------------------------------------
