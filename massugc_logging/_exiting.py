"""Whether the process is on its way out, for handlers closing at exit.

``logging.shutdown()`` runs from an ``atexit`` hook that :mod:`logging`
registered when it was imported, before this module was; ``atexit`` runs hooks
in reverse order, so the hook here runs first and a handler closed by that
shutdown knows the process is ending. The SIGTERM flush says so too. A handler
closed while the process carries on (a reconfiguration) sees False.
"""

from __future__ import annotations

import atexit

_state = {"exiting": False}


def mark_exiting() -> None:
    """The process is ending: handlers closed from now on close for good."""
    _state["exiting"] = True


def process_is_exiting() -> bool:
    """True once the interpreter has begun to exit (or a SIGTERM flush has begun)."""
    return _state["exiting"]


atexit.register(mark_exiting)
