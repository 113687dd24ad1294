"""Checks of a logging configuration, without sending anything: for ``massugc-logging
check`` and for code that wants the same verdict (an installer, a settings page).

:func:`check_configuration` loads one environment of a ``logging.yaml``, checks
every cloud handler's arguments, URL, trust, key and (optionally) whether the
API answers, and dry-runs the dictConfig with inert stand-ins for the cloud and
file handlers. It returns what is fine and what is wrong, each in words that
say what to do; it never raises for a problem in the file, only
:class:`~massugc_logging.config.ConfigError` when the file cannot be read at all.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import logging.config
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from massugc_logging.config import describe_dictconfig_error, load_environment
from massugc_logging.contract import LOCAL_COLLECTOR_KEY, PRODUCTION_API_URL
from massugc_logging.handler import CloudHandler
from massugc_logging.keystore import ENV_VAR, InvalidApiKey, KeyStore, KeyStoreError
from massugc_logging.pipeline.outbox import resolve_spool_path
from massugc_logging.pipeline.spool import recall_from_file
from massugc_logging.pipeline.transport import (
    InsecureURLError,
    OutcomeKind,
    Transport,
    TransportError,
    check_api_url,
    is_loopback,
)
from massugc_logging.pipeline.trust import CA_BUNDLE_VARIABLES
from massugc_logging.pipeline.trust import FIX as TLS_FIX


@dataclass
class ConfigCheck:
    """The verdict on one environment of a configuration file."""

    path: str
    environment: str
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


def check_configuration(path: Union[str, Path], env: Optional[str] = None, *,
                        probe: bool = True, ca_bundle: Optional[str] = None) -> ConfigCheck:
    """Check ``path``'s environment ``env`` (default: as ``configure`` would choose it).

    Args:
        probe: also send one ``HEAD`` to each cloud handler's API (no event, no key).
        ca_bundle: trust these CAs for the probe, as a handler's ``ca_bundle``.

    Raises:
        ConfigError: the file cannot be read or is not a configuration at all.
    """
    config, env_name = load_environment(path, env)
    report = ConfigCheck(str(path), env_name)
    as_written, _ = load_environment(path, env_name, expand_variables=False)
    written_handlers = as_written.get("handlers")
    if not isinstance(written_handlers, dict):
        written_handlers = {}
    for name, spec in _cloud_specs(config):
        _check_cloud_handler(name, spec, written_handlers.get(name), probe,
                             report.problems, report.notes, ca_bundle)
    rejected = _dry_run(config)
    if rejected:
        report.problems.append(rejected)
    return report


KEY_HINT = f"set {ENV_VAR} or run 'massugc-logging key set'"

#: How to give the local collector a key, for the messages that point at it.
LOCAL_KEY_HINT = ("the local collector ('massugc-logging serve') accepts any well-formed key, "
                  f"e.g. {ENV_VAR}={LOCAL_COLLECTOR_KEY}")


def is_loopback_url(api_url: str) -> bool:
    """True when ``api_url``'s host is this machine (where the local collector runs)."""
    try:
        host = urlsplit(api_url.strip()).hostname
    except ValueError:
        return False
    return bool(host) and is_loopback(str(host))


def no_key_problem(api_url: str) -> str:
    """The "no API key" problem, with what to do: on loopback, the key the local collector takes."""
    if is_loopback_url(api_url):
        return f"no API key; {LOCAL_KEY_HINT}; for the real API {KEY_HINT}"
    return f"no API key; {KEY_HINT}"


def ca_bundle_problem(ca_bundle: Optional[str], fix: str = "ca_bundle",
                      environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """What is wrong with the CA bundle a transport would trust, with what to do; None if fine.

    The bundle is ``ca_bundle``, else the first of ``REQUESTS_CA_BUNDLE`` and
    ``SSL_CERT_FILE`` that is set, as :func:`massugc_logging.pipeline.trust.resolve_trust`
    chooses it. ``fix`` says where ``ca_bundle`` is given (``--ca-bundle`` on the
    command line); a variable is named as itself.
    """
    env = os.environ if environ is None else environ
    if ca_bundle is not None and str(ca_bundle).strip():
        named, source, where = str(ca_bundle), "", f"fix {fix}"
    else:
        variable = next((v for v in CA_BUNDLE_VARIABLES if env.get(v, "").strip()), None)
        if variable is None:
            return None
        named, source = env[variable].strip(), f" named by {variable}"
        where = f"fix or unset {variable}"
    path = Path(named).expanduser()
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            with path.open("rb"):
                pass
    except FileNotFoundError:
        what = "does not exist"
    except OSError as exc:
        what = f"cannot be read ({exc.strerror or type(exc).__name__})"
    else:
        return None
    return (f"the CA bundle {path}{source} {what}; {where} (a readable PEM file or directory "
            "of certificates)")


def remembered_state(spool_path: Any, api_url: str) -> list[str]:
    """What the spool remembers of the API, in words: the route that answers, and a hold
    in force (a pause, the circuit, a key in use elsewhere, successes held for credits)."""
    path = resolve_spool_path(spool_path)
    if path is None:
        return []
    now = time.time()
    learnt = recall_from_file(path, api_url, now)
    lines = []
    if "route" in learnt:
        lines.append(f"the API answered on {learnt['route']} (remembered in the spool)")
    try:
        health = json.loads(learnt.get("health", "{}"))
        age = now - float(health.get("written_at", now))
        resume_in = float(health.get("resume_in", 0.0)) - age
        credits_in = float(health.get("credits_in", 0.0)) - age
    except (ValueError, TypeError, AttributeError):
        return lines
    mode = health.get("mode")
    if mode and mode != "sending":
        lines.append(f"sending is held: {mode}" + (
            f", for {resume_in:.0f} s more" if resume_in > 0 else ", until the next probe"))
    if credits_in > 0:
        lines.append(f"successes are held: insufficient_credits, for {credits_in:.0f} s more "
                     "(failure reports still flow)")
    return lines


def key_problem(exc: KeyStoreError) -> str:
    """A key-store error with what to do about it (the key itself is never in it)."""
    if isinstance(exc, InvalidApiKey):
        if exc.source == "environment":
            return f"{exc}. Correct {ENV_VAR}, or unset it and run 'massugc-logging key set'"
        if exc.source in ("file", "keyring"):
            return f"{exc}. Store the right key with 'massugc-logging key set'"
    return str(exc)



def _cloud_specs(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    handlers = config.get("handlers") or {}
    return [(name, spec) for name, spec in handlers.items()
            if isinstance(spec, dict) and str(spec.get("class", "")).endswith("CloudHandler")]


def _check_cloud_handler(name: str, spec: dict[str, Any], written: Any, probe: bool,
                         problems: list[str], notes: list[str],
                         ca_bundle: Optional[str] = None) -> None:
    """Check one cloud handler's arguments, URL, key and (if ``probe``) the API.

    ``written`` is the handler's mapping as written in the file, before expansion.
    """
    kwargs = {k: v for k, v in spec.items() if k not in ("class", "level", "formatter",
                                                         "filters", ".")}
    try:
        inspect.signature(CloudHandler).bind(**kwargs)
    except TypeError as exc:
        problems.append(f"handler {name!r}: {exc}; remove or correct it (see the "
                        "CloudHandler arguments in docs/configuration.md)")
    literal = written.get("api_key") if isinstance(written, dict) else None
    if isinstance(literal, str) and literal.strip() and "${" not in literal:
        problems.append(f"handler {name!r}: the API key is written in the configuration; "
                        f"remove api_key and use {ENV_VAR} or 'massugc-logging key set'")
    url = str(kwargs.get("api_url") or os.environ.get("MASSUGC_API_URL") or PRODUCTION_API_URL)
    try:
        check_api_url(url, allow_insecure_http=bool(kwargs.get("allow_insecure_http")))
        notes.append(f"handler {name!r}: API {url}")
    except InsecureURLError as exc:
        problems.append(f"handler {name!r}: insecure API URL: {exc}")
        return
    except TransportError as exc:
        problems.append(f"handler {name!r}: {exc}; correct api_url (or MASSUGC_API_URL)")
        return
    try:
        key, source = KeyStore().resolve(kwargs.get("api_key"))
    except KeyStoreError as exc:
        problems.append(f"handler {name!r}: {key_problem(exc)}")
        key, source = None, "invalid"
    if key is None and source != "invalid":
        problems.append(f"handler {name!r}: {no_key_problem(url)}")
    elif key is not None:
        notes.append(f"handler {name!r}: API key {key.masked} from {source}")
    given = ca_bundle or kwargs.get("ca_bundle")
    untrusted = ca_bundle_problem(given, "--ca-bundle" if ca_bundle else "ca_bundle on the handler")
    if untrusted is not None:
        problems.append(f"handler {name!r}: {untrusted}")
        return
    try:
        transport = Transport(url, None, timeout=(3.05, 10.0),
                              allow_insecure_http=bool(kwargs.get("allow_insecure_http")),
                              ca_bundle=given)
    except TransportError as exc:
        problems.append(f"handler {name!r}: {exc}")
        return
    notes.append(f"handler {name!r}: trusting {transport.trust.description}")
    notes.extend(f"handler {name!r}: {line}"
                 for line in remembered_state(kwargs.get("spool_path", "default"),
                                              transport.api_url))
    if probe:
        outcome = transport.probe()
        if outcome.kind is OutcomeKind.UNTRUSTED:
            problems.append(f"handler {name!r}: {outcome.reason}; {TLS_FIX}")
        elif not outcome.delivered:
            problems.append(f"handler {name!r}: the API at {url} is unreachable "
                            f"({outcome.reason}); check the network and api_url, or pass "
                            "--no-network to skip this probe")
        else:
            notes.append(f"handler {name!r}: API reachable")
    transport.close()


def _dry_run(config: dict[str, Any]) -> Optional[str]:
    """Apply ``config`` with inert stand-ins for cloud and file handlers; the error, if any.

    Nothing is sent, no spool or log file is touched. It runs in this process's
    logging (the command line has nothing else to log), and puts back the
    handlers of the root logger.
    """
    dry = copy.deepcopy(config)
    for name, _spec in _cloud_specs(dry):
        dry["handlers"][name] = {"class": "logging.NullHandler"}
    for spec in (dry.get("handlers") or {}).values():
        if isinstance(spec, dict) and "filename" in spec:
            spec["class"] = "logging.NullHandler"
            for key in ("filename", "maxBytes", "backupCount", "encoding", "mode", "when",
                        "interval", "delay", "utc", "atTime", "errors"):
                spec.pop(key, None)
    saved_root = logging.root.handlers[:], logging.root.level
    try:
        logging.config.dictConfig(dry)
    except Exception as exc:
        return (f"dictConfig rejects the configuration: {describe_dictconfig_error(exc)}; "
                "check the class names, formatter and handler names and arguments there")
    finally:
        logging.root.handlers[:], logging.root.level = saved_root
    return None


