"""Start-up and CPU per delivered event, beside the peers, for ``bench.py``.

Start-up: the wall time and peak memory of what a desktop app pays on every
launch, ``import massugc_logging`` + ``configure()`` of the reference
configuration's production environment, beside ``import sentry_sdk;
sentry_sdk.init(dsn)`` and OpenTelemetry's logging set-up (a ``LoggerProvider``
with a ``BatchLogRecordProcessor``), each in a fresh interpreter, alternating,
the median of several runs. The package is byte-compiled first, as an
installed or frozen app's is (a source tree run with ``PYTHONDONTWRITEBYTECODE``
would pay for compiling every module).

CPU per delivered event: the process CPU time (every thread) from the first
``logger.error`` until all N events are delivered to a healthy sink on
loopback (in its own process), for ``CloudHandler`` (durability included: each
event is written to the spool before it is sent), the stdlib ``QueueHandler``
recipe (which keeps nothing on disk) and OpenTelemetry's batch processor with
its OTLP/HTTP exporter (which posts 512 events a request).

A peer that is not installed is left out and said so; ``pip install -e
'.[bench]'`` installs them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: Each start-up candidate, as the code a fresh interpreter runs after its clock starts.
STARTUP_CODE = {
    "massugc": "import massugc_logging\n"
               "massugc_logging.configure({config!r}, env='production')\n",
    "sentry": "import sentry_sdk\nsentry_sdk.init('https://public@127.0.0.1:9/1')\n",
    "otel": "import logging\n"
            "from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler\n"
            "from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, "
            "InMemoryLogExporter\n"
            "provider = LoggerProvider()\n"
            "provider.add_log_record_processor(BatchLogRecordProcessor(InMemoryLogExporter()))\n"
            "logging.getLogger().addHandler(LoggingHandler(logger_provider=provider))\n",
}
STARTUP_LABELS = {
    "massugc": "import massugc_logging + configure() (production)",
    "sentry": "import sentry_sdk + sentry_sdk.init()",
    "otel": "OpenTelemetry LoggerProvider + BatchLogRecordProcessor",
}
STARTUP_TIME_TARGET = 0.6  # of sentry's
CPU_TARGET = 1.0  # of the stdlib recipe's

_TIMED = """
import os, resource, time
started = time.perf_counter()
{code}
elapsed = time.perf_counter() - started
print(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
os._exit(0)
"""


def _environment(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MASSUGC_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update({"PYTHONPATH": str(REPO), "MASSUGC_SPOOL_PATH": str(tmp / "spool.sqlite3"),
                "MASSUGC_LOG_DIR": str(tmp / "logs"),
                "MASSUGC_API_KEY": "massugc_" + "bench0123456789abcdefghijKLMNOPQ",
                "MASSUGC_API_URL": "http://127.0.0.1:9"})
    return env


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (a peer may not be installed)."""
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                           check=False)
    return probe.returncode == 0


def measure_startup(runs: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Median wall time (ms) and peak RSS (MB) of each start-up candidate over ``runs``."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "massugc_logging")],
                   capture_output=True, check=False,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    present = [name for name, module in (("massugc", "massugc_logging"), ("sentry", "sentry_sdk"),
                                         ("otel", "opentelemetry.sdk._logs"))
               if installed(module)]
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in present}
    with tempfile.TemporaryDirectory(prefix="massugc-startup-") as tmp:
        env = _environment(Path(tmp))
        for i in range(runs):
            for name in present:
                progress(f"start-up: {name} (run {i + 1}/{runs})")
                code = _TIMED.format(code=STARTUP_CODE[name].format(
                    config=str(REPO / "logging.yaml")))
                done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp,
                                      capture_output=True, text=True, timeout=120, check=False)
                if done.returncode != 0:
                    continue
                seconds, rss_kib = done.stdout.split()
                samples[name].append((float(seconds) * 1000.0, int(rss_kib) / 1024.0))
    out: dict[str, Any] = {"missing": [n for n in STARTUP_CODE if n not in present]}
    for name, runs_of in samples.items():
        if runs_of:
            out[name] = {"ms": statistics.median(t for t, _ in runs_of),
                         "mb": statistics.median(m for _, m in runs_of),
                         "all_ms": sorted(t for t, _ in runs_of)}
    return out


#: The CPU child: set up one candidate, emit N events, wait until delivered, report CPU.
_CPU_CHILD = """
import json, logging, logging.handlers, queue, sys, time
name, url, n, spool = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
log = logging.getLogger("bench.cpu")
log.setLevel(logging.INFO)
log.propagate = False
job = {{"event_type": "video_generation", "job_name": "Spring", "product": "Glow Serum",
       "persona": "Tech Reviewer", "workflow_type": "avatar", "error_message": "render failed"}}
if name == "cloud":
    from massugc_logging import CloudHandler
    handler = CloudHandler(api_url=url, api_key={key!r}, spool_path=spool,
                           spool_max_events=n * 2)
    log.addHandler(handler)
    def wait(): return handler.force_flush(120)
elif name == "recipe":
    host = url.split("://", 1)[1]
    q = queue.Queue(-1)
    listener = logging.handlers.QueueListener(
        q, logging.handlers.HTTPHandler(host, "/api/desktop/usage/log", method="POST"))
    listener.start()
    log.addHandler(logging.handlers.QueueHandler(q))
    def wait(): listener.stop(); return True
else:
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(
        OTLPLogExporter(endpoint=url + "/v1/logs")))
    log.addHandler(LoggingHandler(logger_provider=provider))
    def wait(): return provider.force_flush(120_000)
cpu = time.process_time()
for i in range(n):
    log.error("job failed", extra={{**job, "run_id": f"cpu-{{i}}"}})
ok = wait()
print(json.dumps({{"cpu": time.process_time() - cpu, "delivered": bool(ok)}}))
sys.stdout.flush()
"""


def measure_cpu(url: str, n: int, runs: int, progress: Callable[[str], None],
                reset: Callable[[], None], count: Callable[[], int]) -> dict[str, Any]:
    """Median process CPU (µs) per delivered event for each candidate, and the requests."""
    present = ["cloud", "recipe"] + (
        ["otel"] if installed("opentelemetry.exporter.otlp.proto.http") else [])
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in present}
    with tempfile.TemporaryDirectory(prefix="massugc-cpu-") as tmp:
        env = _environment(Path(tmp))
        code = _CPU_CHILD.format(key=env["MASSUGC_API_KEY"])
        for i in range(runs):
            for name in present:
                progress(f"CPU per event: {name} ({n} events, run {i + 1}/{runs})")
                reset()
                spool = str(Path(tmp) / f"cpu-{name}-{i}.sqlite3")
                done = subprocess.run([sys.executable, "-c", code, name, url, str(n), spool],
                                      env=env, capture_output=True, text=True, timeout=600,
                                      check=False)
                if done.returncode != 0:
                    continue
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                figures["requests"] = count()
                results[name].append(figures)
    out: dict[str, Any] = {"n": n, "missing": ["otel"] if "otel" not in present else []}
    for name, runs_of in results.items():
        good = [r for r in runs_of if r["delivered"]]
        if good:
            out[name] = {"us_per_event": statistics.median(r["cpu"] for r in good) / n * 1e6,
                         "requests": statistics.median(r["requests"] for r in good),
                         "runs": len(good)}
    return out


def render_startup(figures: dict[str, Any]) -> str:
    """The start-up table, ratios to sentry's."""
    base: Optional[dict[str, Any]] = figures.get("sentry")
    lines = ["| what runs at start | wall time | peak memory | time / sentry's |",
             "|---|---:|---:|---:|"]
    for name in ("massugc", "sentry", "otel"):
        row = figures.get(name)
        if row is None:
            continue
        ratio = f"{row['ms'] / base['ms']:.2f}x" if base else "-"
        lines.append(f"| {STARTUP_LABELS[name]} | {row['ms']:.0f} ms | {row['mb']:.0f} MB | "
                     f"{ratio} |")
    if figures.get("missing"):
        lines.append(f"\n(not installed here, left out: {', '.join(figures['missing'])})")
    return "\n".join(lines)


CPU_LABELS = {
    "cloud": "CloudHandler (each event spooled, then sent)",
    "recipe": "stdlib QueueHandler + QueueListener + HTTPHandler (nothing kept)",
    "otel": "OpenTelemetry BatchLogRecordProcessor + OTLP/HTTP (512 a request)",
}


def render_cpu(figures: dict[str, Any]) -> str:
    """The CPU-per-event table, ratios to the recipe's."""
    base: Optional[dict[str, Any]] = figures.get("recipe")
    lines = [f"| handler ({figures['n']:,} events, loopback sink) | process CPU per delivered "
             "event | requests | CPU / recipe's |", "|---|---:|---:|---:|"]
    for name in ("cloud", "recipe", "otel"):
        row = figures.get(name)
        if row is None:
            continue
        ratio = f"{row['us_per_event'] / base['us_per_event']:.2f}x" if base else "-"
        lines.append(f"| {CPU_LABELS[name]} | {row['us_per_event']:.0f} µs | "
                     f"{row['requests']:,.0f} | {ratio} |")
    if figures.get("missing"):
        lines.append(f"\n(not installed here, left out: {', '.join(figures['missing'])})")
    return "\n".join(lines)


def target_rows(startup: dict[str, Any], cpu: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """``(measure, target, measured, met)`` rows for bench.py's target table."""
    rows = []
    ours, sentry = startup.get("massugc"), startup.get("sentry")
    if ours and sentry:
        ratio = ours["ms"] / sentry["ms"]
        rows.append(("start-up time / sentry's (import + configure)",
                     f"<= {STARTUP_TIME_TARGET}x",
                     f"{ratio:.2f}x ({ours['ms']:.0f} vs {sentry['ms']:.0f} ms)",
                     ratio <= STARTUP_TIME_TARGET))
        rows.append(("start-up peak memory / sentry's", "<= 1x",
                     f"{ours['mb'] / sentry['mb']:.2f}x ({ours['mb']:.0f} vs "
                     f"{sentry['mb']:.0f} MB)", ours["mb"] <= sentry["mb"]))
    cloud, recipe = cpu.get("cloud"), cpu.get("recipe")
    if cloud and recipe:
        ratio = cloud["us_per_event"] / recipe["us_per_event"]
        rows.append(("CPU per delivered event / stdlib recipe's", f"<= {CPU_TARGET}x",
                     f"{ratio:.2f}x ({cloud['us_per_event']:.0f} vs "
                     f"{recipe['us_per_event']:.0f} µs)", ratio <= CPU_TARGET))
    return rows
