"""``serve``: the local collector, until interrupted."""

from __future__ import annotations

import argparse

from massugc_logging.cli._common import (
    EXIT_OK,
    EXIT_PROBLEM,
    _Output,
)
from massugc_logging.collector import serve_forever


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
