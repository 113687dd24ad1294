"""What every command shares: output and exit codes, the API URL, key and transport
from the options, and option parsers.

Public within the command-line package (its modules import these names); not part of
the package's documented API.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional, TextIO

from massugc_logging.checks import ca_bundle_problem, key_problem, no_key_problem
from massugc_logging.contract import DEFAULT_ENDPOINT, PRODUCTION_API_URL
from massugc_logging.keystore import KeyStore, KeyStoreError
from massugc_logging.pipeline.outbox import default_spool_path
from massugc_logging.pipeline.transport import (
    InsecureURLError,
    Transport,
    TransportError,
    check_api_url,
)

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
_key_problem = key_problem


class Output:
    """Plain-text output: results on stdout, progress and problems on stderr."""

    def __init__(self, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> None:
        # The streams of the moment, not of import time (a test may have replaced them).
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr

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


def api_url_of(args: argparse.Namespace) -> str:
    return str(getattr(args, "api_url", None) or os.environ.get("MASSUGC_API_URL")
               or PRODUCTION_API_URL)


def spool_path_of(args: argparse.Namespace) -> Path:

    given = getattr(args, "spool", None) or os.environ.get("MASSUGC_SPOOL_PATH")
    return Path(given).expanduser() if given else default_spool_path()


def url_problem(exc: Exception) -> str:
    """A refused API URL with the command line's way out."""
    if isinstance(exc, InsecureURLError):
        return (f"{exc} (on the command line: --allow-insecure-http; better, use "
                "https:// with --api-url or MASSUGC_API_URL)")
    return f"{exc}; fix --api-url or MASSUGC_API_URL"


def make_transport(args: argparse.Namespace, out: Output) -> Any:
    """A transport for the configured API and key, or None after saying why.

    What is wrong is named in the order a user fixes it: the key, the URL, then
    the CA bundle (``--ca-bundle``, else ``REQUESTS_CA_BUNDLE`` or ``SSL_CERT_FILE``).
    """
    url = api_url_of(args)
    insecure = bool(getattr(args, "allow_insecure_http", False))
    ca_bundle = getattr(args, "ca_bundle", None)
    try:
        key, _source = KeyStore().resolve(getattr(args, "api_key", None))
    except KeyStoreError as exc:
        out.problem(_key_problem(exc))
        return None
    if key is None:
        out.problem(no_key_problem(url))
        return None
    try:
        check_api_url(url, allow_insecure_http=insecure)
    except TransportError as exc:
        out.problem(url_problem(exc))
        return None
    untrusted = ca_bundle_problem(ca_bundle, "--ca-bundle")
    if untrusted is not None:
        out.problem(untrusted)
        return None
    try:
        return Transport(url, key,
                         endpoint=getattr(args, "endpoint", None) or DEFAULT_ENDPOINT,
                         timeout=(3.05, 10.0), allow_insecure_http=insecure,
                         ca_bundle=ca_bundle)
    except (TransportError, ValueError) as exc:
        out.problem(url_problem(exc))
        return None


def describe_outcome(outcome: Any) -> str:
    status = f"HTTP {outcome.status}" if outcome.status is not None else "no response"
    reason = f": {outcome.reason}" if outcome.reason else ""
    return f"{outcome.kind.value} ({status}{reason})"


# -- serve --------------------------------------------------------------------------


def add_api_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-url", help="API base URL (default: $MASSUGC_API_URL, else production)")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                   help=f"usage-log path (default {DEFAULT_ENDPOINT})")
    p.add_argument("--allow-insecure-http", action="store_true",
                   help="allow plain http:// to a host that is not loopback")
    p.add_argument("--ca-bundle", help="trust the CA certificates in this PEM file or directory "
                   "(default: $REQUESTS_CA_BUNDLE, $SSL_CERT_FILE, else the system trust store)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is too small; give 1 or more")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (0 to 65535; "
                                         "0 picks a free one)")
    return value
