"""Whether the process is on its way out, for handlers closing at exit.

``logging.shutdown()`` runs from an ``atexit`` hook that :mod:`logging`
registered when it was imported, before this module was; ``atexit`` runs hooks
in reverse order, so the hook here runs first and a handler closed by that
shutdown knows the process is ending. The SIGTERM flush says so too, and so
does :func:`shutdown`, for an app that stops on its own terms. A handler closed
while the process carries on (a reconfiguration) sees False: the jobs still
running then are not reported as shut down, since they may well finish.
"""

from __future__ import annotations

import atexit
import logging

_state = {"exiting": False}


def mark_exiting() -> None:
    """The process is ending: handlers closed from now on close for good."""
    _state["exiting"] = True


def process_is_exiting() -> bool:
    """True once the interpreter has begun to exit (or a SIGTERM flush has begun)."""
    return _state["exiting"]


atexit.register(mark_exiting)


def shutdown() -> None:
    """``logging.shutdown()`` for an app that is about to exit on its own terms (a
    ``/shutdown`` route, its own SIGTERM handler): every handler delivers what it can
    within its ``shutdown_timeout``, and jobs still running are reported as failures
    ("the app was shut down while the job was running") in this run or the next."""
    mark_exiting()
    logging.shutdown()
