"""Signals belong to the app's main thread, not to this package's threads.

The kernel may deliver a process-wide signal (SIGTERM from the desktop shell,
SIGINT, SIGUSR1) to any thread that does not block it. Python runs its signal
handlers on the main thread, but only once that thread runs again: if the
signal lands on one of our threads while the main thread sleeps in
``time.sleep`` or waits on a socket, the app's handler (or ``flush_on_sigterm``)
runs only when that wait ends, which may be never. Each thread of this package
blocks those signals as it starts, so they reach the main thread at once.
"""

from __future__ import annotations

import contextlib
import signal

_FOR_THE_APP = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")


def leave_signals_to_the_main_thread() -> None:
    """Block the app's signals in the calling thread (where the platform can)."""
    if not hasattr(signal, "pthread_sigmask"):
        return  # Windows: signals are not delivered to arbitrary threads
    wanted = {getattr(signal, name) for name in _FOR_THE_APP if hasattr(signal, name)}
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
