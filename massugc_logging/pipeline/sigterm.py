"""Flush on SIGTERM: the desktop shell stops the backend with SIGTERM.

With Python's default disposition a SIGTERM ends the process at once, without
``atexit`` and without ``logging.shutdown()``, so events still in the in-memory
queue are lost. :func:`install_sigterm_flush` puts a Python handler in its place
that runs ``logging.shutdown()`` (every handler flushes and closes: the cloud
handler writes what is queued to the spool and delivers what it can within its
``shutdown_timeout``) and then ends the process as the default disposition
would, so the parent still sees a death by SIGTERM.

It is installed only where that is safe and expected: on the main thread (the
only one that may set signal handlers) and only while SIGTERM has its default
disposition, so a handler the app installed is never replaced.

Like every Python signal handler it runs on the main thread, between bytecodes:
a SIGTERM that lands in the instant between two calls, just before the main
thread blocks in a long C call (``time.sleep(60)``), is handled when that call
returns. Apps whose main thread waits in short steps (an event loop, a server's
poll, ``Event.wait`` with a timeout) see it at once; this package's threads
block the signal so that it always reaches the main thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Optional

from massugc_logging._exiting import mark_exiting
from massugc_logging.diagnostics import Diagnostics, Topic

#: The longest shutdown_timeout of the handlers that asked for flush_on_sigterm.
_budget = [0.0]
#: Beyond the handlers' own deadlines, how long the flush may take before the process
#: ends anyway: exit on SIGTERM stays bounded whatever happens.
_GRACE = 3.0


def install_sigterm_flush(diagnostics: Diagnostics, shutdown_timeout: float = 5.0) -> bool:
    """Install the flushing SIGTERM handler if SIGTERM is at its default; True if it is
    (now or already) ours."""
    _budget[0] = max(_budget[0], float(shutdown_timeout))
    sigterm = getattr(signal, "SIGTERM", None)
    if sigterm is None:
        return False
    current = signal.getsignal(sigterm)
    if current is _flush_then_die:
        return True
    if threading.current_thread() is not threading.main_thread():
        diagnostics.say_once(Topic.SIGTERM_THREAD, logging.WARNING,
                             "CloudHandler: flush_on_sigterm needs the handler to be made on "
                             "the main thread; SIGTERM keeps its current behaviour.")
        return False
    if current is not signal.SIG_DFL:
        diagnostics.say_once(Topic.SIGTERM_TAKEN, logging.INFO,
                             "CloudHandler: the app has its own SIGTERM handler; "
                             "flush_on_sigterm leaves it alone (call massugc_logging.shutdown() "
                             "in it).")
        return False
    signal.signal(sigterm, _flush_then_die)
    return True


def _flush_then_die(signum: int, frame: Optional[FrameType]) -> None:
    """Flush and close every logging handler, then die of the same signal.

    The default disposition comes back first, so a second SIGTERM (an impatient
    shell) ends the process at once; a timer sends one itself should the flush
    overrun its deadlines (writing and sending take up to twice the longest
    ``shutdown_timeout``).
    """
    signal.signal(signum, signal.SIG_DFL)
    mark_exiting()
    watchdog = threading.Timer(2 * _budget[0] + _GRACE, os.kill, (os.getpid(), signum))
    watchdog.daemon = True
    watchdog.start()
    try:
        logging.shutdown()
    finally:
        os.kill(os.getpid(), signum)
