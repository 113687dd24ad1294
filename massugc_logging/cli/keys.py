"""``key set|show|remove|migrate``: the API key in the key store."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from massugc_logging.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    Output,
    _key_problem,
)
from massugc_logging.keystore import ENV_VAR, InvalidApiKey, KeyStore, KeyStoreError


def _read_secret(out: Output) -> str:
    if sys.stdin.isatty():
        return getpass.getpass("MassUGC API key (input hidden): ")
    return sys.stdin.readline().strip()


def _key_set(store: KeyStore, out: Output) -> int:
    secret = _read_secret(out)
    if not secret:
        out.problem("no key given: type it when asked, or pipe it in "
                    "(massugc-logging key set < file-with-the-key)")
        return EXIT_PROBLEM
    try:
        where = store.store(secret)
    except InvalidApiKey as exc:
        reason = str(exc).split(": ", 1)[-1]
        out.problem(f"that is not a MassUGC API key: {reason}. Copy the whole key (it starts "
                    "with 'massugc_') and run 'massugc-logging key set' again")
        return EXIT_PROBLEM
    out.say(f"stored the API key in {where}")
    if os.environ.get(ENV_VAR, "").strip():
        out.say(f"note: {ENV_VAR} is set in this environment and is used before the stored "
                "key; unset it to use the stored one")
    return EXIT_OK


def cmd_key(args: argparse.Namespace, out: Output) -> int:
    """Manage the stored API key; it is never printed in full."""

    store = KeyStore(legacy_path=Path(args.legacy_path) if args.legacy_path else None)
    try:
        if args.action == "set":
            return _key_set(store, out)
        if args.action == "show":
            key, source = store.resolve()
            if key is None:
                out.problem("no API key found (environment, keyring, key file or legacy file); "
                            "run 'massugc-logging key set'")
                return EXIT_PROBLEM
            out.say(f"{key.masked}  (from {source})")
        elif args.action == "remove":
            removed = store.remove(legacy=args.legacy)
            out.say("removed: " + (", ".join(removed) if removed else "nothing was stored"))
            if os.environ.get(ENV_VAR, "").strip():
                out.say(f"note: {ENV_VAR} is still set in this environment; unset it too")
        elif args.action == "migrate":
            moved = store.migrate_legacy()
            out.say(f"copied the app's key from {store.legacy_file} into the key store; the "
                    "app's file stays, and a key changed or removed there is followed"
                    if moved else "nothing to migrate: the key store already holds the newest key"
                    if store.legacy_file.exists() else
                    f"nothing to migrate: no key file of the app at {store.legacy_file}")
            if args.remove_legacy:
                out.say(f"note: {store.legacy_file} is kept: the desktop app reads it to know "
                        "it has a key (remove a key with 'massugc-logging key remove --legacy')")
    except KeyStoreError as exc:
        out.problem(_key_problem(exc))
        return EXIT_PROBLEM
    return EXIT_OK


# -- parser -------------------------------------------------------------------------
