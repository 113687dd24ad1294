"""The intake: the thread between ``emit`` and the outbox.

``emit`` hands each accepted record to :meth:`Intake.accept`, which only
counts it and puts it on a :class:`queue.SimpleQueue`. That queue's ``put`` is
re-entrant (CPython documents it as safe to call from ``__del__`` and signal
handlers) and the count is an :class:`~massugc_logging.pipeline.counters.AtomicCounter`,
so a signal handler that logs while the app thread is inside ``emit`` can
neither deadlock it nor lose a count. No lock is taken on the app thread.

The intake thread takes batches off the queue, builds each event (payload and
redaction, off the app thread) and writes the batch ahead to the outbox in one
transaction, with the jobs that started (kept as running) and the jobs whose
outcome is in the batch (no longer running). Before the first batch it runs
``on_start`` (the handler recovers jobs left running by a process that is gone).
Every accepted item is counted until it is written or counted as dropped, so
``stats()`` never under-reports what is on its way.

While another program keeps the spool file locked, the intake holds its batch and
writes it again every :data:`BUSY_RETRY` seconds; new events wait in the queue,
whose ``capacity`` bounds them (beyond it, ``emit`` drops and counts).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from massugc_logging.diagnostics import Diagnostics, Topic
from massugc_logging.pipeline._signals import start_leaving_signals_to_the_main_thread
from massugc_logging.pipeline.counters import AtomicCounter, Counters

if TYPE_CHECKING:
    from massugc_logging.pipeline.spool import Outbox, RunningJob, Write

#: Items taken off the queue at once; a burst is written in few transactions.
BATCH = 256
#: While another program keeps the spool file locked, a batch is written again this often.
BUSY_RETRY = 0.25

#: An event ready to spool: ``(event_id, body, created)``.
Entry = tuple[str, bytes, float]


@dataclass(frozen=True)
class Prepared:
    """What ``build`` makes of a queued item: an event to spool, a job that started, and
    the token of a job whose outcome this is (any of them may be absent)."""

    event: Optional[Entry] = None
    started: Optional[RunningJob] = None
    finished: Optional[str] = None

#: The least time ``stop`` gives the thread to take the stop and run ``then``.
_STOP_GRACE = 0.2


class _Begin:
    """Start now, without waiting out the start delay (a flush is waiting)."""


class _Stop:
    """The last item: stop after writing what came before, then run ``then``."""

    def __init__(self, then: Optional[Callable[[], None]]) -> None:
        self.then = then


class Intake:
    """A bounded queue and the one thread that drains it into the outbox.

    Args:
        outbox: where built events are written ahead of delivery (None: given by
            ``on_start``, through :meth:`use_outbox`, before the first write).
        build: turns one queued item into a :class:`Prepared` (may raise: counted).
        capacity: the most items waiting at once; ``accept`` refuses beyond it.
        counters, diagnostics: where outcomes are counted and problems said.
        on_written: called after each batch is in the outbox (to wake delivery).
        on_start: run on the intake thread before it takes the first item.
        start_delay: how long ``on_start`` waits for a first item before it runs anyway
            (the app's own start-up goes first).
        clock: wall-clock seconds, the spool's ``spooled_at``.
    """

    def __init__(
        self,
        outbox: Optional[Outbox],
        build: Callable[[Any], Prepared],
        *,
        capacity: int,
        counters: Counters,
        diagnostics: Diagnostics,
        on_written: Callable[[], None],
        on_start: Optional[Callable[[], None]] = None,
        start_delay: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self._build = build
        self._on_start = on_start
        self._start_delay = start_delay
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
        #: True once ``on_start`` has run (set by the intake thread, under ``_progress``).
        self._begun = False
        self._hurried = False
        self._abandon = False
        #: Set to cut short the intake's wait between tries of a locked file.
        self._resting = threading.Event()
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

    def begin_now(self, deadline: float) -> bool:
        """Cut the start delay short and wait (by ``deadline``, monotonic) until
        ``on_start`` has run; True once it has."""
        with self._progress:
            while not self._begun:
                if not self._hurried:
                    self._hurried = True
                    self._queue.put(_Begin())
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.alive():
                    return False
                self._progress.wait(remaining)
            return True

    def stop(self, deadline: float, then: Optional[Callable[[], None]] = None) -> bool:
        """Write out everything accepted, run ``then`` on the intake thread, then stop the
        thread (by ``deadline``, monotonic).

        What is still queued at the deadline is counted as dropped (``shutdown``),
        so every accepted item ends written or counted. Returns True when the
        thread has stopped; False when it is still finishing a write (it then
        stops by itself right after).
        """
        if self._thread is None:
            return True
        self._queue.put(_Stop(then))
        # At least a moment, even when the deadline is spent: an idle thread takes the
        # stop at once and runs ``then`` (one transaction).
        self._thread.join(max(_STOP_GRACE, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abandon = True
            self._resting.set()
            self._thread.join(0.05)
        leftover = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, (_Stop, _Begin)):
                leftover += 1
        if leftover:
            self._counters.drop("shutdown", leftover)
            self._finish(leftover)
            self._diagnostics.say_once(
                Topic.DROP_SHUTDOWN, logging.WARNING,
                "CloudHandler could not write %d queued event(s) to the spool before its "
                "shutdown deadline; they are counted as dropped.", leftover)
        return not self._thread.is_alive()

    def use_outbox(self, outbox: Outbox) -> None:
        """Write to ``outbox`` from now on (made by ``on_start``, on the intake thread)."""
        self.outbox = outbox

    def close_outbox_on_exit(self) -> None:
        """The thread outlived ``stop``: let it close the outbox when its last write ends."""
        self._close_outbox_on_exit = True
        if not self.alive() and self.outbox is not None:
            self.outbox.close()

    # -- the intake thread --------------------------------------------------------

    def _run(self) -> None:
        try:
            first = None
            if self._on_start is not None:
                # The app is starting too: its start-up is not slowed by ours (they would
                # share the interpreter lock) unless it logs, flushes or closes first.
                with contextlib.suppress(queue.Empty):
                    first = self._queue.get(timeout=self._start_delay)
                try:
                    self._on_start()
                except Exception as exc:  # a start-up chore must never stop the intake
                    self._diagnostics.say_once(Topic.INTAKE_START, logging.ERROR,
                                               "CloudHandler could not finish starting: %s",
                                               type(exc).__name__)
            with self._progress:
                self._begun = True
                self._progress.notify_all()
            self._drain(None if isinstance(first, _Begin) else first)
        finally:
            if self._close_outbox_on_exit and self.outbox is not None:
                self.outbox.close()

    def _drain(self, first: Any = None) -> None:
        q = self._queue
        while not self._abandon:
            batch = [q.get() if first is None else first]
            first = None
            while not isinstance(batch[-1], _Stop) and len(batch) < BATCH:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            stop = batch.pop() if isinstance(batch[-1], _Stop) else None
            batch = [item for item in batch if not isinstance(item, _Begin)]
            if batch:
                self._write(batch)
            if stop is not None:
                if stop.then is not None and not self._abandon:
                    try:
                        stop.then()
                    except Exception as exc:
                        self._diagnostics.say_once(Topic.INTAKE_STOP, logging.ERROR,
                                                   "CloudHandler could not finish stopping: "
                                                   "%s", type(exc).__name__)
                return

    def _write(self, items: Sequence[Any]) -> None:
        """Build a batch and write it ahead to the outbox; never raises."""
        events: list[Entry] = []
        started: list[RunningJob] = []
        finished: list[str] = []
        for item in items:
            try:
                prepared = self._build(item)
            except Exception as exc:
                self._counters.drop("internal_error")
                self._diagnostics.say_once(Topic.INTAKE_ERROR, logging.ERROR,
                                           "CloudHandler could not process an event: %s",
                                           type(exc).__name__)
                continue
            if prepared.event is not None:
                events.append(prepared.event)
            if prepared.started is not None:
                started.append(prepared.started)
            if prepared.finished is not None:
                finished.append(prepared.finished)
        from massugc_logging.pipeline.spool import Write  # noqa: PLC0415 - on this thread

        write = Write(tuple(events), tuple(started), tuple(finished))
        if write:
            self._write_out(write)
        self._finish(len(items))
        with contextlib.suppress(Exception):  # waking delivery is best effort
            self._on_written()

    def _write_out(self, write: Write) -> None:
        """Write one batch to the outbox; while another program keeps the file locked,
        hold it and write it again a moment later (new events wait in the queue, which
        bounds them); never raises."""
        from massugc_logging.pipeline.spool import SpoolError  # noqa: PLC0415 - on this thread

        busy = False
        while True:
            try:
                if self.outbox is None:
                    raise RuntimeError("no outbox yet: on_start did not give one")
                result = self.outbox.write(write, self._clock())
            except SpoolError as exc:
                if exc.busy and not self._abandon:
                    if not busy:
                        busy = True
                        self._diagnostics.count("spool_busy")
                        self._diagnostics.say_once(
                            Topic.SPOOL_BUSY, logging.WARNING,
                            "CloudHandler's spool file is locked by another program (%s). "
                            "Events wait in the handler's queue (up to queue_size) and are "
                            "written as soon as it is free.", exc)
                    self._resting.wait(BUSY_RETRY)
                    continue
                self._lost(write, exc)
                return
            except Exception as exc:
                self._lost(write, exc)
                return
            break
        if busy:
            self._diagnostics.forget(Topic.SPOOL_BUSY)
        self._counters.add("spooled", len(result.row_ids))
        if result.dropped_full:
            self._counters.drop("spool_full", result.dropped_full)
            self._diagnostics.say_once(
                Topic.DROP_SPOOL_FULL, logging.WARNING,
                "CloudHandler's spool is full: the oldest events are dropped to make "
                "room. The count is in stats()['dropped'].")

    def _lost(self, write: Write, exc: Exception) -> None:
        """A batch that could not be written: at the shutdown deadline (the file still
        locked), or for a fault of the handler's own."""
        if self._abandon:
            self._counters.drop("shutdown", len(write.events))
            self._diagnostics.say_once(
                Topic.DROP_SHUTDOWN, logging.WARNING,
                "CloudHandler could not write %d queued event(s) to the spool before its "
                "shutdown deadline; they are counted as dropped.", len(write.events))
            return
        self._counters.drop("internal_error", len(write.events))
        self._diagnostics.say_once(Topic.INTAKE_SPOOL, logging.ERROR,
                                   "CloudHandler could not keep events: %s",
                                   type(exc).__name__)

    def _finish(self, n: int) -> None:
        with self._progress:
            self._finished += n
            self._progress.notify_all()
