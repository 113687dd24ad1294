"""The ``massugc-logging`` command line, for the people who run and support the app.

Sub-commands, one module each: ``init``, ``demo`` (the whole loop against a
local collector), ``serve`` (the local collector), ``send-test``, ``check``,
``spool status|replay|export|purge`` and ``key set|show|remove|migrate``. This
module holds the parser and ``main``. Exit codes: 0 success, 1 a problem was
found or an action failed, 2 wrong arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, Optional

from massugc_logging._version import __version__
from massugc_logging.cli.check import cmd_check
from massugc_logging.cli.common import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    Output,
    add_api_options,
    port_number,
    positive_int,
)
from massugc_logging.cli.demo import cmd_demo
from massugc_logging.cli.init import cmd_init
from massugc_logging.cli.keys import cmd_key
from massugc_logging.cli.send_test import cmd_send_test
from massugc_logging.cli.serve import cmd_serve
from massugc_logging.cli.spool import SPOOL_ACTIONS, cmd_spool
from massugc_logging.config import ENV_VARIABLE


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
    demo.add_argument("--jobs", type=positive_int, default=48,
                      help="how many jobs (default 48)")
    demo.add_argument("--config", help="logging.yaml to use (default: ./logging.yaml, else the "
                      "reference configuration shipped in the package)")
    demo.add_argument("--keep-serving", action="store_true",
                      help="keep the collector running afterwards to browse its page")
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="run the local collector (development and demos)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=port_number, default=8765,
                       help="port to listen on (default 8765; 0 picks a free one)")
    serve.add_argument("--db", help="SQLite file to keep events in (default: memory)")
    serve.set_defaults(func=cmd_serve)

    send = sub.add_parser("send-test", help="send one test event and print the outcome")
    add_api_options(send)
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
        description="The spool keeps events not yet delivered, each for the API it was "
        "logged for. Actions: status (what is kept, for which API, oldest and newest, dead "
        "letters); replay (deliver what is kept for --api-url now, with the handler's own "
        "delivery engine; --from to send events logged for another); export (JSON lines, "
        "--dead or --all for dead letters); purge (delete, asks first; --dead-only, --yes).")
    spool.add_argument("action", choices=sorted(SPOOL_ACTIONS),
                       help="status, replay, export or purge")
    spool.add_argument("--spool", help="spool file (default: $MASSUGC_SPOOL_PATH, else the "
                                       "platform's data directory)")
    add_api_options(spool)
    spool.add_argument("--from", dest="from_destination", metavar="DESTINATION",
                       help="replay: send the events logged for DESTINATION (as status lists "
                       "it), 'unaddressed' (kept by release 0.1) or 'any', instead of those "
                       "logged for --api-url")
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
        "(copy the app's base64 key file into the key store; the app's file stays and is "
        "followed: the newer of the two keys is used).")
    key.add_argument("action", choices=["set", "show", "remove", "migrate"],
                     help="set, show, remove or migrate")
    key.add_argument("--legacy-path", help="the app's old base64 key file")
    key.add_argument("--legacy", action="store_true", help="remove: the legacy file too")
    key.add_argument("--remove-legacy", action="store_true",
                     help="migrate: kept for 0.1 scripts; the app's file is never deleted "
                     "(the app reads it)")
    key.set_defaults(func=cmd_key)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output()
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
