"""The outbox the handler uses: the SQLite spool, with memory standing in while it cannot.

The fall-back to memory happens here and nowhere else. A file that fails is
not given up for the rest of the run:

- **busy** (another program holds a write lock past the busy timeout: a
  backup, an antivirus scan): events go to memory meanwhile, every later write
  tries the file again with a short wait, and the first one that succeeds moves
  the memory backlog back into the file;
- **broken** (corrupt, read-only, disk full): the file is tried again after a
  growing pause (1 s, doubling to a minute), reopened if need be;
- **gone** (deleted, moved or replaced while in use, by a cleaner tool or a
  user: noticed at the next write, by the file's identity): what the old file
  still holds for this handler is read back through its open connection into
  memory, and the file is recreated at the next try.

No write waits long for a lock: the handler's spool gives up after a quarter
of a second and memory takes the events meanwhile, so no thread that
``close()`` waits for is held for seconds by another program's lock. The file
is opened by the intake thread (``start``), never by the thread that made the
handler.

Row ids of the memory spool lie far above SQLite's, so outcomes find their way
back to the store that holds the event; an event moved to the file while the
engine held it keeps its memory id there until its outcome is in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

from massugc_logging.diagnostics import Diagnostics, Topic
from massugc_logging.pipeline.spool import (
    _MEMORY_ID_BASE,
    DEFAULT_BUSY_TIMEOUT,
    AddResult,
    DeadLetter,
    MemorySpool,
    Restamp,
    Settlement,
    Spool,
    SpooledEvent,
    SpoolError,
    Write,
)

#: How long a write of the handler's spool waits for another program's lock before
#: memory takes the events (our own transactions take milliseconds).
HANDLER_BUSY_TIMEOUT = 0.25
#: While the file is busy, each write waits this long for the lock before using memory.
BUSY_RETRY_WAIT = 0.2
#: While the file is busy, delivery (leases, outcomes) tries it again at most this often:
#: the writes of new events find out first, and delivery never queues behind the lock.
BUSY_DELIVERY_RETRY = 1.0
_BROKEN_RETRY_FIRST = 1.0
#: At close, how long moving the memory backlog to a busy file may wait for its lock.
_CLOSE_WAIT = 0.25
_BROKEN_RETRY_CAP = 60.0


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    """Run a method under the outbox's lock: the intake, the delivery workers and
    ``stats()`` use one outbox from three threads."""
    @functools.wraps(method)
    def run(self: FallbackOutbox, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)
    return run  # type: ignore[return-value]


class FallbackOutbox:
    """A :class:`~massugc_logging.pipeline.spool.Spool` file with a memory stand-in.

    Args:
        open_file: opens the spool file (raises :class:`SpoolError` when it cannot).
        memory: where events wait while the file cannot be used.
        on_problem: told of each switch to memory (to say so once, locally).
        on_recovered: told when the file is in use again, with how many events moved back.
        on_dropped: told of events lost, by reason (the file's bound; memory at close).
        clock: monotonic seconds, for the retry pauses.
        open_now: open the file here; else memory takes the events until :meth:`start`.
        busy_timeout: how long the file's writes wait for another program's lock.
    """

    def __init__(
        self,
        open_file: Callable[[], Spool],
        memory: MemorySpool,
        *,
        path: Path,
        on_problem: Callable[[SpoolError], None],
        on_recovered: Callable[[int], None],
        on_dropped: Callable[[str, int], None] = lambda reason, n: None,
        clock: Callable[[], float] = time.monotonic,
        open_now: bool = True,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        self.path: Optional[Path] = path
        self._open_file = open_file
        self._memory = memory
        self._on_problem = on_problem
        self._on_recovered = on_recovered
        self._on_dropped = on_dropped
        self._clock = clock
        self._lock = threading.RLock()
        #: Outcomes the file could not record yet; written with the next ones.
        self._unsettled = Settlement()
        #: Jobs that finished while memory stood in: their running rows in the file go
        #: when it is back, so they are never reported as abandoned.
        self._finished_meanwhile: list[str] = []
        self._file: Optional[Spool] = None
        self._degraded = False
        self._busy = False
        self._retry_at = 0.0
        self._pause = _BROKEN_RETRY_FIRST
        self._leased_from_memory: set[int] = set()
        #: File row ids handed out by lease and not yet settled.
        self._leased_from_file: set[int] = set()
        #: Row ids of a file that was deleted or replaced: their outcomes are not written to
        #: its successor (their events were read back into memory).
        self._orphans: set[int] = set()
        #: Memory row id -> file row id, for events moved while the engine held them.
        self._moved: dict[int, int] = {}
        self._busy_timeout = busy_timeout
        self._started = open_now
        if open_now:
            self._open()

    def _open(self) -> None:
        try:
            self._file = self._open_file()
        except SpoolError as exc:
            self._degrade(exc)

    @_locked
    def start(self, now: float) -> None:
        """Open the file (on the intake thread) and move to it what memory took meanwhile."""
        if self._started:
            return
        self._started = True
        self._open()
        if self._file is not None:
            self._degraded = True  # what memory holds moves to the file now
            try:
                self._recovered(self._file, now, quiet=True)
            except SpoolError as exc:
                self._degrade(exc)

    def __repr__(self) -> str:
        where = "memory" if self._degraded else "file"
        return f"<FallbackOutbox path={str(self.path)!r} using={where}>"

    @property
    def using_memory(self) -> bool:
        """True while events go to memory because the file cannot be used."""
        return self._degraded

    # -- switching ------------------------------------------------------------

    def _degrade(self, exc: SpoolError) -> None:
        """Use memory until the file can be used again."""
        first = not self._degraded
        self._degraded = True
        self._busy = exc.busy
        if exc.gone and self._file is not None:
            self._salvage(self._file)
        if exc.busy:
            self._retry_at = self._clock() + BUSY_DELIVERY_RETRY
            if self._file is not None:
                self._file.set_busy_timeout(BUSY_RETRY_WAIT)
        else:
            self._retry_at = self._clock() + self._pause
            self._pause = min(_BROKEN_RETRY_CAP, self._pause * 2)
            if self._file is not None and self._file_needs_reopening():
                self._file.close()
                self._file = None
        if first:
            self._on_problem(exc)

    def _salvage(self, file: Spool) -> None:
        """The file is gone: read back what it held for this handler into memory, and
        close it (the next try creates a new one)."""
        events, jobs = file.salvage()
        self._memory.keep(events, jobs)
        self._orphans |= self._leased_from_file
        self._leased_from_file = set()
        self._unsettled = Settlement()  # its rows are in memory now, under new ids
        self._moved = {}
        file.close()
        self._file = None

    def _file_needs_reopening(self) -> bool:
        return self.path is not None and (not self.path.exists() or (
            self._file is not None and not self._file.still_there()))

    def _usable_file(self, *, writing: bool = False) -> Optional[Spool]:
        """The file, if it is in use or due for another try (reopened if need be).

        While it is busy, every write of new events tries it again (with a short wait:
        the first write after the lock goes lands in the file), and delivery's own
        calls try it at most every :data:`BUSY_DELIVERY_RETRY` seconds.
        """
        if not self._started:
            return None
        if not self._degraded:
            return self._file
        if not (writing and self._busy) and self._clock() < self._retry_at:
            return None
        if self._file is None:
            try:
                self._file = self._open_file()
                if self._busy:
                    self._file.set_busy_timeout(BUSY_RETRY_WAIT)
            except SpoolError as exc:
                self._degrade(exc)
                return None
        return self._file

    def _recovered(self, file: Spool, now: float, *, quiet: bool = False) -> None:
        """The file took a write: move the memory backlog to it and restore the busy wait
        (``quiet``: the file was just opened; there is no recovery to tell of)."""
        if not self._degraded:
            return
        movable = self._memory.take_all()
        running = self._memory.take_running()
        try:
            added = file.adopt(movable, now, Write(started=tuple(running),
                                                   finished=tuple(self._finished_meanwhile)))
        except SpoolError:
            self._memory.put_back(movable, running)
            raise
        self._finished_meanwhile = []
        if movable:
            if added.dropped_full:
                self._on_dropped("spool_full", added.dropped_full)
            for kept, new_id in zip(movable, added.row_ids):
                if kept.event.row_id in self._leased_from_memory:
                    self._moved[kept.event.row_id] = new_id
            self._leased_from_memory.clear()
        self._degraded = False
        self._busy = False
        self._pause = _BROKEN_RETRY_FIRST
        file.set_busy_timeout(self._busy_timeout)
        if not quiet:
            self._on_recovered(len(movable))

    def _try_the_file_again(self, now: float) -> None:
        """While degraded, with events in memory: move them to the file if it is usable
        again (without waiting for the next write to find out)."""
        if not self._degraded or not (self._memory.pending_count()
                                      or self._memory.running_count()
                                      or self._finished_meanwhile):
            return
        file = self._usable_file()
        if file is not None:
            try:
                self._recovered(file, now)
            except SpoolError as exc:
                self._degrade(exc)

    def _on_file(self, row_ids: Collection[int]) -> set[int]:
        """``row_ids`` with the file ids of events moved there added."""
        return set(row_ids) | {self._moved[r] for r in row_ids if r in self._moved}

    # -- the Outbox protocol ----------------------------------------------------

    def add(self, events: Sequence[tuple[str, bytes, float]], now: float) -> AddResult:
        """Write events ahead to the file; to memory while it cannot be used."""
        return self.write(Write(events=tuple(events)), now)

    @_locked
    def write(self, write: Write, now: float) -> AddResult:
        """Write ahead to the file; to memory while it cannot be used."""
        file = self._usable_file(writing=True)
        if file is not None:
            try:
                # What memory held goes first: a job kept as running there must be in the
                # file before this batch's outcome closes it.
                self._recovered(file, now)
                return file.write(write, now)
            except SpoolError as exc:
                self._degrade(exc)
        self._finished_meanwhile.extend(write.finished)
        return self._memory.write(write, now)

    @_locked
    def recover_abandoned(self, now: float) -> int:
        """Turn the running jobs of processes that are gone into failure events (file only:
        memory holds no other process's jobs)."""
        file = self._usable_file()
        if file is None:
            return 0
        try:
            return file.recover_abandoned(now)
        except SpoolError as exc:
            self._degrade(exc)
            return 0

    @_locked
    def remember(self, api_url: str, name: str, value: str, until: float) -> None:
        """Keep what sending learnt about an API: in the file, and in memory meanwhile."""
        self._memory.remember(api_url, name, value, until)
        file = self._usable_file()
        if file is not None:
            try:
                file.remember(api_url, name, value, until)
            except SpoolError as exc:
                self._degrade(exc)

    @_locked
    def recall(self, api_url: str, now: float) -> dict[str, str]:
        """What earlier runs (the file) and this one (memory) learnt about an API."""
        found: dict[str, str] = {}
        file = self._usable_file()
        if file is not None:
            try:
                found.update(file.recall(api_url, now))
            except SpoolError as exc:
                self._degrade(exc)
        found.update(self._memory.recall(api_url, now))
        return found

    @_locked
    def counts_by_destination(self) -> dict[Optional[str], int]:
        """Events waiting in the file, by destination (memory's are this handler's)."""
        counts = self._memory.counts_by_destination()
        if self._file is not None:
            with contextlib.suppress(SpoolError):
                for destination, n in self._file.counts_by_destination().items():
                    counts[destination] = counts.get(destination, 0) + n
        return counts

    @_locked
    def abandon_running(self, restamp: Restamp, now: float) -> int:
        """Turn this process's running jobs, in both stores, into failure events now."""
        count = self._memory.abandon_running(restamp, now)
        file = self._usable_file()
        if file is not None:
            try:
                count += file.abandon_running(restamp, now)
            except SpoolError as exc:
                self._degrade(exc)
        return count

    @_locked
    def lease(self, limit: int, now: float, exclude: Collection[int] = (), *,
              costly: bool = True) -> list[SpooledEvent]:
        """Due events from memory and file together, oldest first."""
        self._try_the_file_again(now)
        rows = self._memory.lease(limit, now, exclude, costly=costly)
        file = self._usable_file()
        if file is not None:
            try:
                rows = rows + file.lease(limit, now, self._on_file(exclude), costly=costly)
            except SpoolError as exc:
                self._degrade(exc)
        rows.sort(key=lambda e: (e.created, e.row_id))
        rows = rows[:limit]
        self._leased_from_memory.update(e.row_id for e in rows if e.row_id >= _MEMORY_ID_BASE)
        self._leased_from_file.update(e.row_id for e in rows if e.row_id < _MEMORY_ID_BASE)
        return rows

    @_locked
    def next_due(self, now: float, exclude: Collection[int] = (), *,
                 costly: bool = True) -> Optional[float]:
        """The earliest due time across memory and file."""
        times = [self._memory.next_due(now, exclude, costly=costly)]
        file = self._usable_file()
        if file is not None:
            try:
                times.append(file.next_due(now, self._on_file(exclude), costly=costly))
            except SpoolError as exc:
                self._degrade(exc)
        known = [t for t in times if t is not None]
        return min(known) if known else None

    @_locked
    def settle(self, settlement: Settlement, now: float) -> None:
        """Send each outcome to the store that holds the event."""
        if self._moved:
            settlement = self._redirect(settlement)

        def in_memory(row_id: int) -> bool:
            return row_id >= _MEMORY_ID_BASE

        memory = Settlement(
            delivered=tuple(r for r in settlement.delivered if in_memory(r)),
            rescheduled=tuple(r for r in settlement.rescheduled if in_memory(r[0])),
            dead=tuple(d for d in settlement.dead if in_memory(d[0].row_id)),
        )
        def on_this_file(row_id: int) -> bool:
            return not in_memory(row_id) and row_id not in self._orphans

        on_file = Settlement(
            delivered=tuple(r for r in settlement.delivered if on_this_file(r)),
            rescheduled=tuple(r for r in settlement.rescheduled if on_this_file(r[0])),
            dead=tuple(d for d in settlement.dead if on_this_file(d[0].row_id)),
        )
        settled = {*settlement.delivered, *(r for r, _ in settlement.rescheduled),
                   *(d[0].row_id for d in settlement.dead)}
        self._leased_from_file -= settled
        self._orphans -= settled
        self._memory.settle(memory, now)
        self._leased_from_memory.difference_update(memory.delivered)
        self._leased_from_memory.difference_update(r for r, _ in memory.rescheduled)
        self._leased_from_memory.difference_update(d[0].row_id for d in memory.dead)
        on_file = _joined(self._unsettled, on_file)
        self._unsettled = Settlement()
        if on_file and self._file is not None:
            try:
                self._file.settle(on_file, now)
            except SpoolError as exc:
                self._unsettled = on_file  # kept, and written with the next outcomes
                self._degrade(exc)

    def _redirect(self, settlement: Settlement) -> Settlement:
        """Outcomes of events moved to the file, addressed to their file rows."""
        moved = self._moved

        def where(row_id: int) -> int:
            return moved.pop(row_id, row_id)

        return Settlement(
            delivered=tuple(where(r) for r in settlement.delivered),
            rescheduled=tuple((where(r), due) for r, due in settlement.rescheduled),
            dead=tuple((dataclasses.replace(e, row_id=where(e.row_id)), status, reason)
                       for e, status, reason in settlement.dead),
        )

    @_locked
    def expire(self, now: float) -> int:
        """Drop events over the age bound, in both stores."""
        expired = self._memory.expire(now)
        file = self._usable_file()
        if file is not None:
            try:
                expired += file.expire(now)
            except SpoolError as exc:
                self._degrade(exc)
        return expired

    @_locked
    def pending_count(self) -> int:
        """Events waiting, in both stores (the file's as last readable)."""
        count = self._memory.pending_count()
        if self._file is not None:
            with contextlib.suppress(SpoolError):
                count += self._file.pending_count()
        return count

    @_locked
    def dead_letters(self, limit: int = 1_000_000) -> list[DeadLetter]:
        """Dead-lettered events, from the file and from memory."""
        dead = self._memory.dead_letters(limit)
        if self._file is not None:
            with contextlib.suppress(SpoolError):
                dead = self._file.dead_letters(limit) + dead
        return dead[:limit]

    @_locked
    def release(self) -> None:
        """Give up this process's claims on the file's events (not while it is locked by
        another program: closing never waits for it; the claims then lapse with their
        leases, or at once for a process that has ended)."""
        if self._file is not None and not self._degraded:
            with contextlib.suppress(SpoolError):
                self._file.release()

    @_locked
    def close(self) -> None:
        """Move what waits in memory to the file if it can be written now, count the rest
        as dropped, and close the file's connection; safe to call twice."""
        left = self._memory.pending_count()
        if left and self._degraded:
            file = self._usable_file() or self._file
            if file is not None:
                with contextlib.suppress(SpoolError):
                    file.set_busy_timeout(_CLOSE_WAIT)
                    self._recovered(file, time.time())
            left = self._memory.pending_count()
        if left:
            self._memory.take_all()
            self._on_dropped("closed_in_memory", left)
        if self._file is not None:
            self._file.close()

    def prepare_fork(self) -> None:
        """Before ``os.fork()``: hold the outbox's and both stores' locks."""
        self._lock.acquire()
        self._memory.prepare_fork()
        if self._file is not None:
            self._file.prepare_fork()

    def after_fork_parent(self) -> None:
        """In the parent: carry on."""
        if self._file is not None:
            self._file.after_fork_parent()
        self._memory.after_fork_parent()
        self._lock.release()

    def after_fork_child(self) -> None:
        """In the child: a connection of its own; the parent's memory backlog is the parent's."""
        self._lock = threading.RLock()
        self._memory.after_fork_child()
        self._leased_from_memory = set()
        self._leased_from_file = set()
        self._orphans = set()
        self._moved = {}
        self._finished_meanwhile = []
        if self._file is not None:
            try:
                self._file.after_fork_child()
            except SpoolError as exc:
                self._file = None
                self._degrade(exc)



def _joined(first: Settlement, second: Settlement) -> Settlement:
    if not first:
        return second
    return Settlement(first.delivered + second.delivered,
                      first.rescheduled + second.rescheduled, first.dead + second.dead)


def default_spool_path() -> Path:
    """The per-user data directory of the platform, e.g. ``~/.local/share/massugc-logging``."""
    import platformdirs  # noqa: PLC0415 - only needed when no spool_path is given

    return Path(platformdirs.user_data_dir("massugc-logging", appauthor=False)) / "spool.sqlite3"


def resolve_spool_path(spool_path: Any) -> Optional[Path]:
    """The file a handler's ``spool_path`` names: None for memory only, the platform's
    user data directory for ``"default"`` or empty."""
    if spool_path is None:
        return None
    if spool_path in ("default", ""):
        return default_spool_path()
    return Path(str(spool_path)).expanduser()


def open_outbox(spool_path: Any, limits: Mapping[str, Any], diagnostics: Diagnostics,
                on_dropped: Callable[[str, int], None],
                destination: Optional[str] = None) -> Union[FallbackOutbox, MemorySpool]:
    """The outbox for a handler's ``spool_path``, for events going to ``destination``: the
    SQLite file (``"default"`` or empty: the platform's user data directory) behind its
    memory stand-in; memory alone for None.
    """
    path = resolve_spool_path(spool_path)
    if path is None:
        return MemorySpool(destination=destination, **limits)
    def dropped(reason: str, n: int) -> None:
        on_dropped(reason, n)
        if reason == "closed_in_memory":
            diagnostics.say_once(
                Topic.SPOOL_CLOSED_IN_MEMORY, logging.ERROR,
                "CloudHandler could not write %d event(s) to its spool at exit (the file was "
                "locked or unusable the whole time); they are lost. The count is in "
                "stats()['dropped'].", n)

    return FallbackOutbox(lambda: Spool(path, destination=destination,
                                        busy_timeout=HANDLER_BUSY_TIMEOUT, **limits),
                          MemorySpool(destination=destination, **limits), path=path,
                          open_now=False, busy_timeout=HANDLER_BUSY_TIMEOUT,
                          on_problem=lambda exc: spool_problem(diagnostics, exc),
                          on_recovered=lambda moved: _spool_recovered(diagnostics, moved),
                          on_dropped=dropped)


def spool_problem(diagnostics: Diagnostics, exc: SpoolError) -> None:
    """Say once that events wait in memory, and why."""
    diagnostics.count("spool_errors")
    if exc.busy:
        diagnostics.say_once(
            Topic.SPOOL_UNUSABLE, logging.WARNING,
            "CloudHandler's spool file is locked by another program (%s). Events wait in "
            "memory meanwhile and go back to the file as soon as it is free.", exc)
    else:
        diagnostics.say_once(
            Topic.SPOOL_UNUSABLE, logging.ERROR,
            "CloudHandler cannot use its spool (%s). It carries on in memory and tries the "
            "file again now and then: events not yet delivered will not survive a "
            "restart meanwhile.", exc)


def _spool_recovered(diagnostics: Diagnostics, moved: int) -> None:
    diagnostics.forget(Topic.SPOOL_UNUSABLE)
    diagnostics.say_once(Topic.SPOOL_RECOVERED, logging.INFO,
                         "CloudHandler's spool file is usable again; %d event(s) kept in "
                         "memory meanwhile were moved back to it.", moved)
    diagnostics.forget(Topic.SPOOL_RECOVERED)
