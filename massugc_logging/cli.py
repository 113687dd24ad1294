"""The ``massugc-logging`` command line, for the people who run and support the app.

Sub-commands: ``demo`` (the whole loop against a local collector), ``serve``
(the local collector), ``send-test``, ``check``, ``spool status|replay|
export|purge`` and ``key set|show|remove|migrate``. Exit codes: 0 success,
1 a problem was found or an action failed, 2 wrong arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import getpass
import inspect
import json
import logging
import logging.config
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, TextIO

from massugc_logging._version import __version__
from massugc_logging.collector import Collector, serve_forever
from massugc_logging.config import (
    ENV_VARIABLE,
    ConfigError,
    configure,
    default_config_path,
    describe_dictconfig_error,
    load_environment,
    packaged_config_path,
)
from massugc_logging.contract import DEFAULT_ENDPOINT, PRODUCTION_API_URL
from massugc_logging.decisions import EventAction
from massugc_logging.delivery import DeliveryEngine
from massugc_logging.handler import CloudHandler
from massugc_logging.keystore import ENV_VAR, InvalidApiKey, KeyStore, KeyStoreError
from massugc_logging.outbox import default_spool_path
from massugc_logging.outcome import Outcome
from massugc_logging.payload import PayloadSettings, build_event, format_utc
from massugc_logging.spool import Spool, SpoolError
from massugc_logging.transport import (
    InsecureURLError,
    OutcomeKind,
    Transport,
    TransportError,
    check_api_url,
)
from massugc_logging.trust import FIX as TLS_FIX

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class _Output:
    """Plain-text output: results on stdout, progress and problems on stderr."""

    def __init__(self, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.out, self.err = out, err

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def problem(self, text: str) -> None:
        print(f"massugc-logging: {text}", file=self.err, flush=True)

    def progress(self, done: int, total: int, label: str) -> None:
        """A one-line progress bar on stderr (redrawn in place on a terminal)."""
        width = 30
        filled = width if total == 0 else int(width * done / total)
        bar = "#" * filled + "-" * (width - filled)
        end = "\n" if done >= total or not self.err.isatty() else "\r"
        if self.err.isatty() or done >= total or done % max(1, total // 10) == 0:
            print(f"{label} [{bar}] {done}/{total}", end=end, file=self.err, flush=True)


# -- shared helpers -----------------------------------------------------------------


def _api_url(args: argparse.Namespace) -> str:
    return str(getattr(args, "api_url", None) or os.environ.get("MASSUGC_API_URL")
               or PRODUCTION_API_URL)


def _spool_path(args: argparse.Namespace) -> Path:

    given = getattr(args, "spool", None) or os.environ.get("MASSUGC_SPOOL_PATH")
    return Path(given).expanduser() if given else default_spool_path()


def _reference_config() -> Optional[Path]:
    """``./logging.yaml``, else the reference configuration shipped in the package."""
    for candidate in (Path("logging.yaml"), packaged_config_path()):
        if candidate.is_file():
            return candidate
    return None


def cmd_init(args: argparse.Namespace, out: _Output) -> int:
    """Write the reference logging.yaml (development, test and production) to start from."""
    target = Path(args.path)
    if target.is_dir():
        target = target / "logging.yaml"
    if target.exists() and not args.force:
        out.problem(f"{target} exists; nothing written. Pass --force to replace it")
        return EXIT_PROBLEM
    try:
        target.write_bytes(packaged_config_path().read_bytes())
    except OSError as exc:
        out.problem(f"cannot write {target} ({exc.strerror or type(exc).__name__}); choose "
                    "another path")
        return EXIT_PROBLEM
    out.say(f"wrote {target}: environments development, test and production; pick one with "
            "MASSUGC_ENV, check it with 'massugc-logging check'")
    return EXIT_OK


_KEY_HINT = f"set {ENV_VAR} or run 'massugc-logging key set'"


def _key_problem(exc: KeyStoreError) -> str:
    """A key-store error with what to do about it (the key itself is never in it)."""
    if isinstance(exc, InvalidApiKey):
        if exc.source == "environment":
            return f"{exc}. Correct {ENV_VAR}, or unset it and run 'massugc-logging key set'"
        if exc.source in ("file", "keyring"):
            return f"{exc}. Store the right key with 'massugc-logging key set'"
    return str(exc)


def _url_problem(exc: Exception) -> str:
    """A refused API URL with the command line's way out."""
    if isinstance(exc, InsecureURLError):
        return (f"{exc} (on the command line: --allow-insecure-http; better, use "
                "https:// with --api-url or MASSUGC_API_URL)")
    return f"{exc}; fix --api-url or MASSUGC_API_URL"


def _transport(args: argparse.Namespace, out: _Output) -> Any:
    """A transport for the configured API and key, or None after saying why."""

    try:
        key, _source = KeyStore().resolve(getattr(args, "api_key", None))
    except KeyStoreError as exc:
        out.problem(_key_problem(exc))
        return None
    if key is None:
        out.problem(f"no API key: {_KEY_HINT}")
        return None
    try:
        return Transport(_api_url(args), key,
                         endpoint=getattr(args, "endpoint", None) or DEFAULT_ENDPOINT,
                         timeout=(3.05, 10.0),
                         allow_insecure_http=getattr(args, "allow_insecure_http", False),
                         ca_bundle=getattr(args, "ca_bundle", None))
    except (TransportError, ValueError) as exc:
        out.problem(_url_problem(exc))
        return None


def _describe(outcome: Any) -> str:
    status = f"HTTP {outcome.status}" if outcome.status is not None else "no response"
    reason = f": {outcome.reason}" if outcome.reason else ""
    return f"{outcome.kind.value} ({status}{reason})"


# -- serve --------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, out: _Output) -> int:
    """Run the local collector until interrupted."""

    def ready(url: str) -> None:
        out.say(f"Local MassUGC collector listening on {url}  (Ctrl-C to stop)")
        out.say(f"  failures page: {url}/    events as JSON: {url}/api/events")
        out.say(f"  point the app at it with: MASSUGC_API_URL={url}")

    try:
        serve_forever(args.db, args.host, args.port, ready=ready)
    except OSError as exc:
        out.problem(f"cannot listen on {args.host}:{args.port} ({exc.strerror}); "
                    "choose another --port")
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        pass
    return EXIT_OK


# -- demo ---------------------------------------------------------------------------

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
    occasional = {"massugc": (1, 12), "randomized": (2, 13)}[workflow]
    if index in occasional:
        return (index + len(workflow)) % len(_DEMO_FAILURES)
    return None


def _demo_jobs(count: int, user: str) -> list[dict[str, Any]]:
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


def cmd_demo(args: argparse.Namespace, out: _Output) -> int:
    """Run simulated jobs through logging.yaml into a local collector; verify delivery."""
    config = Path(args.config) if args.config else _reference_config()
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


def _run_demo(args: argparse.Namespace, out: _Output, config: Path, workdir: Path) -> int:
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
        try:
            configure(config, env="development")
        except ConfigError as exc:
            out.problem(str(exc))
            return EXIT_PROBLEM
        finally:
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
        jobs = _demo_jobs(args.jobs, user)
        log.propagate = False  # job lines stay off the console; alerts and problems show
        alerts = _AlertCounter()
        logging.getLogger("massugc.alerts").addHandler(alerts)
        for i, fields in enumerate(jobs, 1):
            if "error_message" in fields:
                log.error("job failed", extra=fields)
            else:
                log.info("job succeeded", extra=fields)
            out.progress(i, len(jobs), "jobs")
        delivered = all([h.flush(30) for h in handlers])
        events = collector.events()
        by_run: dict[str, int] = {}
        for e in events:
            run_id = e["body"]["job_data"]["run_id"]
            by_run[run_id] = by_run.get(run_id, 0) + 1
        rows = []
        for e in events:
            job = e["body"]["job_data"]
            if job["success"]:
                continue
            error = job.get("error_message", "")
            rows.append([job["job_name"], job["workflow_type"],
                         str(job.get("error_category", "")),
                         (error[:88] + "…") if len(error) > 88 else error])
        out.say()
        out.say("Failed jobs as the collector received them (redacted before leaving the app):")
        out.say(_table(rows, ["job", "workflow", "category", "error_message"]))
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
        if not delivered:
            out.problem("not every event was delivered within 30 s; the console lines above "
                        "say why")
        out.problem("not every event arrived exactly once; see the table above, and run "
                    "'massugc-logging check' on the configuration")
        return EXIT_PROBLEM


# -- send-test ----------------------------------------------------------------------

_OUTCOME_HINTS = {
    OutcomeKind.AUTH: "the API refused the key: check which key is used with "
                      "'massugc-logging key show', then store the right one with "
                      f"'massugc-logging key set' (or correct {ENV_VAR})",
    OutcomeKind.TRANSIENT: "the API could not be reached or is busy: check the network and "
                           "the API URL (--api-url or MASSUGC_API_URL), then try again",
    OutcomeKind.PERMANENT: "the server rejected the event: check the endpoint (--endpoint; "
                           "older servers use /api/desktop/usage)",
    OutcomeKind.UNTRUSTED: "the API's certificate is not trusted here: " + TLS_FIX,
}


def cmd_send_test(args: argparse.Namespace, out: _Output) -> int:
    """Send one clearly-marked test event to the configured API."""

    transport = _transport(args, out)
    if transport is None:
        return EXIT_PROBLEM
    record = logging.LogRecord("massugc.jobs", logging.INFO, __file__, 0,
                               "massugc-logging send-test", None, None)
    record.__dict__.update({"job_name": "massugc-logging send-test", "run_id": str(uuid.uuid4()),
                            "output_path": "send-test", "workflow_type": "test"})
    built = build_event(record, PayloadSettings(), exception=None,
                        fallback_id=str(uuid.uuid4()), now=time.time())
    out.say(f"Sending a test event to {transport.url} (trusting: "
            f"{transport.trust.description}) ...")
    outcome = transport.send(built.body(), built.event_id)
    transport.close()
    out.say(f"Outcome: {_describe(outcome)}")
    if outcome.delivered:
        return EXIT_OK
    out.problem(_OUTCOME_HINTS.get(outcome.kind, "see the outcome above"))
    return EXIT_PROBLEM


# -- check --------------------------------------------------------------------------


def _cloud_specs(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    handlers = config.get("handlers") or {}
    return [(name, spec) for name, spec in handlers.items()
            if isinstance(spec, dict) and str(spec.get("class", "")).endswith("CloudHandler")]


def _check_cloud_handler(name: str, spec: dict[str, Any], written: Any, probe: bool,
                         problems: list[str], notes: list[str],
                         ca_bundle: Optional[str] = None) -> None:
    """Check one cloud handler's arguments, URL, key and (if ``probe``) the API.

    ``written`` is the handler's mapping as written in the file, before expansion.
    """
    kwargs = {k: v for k, v in spec.items() if k not in ("class", "level", "formatter",
                                                         "filters", ".")}
    try:
        inspect.signature(CloudHandler).bind(**kwargs)
    except TypeError as exc:
        problems.append(f"handler {name!r}: {exc}; remove or correct it (see the "
                        "CloudHandler arguments in README)")
    literal = written.get("api_key") if isinstance(written, dict) else None
    if isinstance(literal, str) and literal.strip() and "${" not in literal:
        problems.append(f"handler {name!r}: the API key is written in the configuration; "
                        f"remove api_key and use {ENV_VAR} or 'massugc-logging key set'")
    url = str(kwargs.get("api_url") or os.environ.get("MASSUGC_API_URL") or PRODUCTION_API_URL)
    try:
        check_api_url(url, allow_insecure_http=bool(kwargs.get("allow_insecure_http")))
        notes.append(f"handler {name!r}: API {url}")
    except InsecureURLError as exc:
        problems.append(f"handler {name!r}: insecure API URL: {exc}")
        return
    except TransportError as exc:
        problems.append(f"handler {name!r}: {exc}; correct api_url (or MASSUGC_API_URL)")
        return
    try:
        key, source = KeyStore().resolve(kwargs.get("api_key"))
    except KeyStoreError as exc:
        problems.append(f"handler {name!r}: {_key_problem(exc)}")
        key, source = None, "invalid"
    if key is None and source != "invalid":
        problems.append(f"handler {name!r}: no API key; {_KEY_HINT}")
    elif key is not None:
        notes.append(f"handler {name!r}: API key {key.masked} from {source}")
    try:
        transport = Transport(url, None, timeout=(3.05, 10.0),
                              allow_insecure_http=bool(kwargs.get("allow_insecure_http")),
                              ca_bundle=ca_bundle or kwargs.get("ca_bundle"))
    except TransportError as exc:
        problems.append(f"handler {name!r}: {exc}")
        return
    notes.append(f"handler {name!r}: trusting {transport.trust.description}")
    if probe:
        outcome = transport.probe()
        if outcome.kind is OutcomeKind.UNTRUSTED:
            problems.append(f"handler {name!r}: {outcome.reason}")
        elif not outcome.delivered:
            problems.append(f"handler {name!r}: the API at {url} is unreachable "
                            f"({outcome.reason}); check the network and api_url, or pass "
                            "--no-network to skip this probe")
        else:
            notes.append(f"handler {name!r}: API reachable")
    transport.close()


def _dry_run(config: dict[str, Any]) -> Optional[str]:
    """Apply ``config`` with inert stand-ins for cloud and file handlers; the error, if any.

    Nothing is sent, no spool or log file is touched. It runs in this process's
    logging (the command line has nothing else to log), and puts back the
    handlers of the root logger.
    """
    dry = copy.deepcopy(config)
    for name, _spec in _cloud_specs(dry):
        dry["handlers"][name] = {"class": "logging.NullHandler"}
    for spec in (dry.get("handlers") or {}).values():
        if isinstance(spec, dict) and "filename" in spec:
            spec["class"] = "logging.NullHandler"
            for key in ("filename", "maxBytes", "backupCount", "encoding", "mode", "when",
                        "interval", "delay", "utc", "atTime", "errors"):
                spec.pop(key, None)
    saved_root = logging.root.handlers[:], logging.root.level
    try:
        logging.config.dictConfig(dry)
    except Exception as exc:
        return (f"dictConfig rejects the configuration: {describe_dictconfig_error(exc)}; "
                "check the class names, formatter and handler names and arguments there")
    finally:
        logging.root.handlers[:], logging.root.level = saved_root
    return None


def cmd_check(args: argparse.Namespace, out: _Output) -> int:
    """Validate a logging.yaml without sending anything."""
    if args.path is None:
        args.path = str(default_config_path())
    try:
        config, env_name = load_environment(args.path, args.env)
    except ConfigError as exc:
        out.problem(str(exc))
        return EXIT_PROBLEM
    out.say(f"checking {args.path}, environment {env_name!r}")
    problems: list[str] = []
    notes: list[str] = []
    as_written, _ = load_environment(args.path, env_name, expand_variables=False)
    written_handlers = as_written.get("handlers")
    if not isinstance(written_handlers, dict):
        written_handlers = {}
    for name, spec in _cloud_specs(config):
        _check_cloud_handler(name, spec, written_handlers.get(name), not args.no_network,
                             problems, notes, args.ca_bundle)
    rejected = _dry_run(config)
    if rejected:
        problems.append(rejected)
    for note in notes:
        out.say(f"ok: {note}")
    for problem in problems:
        out.say(f"PROBLEM: {problem}")
    if problems:
        out.problem(f"{len(problems)} problem(s) in {args.path} (environment {env_name!r}); "
                    "fix each PROBLEM above and run the check again")
        return EXIT_PROBLEM
    out.say(f"{args.path}: configuration looks good (environment {env_name!r})")
    return EXIT_OK


# -- spool --------------------------------------------------------------------------


def _open_spool(args: argparse.Namespace, out: _Output) -> Any:

    path = _spool_path(args)
    if not path.exists():
        return None
    try:
        return Spool(path)
    except SpoolError as exc:
        out.problem(str(exc))
        return None


#: The longest ``spool replay`` keeps trying events that failed once before it stops.
_REPLAY_SECONDS = 60.0


def _iso(ts: float) -> str:
    return format_utc(ts)


def cmd_spool(args: argparse.Namespace, out: _Output) -> int:
    """Inspect, replay, export or purge the spool."""
    path = _spool_path(args)
    if not path.exists():
        # The normal state of a fresh install: nothing was ever kept for later.
        out.say(f"nothing is kept yet: no spool at {path} (another one: --spool PATH or "
                "MASSUGC_SPOOL_PATH)")
        return EXIT_OK
    spool = _open_spool(args, out)
    if spool is None:
        return EXIT_PROBLEM
    try:
        return _SPOOL_ACTIONS[args.action](spool, args, out)
    except SpoolError as exc:
        out.problem(f"{exc}; nothing more was done (is another program holding the file?)")
        return EXIT_PROBLEM
    finally:
        spool.close()


def _spool_status(spool: Any, args: argparse.Namespace, out: _Output) -> int:
    pending = spool.pending()
    dead = spool.dead_letters()
    out.say(f"spool:          {spool.path}")
    out.say(f"pending events: {len(pending)}")
    if pending:
        out.say(f"oldest:         {_iso(pending[0].created)}")
        out.say(f"newest:         {_iso(pending[-1].created)}")
        out.say(f"most attempts:  {max(e.attempts for e in pending)}")
    out.say(f"dead-lettered:  {len(dead)}")
    for d in dead[-5:]:
        out.say(f"  {_iso(d.created)}  HTTP {d.status}  {d.reason}")
    return EXIT_OK


def _spool_replay(spool: Any, args: argparse.Namespace, out: _Output) -> int:
    """Deliver what the spool holds now, with the handler's own delivery engine."""
    transport = _transport(args, out)
    if transport is None:
        return EXIT_PROBLEM
    total = spool.pending_count()
    tally = {"sent": 0, "rejected": 0}
    failures: list[Outcome] = []

    def settled(event: Any, outcome: Outcome, action: EventAction) -> None:
        if action is EventAction.DELIVERED:
            tally["sent"] += 1
        elif action is EventAction.DEAD_LETTER:
            tally["rejected"] += 1
        else:
            failures.append(outcome)
        out.progress(tally["sent"] + tally["rejected"], total, "replay")

    engine = DeliveryEngine(spool, lambda e: transport.send(e.body, e.event_id),
                            max_in_flight=1, on_settled=settled)
    out.progress(0, total, "replay")
    try:
        engine.drain(deadline=time.time() + _REPLAY_SECONDS)
        engine.stop()
    finally:
        transport.close()
    left = spool.pending_count()
    if left and failures:
        out.problem(f"stopped: {_describe(failures[-1])}; the rest stays in the spool")
    elif left:
        out.problem(f"{left} event(s) are held by a program that is still running "
                    "(the app, or another replay); it delivers them itself. Run the "
                    "replay again after it exits, or a few minutes later")
    out.say(f"replayed {tally['sent']} event(s); {tally['rejected']} rejected and "
            f"dead-lettered; {left} still pending")
    return EXIT_OK if left == 0 else EXIT_PROBLEM


def _spool_export(spool: Any, args: argparse.Namespace, out: _Output) -> int:
    rows: list[dict[str, Any]] = []
    for event in spool.pending():
        rows.append({"state": "pending", "event_id": event.event_id,
                     "created": _iso(event.created), "attempts": event.attempts,
                     "event": json.loads(event.body)})
    if args.dead or args.all:
        for dead in spool.dead_letters():
            rows.append({"state": "dead_letter", "event_id": dead.event_id,
                         "created": _iso(dead.created), "status": dead.status,
                         "reason": dead.reason, "event": json.loads(dead.body)})
    if args.dead and not args.all:
        rows = [r for r in rows if r["state"] == "dead_letter"]
    try:
        target = open(args.output, "w", encoding="utf-8") if args.output else out.out  # noqa: SIM115
    except OSError as exc:
        out.problem(f"cannot write {args.output} ({exc.strerror or type(exc).__name__}); "
                    "choose another --output path")
        return EXIT_PROBLEM
    try:
        for row in rows:
            target.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if args.output:
            target.close()
    if args.output:
        out.say(f"wrote {len(rows)} event(s) to {args.output}")
    return EXIT_OK


def _spool_purge(spool: Any, args: argparse.Namespace, out: _Output) -> int:
    dead = spool.dead_letter_count()
    what = (f"{dead} dead-lettered event(s)" if args.dead_only else
            f"{spool.pending_count()} pending and {dead} dead-lettered event(s)")
    if not args.yes:
        print(f"Delete {what} in {spool.path}? They will never be sent. [y/N] ",
              end="", file=out.err, flush=True)
        answer = sys.stdin.readline()
        if not answer:
            print(file=out.err)
            out.problem("nothing deleted: no answer (input is closed). Pass --yes to delete "
                        "without asking")
            return EXIT_PROBLEM
        if answer.strip().lower() not in ("y", "yes"):
            out.problem("nothing deleted (answer y to confirm, or pass --yes)")
            return EXIT_PROBLEM
    removed = spool.purge(dead_letters_only=args.dead_only)
    out.say(f"deleted {removed} event(s)")
    return EXIT_OK


_SPOOL_ACTIONS: dict[str, Callable[[Any, argparse.Namespace, _Output], int]] = {
    "status": _spool_status, "replay": _spool_replay, "export": _spool_export,
    "purge": _spool_purge,
}


# -- key ----------------------------------------------------------------------------


def _read_secret(out: _Output) -> str:
    if sys.stdin.isatty():
        return getpass.getpass("MassUGC API key (input hidden): ")
    return sys.stdin.readline().strip()


def _key_set(store: KeyStore, out: _Output) -> int:
    secret = _read_secret(out)
    if not secret:
        out.problem("no key given: type it when asked, or pipe it in "
                    "(massugc-logging key set < file-with-the-key)")
        return EXIT_PROBLEM
    try:
        where = store.store(secret)
    except InvalidApiKey as exc:
        reason = str(exc).split(": ", 1)[-1]
        out.problem(f"that is not a MassUGC API key: {reason}. Copy the whole key (it starts "
                    "with 'massugc_') and run 'massugc-logging key set' again")
        return EXIT_PROBLEM
    out.say(f"stored the API key in {where}")
    if os.environ.get(ENV_VAR, "").strip():
        out.say(f"note: {ENV_VAR} is set in this environment and is used before the stored "
                "key; unset it to use the stored one")
    return EXIT_OK


def cmd_key(args: argparse.Namespace, out: _Output) -> int:
    """Manage the stored API key; it is never printed in full."""

    store = KeyStore(legacy_path=Path(args.legacy_path) if args.legacy_path else None)
    try:
        if args.action == "set":
            return _key_set(store, out)
        if args.action == "show":
            key, source = store.resolve()
            if key is None:
                out.problem("no API key found (environment, keyring, key file or legacy file); "
                            "run 'massugc-logging key set'")
                return EXIT_PROBLEM
            out.say(f"{key.masked}  (from {source})")
        elif args.action == "remove":
            removed = store.remove(legacy=args.legacy)
            out.say("removed: " + (", ".join(removed) if removed else "nothing was stored"))
            if os.environ.get(ENV_VAR, "").strip():
                out.say(f"note: {ENV_VAR} is still set in this environment; unset it too")
        elif args.action == "migrate":
            moved = store.migrate_legacy(remove_legacy=args.remove_legacy)
            out.say("migrated the legacy key" if moved else "nothing to migrate")
    except KeyStoreError as exc:
        out.problem(_key_problem(exc))
        return EXIT_PROBLEM
    return EXIT_OK


# -- parser -------------------------------------------------------------------------


def _add_api_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-url", help="API base URL (default: $MASSUGC_API_URL, else production)")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                   help=f"usage-log path (default {DEFAULT_ENDPOINT})")
    p.add_argument("--allow-insecure-http", action="store_true",
                   help="allow plain http:// to a host that is not loopback")
    p.add_argument("--ca-bundle", help="trust the CA certificates in this PEM file or directory "
                   "(default: $REQUESTS_CA_BUNDLE, $SSL_CERT_FILE, else the system trust store)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is too small; give 1 or more")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (0 to 65535; "
                                         "0 picks a free one)")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with a pointer to --help in every usage error (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n"
                              f"Run '{self.prog} --help' to see what it accepts.\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = _Parser(
        prog="massugc-logging",
        description="Report MassUGC job outcomes through Python logging: tools for the people "
                    "who run and support the app.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    init = sub.add_parser("init", help="write a starter logging.yaml",
                          description="Write the reference logging.yaml (development, test "
                          "and production environments) to PATH; an existing file is kept "
                          "unless --force is given.")
    init.add_argument("path", nargs="?", default="logging.yaml",
                      help="where to write it (default: ./logging.yaml)")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.set_defaults(func=cmd_init)

    demo = sub.add_parser("demo", help="run simulated jobs into a local collector and verify")
    demo.add_argument("--jobs", type=_positive_int, default=48,
                      help="how many jobs (default 48)")
    demo.add_argument("--config", help="logging.yaml to use (default: ./logging.yaml, else the "
                      "reference configuration shipped in the package)")
    demo.add_argument("--keep-serving", action="store_true",
                      help="keep the collector running afterwards to browse its page")
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="run the local collector (development and demos)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_port, default=8765,
                       help="port to listen on (default 8765; 0 picks a free one)")
    serve.add_argument("--db", help="SQLite file to keep events in (default: memory)")
    serve.set_defaults(func=cmd_serve)

    send = sub.add_parser("send-test", help="send one test event and print the outcome")
    _add_api_options(send)
    send.set_defaults(func=cmd_send_test)

    check = sub.add_parser("check", help="validate a logging.yaml; no event is sent")
    check.add_argument("path", nargs="?", default=None,
                       help="the logging.yaml to check (default: $MASSUGC_LOGGING_CONFIG, "
                       "else ./logging.yaml)")
    check.add_argument("--env", help=f"environment to check (default: ${ENV_VARIABLE} or the "
                                     "file's default_environment)")
    check.add_argument("--no-network", action="store_true", help="skip the reachability probe")
    check.add_argument("--ca-bundle", help="trust the CA certificates in this PEM file or "
                       "directory (as the handler's ca_bundle)")
    check.set_defaults(func=cmd_check)

    spool = sub.add_parser(
        "spool", help="inspect, replay, export or purge the spool",
        description="The spool keeps events not yet delivered. Actions: status (what is "
        "kept, oldest and newest, dead letters); replay (deliver what is kept now, with the "
        "handler's own delivery engine); export (JSON lines, --dead or --all for dead "
        "letters); purge (delete, asks first; --dead-only, --yes).")
    spool.add_argument("action", choices=sorted(_SPOOL_ACTIONS),
                       help="status, replay, export or purge")
    spool.add_argument("--spool", help="spool file (default: $MASSUGC_SPOOL_PATH, else the "
                                       "platform's data directory)")
    _add_api_options(spool)
    spool.add_argument("--output", "-o", help="export: write JSON lines to this file")
    spool.add_argument("--dead", action="store_true", help="export: dead-lettered events only")
    spool.add_argument("--all", action="store_true", help="export: pending and dead-lettered")
    spool.add_argument("--dead-only", action="store_true", help="purge: dead-lettered only")
    spool.add_argument("--yes", "-y", action="store_true", help="purge: do not ask")
    spool.set_defaults(func=cmd_spool)

    key = sub.add_parser(
        "key", help="set, show (masked), remove or migrate the API key",
        description="Actions: set (read the key from a hidden prompt or one line of standard "
        "input, and store it); show (masked, with where it comes from); remove; migrate "
        "(move the app's old base64 key file into the key store).")
    key.add_argument("action", choices=["set", "show", "remove", "migrate"],
                     help="set, show, remove or migrate")
    key.add_argument("--legacy-path", help="the app's old base64 key file")
    key.add_argument("--legacy", action="store_true", help="remove: the legacy file too")
    key.add_argument("--remove-legacy", action="store_true",
                     help="migrate: delete the legacy file afterwards")
    key.set_defaults(func=cmd_key)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = _Output()
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        out.problem("choose a command, e.g. 'massugc-logging demo' (see --help)")
        return EXIT_USAGE
    try:
        return int(args.func(args, out))
    except KeyboardInterrupt:
        out.problem("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly. Python would otherwise
        # report the pipe again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PROBLEM


if __name__ == "__main__":
    sys.exit(main())
