"""``serve``: the local collector, until interrupted."""

from __future__ import annotations

import argparse

from massugc_logging.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    Output,
)
from massugc_logging.collector import DatabaseUnusable, NotACollectorDatabase, serve_forever
from massugc_logging.contract import LOCAL_COLLECTOR_KEY
from massugc_logging.keystore import ENV_VAR


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    """Run the local collector until interrupted."""

    def ready(url: str) -> None:
        out.say(f"Local MassUGC collector listening on {url}  (Ctrl-C to stop)")
        out.say(f"  failures page: {url}/    events as JSON: {url}/api/events")
        out.say("  it accepts any well-formed API key ('massugc_' and 32 letters, digits, "
                "'_' or '-'); point the app at it with:")
        out.say(f"    MASSUGC_API_URL={url} {ENV_VAR}={LOCAL_COLLECTOR_KEY}")

    try:
        serve_forever(args.db, args.host, args.port, ready=ready)
    except NotACollectorDatabase as exc:
        out.problem(f"{exc}; give --db another path, or move that file aside")
        return EXIT_PROBLEM
    except DatabaseUnusable as exc:
        out.problem(f"{exc}; give --db a file in a directory you can write")
        return EXIT_PROBLEM
    except OSError as exc:
        out.problem(f"cannot listen on {args.host}:{args.port} ({exc.strerror}); "
                    "choose another --port")
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        pass
    return EXIT_OK
