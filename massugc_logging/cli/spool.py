"""``spool status|replay|export|purge``: what is kept for later, and what to do with it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Optional

from massugc_logging.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    Output,
    describe_outcome,
    make_transport,
    spool_path_of,
)
from massugc_logging.outcome import Outcome
from massugc_logging.payload import format_utc
from massugc_logging.pipeline.decisions import EventAction
from massugc_logging.pipeline.delivery import DeliveryEngine
from massugc_logging.pipeline.spool import UNADDRESSED, Spool, SpoolError

#: ``--from any``: every event in the file, whatever API it was logged for.
ANY_DESTINATION = "any"


def _open_spool(args: argparse.Namespace, out: Output) -> Any:

    path = spool_path_of(args)
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


def cmd_spool(args: argparse.Namespace, out: Output) -> int:
    """Inspect, replay, export or purge the spool."""
    path = spool_path_of(args)
    if not path.exists():
        # The normal state of a fresh install: nothing was ever kept for later.
        out.say(f"nothing is kept yet: no spool at {path} (another one: --spool PATH or "
                "MASSUGC_SPOOL_PATH)")
        return EXIT_OK
    spool = _open_spool(args, out)
    if spool is None:
        return EXIT_PROBLEM
    try:
        return SPOOL_ACTIONS[args.action](spool, args, out)
    except SpoolError as exc:
        out.problem(f"{exc}; nothing more was done (is another program holding the file?)")
        return EXIT_PROBLEM
    finally:
        spool.close()


def _spool_status(spool: Any, args: argparse.Namespace, out: Output) -> int:
    pending = spool.pending()
    dead = spool.dead_letters()
    out.say(f"spool:          {spool.path}")
    out.say(f"pending events: {len(pending)}")
    for destination, count in spool.counts_by_destination().items():
        name = destination or f"{UNADDRESSED} (kept by release 0.1; see spool replay --from)"
        out.say(f"  {count:>6}  for {name}")
    running = spool.running()
    if running:
        out.say(f"running jobs:   {len(running)} (each becomes a failure event if its app "
                "has stopped)")
    if pending:
        out.say(f"oldest:         {_iso(pending[0].created)}")
        out.say(f"newest:         {_iso(pending[-1].created)}")
        out.say(f"most attempts:  {max(e.attempts for e in pending)}")
    out.say(f"dead-lettered:  {len(dead)}")
    for d in dead[-5:]:
        out.say(f"  {_iso(d.created)}  HTTP {d.status}  {d.reason}")
    return EXIT_OK


def _replayed_destinations(spool: Any, args: argparse.Namespace, sending_to: str
                           ) -> list[Optional[str]]:
    """The destinations whose events this replay sends: those logged for the API it sends
    to, unless ``--from`` names others (a destination, ``unaddressed`` or ``any``)."""
    chosen = getattr(args, "from_destination", None)
    if chosen is None:
        return [sending_to]
    if chosen == ANY_DESTINATION:
        return list(spool.counts_by_destination())
    return [None if chosen == UNADDRESSED else chosen.strip().rstrip("/")]


def _spool_replay(spool: Any, args: argparse.Namespace, out: Output) -> int:
    """Deliver what the spool holds now, with the handler's own delivery engine: the events
    logged for the API it sends to, or (``--from``) those logged for another."""
    transport = make_transport(args, out)
    if transport is None:
        return EXIT_PROBLEM
    try:
        sources = _replayed_destinations(spool, args, transport.url)
        return _replay_from(spool, sources, transport, out)
    finally:
        transport.close()


def _replay_from(file: Any, sources: list[Optional[str]], transport: Any, out: Output) -> int:
    """Replay the events of each destination in ``sources`` through ``transport``."""
    views = [Spool(file.path, destination=source) for source in sources]
    try:
        total = sum(view.pending_count() for view in views)
        if total == 0:
            held = file.counts_by_destination()
            out.say(f"nothing to replay for {transport.url}" + (
                "; the spool holds events for: " + ", ".join(
                    f"{d or UNADDRESSED} ({n})" for d, n in held.items()) +
                " (send those with --from DESTINATION, or --from any)" if held else ""))
            return EXIT_OK
        return _replay_views(views, total, transport, out)
    finally:
        for view in views:
            view.close()


def _replay_views(views: list[Spool], total: int, transport: Any, out: Output) -> int:
    """Drain each view through the delivery engine; report what became of the events."""
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

    out.progress(0, total, "replay")
    deadline = time.time() + _REPLAY_SECONDS
    for view in views:
        engine = DeliveryEngine(view, lambda e: transport.send(e.body, e.event_id),
                                max_in_flight=1, on_settled=settled)
        engine.drain(deadline=deadline)
        engine.diagnostics.publish(engine.stop())
        if failures and engine.state.mode.value != "sending":
            break  # the API as a whole refused: the other destinations would fare no better
    left = sum(view.pending_count() for view in views)
    if left and failures:
        out.problem(f"stopped: {describe_outcome(failures[-1])}; the rest stays in the spool")
    elif left:
        out.problem(f"{left} event(s) are held by a program that is still running "
                    "(the app, or another replay); it delivers them itself. Run the "
                    "replay again after it exits, or a few minutes later")
    out.say(f"replayed {tally['sent']} event(s); {tally['rejected']} rejected and "
            f"dead-lettered; {left} still pending")
    return EXIT_OK if left == 0 else EXIT_PROBLEM


def _spool_export(spool: Any, args: argparse.Namespace, out: Output) -> int:
    rows: list[dict[str, Any]] = []
    for event in spool.pending():
        rows.append({"state": "pending", "event_id": event.event_id,
                     "created": _iso(event.created), "attempts": event.attempts,
                     "destination": event.destination, "event": json.loads(event.body)})
    if args.dead or args.all:
        for dead in spool.dead_letters():
            rows.append({"state": "dead_letter", "event_id": dead.event_id,
                         "created": _iso(dead.created), "status": dead.status,
                         "reason": dead.reason, "destination": dead.destination,
                         "event": json.loads(dead.body)})
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


def _spool_purge(spool: Any, args: argparse.Namespace, out: Output) -> int:
    dead = spool.dead_letter_count()
    what = (f"{dead} dead-lettered event(s)" if args.dead_only else
            f"{spool.total_count()} pending and {dead} dead-lettered event(s)")
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


SPOOL_ACTIONS: dict[str, Callable[[Any, argparse.Namespace, Output], int]] = {
    "status": _spool_status, "replay": _spool_replay, "export": _spool_export,
    "purge": _spool_purge,
}


# -- key ----------------------------------------------------------------------------
