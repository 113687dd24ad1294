"""CloudHandler: the only place on the logging path that starts threads.

Data flows one way::

    app thread      emit: filter on event_type, capture the exception text,
                    put on a bounded queue (never blocks, never raises)
    intake thread   (a logging.handlers.QueueListener) build the event,
                    redact it, write it ahead to the spool, wake the sender
    sender thread   lease the oldest events from the spool, hand them to the
                    request workers (several at once while the API answers
                    well, one at a time, itself, while it fails), settle the
                    outcomes in order by the retry policy: delivered,
                    dead-lettered, or kept for later
    request workers POST one event each over the shared keep-alive session

Spooling and sending run on separate threads so a slow or silent server
never delays the moment an event becomes durable. No lock is held across a
network call; the app thread takes only the queue's own lock, for a put
(and a counter lock when it has to drop). Records from this package's
loggers and from the HTTP stack never enter the handler, so sending can
never cause more sending.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import random
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from logging.handlers import QueueListener
from pathlib import Path
from typing import Any, Callable, Optional, Union

from massugc_logging._unlocked import UnlockedHandler
from massugc_logging.contract import (
    DEFAULT_ENDPOINT,
    DEFAULT_EVENT_TYPE,
    DEFAULT_EVENT_VERSION,
    DEFAULT_SOURCE,
    PRODUCTION_API_URL,
)
from massugc_logging.diagnostics import Diagnostics, is_internal_logger
from massugc_logging.keystore import ApiKey, KeyStore, KeyStoreError
from massugc_logging.payload import BuiltEvent, ExceptionSummary, build_event, capture_exception
from massugc_logging.payload_config import payload_settings
from massugc_logging.retry import RetryPolicy
from massugc_logging.spool import AnySpool, MemorySpool, Spool, SpooledEvent, SpoolError
from massugc_logging.transport import DEFAULT_TIMEOUT, Outcome, OutcomeKind, Timeout, Transport

_DEFAULT = object()
DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
DEFAULT_MAX_IN_FLIGHT = 4
_BATCH = 50
_INTAKE_BATCH = 256
_EXPIRE_EVERY = 3600.0

_live_handlers: weakref.WeakSet[CloudHandler] = weakref.WeakSet()


def default_spool_path() -> Path:
    """The per-user data directory of the platform, e.g. ``~/.local/share/massugc-logging``."""
    import platformdirs  # noqa: PLC0415 - only needed when no spool_path is given

    return Path(platformdirs.user_data_dir("massugc-logging", appauthor=False)) / "spool.sqlite3"


def _before_fork() -> None:
    for handler in list(_live_handlers):
        handler._spool.prepare_fork()


def _after_fork_in_parent() -> None:
    for handler in list(_live_handlers):
        handler._spool.after_fork_parent()


def _after_fork_in_child() -> None:
    for handler in list(_live_handlers):
        handler._forget_parent_state()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


class _IntakeListener(QueueListener):
    """A QueueListener that hands queued items to one callable, in batches.

    The stdlib listener passes items one by one to handlers; ours are tuples of a
    record and what ``emit`` captured, and they are taken in batches of up to
    ``_INTAKE_BATCH`` so a burst is written to the spool in few transactions.
    """

    def __init__(self, q: queue.Queue[Any], intake: Callable[[list[Any]], None]) -> None:
        super().__init__(q)
        self._intake_queue = q
        self._intake = intake

    def _monitor(self) -> None:
        """Take a blocking first item, then whatever else is queued, up to a batch."""
        q = self._intake_queue
        sentinel = getattr(self, "_sentinel", None)
        while True:
            item = q.get()
            batch = [item]
            while item is not sentinel and len(batch) < _INTAKE_BATCH:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
            stop = batch[-1] is sentinel
            if stop:
                batch.pop()
                q.task_done()
            if batch:
                self._intake(batch)
            if stop:
                return

    def stop_within(self, timeout: float) -> bool:
        """Ask the thread to finish what is queued and stop; wait at most ``timeout``."""
        thread = self._thread  # private in the stdlib, stable from 3.9 to 3.14
        if thread is None:
            return True
        try:
            self._intake_queue.put(getattr(self, "_sentinel", None),
                                   timeout=max(timeout, 0.001))
        except queue.Full:
            return False
        thread.join(max(timeout, 0.0))
        if thread.is_alive():
            return False
        self._thread = None
        return True

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The running listener thread, if any."""
        return self._thread


class _Request:
    """One event handed to a request worker, with its outcome when done.

    The sender can call a request off until a worker has started it.
    """

    __slots__ = ("_done", "_lock", "_state", "outcome", "row")

    def __init__(self, row: SpooledEvent) -> None:
        self.row = row
        self.outcome: Optional[Outcome] = None
        self._lock = threading.Lock()
        self._state = "queued"
        self._done = threading.Event()

    def start(self) -> bool:
        """Called by a worker: True if the request is still wanted."""
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "started"
            return True

    def skip(self) -> None:
        """Called by a worker that must not send it (the API stopped answering well)."""
        with self._lock:
            if self._state == "queued":
                self._state = "skipped"
                self._done.set()

    def call_off(self) -> bool:
        """Called by the sender: True if it was not sent and never will be."""
        with self._lock:
            if self._state in ("queued", "skipped"):
                self._state = "called_off"
                return True
            return False

    def finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self._done.set()

    def wait(self) -> Optional[Outcome]:
        """The outcome, or None if it was skipped; the transport's timeouts bound the wait."""
        self._done.wait()
        return self.outcome


class CloudHandler(UnlockedHandler):
    """Send ``event_type=video_generation`` records to the MassUGC Cloud API.

    Usable as ``class: massugc_logging.CloudHandler`` in a dictConfig. ``emit``
    filters and enqueues in microseconds; building, spooling and sending happen
    on the handler's own threads. Nothing it does raises into app code.

    Args:
        api_url: the API base URL (default: env ``MASSUGC_API_URL``, else production).
        api_key: the API key (default: env ``MASSUGC_API_KEY``, then the key store).
        endpoint: the usage-log path; older servers use ``/api/desktop/usage``.
        event_type: only records whose ``event_type`` extra equals this are sent.
        spool_path: the SQLite outbox file; None keeps events in memory only (they
            do not survive a restart). Default (or ``"default"``): ``spool.sqlite3`` in
            the platform's user data directory.
        timeout: seconds, or ``[connect, read]``, for each request.
        shutdown_timeout: the most ``close()`` / ``logging.shutdown()`` will wait.
        source, version: the event's ``source`` and ``version`` fields.
        extra_fields: job fields sent besides the contract's, e.g. ``job_id``.
        queue_size: the in-memory queue bound; a full queue drops and counts.
        max_in_flight: requests sent at once while the API answers well; while it
            fails, one at a time.
        retry: a :class:`RetryPolicy` or a mapping of its settings.
        spool_max_events, spool_max_age: the spool's bounds (count, seconds).
        allow_insecure_http: allow plain ``http://`` to a non-loopback host.
        redact_patterns: extra regular expressions scrubbed from every string.
        error_message_limit, field_limit: caps in characters.
        classification_rules: extra failure-category rules, used for the opt-in
            ``error_category`` field (listed in ``extra_fields``).
    """

    def __init__(
        self,
        api_url: Optional[str] = None,
        api_key: Optional[Union[str, ApiKey]] = None,
        endpoint: str = DEFAULT_ENDPOINT,
        event_type: str = DEFAULT_EVENT_TYPE,
        spool_path: Any = _DEFAULT,
        timeout: Timeout = DEFAULT_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        level: Union[int, str] = logging.NOTSET,
        *,
        source: str = DEFAULT_SOURCE,
        version: str = DEFAULT_EVENT_VERSION,
        extra_fields: Sequence[str] = (),
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        retry: Union[RetryPolicy, Mapping[str, Any], None] = None,
        spool_max_events: Optional[int] = None,
        spool_max_age: Optional[float] = None,
        allow_insecure_http: bool = False,
        redact_patterns: Sequence[str] = (),
        error_message_limit: int = 4096,
        field_limit: int = 256,
        classification_rules: Sequence[Mapping[str, Any]] = (),
        key_store: Optional[KeyStore] = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(level)
        self._hold_reason: Optional[str] = None
        self.diagnostics = Diagnostics()
        self._event_type = str(event_type)
        self.shutdown_timeout = float(shutdown_timeout)
        self._rng = rng
        self.policy = RetryPolicy.from_config(retry)
        self._queue_size = int(queue_size)
        self._max_in_flight = max(1, int(max_in_flight))
        self._closed = False
        self._init_runtime_state()

        self.settings = payload_settings(
            event_type=self._event_type, source=source, version=version,
            extra_fields=extra_fields, redact_patterns=redact_patterns,
            error_message_limit=error_message_limit, field_limit=field_limit,
            classification_rules=classification_rules,
        )

        key = self._resolve_key(api_key, key_store)
        url = api_url or os.environ.get("MASSUGC_API_URL") or PRODUCTION_API_URL
        self._transport: Optional[Transport]
        try:
            self._transport = Transport(
                url, key, endpoint=endpoint, timeout=timeout,
                allow_insecure_http=bool(allow_insecure_http),
                max_connections=self._max_in_flight,
            )
        except Exception as exc:  # a bad URL or timeout: keep events, say so once
            self._transport = None
            self._hold_reason = "the API URL or timeout is not usable"
            self.diagnostics.say_once(
                "config:url", logging.ERROR,
                "CloudHandler cannot send: %s. Events are kept in the spool until this is fixed.",
                exc,
            )
        if self._transport is not None and key is None and self._hold_reason is None:
            self._hold_reason = "no API key is configured"
            self.diagnostics.say_once(
                "config:no-key", logging.WARNING,
                "CloudHandler has no API key: set MASSUGC_API_KEY, pass api_key, or run "
                "'massugc-logging key set'. Events are kept in the spool until a key is set.",
            )

        limits: dict[str, Any] = {}
        if spool_max_events is not None:
            limits["max_events"] = int(spool_max_events)
        if spool_max_age is not None:
            limits["max_age"] = float(spool_max_age)
        self._spool_limits = limits
        self._spool = self._open_spool(spool_path)
        _live_handlers.add(self)
        self._start_threads()

    # -- set-up ---------------------------------------------------------------

    def _init_runtime_state(self) -> None:
        """Queues, locks and counters: made anew at start and in a forked child."""
        self._queue: queue.Queue[Any] = queue.Queue(self._queue_size)
        self._count_lock = threading.Lock()
        self._progress = threading.Condition(threading.Lock())
        #: Items the intake has taken off the queue (written by the intake thread only).
        self._intake_taken = 0
        #: True once the sender found nothing deliverable (replayed backlog included).
        self._sender_idle = False
        #: Bumped (under ``_progress``) whenever the intake adds rows, so the sender
        #: never calls itself idle on a lease that ran before those rows existed.
        self._spool_generation = 0
        self._wake = threading.Event()
        self._stopping = False
        self._not_before = 0.0
        self._state = "idle"
        self._last_expire = 0.0
        self._thread_idents: frozenset[int] = frozenset()
        self._intake_listener: Optional[_IntakeListener] = None
        self._sender: Optional[threading.Thread] = None
        self._requests: queue.Queue[Optional[_Request]] = queue.Queue()
        self._delivered: list[int] = []
        #: True after the API answered (2xx or a final 4xx): only then are several
        #: requests sent at once; after a failure, one at a time until one succeeds.
        self._api_answering = False
        self._pid = os.getpid()
        self._start_lock = threading.Lock()
        self._last_flush: Optional[tuple[float, bool]] = None
        self._counts = {"sent": 0, "retried": 0, "spooled": 0, "dead_lettered": 0}
        self._dropped: dict[str, int] = {}
        self._last_error: Optional[str] = None
        self._last_status: Optional[int] = None
        self._spool_pending = 0

    def _resolve_key(self, api_key: Optional[Union[str, ApiKey]],
                     key_store: Optional[KeyStore]) -> Optional[ApiKey]:
        """The key from the argument, the environment or the key store; None if absent or bad."""
        if isinstance(api_key, ApiKey):
            return api_key
        try:
            store = key_store or KeyStore()
            key, _source = store.resolve(api_key or None)
            return key
        except KeyStoreError as exc:
            self._hold_reason = "the API key is not valid"
            self.diagnostics.say_once(
                "config:bad-key", logging.ERROR,
                "CloudHandler cannot use its API key: %s. Events are kept in the spool until "
                "a valid key is set.", exc,
            )
        except Exception as exc:
            self.diagnostics.say_once(
                "config:key-store", logging.ERROR,
                "CloudHandler could not read the key store (%s); set MASSUGC_API_KEY instead.",
                type(exc).__name__,
            )
        return None

    def _open_spool(self, spool_path: Any) -> AnySpool:
        """The SQLite spool at ``spool_path``; memory when None or when the file is unusable."""
        if spool_path is None:
            return MemorySpool(**self._spool_limits)
        use_default = spool_path is _DEFAULT or spool_path in ("default", "")
        path = default_spool_path() if use_default else Path(str(spool_path)).expanduser()
        try:
            return Spool(path, **self._spool_limits)
        except SpoolError as exc:
            self._spool_problem(exc)
            return MemorySpool(**self._spool_limits)

    def _spool_problem(self, exc: BaseException) -> None:
        self.diagnostics.count("spool_errors")
        self.diagnostics.say_once(
            "spool:unusable", logging.ERROR,
            "CloudHandler cannot use its spool (%s). It carries on in memory: events not yet "
            "delivered will not survive a restart.", exc,
        )

    def _start_threads(self) -> None:
        """Start the intake and sender threads (never during interpreter shutdown)."""
        if sys.is_finalizing():
            return
        listener = _IntakeListener(self._queue, self._intake)
        listener.start()
        sender = threading.Thread(target=self._send_loop, name="massugc-logging-sender",
                                  daemon=True)
        sender.start()
        self._intake_listener = listener
        self._sender = sender
        idents = {sender.ident}
        if self._max_in_flight > 1:
            for n in range(self._max_in_flight):
                worker = threading.Thread(target=self._request_worker, daemon=True,
                                          name=f"massugc-logging-request-{n}")
                worker.start()
                idents.add(worker.ident)
        if listener.thread is not None:
            listener.thread.name = "massugc-logging-intake"
            idents.add(listener.thread.ident)
        self._thread_idents = frozenset(i for i in idents if i is not None)

    def _forget_parent_state(self) -> None:
        """In a forked child: drop the parent's queue, threads, locks, connection and
        session; threads restart at the child's first event."""
        self.diagnostics.after_fork_in_child()
        try:
            self._spool.after_fork_child()
        except SpoolError as exc:
            self._spool_problem(exc)
            self._spool = MemorySpool(**self._spool_limits)
        self._init_runtime_state()
        self._pid = -1
        if self._transport is not None:
            self._transport.renew_session()

    def _restart_in_child(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid() or self._closed:
                return
            self._pid = os.getpid()
            self._start_threads()

    # -- the app thread -------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Enqueue a matching record; never blocks and never raises."""
        try:
            if getattr(record, "event_type", None) != self._event_type:
                return
            if is_internal_logger(record.name):
                return
            if threading.get_ident() in self._thread_idents:
                return
            if self._pid != os.getpid():
                self._restart_in_child()
            if self._closed or self._sender is None:
                self._emit_without_threads(record)
                return
            exc = capture_exception(record.exc_info) if record.exc_info else None
            self._queue.put_nowait((record, exc))
        except queue.Full:
            self._drop("queue_full")
            self.diagnostics.say_once(
                "drop:queue_full", logging.WARNING,
                "CloudHandler's queue is full (%d events): new events are dropped until it "
                "drains. The count is in stats()['dropped'].", self._queue_size,
            )
        except Exception:
            self._drop("internal_error")

    def _drop(self, reason: str) -> None:
        with self._count_lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def _emit_without_threads(self, record: logging.LogRecord) -> None:
        """After close (or when created during interpreter shutdown) there is no thread:
        write straight to a durable spool for the next run, or count a drop."""
        path = getattr(self._spool, "path", None)
        if not getattr(self._spool, "durable", False) or path is None:
            self._drop("closed")
            return
        try:
            built = self._build((record, capture_exception(record.exc_info)))
            spool = Spool(path, **self._spool_limits)
            try:
                spool.add([(built.event_id, built.body(), _created(record))], time.time())
                spool.release()  # no thread here will send it: any process may
            finally:
                spool.close()
            with self._count_lock:
                self._counts["spooled"] += 1
        except Exception:
            self._drop("closed")

    # -- the intake thread ----------------------------------------------------

    def _build(self, item: tuple[logging.LogRecord, Optional[ExceptionSummary]]) -> BuiltEvent:
        record, exc = item
        built = build_event(record, self.settings, exception=exc,
                            fallback_id=str(uuid.uuid4()), now=time.time())
        for warning in built.warnings:
            self.diagnostics.count("field_warnings")
            self.diagnostics.say_once("field:" + warning, logging.WARNING,
                                      "CloudHandler: %s (said once)", warning)
        return built

    def _intake(self, items: list[Any]) -> None:
        """Build a batch of events and write it ahead to the spool; never raises."""
        entries: list[tuple[str, bytes, float]] = []
        for item in items:
            try:
                built = self._build(item)
                entries.append((built.event_id, built.body(), _created(item[0])))
            except Exception as exc:
                self._drop("internal_error")
                self.diagnostics.say_once("intake:error", logging.ERROR,
                                          "CloudHandler could not process an event: %s",
                                          type(exc).__name__)
        try:
            self._spool_add(entries)
        except Exception as exc:
            for _ in entries:
                self._drop("internal_error")
            self.diagnostics.say_once("intake:spool", logging.ERROR,
                                      "CloudHandler could not keep events: %s",
                                      type(exc).__name__)
        self._intake_taken += len(items)
        with self._progress:
            self._spool_generation += 1
            self._sender_idle = False
            for _ in items:
                self._queue.task_done()  # after the spool write: flush counts on it
            self._progress.notify_all()
        self._wake.set()

    def _spool_add(self, entries: list[tuple[str, bytes, float]]) -> Any:
        """Write entries to the spool, falling back to memory if the file fails."""
        if not entries:
            return None
        now = time.time()
        try:
            result = self._spool.add(entries, now)
        except SpoolError as exc:
            self._spool_problem(exc)
            self._spool = MemorySpool(**self._spool_limits)
            result = self._spool.add(entries, now)
        with self._count_lock:
            self._counts["spooled"] += len(result.row_ids)
            self._spool_pending += len(result.row_ids) - result.dropped_full
            if result.dropped_full:
                self._dropped["spool_full"] = (
                    self._dropped.get("spool_full", 0) + result.dropped_full)
        if result.dropped_full:
            self.diagnostics.say_once(
                "drop:spool_full", logging.WARNING,
                "CloudHandler's spool is full: the oldest events are dropped to make room. "
                "The count is in stats()['dropped'].",
            )
        return result

    # -- the sender thread ----------------------------------------------------

    def _send_loop(self) -> None:
        """Deliver from the spool until stopped; sleeps without polling when idle."""
        while not self._stopping:
            try:
                now = time.monotonic()
                if self._not_before > now:
                    self._wake.wait(self._not_before - now)
                    self._wake.clear()
                    continue
                if self._deliver_batch():
                    continue  # more to send, or a pause to sit out at the top
                self._wake.wait()
                self._wake.clear()
            except Exception as exc:
                self.diagnostics.say_once("sender:error", logging.ERROR,
                                          "CloudHandler's sender hit %s; it carries on.",
                                          type(exc).__name__)
                self._not_before = time.monotonic() + 1.0

    def _lease(self) -> list[SpooledEvent]:
        now = time.time()
        try:
            if now - self._last_expire > _EXPIRE_EVERY:
                self._last_expire = now
                expired = self._spool.expire(now)
                if expired:
                    with self._count_lock:
                        self._dropped["expired"] = self._dropped.get("expired", 0) + expired
            rows = self._spool.lease(_BATCH, now)
            pending = self._spool.pending_count()
            with self._count_lock:
                self._spool_pending = pending
            return rows
        except SpoolError as exc:
            self._spool_problem(exc)
            self._spool = MemorySpool(**self._spool_limits)
            return []

    def _request_worker(self) -> None:
        """Send the requests the sender hands out; exits on None."""
        while True:
            request = self._requests.get()
            if request is None:
                return
            if not self._api_answering:
                request.skip()  # one request at a time while the API fails: the sender's
            elif request.start():
                outcome = self._send_one(request.row)
                if outcome.kind in (OutcomeKind.TRANSIENT, OutcomeKind.AUTH):
                    self._api_answering = False  # stop the other workers at once
                request.finish(outcome)

    def _send_one(self, row: SpooledEvent) -> Outcome:
        """POST one event and redact what the server said (it is logged and stored)."""
        assert self._transport is not None
        outcome = self._transport.send(row.body, row.event_id)
        if outcome.reason:
            outcome = dataclasses.replace(outcome,
                                          reason=self.settings.scrub(outcome.reason, 300))
        return outcome

    def _deliver_batch(self) -> bool:
        """Send one batch. True: go round again (more to send, or a pause to sit out);
        False: nothing to do until something wakes the sender."""
        if self._transport is None or self._hold_reason is not None:
            self._state = "held"
            return False
        with self._progress:
            generation = self._spool_generation
        rows = self._lease()
        if not rows:
            self._state = "idle"
            with self._progress:
                if generation == self._spool_generation:
                    self._sender_idle = True
                    self._progress.notify_all()
            return generation != self._spool_generation
        with self._progress:
            self._sender_idle = False
        try:
            for index, row in enumerate(rows):
                if self._max_in_flight > 1 and self._api_answering:
                    self._send_concurrently(rows[index:])
                    break
                if self._stopping or not self._settle(row, self._send_one(row)):
                    break
            return True  # lease again: more may have come, and an empty lease marks idle
        finally:
            self._remove_delivered()

    def _send_concurrently(self, rows: list[SpooledEvent]) -> None:
        """Up to ``max_in_flight`` requests at once, settled in order; on the first
        failure, requests not yet started are called off and the rest sit it out."""
        requests = [_Request(row) for row in rows]
        for request in requests:
            self._requests.put(request)
        carry_on = True
        paused = False
        for request in requests:
            if carry_on and not self._stopping:
                outcome = request.wait()
                if outcome is None:
                    carry_on = False  # skipped: a later request found the API failing
                else:
                    carry_on = self._settle(request.row, outcome)
                    paused = not carry_on
            elif request.call_off():
                continue  # never sent: it stays in the spool as it was
            else:
                outcome = request.wait()
                if outcome is None:
                    continue
                if not paused and not outcome.delivered and \
                        outcome.kind is not OutcomeKind.PERMANENT:
                    self._settle(request.row, outcome)  # the failure that sets the pause
                    paused = True
                else:
                    self._settle_quietly(request.row, outcome)

    def _settle_quietly(self, row: SpooledEvent, outcome: Outcome) -> None:
        """Record the outcome of a request already in flight when sending paused."""
        try:
            if outcome.kind is OutcomeKind.DELIVERED:
                self._delivered.append(row.row_id)
                with self._count_lock:
                    self._counts["sent"] += 1
            elif outcome.kind is OutcomeKind.PERMANENT:
                self._settle(row, outcome)
            else:
                self._spool.failed_attempt([row.row_id])
                with self._count_lock:
                    self._counts["retried"] += 1
        except SpoolError as exc:
            self._spool_problem(exc)

    def _remove_delivered(self) -> None:
        """Delete this batch's delivered events in one transaction (before the next lease)."""
        delivered, self._delivered = self._delivered, []
        if not delivered:
            return
        try:
            self._spool.delivered(delivered)
        except SpoolError as exc:
            self._spool_problem(exc)
            self._spool = MemorySpool(**self._spool_limits)
        self._fewer_pending(len(delivered))

    def _settle(self, row: SpooledEvent, outcome: Outcome) -> bool:
        """Act on one outcome; False when sending must pause."""
        now = time.monotonic()
        with self._count_lock:
            self._last_status = outcome.status
            if not outcome.delivered:
                self._last_error = outcome.reason or outcome.kind.value
        self._api_answering = outcome.kind in (OutcomeKind.DELIVERED, OutcomeKind.PERMANENT)
        try:
            if outcome.kind is OutcomeKind.DELIVERED:
                self._delivered.append(row.row_id)
                with self._count_lock:
                    self._counts["sent"] += 1
                if self.policy.failures or self._state in ("backing_off", "auth_paused"):
                    self.diagnostics.forget("send:transient")
                    self.diagnostics.forget("send:auth")
                    self.diagnostics.say_once("send:resumed", logging.INFO,
                                              "CloudHandler: delivery to the API resumed.")
                self.policy = self.policy.reset()
                self._state = "sending"
                return True
            if outcome.kind is OutcomeKind.PERMANENT:
                self._spool.dead_letter(row, outcome.status, outcome.reason, time.time())
                with self._count_lock:
                    self._counts["dead_lettered"] += 1
                self.diagnostics.say_once(
                    f"send:permanent:{outcome.status}", logging.ERROR,
                    "The MassUGC Cloud API rejected an event for good (HTTP %s: %s). It is kept "
                    "in the spool's dead-letter table and will not be retried; further "
                    "rejections are counted in stats().", outcome.status, outcome.reason,
                )
                self._fewer_pending()
                return True
            self._spool.failed_attempt([row.row_id])
            with self._count_lock:
                self._counts["retried"] += 1
        except SpoolError as exc:
            self._spool_problem(exc)
            self._spool = MemorySpool(**self._spool_limits)
            return False
        if outcome.kind is OutcomeKind.AUTH:
            self._state = "auth_paused"
            self._not_before = now + self.policy.auth_pause
            self.diagnostics.forget("send:resumed")
            self.diagnostics.say_once(
                "send:auth", logging.ERROR,
                "The MassUGC Cloud API refused the API key (%s). Sending is paused for %.0f s "
                "and every event is kept in the spool. Check the key with "
                "'massugc-logging key show' and set a new one with 'massugc-logging key set'.",
                outcome.reason or f"HTTP {outcome.status}", self.policy.auth_pause,
            )
            return False
        self.policy = self.policy.increment()
        delay = self.policy.next_delay(outcome.retry_after, self._rng)
        self._not_before = now + delay
        self._state = "circuit_open" if self.policy.circuit_open else "backing_off"
        self.diagnostics.forget("send:resumed")
        self.diagnostics.say_once(
            "send:transient", logging.WARNING,
            "CloudHandler cannot deliver to the API right now (%s). Events are kept in the "
            "spool and retried with backoff.", outcome.reason or outcome.kind.value,
        )
        return False

    def _fewer_pending(self, n: int = 1) -> None:
        """Fewer events waiting (the count stats() reports between leases)."""
        with self._count_lock:
            self._spool_pending = max(0, self._spool_pending - n)

    # -- flush, close, stats --------------------------------------------------

    def _intake_caught_up(self) -> bool:
        """True when every queued event has been written to the spool."""
        return self._queue.unfinished_tasks == 0

    def _settled(self) -> bool:
        """True when everything enqueued is spooled and the sender has since found
        nothing left to deliver: all of it (and any replayed backlog) was delivered,
        dead-lettered, or taken over by another process."""
        return self._intake_caught_up() and self._sender_idle

    def flush(self, timeout: Optional[float] = None) -> bool:  # type: ignore[override]
        """Wait until what is queued (events logged meanwhile included), and any backlog
        replayed from the spool, is delivered; at most ``timeout`` (default
        ``shutdown_timeout``) seconds. Returns True when everything was delivered.

        Returns early, False, when sending is paused (backoff beyond the deadline,
        a rejected or missing key): the events stay in the spool.
        """
        budget = self.shutdown_timeout if timeout is None else max(0.0, float(timeout))
        start = time.monotonic()
        deadline = start + budget
        done = False
        try:
            if self._pid != os.getpid() or self._sender is None:
                return False
            self._wake.set()
            with self._progress:
                while True:
                    if self._settled():
                        done = True
                        return True
                    now = time.monotonic()
                    if now >= deadline or not self._threads_alive():
                        return False
                    if self._intake_caught_up() and (
                        self._hold_reason is not None or self._transport is None
                        or self._not_before > deadline
                    ):
                        return False
                    self._progress.wait(min(deadline - now, 0.25))
        except Exception:
            return False
        finally:
            if timeout is None:
                self._last_flush = (time.monotonic(), done)

    def _threads_alive(self) -> bool:
        sender = self._sender
        listener = self._intake_listener
        return bool(sender and sender.is_alive() and listener and listener.thread
                    and listener.thread.is_alive())

    def close(self) -> None:
        """Deliver what can be delivered within ``shutdown_timeout``, then stop.

        Safe to call twice and after ``logging.shutdown()``; whatever is not
        delivered stays in the spool for the next run.
        """
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
        try:
            start = time.monotonic()
            budget = self.shutdown_timeout
            just_flushed = self._last_flush is not None and start - self._last_flush[0] < 1.0
            if just_flushed:
                # logging.shutdown() flushes right before closing: that flush spent the budget.
                budget = 0.25
            if self._pid == os.getpid() and self._sender is not None:
                if not just_flushed:
                    self.flush(budget)
                listener = self._intake_listener
                remaining = max(0.05, start + budget - time.monotonic())
                if listener is not None:
                    listener.stop_within(remaining)
                self._stopping = True
                self._wake.set()
                for _ in range(self._max_in_flight):
                    self._requests.put(None)
                self._sender.join(max(0.0, min(0.2, start + budget - time.monotonic())))
            with contextlib.suppress(SpoolError):
                self._spool.release()  # what is left may be sent by any process, now
            if self._sender is None or not self._sender.is_alive():
                self._spool.close()
                if self._transport is not None:
                    self._transport.close()
        except Exception:  # noqa: S110 - closing at exit never raises
            pass
        finally:
            _live_handlers.discard(self)
            super().close()

    def set_api_key(self, api_key: Union[str, ApiKey]) -> None:
        """Use a new key from now on and resume sending if the old one was refused."""
        key = api_key if isinstance(api_key, ApiKey) else ApiKey(api_key)
        if self._transport is not None:
            self._transport.set_key(key)
            if self._hold_reason in ("no API key is configured", "the API key is not valid"):
                self._hold_reason = None
            self._not_before = 0.0
            self.diagnostics.forget("send:auth")
            self._wake.set()

    def stats(self) -> dict[str, Any]:
        """Counters: enqueued, sent, retried, spooled, pending, dropped by reason,
        dead-lettered, last error, last status, and the sender's state."""
        with self._count_lock:
            counts = dict(self._counts)
            dropped = dict(self._dropped)
            last_error, last_status = self._last_error, self._last_status
        queued = self._queue.qsize()
        return {
            "enqueued": self._intake_taken + queued,
            **counts,
            "pending": queued + self._spool_pending,
            "dropped": dropped,
            "last_error": last_error,
            "last_status": last_status,
            "state": (self._hold_reason and "held") or self._state,
            "spool": str(self._spool.path) if self._spool.path else None,
            "problems": self.diagnostics.snapshot(),
        }

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        url = self._transport.url if self._transport is not None else "unusable"
        return f"<CloudHandler {url} ({level})>"


def _created(record: Any) -> float:
    """The record's creation time, or now if it has none usable."""
    created = getattr(record, "created", None)
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        return float(created)
    return time.time()
