"""Fleet behaviour: ten thousand desktops against one finite MassUGC Cloud API.

    python benchmarks/fleet.py                  # full run: 10,000 clients; tables, plots, docs
    python benchmarks/fleet.py --quick --json   # what CI runs: a small fleet, figures as JSON

A deterministic discrete-event simulation in virtual time (``fleet_sim``): every
client runs a delivery policy against a model of the API (``fleet_api``) with a
capacity, a bounded queue, 503s beyond it and a latency. The ``default`` policy
is this library's own delivery engine and decision core, driven with a virtual
clock (``fleet_clients.EngineClient``); ``naive`` and ``v0_1`` are models of a
retry loop with a fixed pause and of release 0.1.0.

Scenarios: ``steady``; ``outage`` (15 minutes of connection refused, then
recovery); ``degraded`` (capacity down to a third for 10 minutes); ``restart``
(every client starts at once holding 15 minutes of events).

The script prints a table per scenario and the engine's targets (met or
missed), writes one plot per scenario (``docs/fleet-SCENARIO.png``, needs the
``bench`` extra's matplotlib) and, in the full run, the section of ``docs/fleet.md``
between ``<!-- fleet:start -->`` and ``<!-- fleet:end -->``. ``--json`` prints
``{"scenarios": {SCENARIO: {POLICY: FIGURES}}, "settings": ..., "targets": ...}``
instead. It never fails on a figure: the exit status is 0 unless the script
itself breaks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_sim import (
    OVERLOAD,
    POLICIES,
    SCENARIOS,
    Figures,
    FleetSettings,
    Trace,
    run,
    scenario,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: The page whose section between the markers the full run rewrites.
PAGE = DOCS / "fleet.md"
START, END = "<!-- fleet:start -->", "<!-- fleet:end -->"

POLICY_NAMES = {
    "default": "engine defaults",
    "naive": "naive (fixed 1 s retry)",
    "v0_1": "release 0.1.0",
}

#: (figure, label, format) in table order.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("events", "events logged", "{:,}"),
    ("requests", "requests made", "{:,}"),
    ("live_requests_per_event", "requests that reached a live API, per event", "{:.2f}"),
    ("probes_per_client_per_min_down",
     "connection attempts while down, per client per minute", "{:.2f}"),
    ("peak_load_x_capacity", "peak offered load (x capacity, 1 s)", "{:.1f}"),
    ("overload_seconds", f"seconds above {OVERLOAD}x capacity", "{:,}"),
    ("overload_seconds_after_recovery", "… of them after recovery", "{:,}"),
    ("recovery_goodput_share", "goodput until drained (share of capacity)", "{:.0%}"),
    ("degraded_goodput_share", "goodput while degraded (share of what is left)", "{:.0%}"),
    ("backlog_at_recovery", "events held at recovery", "{:,}"),
    ("drain_s", "seconds from recovery to all backlogs drained", "{:,.0f}"),
    ("ideal_drain_s", "… ideal (backlog / spare capacity)", "{:,.0f}"),
    ("drain_ratio", "drain time / ideal", "{:.2f}"),
    ("slowest_to_median_drain", "slowest client's drain / median client's", "{:.1f}"),
    ("p99_delay_s", "p99 delay from log to delivery (s)", "{:,.1f}"),
    ("max_in_flight_per_client_down", "most in flight per client while down", "{}"),
    ("max_in_flight_per_client", "most in flight per client", "{}"),
    ("lost", "events lost", "{:,}"),
    ("undelivered", "events not delivered by the end", "{:,}"),
)


@dataclasses.dataclass(frozen=True)
class Target:
    """One of the engine's targets: which figure, the bound, and which way."""

    scenario: str
    figure: str
    bound: float
    at_most: bool
    says: str
    #: Whether the target only means something once the incident left a backlog.
    needs_backlog: bool = False

    def met(self, figures: Figures, capacity: float) -> Optional[bool]:
        """True or False; None when it cannot be judged (no backlog was built: less
        than one second of the API's capacity held when the incident ended)."""
        if self.needs_backlog and (figures.backlog_at_recovery or 0) < capacity:
            return None
        value = getattr(figures, self.figure)
        if value is None:
            return False
        return bool(value <= self.bound if self.at_most else value >= self.bound)


TARGETS = (
    Target("restart", "peak_load_x_capacity", 5.0, True,
           "restart: peak offered load at most 5x capacity"),
    Target("restart", "overload_seconds", 60, True,
           f"restart: offered load above {OVERLOAD}x capacity for at most 60 s"),
    Target("restart", "recovery_goodput_share", 0.9, False,
           "restart: goodput at least 90 % of capacity until drained"),
    Target("restart", "drain_ratio", 1.25, True, "restart: drain within 1.25x the ideal time"),
    Target("restart_outage", "overload_seconds_after_recovery", 30, True,
           f"restart during an outage: above {OVERLOAD}x capacity for at most 30 s after "
           "recovery"),
    Target("outage", "live_requests_per_event", 1.15, True,
           "outage: requests that reached a live API, at most 1.15 per event"),
    Target("outage", "probes_per_client_per_min_down", 1.5, True,
           "outage: at most 1.5 connection attempts per client per minute while down"),
    Target("outage", "max_in_flight_per_client_down", 1, True,
           "outage: never more than 1 request in flight per client while down (once it "
           "has had a refusal)"),
    Target("outage", "overload_seconds_after_recovery", 30, True,
           f"outage: offered load above {OVERLOAD}x capacity for at most 30 s after "
           "recovery"),
    Target("outage", "recovery_goodput_share", 0.9, False,
           "outage: goodput at least 90 % of capacity until drained"),
    Target("outage", "drain_ratio", 1.25, True, "outage: drain within 1.25x the ideal time"),
    Target("outage", "lost", 0, True, "outage: 0 events lost"),
    Target("degraded", "degraded_goodput_share", 0.9, False,
           "degraded: goodput at least 90 % of the reduced capacity"),
    Target("degraded", "slowest_to_median_drain", 2.0, True,
           "degraded: the slowest client drains within 2x the median client",
           needs_backlog=True),
)


def settings_for(args: argparse.Namespace) -> FleetSettings:
    base = FleetSettings()
    changes: dict[str, Any] = {"seed": args.seed}
    if args.quick:
        changes["clients"] = 1000
    if args.clients is not None:
        changes["clients"] = args.clients
    if args.retry_after is not None:
        changes["retry_after"] = args.retry_after
    if args.headroom is not None:
        changes["headroom"] = args.headroom
    return dataclasses.replace(base, **changes)


Job = tuple[str, str, FleetSettings]


def _one(job: Job) -> tuple[Figures, Trace, float]:
    name, policy, settings = job
    started = time.perf_counter()
    figures, trace = run(name, policy, settings)
    return figures, trace, time.perf_counter() - started


def run_jobs(work: list[Job], jobs: int,
             progress: Callable[[str], None]) -> list[tuple[Figures, Trace]]:
    """Each simulation in ``work``, ``jobs`` processes at once, results in order."""
    def said(job: Job, result: tuple[Figures, Trace, float]) -> tuple[Figures, Trace]:
        name, policy, settings = job
        progress(f"{name:9s} {policy:8s} headroom {settings.headroom:g}  {result[2]:6.1f} s")
        return result[0], result[1]

    if jobs <= 1:
        return [said(job, _one(job)) for job in work]
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        return [said(job, result) for job, result in zip(work, pool.map(_one, work))]


def run_all(settings: FleetSettings, scenarios: list[str], policies: list[str], jobs: int,
            progress: Callable[[str], None]) -> dict[str, dict[str, tuple[Figures, Trace]]]:
    """Every scenario with every policy."""
    work = [(s, p, settings) for s in scenarios for p in policies]
    results: dict[str, dict[str, tuple[Figures, Trace]]] = {s: {} for s in scenarios}
    for (name, policy, _), result in zip(work, run_jobs(work, jobs, progress)):
        results[name][policy] = result
    return results


#: Headrooms the engine's defaults are also tried at, in the full run: how close to
#: the edge they are when the API has less room than assumed.
SENSITIVITY_HEADROOMS = (2.5, 2.0)
SENSITIVITY_FIGURES = (
    ("outage", "overload_seconds_after_recovery", f"outage: seconds above {OVERLOAD}x "
     "capacity after recovery", "{:,}"),
    ("outage", "recovery_goodput_share", "outage: goodput until drained", "{:.0%}"),
    ("outage", "drain_ratio", "outage: drain time / ideal", "{:.2f}"),
    ("outage", "live_requests_per_event", "outage: requests that reached a live API, per "
     "event", "{:.2f}"),
    ("degraded", "degraded_goodput_share", "degraded: goodput while degraded", "{:.0%}"),
    ("degraded", "backlog_at_recovery", "degraded: events held when capacity is back",
     "{:,}"),
    ("degraded", "slowest_to_median_drain", "degraded: slowest client's drain / median",
     "{:.1f}"),
)


def run_sensitivity(settings: FleetSettings, jobs: int, progress: Callable[[str], None]
                    ) -> dict[float, dict[str, Figures]]:
    """The engine's defaults in the outage and degraded scenarios at smaller headrooms."""
    headrooms = [h for h in SENSITIVITY_HEADROOMS if h != settings.headroom]
    work = [(name, "default", dataclasses.replace(settings, headroom=h))
            for h in headrooms for name in ("outage", "degraded")]
    found: dict[float, dict[str, Figures]] = {h: {} for h in headrooms}
    for (name, _, s), (figures, _) in zip(work, run_jobs(work, jobs, progress)):
        found[s.headroom][name] = figures
    return found


def sensitivity_table(settings: FleetSettings,
                      main: dict[str, dict[str, tuple[Figures, Trace]]],
                      found: dict[float, dict[str, Figures]]) -> str:
    columns = {settings.headroom: {n: main[n]["default"][0] for n in ("outage", "degraded")
                                   if "default" in main.get(n, {})}}
    columns.update(found)
    order = sorted(columns, reverse=True)
    lines = ["| engine defaults, API capacity as a multiple of the mean load | "
             + " | ".join(f"{h:g}x" for h in order) + " |",
             "|---|" + "---:|" * len(order)]
    for name, key, label, fmt in SENSITIVITY_FIGURES:
        cells = [_cell(getattr(columns[h][name], key), fmt) if name in columns[h] else "-"
                 for h in order]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def scenario_table(name: str, by_policy: dict[str, tuple[Figures, Trace]]) -> str:
    policies = [p for p in POLICIES if p in by_policy]
    lines = ["| " + name + " | " + " | ".join(POLICY_NAMES[p] for p in policies) + " |",
             "|---|" + "---:|" * len(policies)]
    for key, label, fmt in ROWS:
        values = [getattr(by_policy[p][0], key) for p in policies]
        if all(v is None for v in values):
            continue
        lines.append(f"| {label} | " + " | ".join(_cell(v, fmt) for v in values) + " |")
    return "\n".join(lines)


def target_rows(settings: FleetSettings, results: dict[str, dict[str, tuple[Figures, Trace]]],
                found: dict[float, dict[str, Figures]]) -> list[dict[str, Any]]:
    """Each target judged on the default policy's run, then the degraded ones again at
    each smaller headroom tried (where the degraded API really falls behind)."""
    judged: list[tuple[Target, Figures, float]] = []
    for target in TARGETS:
        entry = results.get(target.scenario, {}).get("default")
        if entry is not None:
            judged.append((target, entry[0], settings.headroom))
    for headroom, by_name in found.items():
        for target in TARGETS:
            if target.scenario == "degraded" and "degraded" in by_name:
                judged.append((target, by_name["degraded"], headroom))
    rows = []
    for target, figures, headroom in judged:
        value = getattr(figures, target.figure)
        rows.append({"scenario": target.scenario, "figure": target.figure,
                     "headroom": headroom, "target": target.says, "bound": target.bound,
                     "value": round(value, 4) if isinstance(value, float) else value,
                     "met": target.met(figures, settings.load * headroom)})
    return rows


def targets_table(rows: list[dict[str, Any]], clients: int) -> str:
    lines = [f"| target (engine defaults, {clients:,} clients) | headroom | measured | met |",
             "|---|---:|---:|:---:|"]
    verdicts = {True: "yes", False: "**no**", None: "n/a: no backlog built"}
    for row in rows:
        value = row["value"]
        shown = "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else
                                           f"{value:,}")
        lines.append(f"| {row['target']} | {row['headroom']:g}x | {shown} | "
                     f"{verdicts[row['met']]} |")
    return "\n".join(lines)


def plot(name: str, by_policy: dict[str, tuple[Figures, Trace]], settings: FleetSettings,
         path: Path) -> bool:
    """Requests per second at the API over time, one line per policy; False without
    matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415 - optional, from the bench extra
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    sc = scenario(name, settings)
    span = int(sc.end)
    step = 5
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    for policy in POLICIES:
        if policy not in by_policy:
            continue
        offered = by_policy[policy][1].offered
        xs = [t / 60.0 for t in range(0, span, step)]
        ys = [max(sum(offered[t:t + step]) / step, 0.1) for t in range(0, span, step)]
        ax.plot(xs, ys, label=POLICY_NAMES[policy], linewidth=1.3)
    capacity = by_policy[next(iter(by_policy))][1].capacity
    ax.plot([t / 60.0 for t in range(span)], capacity[:span], color="black", linestyle="--",
            linewidth=1, label="capacity")
    if sc.outage is not None:
        ax.axvspan(sc.outage.start / 60, sc.outage.end / 60, color="red", alpha=0.08,
                   label="API down")
    if sc.degraded is not None:
        ax.axvspan(sc.degraded.start / 60, sc.degraded.end / 60, color="orange", alpha=0.1,
                   label="capacity at a third")
    ax.set_yscale("log")
    ax.set_xlabel("minutes")
    ax.set_ylabel("requests per second at the API (5 s mean)")
    ax.set_title(f"{name}: {settings.clients:,} clients, one event per minute each, "
                 f"capacity {settings.capacity:,.0f} req/s")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def describe(settings: FleetSettings) -> str:
    s = settings
    ra = f"`Retry-After: {s.retry_after:g}`" if s.retry_after is not None else "no `Retry-After`"
    return (f"{s.clients:,} clients, each logging one event per {60 / s.events_per_min:g} s "
            f"on average (Poisson), seed {s.seed}. API: capacity {s.capacity:,.0f} requests/s "
            f"({s.headroom:g}x the mean load), a queue of {s.queue_seconds:g} s of capacity, "
            f"503 with {ra} beyond it, round trip {s.rtt * 1000:.0f} ms. "
            f"Outage: {s.outage / 60:g} min of connection refused after {s.warmup / 60:g} "
            f"min; degraded: {s.degraded_share:.0%} of capacity for "
            f"{s.degraded_for / 60:g} min; restart: every client starts at once holding "
            f"{s.restart_backlog_min:g} min of events. Each run goes on "
            f"{s.observe / 60:g} min after the incident, then stops logging and delivers "
            "what is left.")


def write_page(section: str, page: Path = PAGE) -> bool:
    """Put ``section`` between the fleet markers of ``page``; False if they are missing."""
    try:
        text = page.read_text(encoding="utf-8")
    except OSError:
        return False
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    page.write_text(head + START + "\n" + section + "\n" + END + tail, encoding="utf-8")
    return True


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a small fleet (1,000 clients), for CI: no plots, no docs")
    parser.add_argument("--json", action="store_true",
                        help="print the figures as one JSON object instead of tables")
    parser.add_argument("--clients", type=int, help="clients in the fleet (default 10,000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random source")
    parser.add_argument("--retry-after", type=float,
                        help="send this Retry-After (seconds) with each 503")
    parser.add_argument("--headroom", type=float,
                        help="the API's capacity as a multiple of the fleet's mean load "
                             "(default 3)")
    parser.add_argument("--no-sensitivity", action="store_true",
                        help="skip the full run's extra runs at smaller headrooms")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, from {', '.join(SCENARIOS)}")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help=f"comma-separated, from {', '.join(POLICIES)}")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="simulations run at once, in processes (default: one per CPU)")
    parser.add_argument("--plots", type=Path,
                        help="write the plots here (default docs/ in the full run)")
    parser.add_argument("--no-plots", action="store_true", help="write no plots")
    parser.add_argument("--no-docs", action="store_true", help=f"leave {PAGE.name} alone")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    policies = [p for p in args.policies.split(",") if p]
    for name in scenarios:
        scenario(name, FleetSettings())  # an unknown name fails here, before any run
    for policy in policies:
        if policy not in POLICIES:
            parser.error(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")

    settings = settings_for(args)
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    say(f"# fleet: {describe(settings)}")
    started = time.perf_counter()
    results = run_all(settings, scenarios, policies, max(1, args.jobs), say)
    found: dict[float, dict[str, Figures]] = {}
    if not args.quick and not args.no_sensitivity and "default" in policies:
        found = run_sensitivity(settings, max(1, args.jobs), say)
    took = time.perf_counter() - started
    targets = target_rows(settings, results, found)

    if args.json:
        print(json.dumps({
            "scenarios": {s: {p: f.as_dict() for p, (f, _) in by.items()}
                          for s, by in results.items()},
            "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "policy"}
            | {"capacity": settings.capacity, "policy": dataclasses.asdict(settings.policy)},
            "targets": targets,
            "sensitivity": {f"{h:g}": {n: f.as_dict() for n, f in by.items()}
                            for h, by in found.items()},
            "seconds": round(took, 1),
        }, indent=2))
    else:
        for name, by_policy in results.items():
            print()
            print(scenario_table(name, by_policy))
        if targets:
            print()
            print(targets_table(targets, settings.clients))
        if found:
            print()
            print(sensitivity_table(settings, results, found))
        runs = len(scenarios) * len(policies) + sum(len(by) for by in found.values())
        print(f"\n{runs} simulations in {took:.0f} s")

    plot_dir = args.plots if args.plots is not None else (None if args.quick else DOCS)
    plotted = []
    if plot_dir is not None and not args.no_plots:
        for name, by_policy in results.items():
            path = plot_dir / f"fleet-{name}.png"
            if plot(name, by_policy, settings, path):
                plotted.append(path)
            else:
                say("# no plots: matplotlib is missing (pip install -e '.[bench]')")
                break
        for path in plotted:
            say(f"# wrote {path}")

    if not args.quick and not args.no_docs and not args.json:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        section = "\n\n".join(
            [f"Measured by `python benchmarks/fleet.py` on {stamp}, CPython "
             f"{platform.python_version()}: {describe(settings)}"]
            + ([targets_table(targets, settings.clients)] if targets else [])
            + ([sensitivity_table(settings, results, found)] if found else [])
            + [scenario_table(name, by) for name, by in results.items()])
        if write_page(section):
            say(f"# {PAGE} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
