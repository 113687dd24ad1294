"""``init``: write the reference logging.yaml to start from."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from massugc_logging.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    Output,
)
from massugc_logging.config import (
    packaged_config_path,
)
from massugc_logging.contract import LOCAL_COLLECTOR_KEY
from massugc_logging.keystore import ENV_VAR


def reference_config() -> Optional[Path]:
    """``./logging.yaml``, else the reference configuration shipped in the package."""
    for candidate in (Path("logging.yaml"), packaged_config_path()):
        if candidate.is_file():
            return candidate
    return None


def cmd_init(args: argparse.Namespace, out: Output) -> int:
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
    out.say(f"API key: for development (the local collector, 'massugc-logging serve') any "
            f"well-formed key works, e.g. {ENV_VAR}={LOCAL_COLLECTOR_KEY}; for production store "
            "yours with 'massugc-logging key set'")
    return EXIT_OK
