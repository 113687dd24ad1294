"""Benchmarks: the app thread never waits; delivery, exit, drain, memory and idle CPU.

    python benchmarks/bench.py                  # full run (minutes); updates docs/benchmarks.md
    python benchmarks/bench.py --quick --no-docs   # what CI runs: quick, prints only

Four candidates are compared, each in its own child process so that exit
time and memory are real:

* ``null``: a ``logging.NullHandler``, the floor (the cost of ``logger.error`` itself);
* ``recipe``: stdlib ``QueueHandler`` + ``QueueListener`` + ``HTTPHandler``;
* ``http``: stdlib ``HTTPHandler`` on the app thread;
* ``cloud``: ``massugc_logging.CloudHandler``.

against a counting HTTP server (``benchmarks/sink.py``) on 127.0.0.1 in a
separate process, in three modes: ``ok``, ``slow`` (200 ms per response) and
``down`` (a port with nothing listening). The drain-under-failure table runs the
recipe and CloudHandler against a sink that misbehaves: ``flaky`` (every third
request 503), ``error503`` (always), ``ratelimit`` (429 with ``Retry-After: 1`` for
2 s) and ``outage`` (nothing listening for 10 s, then healthy). The recovery
after a 5-minute outage is measured on the delivery engine itself in virtual
time (its own code, a fake clock), and for real with ``--long``.

The script prints a Markdown table and, unless ``--no-docs``, writes it
between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` in docs/benchmarks.md
when those markers exist. It never fails on a timing: the exit status is 0 unless
the script itself crashes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import logging
import logging.handlers
import os
import platform
import queue
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import startup_cpu  # noqa: E402 - beside this script

#: The page whose section between the markers a full run rewrites.
PAGE = HERE.parent / "docs" / "benchmarks.md"
SINK = HERE / "sink.py"
MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"

MODES = ("ok", "slow", "down")
CANDIDATES = ("null", "recipe", "http", "cloud")
LABELS = {
    "null": "NullHandler (floor)",
    "recipe": "stdlib QueueHandler + QueueListener + HTTPHandler",
    "http": "stdlib HTTPHandler",
    "cloud": "CloudHandler",
}
ENDPOINT = "/api/desktop/usage/log"
API_KEY = "massugc_" + "bench0123456789abcdefghijKLMNOPQ"  # 32 characters after the prefix
SLOW_DELAY = 0.2
#: The "near" sink answers after this long: a server a few milliseconds away, as a
#: real API is, rather than one on loopback whose own CPU is the limit.
NEAR_DELAY = 0.005
SHUTDOWN_TIMEOUT = 2.0
SPOOL_MAX_EVENTS = 200_000
WARMUP_CALLS = 200
CHILD_DEADLINE = 600.0

# Targets (CloudHandler), from issues 6 and 10.
MEDIAN_RATIO_TARGET = 1.5
P99_TARGET_US = 50.0
NOISE_TARGET = 1.25  # slowest / fastest median across modes
DRAIN_RATIO_TARGET = 3.0  # against the server a few milliseconds away
LOOPBACK_RATIO_TARGET = 1.0
FLAKY_RATE_TARGET = 0.5  # flaky events/s over ok events/s
RECOVERY_TARGET_S = 10.0  # first delivery after a short outage ends
LONG_RECOVERY_TARGET_S = 60.0  # ... and after a 5-minute one
FAILURE_MODES = ("ok", "flaky", "error503", "ratelimit", "outage")
MEMORY_TARGET_MB = 50.0
IDLE_CPU_TARGET = 1.0  # percent of one core
EXIT_SLACK = 1.0  # seconds beyond shutdown_timeout


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does (full or quick)."""

    name: str
    latency_calls: int
    http_calls: dict[str, int]
    delivery_n: dict[str, int]
    drain_n: int
    drain_repeats: int
    memory_n: int
    idle_seconds: float
    failure_n: int = 2_000
    error503_seconds: float = 20.0
    outage_seconds: float = 10.0
    startup_runs: int = 9
    cpu_n: int = 3_000
    cpu_runs: int = 3
    outage_draws: int = 200

    @classmethod
    def full(cls) -> Plan:
        """The full run: thousands of calls, 100,000 events for memory."""
        return cls("full", 20_000, {"ok": 2_000, "slow": 20, "down": 20},
                   {"ok": 1_000, "slow": 50, "down": 1_000}, 5_000, 3, 100_000, 5.0,
                   2_000, 20.0, 10.0)

    @classmethod
    def quick(cls) -> Plan:
        """The CI run: small counts, keeps the script working in well under two minutes."""
        return cls("quick", 2_000, {"ok": 200, "slow": 10, "down": 20},
                   {"ok": 200, "slow": 20, "down": 200}, 1_000, 1, 10_000, 1.0,
                   300, 6.0, 4.0, 2, 500, 1, 20)


# ---------------------------------------------------------------------------
# The child side: one candidate, one task, results as JSON on stdout.
# ---------------------------------------------------------------------------


def job_fields() -> dict[str, Any]:
    """The same job fields for every candidate, with a run_id unique per call."""
    return {
        "event_type": "video_generation",
        "job_name": "Spring launch",
        "product": "Glow Serum",
        "persona": "Tech Reviewer",
        "setting": "Studio",
        "emotion": "Enthusiastic",
        "hook": "Check this out!",
        "brand_name": "Brand Name",
        "language": "English",
        "run_id": str(uuid.uuid4()),
        "workflow_type": "avatar",
    }


@dataclass
class Candidate:
    """A configured logger plus how to wait for its delivery and read its counters."""

    logger: logging.Logger
    handler: logging.Handler
    drain: Callable[[float], bool] = lambda _timeout: True
    backlog: Callable[[], int] = lambda: 0
    stats: Callable[[], dict[str, Any]] = dict


def make_candidate(name: str, url: str, spool: Optional[str]) -> Candidate:
    """Set up logger ``bench.jobs`` with the named candidate's handler."""
    logging.raiseExceptions = False  # production setting: a failed stdlib emit stays silent
    logger = logging.getLogger("bench.jobs")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    host = url.split("://", 1)[1]
    if name == "null":
        cand = Candidate(logger, logging.NullHandler())
    elif name == "http":
        cand = Candidate(logger, logging.handlers.HTTPHandler(host, ENDPOINT, method="POST"))
    elif name == "recipe":
        cand = _recipe(logger, host)
    elif name == "cloud":
        cand = _cloud(logger, url, spool)
    else:
        raise ValueError(f"unknown candidate {name!r}")
    logger.addHandler(cand.handler)
    return cand


def _recipe(logger: logging.Logger, host: str) -> Candidate:
    """The stdlib recipe: an unbounded queue, a listener thread, an HTTPHandler behind it.

    The listener is started and nothing stops it at exit, as in code that starts a
    listener and relies on a normal exit: its daemon thread dies with the queue.
    """
    q: queue.Queue[Any] = queue.Queue(-1)
    listener = logging.handlers.QueueListener(
        q, logging.handlers.HTTPHandler(host, ENDPOINT, method="POST"))
    listener.start()

    def drain(timeout: float) -> bool:
        stopper = threading.Thread(target=listener.stop, daemon=True)
        stopper.start()
        stopper.join(timeout)
        return not stopper.is_alive()

    return Candidate(logger, logging.handlers.QueueHandler(q), drain=drain, backlog=q.qsize)


def _cloud(logger: logging.Logger, url: str, spool: Optional[str]) -> Candidate:
    """CloudHandler with a temp spool, ``shutdown_timeout=2`` and room for 200,000 events."""
    from massugc_logging import CloudHandler  # noqa: PLC0415 - only the cloud child needs it

    handler = CloudHandler(api_url=url, api_key=API_KEY, spool_path=spool,
                           shutdown_timeout=SHUTDOWN_TIMEOUT,
                           spool_max_events=SPOOL_MAX_EVENTS)

    def backlog() -> int:
        st = handler.stats()
        return int(st["enqueued"]) - int(st["spooled"]) - int(
            st["dropped"].get("internal_error", 0))

    return Candidate(logger, handler, drain=handler.force_flush, backlog=backlog,
                     stats=_plain_stats(handler))


def _plain_stats(handler: Any) -> Callable[[], dict[str, Any]]:
    """A function returning the JSON-friendly counters of ``handler.stats()``."""

    def stats() -> dict[str, Any]:
        st = handler.stats()
        keep = ("enqueued", "sent", "retried", "spooled", "pending", "dropped", "state")
        return {k: st.get(k) for k in keep}

    return stats


def rss_kib() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in KiB, from /proc or getrusage."""
    try:
        text = Path("/proc/self/status").read_text()
        values = {}
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
        return values["VmRSS"], values["VmHWM"]
    except (OSError, KeyError, ValueError, IndexError):
        import resource  # noqa: PLC0415 - POSIX only, and only without /proc

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            peak //= 1024
        return peak, peak


def say(tag: str, payload: Any = None) -> None:
    """One protocol line to the parent: ``TAG json``."""
    print(tag, json.dumps(payload), flush=True)


def child_latency(cand: Candidate, n: int) -> None:
    """Time each of ``n`` ``logger.error`` calls on this (the app) thread."""
    log = cand.logger
    for _ in range(min(WARMUP_CALLS, max(1, n // 10))):  # few for a blocking handler
        log.error("job failed", extra=job_fields())
    fields = [job_fields() for _ in range(n)]
    samples = []
    clock = time.perf_counter_ns
    for extra in fields:
        t0 = clock()
        log.error("job failed", extra=extra)
        samples.append(clock() - t0)
    say("RESULT", summarize_ns(samples))
    say("EMITTED")


def summarize_ns(samples: list[int]) -> dict[str, Any]:
    """Median, p99 and max of nanosecond samples, in microseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"calls": len(ordered), "median_us": statistics.median(ordered) / 1000,
            "p99_us": p99 / 1000, "max_us": ordered[-1] / 1000,
            "mean_us": statistics.fmean(ordered) / 1000}


def child_delivery(cand: Candidate, n: int) -> None:
    """Emit ``n`` events in a burst, then let the process exit normally."""
    start = time.perf_counter()
    for _ in range(n):
        cand.logger.error("job failed", extra=job_fields())
    say("RESULT", {"app_seconds": time.perf_counter() - start, "stats": cand.stats()})
    say("EMITTED")


def child_replay(cand: Candidate) -> None:
    """The next run on the same spool: deliver what the last one left, then exit."""
    start = time.perf_counter()
    done = cand.drain(60.0)
    say("RESULT", {"flushed": done, "seconds": time.perf_counter() - start,
                   "stats": cand.stats()})


def child_drain(cand: Candidate, n: int) -> None:
    """Emit ``n`` events as fast as possible and wait until they are delivered."""
    t0 = time.time()
    for _ in range(n):
        cand.logger.error("job failed", extra=job_fields())
    done = cand.drain(120.0)
    say("RESULT", {"t0": t0, "t_done": time.time(), "drained": done})


def child_emit_and_wait(cand: Candidate, n: int) -> None:
    """Emit ``n`` events in a burst, then go on delivering until the parent closes stdin."""
    t0 = time.time()
    for _ in range(n):
        cand.logger.error("job failed", extra=job_fields())
    say("RESULT", {"t0": t0, "app_seconds": time.time() - t0})
    sys.stdin.read()
    os._exit(0)  # the parent has what it measures; no exit-time flush to wait for


def child_memory(cand: Candidate, n: int, chunk: int) -> None:
    """Emit ``n`` events with the server down and measure RSS growth.

    ``chunk`` 0 emits them in one burst; otherwise in chunks of that size, waiting
    between chunks (outside the timed calls) until the handler has taken the last one in.
    """
    for _ in range(10):
        cand.logger.error("job failed", extra=job_fields())
    time.sleep(0.5)
    gc.collect()
    before = cand.stats()
    base, _ = rss_kib()
    app_seconds = 0.0
    left = n
    while left > 0:
        size = min(left, chunk or n)
        start = time.perf_counter()
        for _ in range(size):
            cand.logger.error("job failed", extra=job_fields())
        app_seconds += time.perf_counter() - start
        left -= size
        wait_for_backlog(cand, 180.0)
    time.sleep(0.5)
    gc.collect()
    now, peak = rss_kib()
    say("RESULT", {"base_kib": base, "rss_kib": now, "peak_kib": peak,
                   "app_seconds": app_seconds, "backlog": cand.backlog(),
                   "stats": stats_since(before, cand.stats())})
    say("EMITTED")


def stats_since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Counters of ``after`` minus those of ``before`` (the warm-up events)."""
    if not after:
        return after
    out = dict(after)
    for key in ("enqueued", "sent", "retried", "spooled"):
        out[key] = int(after[key]) - int(before.get(key, 0))
    dropped_before = before.get("dropped") or {}
    out["dropped"] = {k: v - dropped_before.get(k, 0) for k, v in after["dropped"].items()
                      if v - dropped_before.get(k, 0)}
    return out


def wait_for_backlog(cand: Candidate, timeout: float) -> None:
    """Wait until the handler has taken in everything emitted (bounded)."""
    deadline = time.monotonic() + timeout
    while cand.backlog() > 0 and time.monotonic() < deadline:
        time.sleep(0.01)


def child_idle(cand: Candidate, seconds: float) -> None:
    """CPU used by this process, all threads, over ``seconds`` with no events."""
    time.sleep(1.0)
    c0, w0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    say("RESULT", {"cpu_seconds": cpu, "wall_seconds": wall,
                   "percent": 100.0 * cpu / wall})
    say("EMITTED")


def run_child(spec: dict[str, Any]) -> int:
    """Entry point of a child process."""
    cand = make_candidate(spec["candidate"], spec["url"], spec.get("spool"))
    task = spec["task"]
    n = int(spec.get("n", 0))
    if task == "latency":
        child_latency(cand, n)
    elif task == "delivery":
        child_delivery(cand, n)
    elif task == "replay":
        child_replay(cand)
    elif task == "drain":
        child_drain(cand, n)
    elif task == "emit_and_wait":
        child_emit_and_wait(cand, n)
    elif task == "memory":
        child_memory(cand, n, int(spec.get("chunk", 0)))
    elif task == "idle":
        child_idle(cand, float(spec["seconds"]))
    else:
        raise ValueError(f"unknown task {task!r}")
    return 0


# ---------------------------------------------------------------------------
# The parent side: sinks, children, results.
# ---------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Sink:
    """A sink server in its own process (``benchmarks/sink.py``)."""

    def __init__(self, mode: str, delay: float = SLOW_DELAY, *, port: int = 0,
                 listen_after: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SINK), "--port", str(port), "--mode", mode,
             "--delay", str(delay), "--listen-after", str(listen_after)],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"the {mode} sink did not start (said {line!r})")
        self.url = f"http://127.0.0.1:{int(line)}"

    def _call(self, method: str, path: str) -> dict[str, Any]:
        data = b"" if method == "POST" else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with _OPENER.open(request, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read().decode("utf-8"))
            return result

    def count(self) -> dict[str, Any]:
        """What the sink received since the last reset."""
        return self._call("GET", "/count")

    def reset(self) -> None:
        """Forget what was received."""
        self._call("POST", "/reset")

    def stop(self) -> None:
        """Terminate the sink process."""
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (the "down" server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ChildRun:
    """What a child reported and how long its exit took."""

    result: dict[str, Any]
    exit_seconds: Optional[float]


def start_child(spec: dict[str, Any], stdin: Optional[int] = None) -> subprocess.Popen[str]:
    """Start ``bench.py --child SPEC``."""
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.pop("MASSUGC_API_KEY", None)
    env.pop("MASSUGC_API_URL", None)
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child",
                             json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=stdin)


def finish_child(proc: subprocess.Popen[str], spec: dict[str, Any]) -> ChildRun:
    """Read a child's protocol lines, time its exit after ``EMITTED``, check it succeeded."""
    assert proc.stdout is not None
    timer = threading.Timer(CHILD_DEADLINE, proc.kill)
    timer.start()
    result: dict[str, Any] = {}
    emitted_at: Optional[float] = None
    try:
        for line in proc.stdout:
            tag, _, rest = line.partition(" ")
            if tag == "EMITTED":
                emitted_at = time.monotonic()
            elif tag == "RESULT":
                result = json.loads(rest)
        proc.wait()
        ended = time.monotonic()
        stderr = proc.stderr.read() if proc.stderr else ""
    finally:
        timer.cancel()
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed with status {proc.returncode}:\n{stderr[-3000:]}")
    exit_seconds = ended - emitted_at if emitted_at is not None else None
    return ChildRun(result, exit_seconds)


def child(**spec: Any) -> ChildRun:
    """Run one child to completion."""
    return finish_child(start_child(spec), spec)


@dataclass
class Env:
    """The servers and scratch space of one benchmark run."""

    sinks: dict[str, Sink]
    down_url: str
    tmp: Path
    counter: list[int] = field(default_factory=lambda: [0])

    def url(self, mode: str) -> str:
        """The base URL for a mode."""
        return self.down_url if mode == "down" else self.sinks[mode].url

    def sink(self, mode: str) -> Optional[Sink]:
        """The sink for a mode (None when the server is down)."""
        return None if mode == "down" else self.sinks[mode]

    def new_spool(self) -> str:
        """A fresh spool path."""
        self.counter[0] += 1
        return str(self.tmp / f"spool-{self.counter[0]}.sqlite3")


_STARTED = time.monotonic()


def progress(text: str) -> None:
    """A progress line on stderr (stdout is for the table), with the seconds elapsed."""
    print(f"[bench {time.monotonic() - _STARTED:5.0f} s] {text}", file=sys.stderr, flush=True)


def measure_latency(env: Env, plan: Plan) -> dict[tuple[str, str], dict[str, Any]]:
    """App-thread cost per call, every candidate in every mode."""
    out = {}
    for mode in MODES:
        for name in CANDIDATES:
            n = plan.http_calls[mode] if name == "http" else plan.latency_calls
            progress(f"latency: {name} / {mode} ({n} calls)")
            out[(name, mode)] = child(task="latency", candidate=name, url=env.url(mode), n=n,
                                      spool=env.new_spool()).result
    return out


def measure_delivery(env: Env, plan: Plan) -> dict[tuple[str, str], dict[str, Any]]:
    """N events in a burst then a normal exit: received, exit time, and the next run."""
    out = {}
    for mode in MODES:
        n = plan.delivery_n[mode]
        for name in ("recipe", "http", "cloud"):
            progress(f"delivery: {name} / {mode} ({n} events)")
            sink = env.sink(mode)
            if sink:
                sink.reset()
            spool = env.new_spool()
            run = child(task="delivery", candidate=name, url=env.url(mode), n=n, spool=spool)
            received = sink.count()["run_ids"] if sink else 0
            row = {"n": n, "received": received, "after_next": received,
                   "exit_s": run.exit_seconds, "app_s": run.result["app_seconds"],
                   "stats": run.result.get("stats")}
            if name == "cloud" and received < n:
                row["after_next"] = replay(env, mode, spool)
            out[(name, mode)] = row
    return out


def replay(env: Env, mode: str, spool: str) -> int:
    """Run the next process on ``spool`` with the server up; distinct events received so far.

    After ``down`` the API comes up at the address it was down at (the events are kept
    for that API, and a handler sends only its own)."""
    if mode != "down":
        sink = env.sinks[mode]
        progress(f"delivery: cloud / {mode}: next run on the same spool")
        child(task="replay", candidate="cloud", url=sink.url, spool=spool)
        return int(sink.count()["run_ids"])
    port = int(env.down_url.rsplit(":", 1)[1])
    progress("delivery: cloud / down: next run on the same spool, the server up at its address")
    sink = Sink("ok", port=port)
    try:
        child(task="replay", candidate="cloud", url=sink.url, spool=spool)
        return int(sink.count()["run_ids"])
    finally:
        sink.stop()


def measure_drain(env: Env, plan: Plan, sink: str = "ok",
                  n: Optional[int] = None) -> dict[str, dict[str, Any]]:
    """Events per second delivered to a healthy sink, first emit to last arrival.

    Each candidate runs ``drain_repeats`` times, alternating; the median run is kept.
    """
    count = n or plan.drain_n
    runs: dict[str, list[dict[str, Any]]] = {"recipe": [], "cloud": []}
    for i in range(plan.drain_repeats):
        for name, results in runs.items():
            progress(f"drain: {name}, {sink} server ({count} events, run {i + 1}/"
                     f"{plan.drain_repeats})")
            results.append(drain_once(env, name, count, sink))
    out = {}
    for name, results in runs.items():
        ordered = sorted(results, key=lambda r: r["rate"])
        out[name] = dict(ordered[len(ordered) // 2], runs=len(ordered),
                         rates=[r["rate"] for r in ordered])
    return out


def drain_once(env: Env, name: str, n: int, sink_name: str = "ok") -> dict[str, Any]:
    """One drain run of one candidate."""
    sink = env.sinks[sink_name]
    sink.reset()
    run = child(task="drain", candidate=name, url=sink.url, n=n, spool=env.new_spool())
    counts = sink.count()
    received = int(counts["run_ids"])
    end = counts["last_at"] or run.result["t_done"]
    seconds = max(1e-6, end - run.result["t0"])
    return {"n": n, "received": received, "seconds": seconds, "rate": received / seconds,
            "connections": counts["connections"]}


MEMORY_RUNS = (("null", "burst"), ("recipe", "burst"), ("cloud", "burst"),
               ("recipe", "paced"), ("cloud", "paced"))
PACED_CHUNK = 1_000


def measure_memory(env: Env, plan: Plan) -> dict[tuple[str, str], dict[str, Any]]:
    """RSS growth for ``memory_n`` events with the server down, in a burst and paced."""
    out = {}
    for name, emission in MEMORY_RUNS:
        progress(f"memory: {name} ({plan.memory_n} events, {emission}, server down)")
        chunk = PACED_CHUNK if emission == "paced" else 0
        r = child(task="memory", candidate=name, url=env.down_url, n=plan.memory_n,
                  chunk=chunk, spool=env.new_spool()).result
        r["n_events"] = plan.memory_n
        r["growth_mb"] = (r["rss_kib"] - r["base_kib"]) / 1024
        r["peak_growth_mb"] = max(0, r["peak_kib"] - r["base_kib"]) / 1024
        out[(name, emission)] = r
    return out


def measure_idle(env: Env, plan: Plan) -> dict[str, dict[str, Any]]:
    """CPU of an idle handler (server up), all candidates side by side."""
    progress(f"idle CPU: all candidates ({plan.idle_seconds:g} s)")
    specs = [{"task": "idle", "candidate": name, "url": env.sinks["ok"].url,
              "seconds": plan.idle_seconds, "spool": env.new_spool()} for name in CANDIDATES]
    procs = [(spec, start_child(spec)) for spec in specs]
    return {spec["candidate"]: finish_child(proc, spec).result for spec, proc in procs}


def measure_failure_modes(env: Env, plan: Plan) -> dict[tuple[str, str], dict[str, Any]]:
    """Each candidate against a sink that fails in each way, a fresh sink per run."""
    out = {}
    for mode in FAILURE_MODES:
        for name in ("recipe", "cloud"):
            progress(f"drain under failure: {name} / {mode} ({plan.failure_n} events)")
            out[(name, mode)] = failure_run(env, plan, name, mode)
    return out


def failure_run(env: Env, plan: Plan, name: str, mode: str) -> dict[str, Any]:
    """Emit a burst, then watch the sink until every event arrived or the mode's window ends."""
    n = plan.failure_n if mode != "error503" else min(plan.failure_n, 200)
    if mode == "outage":
        port = free_port()
        sink = Sink("ok", port=port, listen_after=plan.outage_seconds)
        url = f"http://127.0.0.1:{port}"
        window = plan.outage_seconds + 70.0
    else:
        sink = Sink(mode)
        url = sink.url
        window = plan.error503_seconds if mode == "error503" else 60.0
    proc = start_child({"task": "emit_and_wait", "candidate": name, "url": url, "n": n,
                        "spool": env.new_spool()}, stdin=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        tag, _, rest = proc.stdout.readline().partition(" ")
        started = json.loads(rest) if tag == "RESULT" else {"t0": time.time()}
        deadline = time.monotonic() + window
        counts: dict[str, Any] = {}
        posts, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                counts = sink.count()
                if mode != "error503" and counts["run_ids"] >= n:
                    break
                if counts["posts"] != posts:
                    posts, quiet_since = counts["posts"], time.monotonic()
                elif name == "recipe" and time.monotonic() - quiet_since > 2.0:
                    break  # the recipe never retries: once it has gone quiet, it is over
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            counts = sink.count()
        proc.stdin.close()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sink.stop()
    row = failure_figures(n, mode, started["t0"], counts)
    row["outage_s"] = plan.outage_seconds if mode == "outage" else None
    return row


def failure_figures(n: int, mode: str, t0: float, counts: dict[str, Any]) -> dict[str, Any]:
    """The drain-under-failure figures of one run, from what the sink counted."""
    delivered = int(counts.get("run_ids", 0))
    last = counts.get("last_at")
    seconds = (last - t0) if last else None
    row: dict[str, Any] = {
        "n": n, "delivered": delivered, "seconds": seconds,
        "rate": delivered / seconds if seconds else 0.0,
        "requests": int(counts.get("posts", 0)), "duplicates": int(counts.get("duplicates", 0)),
        "max_in_flight": int(counts.get("max_in_flight", 0)),
    }
    if mode == "outage" and counts.get("first_at"):
        row["recovery_s"] = counts["first_at"] - counts["listening_at"]
    if mode == "error503":
        later = (counts.get("post_times") or [])[10:]  # the circuit opens within a few failures
        busiest = 0
        for i, start in enumerate(later):
            busiest = max(busiest, sum(1 for t in later[i:] if t - start < 1.0))
        row["busiest_second_after_open"] = busiest
    return row


def virtual_outage(seconds: float, n: int = 1_000, draws: int = 200) -> dict[str, Any]:
    """The delivery engine itself, in virtual time, against an API down for ``seconds``:
    how long after the API came back the first event was delivered, and what it sent
    (with the jitter of seed 1), and the longest wait over ``draws`` seeds of the
    jitter."""
    runs = [_virtual_outage_once(seconds, n, seed) for seed in range(1, draws + 1)]
    return {**runs[0], "worst_recovery_s": max(r["recovery_s"] for r in runs),
            "draws": draws}


def _virtual_outage_once(seconds: float, n: int, seed: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent))
    from massugc_logging.diagnostics import Diagnostics  # noqa: PLC0415
    from massugc_logging.outcome import Outcome, OutcomeKind  # noqa: PLC0415
    from massugc_logging.pipeline.delivery import DeliveryEngine  # noqa: PLC0415 - parent side only
    from massugc_logging.pipeline.spool import MemorySpool  # noqa: PLC0415

    clock = [1_000_000.0]
    recovery = clock[0] + seconds
    sent: list[tuple[float, bool]] = []

    def send(_event: Any) -> Outcome:
        ok = clock[0] >= recovery
        sent.append((clock[0], ok))
        return Outcome(OutcomeKind.DELIVERED, 200) if ok else Outcome(
            OutcomeKind.TRANSIENT, reason="connection refused")

    outbox = MemorySpool(max_events=n)
    outbox.add([(f"e{i}", b"{}", clock[0]) for i in range(n)], clock[0])
    quiet = logging.getLogger("massugc_logging.bench-virtual-outage")
    quiet.propagate = False  # what the engine says 200 times over is not the table's
    quiet.addHandler(logging.NullHandler())
    engine = DeliveryEngine(outbox, send, clock=lambda: clock[0],
                            rng=random.Random(seed).random, diagnostics=Diagnostics(quiet))
    while True:
        engine.pump()
        wake = engine.next_wake()
        if wake is None:
            break
        clock[0] = max(clock[0], wake)
    first_ok = min(t for t, ok in sent if ok)
    probes = sum(1 for _, ok in sent if not ok)
    return {"outage_s": seconds, "recovery_s": first_ok - recovery, "how": "virtual time",
            "requests_while_down": probes, "probes_per_min": 60.0 * probes / seconds}


# ---------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------


def machine() -> str:
    """Platform, CPU count and model, Python version."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " (" + line.split(":", 1)[1].strip() + ")"
                break
    return (f"{platform.platform()}, {os.cpu_count()} CPUs{model}, "
            f"{platform.python_implementation()} {platform.python_version()}")


def fmt(value: Optional[float], digits: int = 1) -> str:
    """A number for the table, ``-`` when missing."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def yes(ok: bool) -> str:
    """The "met?" cell."""
    return "yes" if ok else "**no**"


def render(plan: Plan, lat: dict[Any, Any], dlv: dict[Any, Any], drn: dict[str, Any],
           mem: dict[Any, Any], idle: dict[str, Any], fail: dict[Any, Any],
           virtual: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    """The whole Markdown block."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python benchmarks/bench.py" + (" --quick" if plan.name == "quick" else "")
    parts = [
        f"Measured by `{cmd}` ({plan.name} mode) on {date}, {machine()}. "
        "Server: `benchmarks/sink.py` on 127.0.0.1 in its own process; "
        f"modes `ok`, `slow` ({SLOW_DELAY * 1000:.0f} ms per response), `down` (nothing "
        "listening). Each candidate runs in its own process. CloudHandler: temp spool, "
        f"`shutdown_timeout={SHUTDOWN_TIMEOUT:g}`, `spool_max_events={SPOOL_MAX_EVENTS}`, "
        "other settings default; stdlib candidates run with `logging.raiseExceptions = False`.",
        "",
        render_targets(lat, dlv, drn, mem, idle, fail, virtual, extra),
        "",
        "**Start-up** (a fresh interpreter each time, the package byte-compiled as an "
        "installed or frozen app's is; median of the runs, alternating candidates)",
        "",
        startup_cpu.render_startup(extra["startup"]),
        "",
        "**CPU per delivered event** (process CPU time, every thread, from the first emit "
        "until all are delivered to a healthy sink on loopback in its own process; median "
        "of the runs)",
        "",
        startup_cpu.render_cpu(extra["cpu"]),
        "",
        render_latency(lat),
        "",
        render_delivery(dlv),
        "",
        render_failures(plan, fail, virtual),
        "",
        render_other(drn, mem, idle),
        "",
        "Notes: " + " ".join(f"({i}) {note}" for i, note in enumerate(NOTES, 1)),
    ]
    return "\n".join(parts)


def target_rows(lat: dict[Any, Any], dlv: dict[Any, Any], drn: dict[str, Any],
                mem: dict[Any, Any], idle: dict[str, Any], fail: dict[Any, Any],
                virtual: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """(what, target, measured, met) for each target of issues 6 and 10."""
    rows = []
    ratios = {m: lat[("cloud", m)]["median_us"] / lat[("null", m)]["median_us"] for m in MODES}
    rows.append(("app-thread median / floor", f"<= {MEDIAN_RATIO_TARGET:g}x in every mode",
                 ", ".join(f"{m} {ratios[m]:.2f}x" for m in MODES),
                 all(r <= MEDIAN_RATIO_TARGET for r in ratios.values())))
    p99 = {m: lat[("cloud", m)]["p99_us"] for m in MODES}
    rows.append(("app-thread p99", f"< {P99_TARGET_US:g} µs in every mode",
                 ", ".join(f"{m} {p99[m]:.1f} µs" for m in MODES),
                 all(v < P99_TARGET_US for v in p99.values())))
    medians = [lat[("cloud", m)]["median_us"] for m in MODES]
    spread = max(medians) / min(medians)
    rows.append(("same cost whether ok, slow or down",
                 f"slowest / fastest median <= {NOISE_TARGET:g}", f"{spread:.2f}",
                 spread <= NOISE_TARGET))
    lost = {m: dlv[("cloud", m)]["n"] - dlv[("cloud", m)]["after_next"] for m in MODES}
    rows.append(("events lost (after the next run)", "0 in every mode",
                 ", ".join(f"{m} {lost[m]}" for m in MODES), all(v <= 0 for v in lost.values())))
    ratio = drn["cloud"]["rate"] / max(1e-9, drn["recipe"]["rate"])
    near = drn["near"]
    near_ratio = near["cloud"]["rate"] / max(1e-9, near["recipe"]["rate"])
    rows.append(("drain rate / stdlib recipe, loopback", f">= {LOOPBACK_RATIO_TARGET:g}x",
                 f"{ratio:.2f}x ({drn['cloud']['rate']:,.0f} vs "
                 f"{drn['recipe']['rate']:,.0f} events/s)", ratio >= LOOPBACK_RATIO_TARGET))
    rows.append((f"drain rate / stdlib recipe, server {NEAR_DELAY * 1000:g} ms away",
                 f">= {DRAIN_RATIO_TARGET:g}x",
                 f"{near_ratio:.1f}x ({near['cloud']['rate']:,.0f} vs "
                 f"{near['recipe']['rate']:,.0f} events/s)", near_ratio >= DRAIN_RATIO_TARGET))
    rows.extend(failure_target_rows(fail, virtual))
    cells, growths = [], []
    for emission in ("burst", "paced"):
        r = mem[("cloud", emission)]
        st = r.get("stats") or {}
        dropped = sum(st.get("dropped", {}).values())
        growths.append(r["peak_growth_mb"])
        cells.append(f"{emission} {r['peak_growth_mb']:.1f} MB ({st.get('spooled', 0):,} "
                     f"spooled, {dropped:,} dropped)")
    rows.append((f"memory growth, {mem[('cloud', 'burst')]['n_events']:,} events, server down",
                 f"< {MEMORY_TARGET_MB:g} MB", "; ".join(cells),
                 all(g < MEMORY_TARGET_MB for g in growths)))
    cpu = idle["cloud"]["percent"]
    rows.append(("idle CPU", f"< {IDLE_CPU_TARGET:g}% of one core", f"{cpu:.2f}%",
                 cpu < IDLE_CPU_TARGET))
    limit = SHUTDOWN_TIMEOUT + EXIT_SLACK
    exits = {m: dlv[("cloud", m)]["exit_s"] for m in MODES}
    rows.append(("exit time", f"<= shutdown_timeout + {EXIT_SLACK:g} s = {limit:g} s",
                 ", ".join(f"{m} {fmt(exits[m], 2)} s" for m in MODES),
                 all(v is not None and v <= limit for v in exits.values())))
    return rows


def failure_target_rows(fail: dict[Any, Any],
                        virtual: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """The drain-under-failure targets of issue 10."""
    ok, flaky = fail[("cloud", "ok")], fail[("cloud", "flaky")]
    share = flaky["rate"] / max(1e-9, ok["rate"])
    rows = [("flaky API (every third request 503)",
             f"all delivered, none twice, >= {FLAKY_RATE_TARGET:g}x the events/s of ok",
             f"{flaky['delivered']:,} of {flaky['n']:,}, {flaky['duplicates']} twice, "
             f"{share:.2f}x ({flaky['rate']:,.0f} vs {ok['rate']:,.0f} events/s)",
             flaky["delivered"] == flaky["n"] and flaky["duplicates"] == 0
             and share >= FLAKY_RATE_TARGET)]
    outage = fail[("cloud", "outage")]
    recovery = outage.get("recovery_s")
    everything = outage["delivered"] == outage["n"]
    rows.append((f"first delivery after a {outage['outage_s']:g} s outage ends",
                 f"<= {RECOVERY_TARGET_S:g} s",
                 f"{fmt(recovery, 1)} s (real server; all delivered: "
                 f"{'yes' if everything else 'no'})",
                 recovery is not None and recovery <= RECOVERY_TARGET_S and everything))
    for v in virtual:
        if v["outage_s"] >= 300:
            rows.append((f"first delivery after a {v['outage_s'] / 60:g}-minute outage "
                         f"({v['how']})", f"<= {LONG_RECOVERY_TARGET_S:g} s",
                         f"{v['recovery_s']:.1f} s ({v['requests_while_down']} requests while "
                         f"down, {v['probes_per_min']:.1f} a minute)",
                         v["recovery_s"] <= LONG_RECOVERY_TARGET_S))
        if "worst_recovery_s" in v:
            target = LONG_RECOVERY_TARGET_S if v["outage_s"] >= 300 else RECOVERY_TARGET_S
            rows.append((f"first delivery after a {v['outage_s']:g} s outage, worst of "
                         f"{v['draws']} draws of the jitter ({v['how']})", f"<= {target:g} s",
                         f"{v['worst_recovery_s']:.1f} s", v["worst_recovery_s"] <= target))
    down = fail[("cloud", "error503")]
    busiest = down.get("busiest_second_after_open") or 0
    rows.append(("API always 503", "never more than 1 in flight; at most 1 request a "
                 "second once the circuit is open",
                 f"at most {down['max_in_flight']} in flight; busiest second after the first "
                 f"10 requests: {busiest}; {down['requests']} requests in all",
                 down["max_in_flight"] <= 1 and busiest <= 1))
    return rows


def render_targets(lat: dict[Any, Any], dlv: dict[Any, Any], drn: dict[str, Any],
                   mem: dict[Any, Any], idle: dict[str, Any], fail: dict[Any, Any],
                   virtual: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    """The targets, measured for CloudHandler in this run."""
    lines = ["**CloudHandler against its targets**", "",
             "| measure | target | measured | met? |", "|---|---|---|---|"]
    rows = target_rows(lat, dlv, drn, mem, idle, fail, virtual) + startup_cpu.target_rows(
        extra["startup"], extra["cpu"])
    for what, target, measured, met in rows:
        lines.append(f"| {what} | {target} | {measured} | {yes(met)} |")
    return "\n".join(lines)


def render_latency(lat: dict[Any, Any]) -> str:
    """App-thread cost per call for every candidate and mode."""
    lines = ['**App-thread cost of `logger.error("job failed", extra=job_fields)`** '
             "(per call; ratio to the NullHandler floor measured in the same mode)", "",
             "| handler | server | calls | median | p99 | median / floor | p99 / floor |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in CANDIDATES:
        for mode in MODES:
            r, floor = lat[(name, mode)], lat[("null", mode)]
            lines.append(
                f"| {LABELS[name]} | {mode} | {r['calls']:,} | {duration(r['median_us'])} | "
                f"{duration(r['p99_us'])} | {r['median_us'] / floor['median_us']:,.1f}x | "
                f"{r['p99_us'] / floor['p99_us']:,.1f}x |")
    return "\n".join(lines)


def duration(us: float) -> str:
    """Microseconds shown in µs, or ms when large."""
    return f"{us / 1000:,.1f} ms" if us >= 1000 else f"{us:,.1f} µs"


def render_delivery(dlv: dict[Any, Any]) -> str:
    """Delivery of N events emitted in a burst just before a normal exit."""
    ns = sorted({(r["n"], m) for (_, m), r in dlv.items()}, key=lambda t: MODES.index(t[1]))
    lines = ["**Delivery and exit**: N events emitted in a burst, then the process exits "
             "normally (" + ", ".join(f"{m}: N={n:,}" for n, m in ns) + "; slow is small so "
             "the blocking handler finishes). \"Next run\": a new CloudHandler process on the "
             "same spool with the server up.", "",
             "| handler | server | N | app thread, all N | received by exit | "
             "after next run | exit took |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in ("recipe", "http", "cloud"):
        for mode in MODES:
            r = dlv[(name, mode)]
            after = f"{r['after_next']:,}" if name == "cloud" else "-"
            lines.append(f"| {LABELS[name]} | {mode} | {r['n']:,} | {fmt(r['app_s'], 3)} s | "
                         f"{r['received']:,} | {after} | {fmt(r['exit_s'], 2)} s |")
    return "\n".join(lines)


def render_failures(plan: Plan, fail: dict[Any, Any], virtual: list[dict[str, Any]]) -> str:
    """Drain against a sink that fails in each way."""
    lines = ["**Drain under failure**: a burst of N events against a sink that is `ok`, "
             "`flaky` (every third request 503), `error503` (always 503; watched for "
             f"{plan.error503_seconds:g} s), `ratelimit` (429 with `Retry-After: 1` for 2 s) or "
             f"down for {plan.outage_seconds:g} s (`outage`: connections refused), then "
             "healthy. Delivered: distinct events answered 200; twice: events answered 200 "
             "more than once; seconds: first emit to the last delivery.", "",
             "| handler | sink | N | delivered | twice | seconds | events/s | requests | "
             "most in flight | notes |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for mode in FAILURE_MODES:
        for name in ("recipe", "cloud"):
            r = fail[(name, mode)]
            notes = []
            if "recovery_s" in r:
                notes.append(f"first delivery {r['recovery_s']:.1f} s after the server came up")
            if "busiest_second_after_open" in r:
                notes.append("busiest second after the first 10 requests: "
                             f"{r['busiest_second_after_open']}")
            lines.append(f"| {LABELS[name]} | {mode} | {r['n']:,} | {r['delivered']:,} | "
                         f"{r['duplicates']:,} | {fmt(r['seconds'], 2)} | {fmt(r['rate'], 0)} | "
                         f"{r['requests']:,} | {r['max_in_flight']} | {'; '.join(notes)} |")
    lines += ["", "**Recovery after an outage** (first delivery after the API came back; "
              "`virtual time`: the delivery engine's own code against a scripted API and a "
              "fake clock)", "",
              "| outage | how measured | first delivery after recovery | requests while down "
              "| per minute |", "|---:|---|---:|---:|---:|"]
    for v in virtual:
        lines.append(f"| {v['outage_s']:g} s | {v['how']} | {v['recovery_s']:.1f} s | "
                     f"{v['requests_while_down']} | {v['probes_per_min']:.1f} |")
    return "\n".join(lines)


def render_other(drn: dict[str, Any], mem: dict[Any, Any], idle: dict[str, Any]) -> str:
    """Drain rate, memory and idle CPU."""
    runs = drn["cloud"]["runs"]
    lines = ["**Drain rate** (healthy server; first emit to last event received"
             + (f"; median of {runs} runs each, range in brackets" if runs > 1 else "")
             + f"; `loopback` answers at once, so its own CPU is the limit; `near` answers "
             f"after {NEAR_DELAY * 1000:g} ms, as a server some way off does)", "",
             "| handler | server | events | received | TCP connections | seconds | events/s | "
             "ratio to recipe |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, table in (("loopback", drn), ("near", drn["near"])):
        base = max(1e-9, table["recipe"]["rate"])
        for name in ("recipe", "cloud"):
            r = table[name]
            lines.append(f"| {LABELS[name]} | {label} | {r['n']:,} | {r['received']:,} | "
                         f"{r['connections']:,} | {fmt(r['seconds'], 2)} | "
                         f"{fmt(r['rate'], 0)}{spread(r)} | "
                         f"{r['rate'] / base:.1f}x |")
    lines += ["", "**Memory** (server down; peak RSS growth from before the first event, "
              "and RSS growth once the handler has taken them all in; `burst`: all at once, "
              f"`paced`: chunks of {PACED_CHUNK:,}, the next one once the handler has taken "
              "the last in)", "",
              "| handler | emitted | events | app thread, all | peak growth | growth after | "
              "kept for later delivery | dropped |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (name, emission), r in mem.items():
        st = r.get("stats") or {}
        if name == "cloud":
            kept = f"{st['spooled']:,}"
            dropped = ", ".join(f"{k} {v:,}" for k, v in st["dropped"].items()) or "0"
        else:
            kept, dropped = ("0 (no retry)", "-") if name == "recipe" else ("-", "-")
        lines.append(f"| {LABELS[name]} | {emission} | {r['n_events']:,} | "
                     f"{fmt(r['app_seconds'], 2)} s | {fmt(r['peak_growth_mb'])} MB | "
                     f"{fmt(r['growth_mb'])} MB | {kept} | {dropped} |")
    lines += ["", "**Idle CPU** (handler created, 1 s settle, then no events)", "",
              "| handler | CPU, % of one core |", "|---|---:|"]
    for name in CANDIDATES:
        lines.append(f"| {LABELS[name]} | {idle[name]['percent']:.2f}% |")
    return "\n".join(lines)


def spread(r: dict[str, Any]) -> str:
    """`` [min-max]`` of the repeated drain runs, or nothing for a single run."""
    rates = r.get("rates") or []
    return f" [{min(rates):,.0f}-{max(rates):,.0f}]" if len(rates) > 1 else ""


NOTES = [
    "The stdlib recipe's listener is started and nothing stops it at exit: its daemon "
    "thread dies with its queue. "
    "Calling `listener.stop()` at exit instead would block exit until the queue is sent.",
    "The stdlib HTTPHandler's timed calls are capped (see `calls`) because each one "
    "blocks for a whole request.",
    "`down` is a refused connection, which fails fast. A silent server would block the "
    "stdlib HTTPHandler for the whole TCP timeout on every call (it sets none).",
    "CloudHandler's in-memory queue holds 10,000 events (the default `queue_size`): a "
    "burst faster than its intake thread fills it, and further events are dropped and "
    "counted, which is what bounds its memory.",
    "Drain on loopback is bounded by the sink itself: a Python HTTP server sharing two "
    "cores with the client answers about as fast as either candidate sends, and a new "
    "loopback connection per record costs the recipe almost nothing, so keep-alive cannot "
    "show there. Against a server a few milliseconds away (`near`), which is what a real "
    "API is, the recipe pays a connection and a round trip per record, one at a time, while "
    "CloudHandler keeps its connections open and has up to four requests in flight.",
]


def update_page(table: str, path: Path = PAGE) -> bool:
    """Put the table between the bench markers of ``path``; False if they are missing."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start < 0 or end < start:
        return False
    new = text[: start + len(MARK_START)] + "\n" + table + "\n" + text[end:]
    path.write_text(new, encoding="utf-8")
    return True


def run(plan: Plan, long_outage: bool = False) -> str:
    """Every measurement, then the table."""
    tmp = Path(tempfile.mkdtemp(prefix="massugc-bench-"))
    sinks = {"ok": Sink("ok"), "slow": Sink("slow"), "near": Sink("slow", NEAR_DELAY)}
    try:
        env = Env(sinks, f"http://127.0.0.1:{free_port()}", tmp)
        lat = measure_latency(env, plan)
        dlv = measure_delivery(env, plan)
        drn = measure_drain(env, plan)
        drn_near = measure_drain(env, plan, "near", plan.drain_n // 5)
        drn["near"] = drn_near
        mem = measure_memory(env, plan)
        idle = measure_idle(env, plan)
        fail = measure_failure_modes(env, plan)
        virtual = [virtual_outage(s, draws=plan.outage_draws) for s in (10.0, 300.0)]
        ok = sinks["ok"]
        extra = {"startup": startup_cpu.measure_startup(plan.startup_runs, progress),
                 "cpu": startup_cpu.measure_cpu(ok.url, plan.cpu_n, plan.cpu_runs, progress,
                                                ok.reset, lambda: int(ok.count()["posts"]))}
        if long_outage:
            progress("recovery after a real 5-minute outage (--long)")
            real = failure_run(env, dataclasses.replace(plan, outage_seconds=300.0), "cloud",
                               "outage")
            down = real["requests"] - real["delivered"]
            virtual.append({"outage_s": 300.0, "how": "real server, real time",
                            "recovery_s": real.get("recovery_s", float("inf")),
                            "requests_while_down": down, "probes_per_min": down / 5.0})
    finally:
        for sink in sinks.values():
            sink.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return render(plan, lat, dlv, drn, mem, idle, fail, virtual, extra)


def main(argv: Optional[list[str]] = None) -> int:
    """Parse arguments; run as the parent or as a child."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small counts (CI)")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    parser.add_argument("--long", action="store_true",
                        help="also measure recovery after a real 5-minute outage")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(json.loads(args.child))
    started = time.monotonic()
    table = run(Plan.quick() if args.quick else Plan.full(), long_outage=args.long)
    print(table)
    if not args.no_docs:
        if update_page(table):
            progress(f"results written to {PAGE}")
        else:
            progress(f"no {MARK_START} / {MARK_END} markers in {PAGE}: printed only")
    progress(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
