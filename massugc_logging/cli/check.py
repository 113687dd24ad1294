"""``check``: a logging.yaml validated without sending anything (the checks
themselves are :func:`massugc_logging.checks.check_configuration`)."""

from __future__ import annotations

import argparse

from massugc_logging.checks import check_configuration
from massugc_logging.cli.common import EXIT_OK, EXIT_PROBLEM, Output
from massugc_logging.config import ConfigError, default_config_path


def cmd_check(args: argparse.Namespace, out: Output) -> int:
    """Validate a logging.yaml without sending anything."""
    path = args.path if args.path is not None else str(default_config_path())
    try:
        report = check_configuration(path, args.env, probe=not args.no_network,
                                     ca_bundle=args.ca_bundle)
    except ConfigError as exc:
        out.problem(str(exc))
        return EXIT_PROBLEM
    out.say(f"checking {path}, environment {report.environment!r}")
    for note in report.notes:
        out.say(f"ok: {note}")
    for problem in report.problems:
        out.say(f"PROBLEM: {problem}")
    if not report.ok:
        out.problem(f"{len(report.problems)} problem(s) in {path} (environment "
                    f"{report.environment!r}); fix each PROBLEM above and run the check again")
        return EXIT_PROBLEM
    out.say(f"{path}: configuration looks good (environment {report.environment!r})")
    return EXIT_OK
