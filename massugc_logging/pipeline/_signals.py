"""Signals belong to the app's main thread, not to this package's threads.

The kernel may deliver a process-wide signal (SIGTERM from the desktop shell,
SIGINT, SIGUSR1) to any thread that does not block it. Python runs its signal
handlers on the main thread, but only once that thread runs again: if the
signal lands on one of our threads while the main thread sleeps in
``time.sleep`` or waits on a socket, the app's handler (or ``flush_on_sigterm``)
runs only when that wait ends, which may be never. Each thread of this package
is started with those signals blocked, so they reach the main thread at once.

The block is in place before the thread exists (a new thread inherits the
mask of the thread that starts it), not set by the thread once it runs: on a
loaded machine a thread may wait a long time for its first slice, and a
signal landing on it in that time would be held up just the same.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

_FOR_THE_APP = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")


@contextlib.contextmanager
def threads_born_without_app_signals() -> Iterator[None]:
    """Within the block, threads started by the calling thread are born with the app's
    signals blocked (where the platform can); the caller's own mask comes back after."""
    if sys.platform == "win32":
        yield  # Windows: signals are not delivered to arbitrary threads
    else:
        with _blocked(_FOR_THE_APP):
            yield


if sys.platform != "win32":

    @contextlib.contextmanager
    def _blocked(names: tuple[str, ...]) -> Iterator[None]:
        """Block the named signals on the calling thread within the block (where it can)."""
        wanted = {getattr(signal, name) for name in names if hasattr(signal, name)}
        try:
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
        except (OSError, ValueError, AttributeError):
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_leaving_signals_to_the_main_thread(thread: threading.Thread) -> None:
    """Start ``thread`` with the app's signals blocked in it."""
    with threads_born_without_app_signals():
        thread.start()
