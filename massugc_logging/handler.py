"""CloudHandler: the logging facade over the intake and the delivery engine.

Data flows one way::

    app thread      emit: filter on event_type, capture the exception text,
                    hand to the intake (never blocks, never raises, re-entrant)
    intake          (intake.py) one thread: build and redact each event, write
                    it ahead to the outbox in batches
    delivery        (delivery.py) the engine leases due events and hands them to
                    worker threads at the concurrency the policy allows; each
                    outcome is settled by the pure rules of decisions.py
    outbox          (outbox.py, spool.py) SQLite, with memory standing in while
                    the file cannot be used

This module only wires those units together and delegates ``flush``,
``close``, ``stats`` and ``set_api_key`` to them. Records from this package's
loggers and from the HTTP stack never enter the handler, so sending can never
cause more sending.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import sys
import threading
import time
import types
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

from massugc_logging._exiting import process_is_exiting
from massugc_logging._unlocked import UnlockedHandler
from massugc_logging.contract import (
    DEFAULT_ENDPOINT,
    DEFAULT_EVENT_TYPE,
    DEFAULT_EVENT_VERSION,
    DEFAULT_SOURCE,
    LOCAL_COLLECTOR_KEY,
    PRODUCTION_API_URL,
)
from massugc_logging.diagnostics import Diagnostics, is_internal_logger
from massugc_logging.jobs import JOB_MARK, JobMark
from massugc_logging.keystore import ApiKey, KeyStore
from massugc_logging.outcome import Outcome
from massugc_logging.payload import (
    BuiltEvent,
    ExceptionSummary,
    build_event,
    capture_exception,
    restamp_failure,
)
from massugc_logging.payload_config import payload_settings
from massugc_logging.pipeline.counters import Counters
from massugc_logging.pipeline.delivery import DeliveryEngine, DeliveryWorkers, Hold
from massugc_logging.pipeline.intake import Intake, Prepared
from massugc_logging.pipeline.keyfollow import KEY_CHECK_WHILE_HELD, KeyFollower, KeyState
from massugc_logging.pipeline.outbox import open_outbox, spool_problem
from massugc_logging.pipeline.retry import RetryPolicy
from massugc_logging.pipeline.sigterm import install_sigterm_flush
from massugc_logging.pipeline.spool import (
    MemorySpool,
    RunningJob,
    Spool,
    SpooledEvent,
    SpoolError,
    Write,
    destination_of,
)
from massugc_logging.pipeline.transport import (
    DEFAULT_TIMEOUT,
    Timeout,
    Transport,
    app_headers,
    is_loopback,
)
from massugc_logging.redaction import KnownSecrets

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
DEFAULT_MAX_IN_FLIGHT = 4
_REASON_CHARS = 300

#: ``error_message`` of a job whose process ended while it ran (sent by the next run).
STOPPED_MESSAGE = ("The app stopped while the job was running: its process ended before the "
                   "job reported an outcome (failure_time is when the job started)")
#: ``error_message`` of a job still running when the app shut down.
SHUTDOWN_MESSAGE = "The app was shut down while the job was running"

#: Where events are kept while the handler's ``api_url`` cannot be used.
UNUSABLE_DESTINATION = "unusable-api-url"

#: Every CloudHandler not yet closed, for :func:`set_api_key`.
_LIVE_HANDLERS: weakref.WeakSet[CloudHandler] = weakref.WeakSet()


def set_api_key(api_key: Union[str, ApiKey, None]) -> int:
    """Use ``api_key`` in every live :class:`CloudHandler` of this process, those made by
    ``dictConfig`` included; None makes them follow the key store again. Returns how
    many handlers took it.

    Raises:
        InvalidApiKey: ``api_key`` is not a well-formed key (the message never shows it).
    """
    key = None if api_key is None else api_key if isinstance(api_key, ApiKey) \
        else ApiKey(api_key.strip())
    handlers = list(_LIVE_HANDLERS)
    for handler in handlers:
        handler.set_api_key(key)
    return len(handlers)


def _register_fork_hooks(handler: CloudHandler) -> None:
    """Fork safety for this handler alone; the hooks do nothing once it is gone."""
    if not hasattr(os, "register_at_fork"):
        return
    ref = weakref.ref(handler)

    def hook(name: str) -> Callable[[], None]:
        def call() -> None:
            target = ref()
            if target is not None:
                getattr(target, name)()
        return call

    os.register_at_fork(before=hook("_before_fork"),
                        after_in_parent=hook("_after_fork_in_parent"),
                        after_in_child=hook("_after_fork_in_child"))


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
        timeout: seconds, or ``[connect, read]``, for each request; a request is
            cut off when it has taken both together in all.
        shutdown_timeout: the most ``close()`` / ``logging.shutdown()`` will wait.
        source, version: the event's ``source`` and ``version`` fields.
        extra_fields: job fields sent besides the contract's, e.g. ``job_id``.
        queue_size: the in-memory queue bound; a full queue drops and counts.
        max_in_flight: the most requests at once while the API answers well; the
            number in flight starts at one, grows with each round of successes,
            halves on failures, and is one (a probe) while the circuit is open.
        retry: a :class:`RetryPolicy` or a mapping of its settings.
        spool_max_events, spool_max_age, spool_max_bytes: the spool's bounds (count,
            seconds, bytes: 10,000 events, 7 days, 50 MB); the oldest go first, counted.
        allow_insecure_http: allow plain ``http://`` to a non-loopback host.
        ca_bundle: trust the CA certificates in this PEM file or directory (default:
            ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``, else the system trust store).
        flush_on_sigterm: on SIGTERM, write out what is queued and deliver what can be
            delivered within ``shutdown_timeout`` (``logging.shutdown()``), then end the
            process as SIGTERM would have. Only when SIGTERM still has its default
            disposition and the handler is made on the main thread: an app's own
            SIGTERM handler is never replaced.
        user_agent: the ``User-Agent`` to send, e.g. the app's own
            ``MassUGC-Desktop/<version> (<platform>)`` (default: this package's).
        headers: extra static headers, e.g. ``{"X-Device-Fingerprint": ...}`` (default:
            ``X-Device-Fingerprint`` from ``$MASSUGC_DEVICE_FINGERPRINT`` when set). They
            can never replace ``X-API-Key``, ``Content-Type`` or ``Idempotency-Key``, and
            their values are never logged.
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
        spool_path: Any = "default",
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
        spool_max_bytes: Optional[int] = None,
        allow_insecure_http: bool = False,
        ca_bundle: Optional[str] = None,
        user_agent: Optional[str] = None,
        headers: Optional[Mapping[str, Any]] = None,
        flush_on_sigterm: bool = False,
        redact_patterns: Sequence[str] = (),
        error_message_limit: int = 4096,
        field_limit: int = 256,
        classification_rules: Sequence[Mapping[str, Any]] = (),
        key_store: Optional[KeyStore] = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(level)
        self.diagnostics = Diagnostics()
        self.counters = Counters()
        self._event_type = str(event_type)
        self.shutdown_timeout = float(shutdown_timeout)
        self._rng = rng
        self.policy = RetryPolicy.from_config(retry)
        self._queue_size = int(queue_size)
        self._max_in_flight = max(1, int(max_in_flight))
        self._closed = False
        self._started = False
        self._start_lock = threading.Lock()
        self._pid = os.getpid()
        self._thread_idents: frozenset[int] = frozenset()
        #: Logger name -> whether its records are this package's own (never sent).
        self._internal_loggers: dict[str, bool] = {}
        self._last_flush: Optional[float] = None
        self._last_flush_deadline = 0.0
        self._lost_at_last_flush = 0

        #: The keys this handler has sent with: scrubbed, in any encoding, from all it sends.
        self._secrets = KnownSecrets()
        self.settings = payload_settings(
            event_type=self._event_type, source=source, version=version,
            extra_fields=extra_fields, redact_patterns=redact_patterns,
            error_message_limit=error_message_limit, field_limit=field_limit,
            classification_rules=classification_rules, known_secrets=self._secrets,
        )

        url = api_url or os.environ.get("MASSUGC_API_URL") or PRODUCTION_API_URL
        hold: Optional[Hold] = None
        self._transport: Optional[Transport]
        try:
            self._transport = Transport(
                url, None, endpoint=endpoint, timeout=timeout,
                allow_insecure_http=bool(allow_insecure_http),
                max_connections=self._max_in_flight, ca_bundle=ca_bundle,
                user_agent=user_agent, headers=app_headers(headers),
                on_route=self._remember_route,
            )
        except Exception as exc:  # a bad URL or timeout: keep events, say so once
            self._transport = None
            hold = Hold.BAD_URL
            self.diagnostics.say_once(
                "config:url", logging.ERROR,
                "CloudHandler cannot send: %s. Events are kept in the spool; once the URL is "
                "fixed, send them with 'massugc-logging spool replay --from %s'.", exc,
                _unusable_destination(endpoint),
            )
        #: Where this handler's events go; the spool keeps them for this destination only.
        #: An unusable URL is not written anywhere: it may hold a password.
        self.destination = (destination_of(self._transport.api_url, self._transport.url[
            len(self._transport.api_url):]) if self._transport is not None
            else _unusable_destination(endpoint))
        self._keys = _key_follower(api_key, key_store)
        self._key_lock = threading.Lock()

        limits: dict[str, Any] = {}
        if spool_max_events is not None:
            limits["max_events"] = int(spool_max_events)
        if spool_max_age is not None:
            limits["max_age"] = float(spool_max_age)
        if spool_max_bytes is not None:
            limits["max_bytes"] = int(spool_max_bytes)
        # No event is ever scheduled further ahead than its longest backoff: a due time
        # beyond that comes from a wall clock set back, and is due now.
        limits["schedule_horizon"] = self.policy.backoff_cap + 1.0
        self._spool_limits = limits
        self._outbox = open_outbox(spool_path, limits, self.diagnostics, self.counters.drop,
                                   self.destination)
        self._build_pipeline(hold)
        if self._transport is not None:
            self._use_key(self._keys.state, changed=False)
        _register_fork_hooks(self)
        _LIVE_HANDLERS.add(self)
        self._start()
        if flush_on_sigterm:
            install_sigterm_flush(self.diagnostics, self.shutdown_timeout)

    # -- set-up ---------------------------------------------------------------

    def _build_pipeline(self, hold: Optional[Hold]) -> None:
        """The delivery engine, its workers and the intake (anew in a forked child)."""
        transport = self._transport
        hint = ("Is the local collector running? Start it with 'massugc-logging serve'."
                if transport is not None and is_loopback(transport.host) else "")
        self._engine = DeliveryEngine(
            self._outbox, self._send_one, policy=self.policy, max_in_flight=self._max_in_flight,
            clock=time.monotonic, wall=time.time, rng=self._rng, counters=self.counters,
            diagnostics=self.diagnostics, destination=self.destination, unreachable_hint=hint,
            memory_key=transport.api_url if transport is not None else None,
        )
        self._engine.set_hold(hold)
        self._workers = DeliveryWorkers(
            self._engine, abort=transport.abort if transport is not None else None,
            request_deadline=transport.request_deadline if transport is not None else 13.05,
            before_take=self._follow_key, look_again_within=self._key_poll,
        )
        self._intake = Intake(
            self._outbox, self._prepare, capacity=self._queue_size,
            counters=self.counters, diagnostics=self.diagnostics,
            on_written=self._workers.wake, on_start=self._on_start,
        )

    # -- the key ----------------------------------------------------------------

    def _use_key(self, state: KeyState, *, changed: bool) -> None:
        """Send with ``state``'s key from now on; hold sending while there is none."""
        transport = self._transport
        if transport is None:
            return
        transport.set_key(state.key)
        if state.key is not None:
            self._secrets.add(state.key.reveal())
            self.diagnostics.forget("config:no-key")
            self.diagnostics.forget("config:bad-key")
            self._engine.key_changed()
            if changed:
                self.diagnostics.say_once(
                    "config:key-changed", logging.INFO,
                    "CloudHandler: now sending with the API key from %s (%s).",
                    state.source, state.key.masked)
                self.diagnostics.forget("config:key-changed")
        elif state.problem is not None:
            self._engine.set_hold(Hold.BAD_KEY)
            self.diagnostics.forget("config:no-key")
            self.diagnostics.say_once(
                "config:bad-key", logging.ERROR,
                "CloudHandler cannot use its API key: %s. Events are kept in the spool until "
                "a valid key is set.", state.problem)
        else:
            self._engine.set_hold(Hold.NO_KEY)
            self.diagnostics.forget("config:bad-key")
            self.diagnostics.say_once(
                "config:no-key", logging.WARNING,
                "CloudHandler has no API key: set MASSUGC_API_KEY, pass api_key, or run "
                "'massugc-logging key set'%s. Events are kept in the spool until a key is set, "
                "and the key store is read again every few seconds meanwhile.",
                f" (the local collector accepts any well-formed key, e.g. MASSUGC_API_KEY="
                f"{LOCAL_COLLECTOR_KEY})" if is_loopback(transport.host) else "")
        self._workers.wake()

    def _follow_key(self) -> None:
        """On a delivery thread, before it takes work: read the key store again if due.

        One worker reads and applies at a time; the others wait for it, so none takes an
        event with a key that is on its way out.
        """
        if not (self._keys.due(self._engine.waiting_for_key()) or self._key_lock.locked()):
            return
        with self._key_lock:
            if self._keys.due(self._engine.waiting_for_key()):
                state = self._keys.refresh()
                if state is not None:
                    self._use_key(state, changed=True)

    def _key_poll(self) -> Optional[float]:
        """How soon an idle worker looks at the key store again: soon while events wait
        for a usable key, else never (no polling when there is nothing to send)."""
        if self._transport is not None and self._keys.follows_the_store \
                and self._engine.waiting_for_key() and self._engine.has_pending():
            return KEY_CHECK_WHILE_HELD
        return None

    # -- what sending learns about the API ------------------------------------------

    def _remember_route(self, endpoint: str) -> None:
        """On a delivery thread: the API answered on ``endpoint``, not the configured path;
        keep it for this API URL, for the next runs too, and say so once."""
        transport = self._transport
        if transport is None:
            return
        self.diagnostics.say_once(
            "route:" + endpoint, logging.WARNING,
            "CloudHandler: %s answers on %s, not on %s; events go there from now on (and in "
            "the next runs). Set endpoint: %s to say so in the configuration.",
            transport.api_url, endpoint, transport.endpoints[0], endpoint)
        with contextlib.suppress(Exception):
            self._outbox.remember(transport.api_url, "route", endpoint, float("inf"))

    def _recall(self) -> None:
        """On the intake thread at start: use what earlier runs learnt about the API (the
        route that answers; a pause, the circuit's probes, a hold on credits)."""
        transport = self._transport
        if transport is None:
            return
        learnt = self._outbox.recall(transport.api_url, time.time())
        if "route" in learnt:
            transport.use_route(learnt["route"])
        if "health" in learnt:
            self._engine.recall(learnt["health"])
            self._workers.wake()

    # -- running jobs -------------------------------------------------------------

    def _on_start(self) -> None:
        """On the intake thread at start: jobs left running by a process that is gone
        become their failure events; events of release 0.1.x, which name no destination,
        are pointed out."""
        self._outbox.start(time.time())
        self._recall()
        self._point_out_other_destinations()
        found = self._outbox.recover_abandoned(time.time())
        if found:
            self.diagnostics.count("jobs_recovered", found)
            self.diagnostics.say_once(
                "jobs:recovered", logging.WARNING,
                "CloudHandler: %d job(s) were still running when the app last stopped; each "
                "is reported as a failure.", found)
            self._workers.wake()

    def _point_out_other_destinations(self) -> None:
        """Say once what the spool keeps that this handler does not send: events of release
        0.1 (no destination) and events logged for other APIs, which wait for a handler of
        theirs, or for 'spool replay --from', within the spool's age bound."""
        counts = self._outbox.counts_by_destination()
        unaddressed = counts.pop(None, 0)
        counts.pop(self.destination, None)
        if unaddressed:
            self.diagnostics.say_once(
                "spool:unaddressed", logging.WARNING,
                "CloudHandler: the spool %s holds %d event(s) kept by release 0.1, which do "
                "not say which API they were logged for, so no handler sends them. Send them "
                "with 'massugc-logging spool replay --from unaddressed --api-url URL', or "
                "delete them with 'massugc-logging spool purge'.", self._outbox.path,
                unaddressed)
        if counts:
            self.diagnostics.say_once(
                "spool:others", logging.INFO,
                "CloudHandler: the spool %s also holds events logged for other APIs (%s); "
                "this handler sends only those for %s. They wait for a handler of theirs; "
                "if one is this API under an earlier address, send them here with "
                "'massugc-logging spool replay --from DESTINATION --api-url URL'.",
                self._outbox.path, "; ".join(f"{d}: {n}" for d, n in sorted(counts.items())),
                self.destination)

    def _abandon_open_jobs(self) -> None:
        """On the intake thread, last thing at exit: jobs still running are reported as
        failures of the shutdown."""
        found = self._outbox.abandon_running(
            lambda body, now: restamp_failure(body, SHUTDOWN_MESSAGE, now), time.time())
        if found:
            self.diagnostics.count("jobs_open_at_shutdown", found)

    def _start(self) -> None:
        """Start the intake and delivery threads (never during interpreter shutdown)."""
        if sys.is_finalizing():
            return
        self._intake.start()
        self._workers.start()
        intake_thread = self._intake.thread
        idents = set(self._workers.idents)
        if intake_thread is not None and intake_thread.ident is not None:
            idents.add(intake_thread.ident)
        self._thread_idents = frozenset(idents)
        self._started = True

    # -- fork -----------------------------------------------------------------

    def _before_fork(self) -> None:
        if not self._closed:
            self._outbox.prepare_fork()

    def _after_fork_in_parent(self) -> None:
        if not self._closed:
            self._outbox.after_fork_parent()

    def _after_fork_in_child(self) -> None:
        """In a forked child: a fresh connection, session, locks and threads; the parent's
        queue and backlog stay the parent's. Threads restart at the child's first event."""
        if self._closed:
            return
        self.diagnostics.after_fork_in_child()
        self.counters.after_fork_in_child()
        self._keys.after_fork_in_child()
        self._key_lock = threading.Lock()
        self._start_lock = threading.Lock()
        try:
            self._outbox.after_fork_child()
        except SpoolError as exc:
            spool_problem(self.diagnostics, exc)
            self._outbox = MemorySpool(destination=self.destination, **self._spool_limits)
        if self._transport is not None:
            self._transport.renew_session()
        self._build_pipeline(self._engine.hold)
        self._started = False
        self._thread_idents = frozenset()
        self._pid = -1

    def _restart_in_child(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid() or self._closed:
                return
            self._pid = os.getpid()
            self._start()

    # -- the app thread -------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Hand a matching record to the intake; never blocks, never raises, re-entrant.

        Matching: its ``event_type`` is this handler's, or it is the ``job started``
        record of a ``report_job`` block for this event type (kept as running).
        """
        try:
            if getattr(record, "event_type", None) != self._event_type:
                mark = getattr(record, JOB_MARK, None)
                if not (isinstance(mark, JobMark) and mark.started
                        and mark.event_type == self._event_type):
                    return
            name = record.name
            internal = self._internal_loggers.get(name)
            if internal is None:
                internal = self._internal_loggers[name] = is_internal_logger(name)
            if internal:
                return
            if threading.get_ident() in self._thread_idents:
                return
            if self._pid != os.getpid():
                self._restart_in_child()
            if self._closed or not self._started:
                self._emit_without_threads(record)
                return
            exc = capture_exception(record.exc_info) if record.exc_info else None
            if not self._intake.accept((record, exc)):
                self.counters.drop_on_app_thread("queue_full")
                self.diagnostics.say_once(
                    "drop:queue_full", logging.WARNING,
                    "CloudHandler's queue is full (%d events): new events are dropped until it "
                    "drains. The count is in stats()['dropped'].", self._queue_size,
                )
        except Exception:
            self.counters.drop_on_app_thread("internal_error")

    def _emit_without_threads(self, record: logging.LogRecord) -> None:
        """After close (or when created during interpreter shutdown) there is no thread:
        write straight to the spool file for the next run, or count a drop."""
        path = self._outbox.path
        if path is None:
            self.counters.drop("closed")
            return
        written = False
        try:
            prepared = self._prepare((record, capture_exception(record.exc_info)))
            # No thread is left to wait on a lock: a busy file is a drop, counted at once.
            spool = Spool(path, destination=self.destination, busy_timeout=0.0,
                          **self._spool_limits)
            try:
                spool.write(_write_of(prepared), time.time())
                written = True
                if prepared.event is not None:
                    self.counters.add("spooled")
                with contextlib.suppress(SpoolError):  # busy: the claim lapses by itself
                    spool.release()  # no thread here will send it: any process may
            finally:
                spool.close()
        except Exception:
            if not written:
                self.counters.drop("closed")

    # -- what the intake and delivery threads call back ---------------------------

    def _prepare(self, item: tuple[logging.LogRecord, Optional[ExceptionSummary]]) -> Prepared:
        """Build and redact one event, or the stand-in failure of a job that started (on
        the intake thread); report field warnings once."""
        record, exc = item
        mark = getattr(record, JOB_MARK, None)
        if not isinstance(mark, JobMark) or mark.event_type != self._event_type:
            mark = None
        if mark is not None and mark.started:
            stand_in = types.SimpleNamespace(**{
                **record.__dict__, "success": False, "error_message": STOPPED_MESSAGE,
                "levelno": logging.ERROR, "exc_info": None})
            built = self._build(stand_in, None)
            return Prepared(started=RunningJob(mark.token, built.event_id, built.body(),
                                               _created(record)))
        built = self._build(record, exc)
        return Prepared(event=(built.event_id, built.body(), _created(record)),
                        finished=mark.token if mark is not None else None)

    def _build(self, record: Any, exc: Optional[ExceptionSummary]) -> BuiltEvent:
        built = build_event(record, self.settings, exception=exc,
                            fallback_id=str(uuid.uuid4()), now=time.time())
        for warning in built.warnings:
            self.diagnostics.count("field_warnings")
            self.diagnostics.say_once("field:" + warning, logging.WARNING,
                                      "CloudHandler: %s (said once)", warning)
        return built

    def _send_one(self, row: SpooledEvent) -> Outcome:
        """POST one event and redact what the server said (it is logged and stored)."""
        transport = self._transport
        assert transport is not None  # the engine holds while there is none
        outcome = transport.send(row.body, row.event_id)
        if outcome.reason:
            outcome = dataclasses.replace(
                outcome, reason=self.settings.scrub(outcome.reason, _REASON_CHARS))
        return outcome

    # -- flush, close, stats --------------------------------------------------

    def flush(self, timeout: Optional[float] = None) -> bool:  # type: ignore[override]
        """Wait until everything accepted so far, and any backlog replayed from the
        spool, is delivered; at most ``timeout`` (default ``shutdown_timeout``) seconds.

        Returns True only when all of it was delivered and no event was dropped or
        dead-lettered since the previous flush. Returns early, False, when nothing
        can be sent before the deadline (a pause, a backoff, a missing or refused
        key): the events stay in the spool.
        """
        budget = self.shutdown_timeout if timeout is None else max(0.0, float(timeout))
        deadline = time.monotonic() + budget
        if timeout is None:
            self._last_flush_deadline = deadline
        try:
            if self._pid != os.getpid() or not self._started or self._closed:
                return False
            if not self._intake.wait_written(self._intake.accepted, deadline):
                return False
            self._workers.wake()
            # Without a timeout this is logging.shutdown()'s flush: an API known to be
            # down is not waited for; what is left stays in the spool for the next run.
            delivered = self._workers.wait_quiet(deadline, give_up_when_paused=timeout is None)
            lost = self.counters.lost()
            clean = lost == self._lost_at_last_flush
            self._lost_at_last_flush = lost
            return delivered and clean
        except Exception:
            return False
        finally:
            if timeout is None:
                self._last_flush = time.monotonic()

    def close(self) -> None:
        """Write out what is queued, deliver what can be delivered within
        ``shutdown_timeout``, then stop and release every resource.

        Safe to call twice and after ``logging.shutdown()``. Whatever is not
        delivered stays in the spool for the next run; a request still in flight
        at the deadline is cut off, and its event is sent again by the next run.
        """
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
        intake_stopped = True
        try:
            start = time.monotonic()
            deadline = start + self.shutdown_timeout
            if self._pid == os.getpid() and self._started:
                # logging.shutdown() flushes right before closing: both share one budget.
                if self._last_flush is not None and start - self._last_flush < 1.0:
                    deadline = min(deadline, self._last_flush_deadline)
                exiting = process_is_exiting()
                intake_stopped = self._intake.stop(
                    deadline, then=self._abandon_open_jobs if exiting else None)
                self._workers.wake()
                self._workers.wait_quiet(deadline, give_up_when_paused=True)
                self._engine.stop()
                if self._transport is not None:
                    self._transport.abort_all()
                self._workers.stop(time.monotonic() + 0.5)
            _LIVE_HANDLERS.discard(self)
            with contextlib.suppress(Exception):
                self._outbox.release()  # what is left may be sent by any process, now
            if intake_stopped:
                self._outbox.close()
            else:
                self._intake.close_outbox_on_exit()
            if self._transport is not None:
                self._transport.close()
        except Exception:  # noqa: S110 - closing at exit never raises
            pass
        finally:
            super().close()

    def set_api_key(self, api_key: Union[str, ApiKey, None]) -> None:
        """Send with ``api_key`` from now on (whatever the key store says) and resume
        sending if the old key was missing or refused; None follows the key store again.

        Raises:
            InvalidApiKey: ``api_key`` is not a well-formed key.
        """
        key = api_key if api_key is None or isinstance(api_key, ApiKey) \
            else ApiKey(api_key.strip())
        state = self._keys.pin(key)
        if key is not None:
            self._use_key(state, changed=True)
        else:
            self._workers.wake()  # a worker reads the store again at once

    def stats(self) -> dict[str, Any]:
        """Counters: enqueued, sent, retried, spooled, pending, dropped by reason,
        dead-lettered, last error, last status, the delivery state and requests in flight."""
        counts = self.counters.snapshot()
        try:
            kept = self._outbox.pending_count()
        except SpoolError:
            kept = 0
        path = self._outbox.path
        return {
            "enqueued": self._intake.accepted,
            "sent": counts["sent"],
            "retried": counts["retried"],
            "spooled": counts["spooled"],
            "pending": self._intake.waiting + kept,
            "dropped": counts["dropped"],
            "dead_lettered": counts["dead_lettered"],
            "last_error": counts["last_error"],
            "last_status": counts["last_status"],
            "state": self._engine.status(),
            "holds": self._engine.holds(),
            "destination": self.destination,
            "key_source": self._keys.state.source,
            "in_flight": self._engine.in_flight(),
            "spool": str(path) if path else None,
            "spool_in_memory": bool(getattr(self._outbox, "using_memory", path is None)),
            "trust": self._transport.trust.description if self._transport else None,
            "problems": self.diagnostics.snapshot(),
        }

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        url = self._transport.url if self._transport is not None else "unusable"
        return f"<CloudHandler {url} ({level})>"


def _key_follower(api_key: Optional[Union[str, ApiKey]],
                  key_store: Optional[KeyStore]) -> KeyFollower:
    """A key given to the handler is pinned (a malformed one holds sending); without one
    the handler follows the environment and the key store."""
    if isinstance(api_key, ApiKey):
        return KeyFollower(key_store, KeyState(api_key, "argument"))
    if api_key is not None and str(api_key).strip():
        try:
            return KeyFollower(key_store, KeyState(ApiKey(str(api_key).strip()), "argument"))
        except ValueError as exc:
            return KeyFollower(key_store, KeyState(None, "argument", str(exc)))
    return KeyFollower(key_store)


def _unusable_destination(endpoint: Any) -> str:
    """Where events wait while ``api_url`` cannot be used (never the URL itself, which may
    hold a password)."""
    return UNUSABLE_DESTINATION + "/" + str(endpoint).strip().lstrip("/")


def _write_of(prepared: Prepared) -> Write:
    """The spool write for one prepared item."""
    return Write(events=(prepared.event,) if prepared.event is not None else (),
                 started=(prepared.started,) if prepared.started is not None else (),
                 finished=(prepared.finished,) if prepared.finished is not None else ())


def _created(record: Any) -> float:
    """The record's creation time, or now if it has none usable."""
    created = getattr(record, "created", None)
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        return float(created)
    return time.time()
