"""The intake: the thread between ``emit`` and the outbox.

``emit`` hands each accepted record to :meth:`Intake.accept`, which only
counts it and puts it on a :class:`queue.SimpleQueue`. That queue's ``put`` is
re-entrant (CPython documents it as safe to call from ``__del__`` and signal
handlers) and the count is an :class:`~massugc_logging.counters.AtomicCounter`,
so a signal handler that logs while the app thread is inside ``emit`` can
neither deadlock it nor lose a count. No lock is taken on the app thread.

The intake thread takes batches off the queue, builds each event (payload and
redaction, off the app thread) and writes the batch ahead to the outbox in one
transaction. Every accepted item is counted until it is written or counted as
dropped, so ``stats()`` never under-reports what is on its way.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

from massugc_logging._signals import start_leaving_signals_to_the_main_thread
from massugc_logging.counters import AtomicCounter, Counters
from massugc_logging.diagnostics import Diagnostics
from massugc_logging.spool import Outbox

#: Items taken off the queue at once; a burst is written in few transactions.
BATCH = 256

#: What ``build`` makes of a queued item: ``(event_id, body, created)``.
Entry = tuple[str, bytes, float]

_STOP = object()


class Intake:
    """A bounded queue and the one thread that drains it into the outbox.

    Args:
        outbox: where built events are written ahead of delivery.
        build: turns one queued item into an :data:`Entry` (may raise: counted).
        capacity: the most items waiting at once; ``accept`` refuses beyond it.
        counters, diagnostics: where outcomes are counted and problems said.
        on_written: called after each batch is in the outbox (to wake delivery).
        clock: wall-clock seconds, the spool's ``spooled_at``.
    """

    def __init__(
        self,
        outbox: Outbox,
        build: Callable[[Any], Entry],
        *,
        capacity: int,
        counters: Counters,
        diagnostics: Diagnostics,
        on_written: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self._build = build
        self.capacity = max(1, int(capacity))
        self._counters = counters
        self._diagnostics = diagnostics
        self._on_written = on_written
        self._clock = clock
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._progress = threading.Condition(threading.Lock())
        self._accepted = AtomicCounter()
        #: Items written or dropped; changed by the intake thread (and stop) only.
        self._finished = 0
        self._abandon = False
        self._close_outbox_on_exit = False
        self._thread: Optional[threading.Thread] = None

    # -- the app thread ---------------------------------------------------------

    def accept(self, item: Any) -> bool:
        """Queue ``item`` unless the queue is full; never blocks, safe to re-enter.

        The bound is on items queued and not yet taken by the intake thread, read
        without a lock: threads racing at the very edge may overshoot it by a few.
        """
        if self._queue.qsize() >= self.capacity:
            return False
        self._accepted.increment()
        self._queue.put(item)
        return True

    @property
    def accepted(self) -> int:
        """Items accepted so far."""
        return self._accepted.value

    @property
    def waiting(self) -> int:
        """Items accepted and not yet written or dropped (queued or in the thread's hands)."""
        return max(0, self._accepted.value - self._finished)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Start the intake thread."""
        thread = threading.Thread(target=self._run, name="massugc-logging-intake", daemon=True)
        start_leaving_signals_to_the_main_thread(thread)
        self._thread = thread

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The intake thread, if started."""
        return self._thread

    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def wait_written(self, count: int, deadline: float) -> bool:
        """Wait until the first ``count`` accepted items are written (or dropped);
        ``deadline`` is in :func:`time.monotonic` seconds."""
        with self._progress:
            while self._finished < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.alive():
                    return False
                self._progress.wait(remaining)
            return True

    def stop(self, deadline: float) -> bool:
        """Write out everything accepted, then stop the thread (by ``deadline``, monotonic).

        What is still queued at the deadline is counted as dropped (``shutdown``),
        so every accepted item ends written or counted. Returns True when the
        thread has stopped; False when it is still finishing a write (it then
        stops by itself right after).
        """
        if self._thread is None:
            return True
        self._queue.put(_STOP)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abandon = True
            self._thread.join(0.05)
        leftover = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                leftover += 1
        if leftover:
            self._counters.drop("shutdown", leftover)
            self._finish(leftover)
            self._diagnostics.say_once(
                "drop:shutdown", logging.WARNING,
                "CloudHandler could not write %d queued event(s) to the spool before its "
                "shutdown deadline; they are counted as dropped.", leftover)
        return not self._thread.is_alive()

    def close_outbox_on_exit(self) -> None:
        """The thread outlived ``stop``: let it close the outbox when its last write ends."""
        self._close_outbox_on_exit = True
        if not self.alive():
            self.outbox.close()

    def after_fork_in_child(self) -> None:
        """In a forked child: the parent's queue and thread are not ours."""
        self._init_runtime()

    # -- the intake thread --------------------------------------------------------

    def _run(self) -> None:
        try:
            self._drain()
        finally:
            if self._close_outbox_on_exit:
                self.outbox.close()

    def _drain(self) -> None:
        q = self._queue
        while not self._abandon:
            batch = [q.get()]
            while batch[-1] is not _STOP and len(batch) < BATCH:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is _STOP
            if stop:
                batch.pop()
            if batch:
                self._write(batch)
            if stop:
                return

    def _write(self, items: Sequence[Any]) -> None:
        """Build a batch and write it ahead to the outbox; never raises."""
        entries: list[Entry] = []
        for item in items:
            try:
                entries.append(self._build(item))
            except Exception as exc:
                self._counters.drop("internal_error")
                self._diagnostics.say_once("intake:error", logging.ERROR,
                                           "CloudHandler could not process an event: %s",
                                           type(exc).__name__)
        try:
            if entries:
                result = self.outbox.add(entries, self._clock())
                self._counters.add("spooled", len(result.row_ids))
                if result.dropped_full:
                    self._counters.drop("spool_full", result.dropped_full)
                    self._diagnostics.say_once(
                        "drop:spool_full", logging.WARNING,
                        "CloudHandler's spool is full: the oldest events are dropped to make "
                        "room. The count is in stats()['dropped'].")
        except Exception as exc:
            self._counters.drop("internal_error", len(entries))
            self._diagnostics.say_once("intake:spool", logging.ERROR,
                                       "CloudHandler could not keep events: %s",
                                       type(exc).__name__)
        self._finish(len(items))
        with contextlib.suppress(Exception):  # waking delivery is best effort
            self._on_written()

    def _finish(self, n: int) -> None:
        with self._progress:
            self._finished += n
            self._progress.notify_all()
