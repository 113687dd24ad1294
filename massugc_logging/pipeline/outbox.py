"""The outbox the handler uses: the SQLite spool file, or memory in its place while the
file is broken.

A file that fails is not given up for the rest of the run, and what it cannot do
is decided here and nowhere else:

- **busy** (another program holds a write lock past the busy timeout: a backup,
  an antivirus scan): nothing changes place. The write raises
  :class:`~massugc_logging.pipeline.spool.SpoolError` (``busy``) to its caller:
  the intake keeps its batch, bounded and counted, and writes it again a moment
  later; delivery tries again at its next turn. No thread waits long: the
  handler's file gives up on a lock after a quarter of a second.
- **broken** (corrupt, read-only, disk full) or **gone** (deleted, moved or
  replaced while in use, by a cleaner tool or a user, noticed at the next write
  by the file's identity): the whole outbox becomes a memory store, holding
  what a gone file still had for this handler (read back through its open
  connection). The file is tried again after a growing pause (1 s, doubling to
  a minute), recreated if need be; once it takes the memory backlog, it is the
  outbox again.

An event in flight when the store changes is settled in the store that holds it
now, which may not know it: it is sent again later, and the API drops the copy
by its ``Idempotency-Key``. The file is opened by the intake thread
(:meth:`FallbackOutbox.start`), never by the thread that made the handler.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

from massugc_logging.diagnostics import Diagnostics, Topic
from massugc_logging.pipeline.spool import (
    AddResult,
    DeadLetter,
    MemorySpool,
    Outbox,
    Restamp,
    Settlement,
    Spool,
    SpooledEvent,
    SpoolError,
    Write,
)

#: How long a write of the handler's spool waits for another program's lock before the
#: caller is told the file is busy (our own transactions take milliseconds).
HANDLER_BUSY_TIMEOUT = 0.25
#: While the file is locked, calls other than writes try it again at most this often:
#: the writes of new events find out first, and delivery never queues behind the lock.
BUSY_DELIVERY_RETRY = 1.0
_BROKEN_RETRY_FIRST = 1.0
#: While memory stands in, a file found busy is tried again after this long.
_BUSY_RETRY = 1.0
_BROKEN_RETRY_CAP = 60.0
#: At close, how long moving the memory backlog to the file may wait for its lock.
_CLOSE_WAIT = 0.25


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
    """The spool file as an :class:`~massugc_logging.pipeline.spool.Outbox`, swapped whole
    for a memory store while the file is broken (see the module docstring).

    Args:
        open_file: opens the spool file (raises :class:`SpoolError` when it cannot).
        make_memory: makes the memory store that takes the file's place.
        path: the file's path.
        on_problem: told of each swap to memory (to say so once, locally).
        on_recovered: told when the file is the outbox again, with how many events moved.
        on_dropped: told of events lost, by reason (the file's bound; memory at close).
        clock: monotonic seconds, for the retry pauses.
        open_now: open the file here; else at :meth:`start`.
    """

    def __init__(
        self,
        open_file: Callable[[], Spool],
        make_memory: Callable[[], MemorySpool],
        *,
        path: Path,
        on_problem: Callable[[SpoolError], None],
        on_recovered: Callable[[int], None],
        on_dropped: Callable[[str, int], None] = lambda reason, n: None,
        clock: Callable[[], float] = time.monotonic,
        open_now: bool = True,
    ) -> None:
        self.path: Optional[Path] = path
        self._open_file = open_file
        self._make_memory = make_memory
        self._on_problem = on_problem
        self._on_recovered = on_recovered
        self._on_dropped = on_dropped
        self._clock = clock
        self._lock = threading.RLock()
        self._file: Optional[Spool] = None
        #: The store in use while the file is broken; None while the file is the outbox.
        self._memory: Optional[MemorySpool] = None
        #: Jobs that finished while memory stood in: their running rows in the file go
        #: when it is back, so they are never reported as abandoned.
        self._finished_meanwhile: list[str] = []
        self._retry_at = 0.0
        self._pause = _BROKEN_RETRY_FIRST
        #: Until when calls other than writes take the file for locked without trying it.
        self._busy_until = 0.0
        self._started = False
        if open_now:
            self.start(time.time())

    def __repr__(self) -> str:
        where = "memory" if self._memory is not None else "file"
        return f"<FallbackOutbox path={str(self.path)!r} using={where}>"

    @property
    def using_memory(self) -> bool:
        """True while memory stands in for a broken file."""
        return self._memory is not None

    # -- which store ------------------------------------------------------------

    @_locked
    def start(self, now: float) -> None:
        """Open the file (on the intake thread): memory stands in if it is broken; a busy
        file is opened again at the next call."""
        self._started = True
        with contextlib.suppress(SpoolError):  # busy: opened at the next call
            self._store(now)

    def _store(self, now: float) -> Outbox:
        """The store in use now: the file, or memory while the file is broken (the file is
        tried again when its pause is over). Raises SpoolError(busy) for a busy file."""
        if self._memory is None:
            if self._file is None:
                try:
                    self._file = self._open_file()
                except SpoolError as exc:
                    if exc.busy:
                        self._busy_until = self._clock() + BUSY_DELIVERY_RETRY
                        raise
                    return self._swap_to_memory(exc)
            return self._file
        if self._clock() >= self._retry_at:
            return self._try_the_file(now)
        return self._memory

    def _swap_to_memory(self, exc: SpoolError) -> MemorySpool:
        """The file is broken or gone: memory is the outbox until the file works again,
        holding what a gone file still had for this handler."""
        memory = self._make_memory()
        if self._file is not None:
            if exc.gone:
                events, jobs = self._file.salvage()
                memory.keep(events, jobs)
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        self._memory = memory
        self._retry_at = self._clock() + self._pause
        self._pause = min(_BROKEN_RETRY_CAP, self._pause * 2)
        self._on_problem(exc)
        return memory

    def _try_the_file(self, now: float) -> Outbox:
        """Open the file and move memory's backlog (events, running jobs, finished jobs,
        what sending learnt) into it; on success it is the outbox again. Returns the
        store in use after the try."""
        memory = self._memory
        assert memory is not None
        try:
            file = self._open_file()
        except SpoolError as exc:
            self._retry_at = self._clock() + (_BUSY_RETRY if exc.busy else self._pause)
            if not exc.busy:
                self._pause = min(_BROKEN_RETRY_CAP, self._pause * 2)
            return memory
        moved = self._move(memory, file, now)
        if moved is None:
            file.close()
            self._retry_at = self._clock() + self._pause
            self._pause = min(_BROKEN_RETRY_CAP, self._pause * 2)
            return memory
        self._file, self._memory = file, None
        self._pause = _BROKEN_RETRY_FIRST
        self._on_recovered(moved)
        return file

    def _move(self, memory: MemorySpool, file: Spool, now: float) -> Optional[int]:
        """Move memory's backlog into ``file`` in one transaction; how many events moved,
        or None when the file refused (memory keeps everything then)."""
        rows, running = memory.take_all(), memory.take_running()
        try:
            added = file.adopt(rows, now, Write(started=tuple(running),
                                                finished=tuple(self._finished_meanwhile)))
            for api_url, name, value, until in memory.remembered():
                file.remember(api_url, name, value, until)
        except SpoolError:
            memory.put_back(rows, running)
            return None
        self._finished_meanwhile = []
        if added.dropped_full:
            self._on_dropped("spool_full", added.dropped_full)
        return len(rows)

    def _call(self, now: float, use: Callable[[Outbox], Any], *, writing: bool = False) -> Any:
        """``use`` the store in use; a file that breaks under it gives way to memory, which
        is used at once (a write loses nothing); a busy one raises to the caller.

        While the file is known to be locked, only writes of new events try it (each
        waits briefly for the lock); the other calls (delivery's, stats) are refused at
        once and try it again at most every :data:`BUSY_DELIVERY_RETRY` seconds, so no
        thread that closing waits for queues behind another program's lock.
        """
        if not writing and self._memory is None and self._clock() < self._busy_until:
            raise SpoolError("the spool file is locked by another program", busy=True)
        store = self._store(now)
        try:
            result = use(store)
        except SpoolError as exc:
            if exc.busy:
                self._busy_until = self._clock() + BUSY_DELIVERY_RETRY
                raise
            if store is not self._file:
                raise
            memory = self._swap_to_memory(exc)
            return use(memory)
        if writing:
            self._busy_until = 0.0
        return result

    # -- the Outbox protocol ----------------------------------------------------

    def add(self, events: Sequence[tuple[str, bytes, float]], now: float) -> AddResult:
        """Write events ahead of delivery."""
        return self.write(Write(events=tuple(events)), now)

    @_locked
    def write(self, write: Write, now: float) -> AddResult:
        """Write ahead to the store in use; raises SpoolError(busy) while the file is busy."""
        result: AddResult = self._call(now, lambda store: store.write(write, now),
                                       writing=True)
        if self._memory is not None:
            self._finished_meanwhile.extend(write.finished)
        return result

    @_locked
    def recover_abandoned(self, now: float) -> int:
        """Turn the running jobs of processes that are gone into failure events (memory
        holds no other process's jobs)."""
        count: int = self._call(now, lambda store: store.recover_abandoned(now))
        return count

    @_locked
    def remember(self, api_url: str, name: str, value: str, until: float) -> None:
        """Keep what sending learnt about an API, for the next runs."""
        self._call(time.time(), lambda store: store.remember(api_url, name, value, until))

    @_locked
    def recall(self, api_url: str, now: float) -> dict[str, str]:
        """What earlier runs (and this one) learnt about an API."""
        found: dict[str, str] = self._call(now, lambda store: store.recall(api_url, now))
        return found

    @_locked
    def counts_by_destination(self) -> dict[Optional[str], int]:
        """Events waiting in the store in use, by destination."""
        counts: dict[Optional[str], int] = self._call(
            time.time(), lambda store: store.counts_by_destination())
        return counts

    @_locked
    def abandon_running(self, restamp: Restamp, now: float) -> int:
        """Turn this process's running jobs into failure events now."""
        count: int = self._call(now, lambda store: store.abandon_running(restamp, now))
        return count

    @_locked
    def lease(self, limit: int, now: float, exclude: Collection[int] = (), *,
              costly: bool = True) -> list[SpooledEvent]:
        """Due events, oldest first."""
        rows: list[SpooledEvent] = self._call(
            now, lambda store: store.lease(limit, now, exclude, costly=costly))
        return rows

    @_locked
    def next_due(self, now: float, exclude: Collection[int] = (), *,
                 costly: bool = True) -> Optional[float]:
        """The earliest due time of the events kept."""
        due: Optional[float] = self._call(
            now, lambda store: store.next_due(now, exclude, costly=costly))
        return due

    @_locked
    def settle(self, settlement: Settlement, now: float) -> None:
        """Record outcomes in the store in use (one that does not hold an event ignores
        its outcome: the event is sent again, and dropped by the API as a copy)."""
        self._call(now, lambda store: store.settle(settlement, now))

    @_locked
    def expire(self, now: float) -> int:
        """Drop events over the age bound."""
        expired: int = self._call(now, lambda store: store.expire(now))
        return expired

    @_locked
    def pending_count(self) -> int:
        """Events waiting in the store in use (0 while a busy file cannot say)."""
        with contextlib.suppress(SpoolError):
            count: int = self._call(time.time(), lambda store: store.pending_count())
            return count
        return 0

    @_locked
    def dead_letters(self, limit: int = 1_000_000) -> list[DeadLetter]:
        """Dead-lettered events of the store in use."""
        dead: list[DeadLetter] = self._call(time.time(), lambda store: store.dead_letters(limit))
        return dead

    @_locked
    def release(self) -> None:
        """Give up this process's claims on the file's events (not while it is locked by
        another program: closing never waits for it; the claims then lapse with their
        leases, or at once for a process that has ended)."""
        if self._file is not None and self._memory is None \
                and self._clock() >= self._busy_until:
            with contextlib.suppress(SpoolError):
                self._file.release()

    @_locked
    def close(self) -> None:
        """Move what memory holds to the file if it can be written now, count the rest as
        dropped, and close the file's connection; safe to call twice."""
        memory = self._memory
        if memory is not None and memory.pending_count():
            with contextlib.suppress(SpoolError):
                file = self._open_file()
                file.set_busy_timeout(_CLOSE_WAIT)
                if self._move(memory, file, time.time()) is not None:
                    self._file, self._memory = file, None
                else:
                    file.close()
            left = memory.pending_count()
            if left:
                memory.take_all()
                self._on_dropped("closed_in_memory", left)
        if self._file is not None:
            self._file.close()

    def prepare_fork(self) -> None:
        """Before ``os.fork()``: hold the outbox's and the store's locks."""
        self._lock.acquire()
        store = self._memory if self._memory is not None else self._file
        if store is not None:
            store.prepare_fork()

    def after_fork_parent(self) -> None:
        """In the parent: carry on."""
        store = self._memory if self._memory is not None else self._file
        if store is not None:
            store.after_fork_parent()
        self._lock.release()

    def after_fork_child(self) -> None:
        """In the child: a connection of its own; the parent's memory backlog is the
        parent's (a child that finds the file broken starts an empty memory store)."""
        self._lock = threading.RLock()
        self._finished_meanwhile = []
        if self._memory is not None:
            self._memory = self._make_memory()
            self._retry_at = 0.0
        if self._file is not None:
            try:
                self._file.after_fork_child()
            except SpoolError as exc:
                self._file = None
                self._swap_to_memory(exc)


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
                on_dropped: Callable[[str, int], None], destination: Optional[str] = None,
                *, clock: Callable[[], float] = time.monotonic,
                ) -> Union[FallbackOutbox, MemorySpool]:
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
                          lambda: MemorySpool(destination=destination, **limits), path=path,
                          open_now=False, clock=clock,
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
