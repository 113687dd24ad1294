"""The pipeline of one CloudHandler, and the one owner of its lifecycle.

:class:`Pipeline` holds everything a handler's delivery needs and nothing else
does: the intake and delivery threads, the outbox, the transport, the key in
use and what holds sending. It has the four verbs a handler's life needs,
after CPython's ``QueueListener`` and OpenTelemetry's ``BatchProcessor``:

- :meth:`~Pipeline.submit`: from ``emit``; counts and queues, never blocks;
- :meth:`~Pipeline.write_out` and :meth:`~Pipeline.drain`: everything accepted
  durable in the spool, or delivered, by a deadline (``flush``, ``force_flush``);
- :meth:`~Pipeline.shutdown`: write out, deliver what can be delivered by the
  deadline (what ``flush`` spent just before comes off it), report jobs still
  running at exit as shut down, and release every resource;
- :meth:`~Pipeline.for_child`: after ``os.fork()``, a child's own threads,
  connection and session; the parent's backlog stays the parent's.

The app thread only ever calls ``submit``; everything else that touches a
file or a socket runs on the pipeline's threads or at shutdown. The app's thread
makes only the queue and the intake thread: the intake thread, when the first
event comes (or half a second after the handler is made), opens the outbox and
makes the delivery engine and its workers, so an app's start pays neither for
the spool, the engine nor the HTTP stack (they load there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import random
import sys
import threading
import time
import types
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union
from urllib.parse import urlsplit

from massugc_logging._exiting import process_is_exiting
from massugc_logging.contract import LOCAL_COLLECTOR_KEY, PRODUCTION_API_URL
from massugc_logging.diagnostics import Diagnostics, Topic
from massugc_logging.jobs import JOB_MARK, JobMark
from massugc_logging.keystore import ApiKey, KeyStore
from massugc_logging.outcome import Outcome, OutcomeKind
from massugc_logging.pipeline.addresses import (
    Timeout,
    app_headers,
    check_api_url,
    check_headers,
    coerce_timeout,
    destination_of,
    is_loopback,
)
from massugc_logging.pipeline.counters import Counters
from massugc_logging.pipeline.intake import Intake, Prepared
from massugc_logging.pipeline.keyfollow import KEY_CHECK_WHILE_HELD, KeyFollower, KeyState
from massugc_logging.pipeline.retry import RetryPolicy

if TYPE_CHECKING:
    from massugc_logging.payload import BuiltEvent, ExceptionSummary, PayloadSettings
    from massugc_logging.pipeline.delivery import DeliveryEngine, DeliveryWorkers
    from massugc_logging.pipeline.spool import Outbox, SpooledEvent, Write
    from massugc_logging.pipeline.transport import Transport
    from massugc_logging.redaction import KnownSecrets

#: ``error_message`` of a job whose process ended while it ran (sent by the next run).
STOPPED_MESSAGE = ("The app stopped while the job was running: its process ended before the "
                   "job reported an outcome (failure_time is when the job started)")
#: ``error_message`` of a job still running when the app shut down.
SHUTDOWN_MESSAGE = "The app was shut down while the job was running"
#: Where events are kept while the handler's ``api_url`` cannot be used.
UNUSABLE_DESTINATION = "unusable-api-url"
_REASON_CHARS = 300
#: How long the pipeline lets the app's own start-up go first before it opens the spool,
#: loads its rules and recovers abandoned jobs, unless the app logs or closes sooner.
START_DELAY = 0.5
#: The longest the workers get to stop after the shutdown deadline.
_WORKERS_GRACE = 0.5


@dataclass(frozen=True)
class PipelineConfig:
    """What a pipeline is made from: the handler's arguments, checked and coerced.

    ``settings`` makes the payload settings (redaction rules, failure categories) and
    ``secrets`` the keys' scrubber: both are made on the pipeline's intake thread, on
    first use, so the app's start does not pay for compiling rule tables.
    """

    api_url: str
    endpoint: str
    api_key: Optional[Union[str, ApiKey]]
    spool_path: Any
    timeout: Timeout
    settings: Callable[[KnownSecrets], PayloadSettings]
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    queue_size: int = 10_000
    max_in_flight: int = 4
    spool_limits: Mapping[str, Any] = field(default_factory=dict)
    allow_insecure_http: bool = False
    ca_bundle: Optional[str] = None
    user_agent: Optional[str] = None
    headers: Optional[Mapping[str, Any]] = None


class Pipeline:
    """The delivery pipeline of one handler (see the module).

    Args:
        config: what to build.
        key_store: where the key is looked up when none is given (default ``KeyStore()``).
        rng: floats in [0, 1), for jitter.
    """

    def __init__(self, config: PipelineConfig, *, key_store: Optional[KeyStore] = None,
                 rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 send: Optional[Callable[[SpooledEvent], Outcome]] = None) -> None:
        self.config = config
        #: What delivery decides by (backoffs, pauses, the key store's re-reads), and the
        #: wall clock the spool keeps times on; a test passes its own.
        self._clock = clock
        self._wall = wall
        #: Sends instead of the HTTP transport (a test's scripted API): no socket then.
        self._send_instead = send
        self.policy = config.policy
        self.diagnostics = Diagnostics()
        self.counters = Counters()
        self._rng = rng
        self._lock = threading.Lock()
        self._key_lock = threading.Lock()
        self._settings_lock = threading.Lock()
        self._settings: Optional[PayloadSettings] = None
        self._secrets: Optional[KnownSecrets] = None
        self._closed = False
        self._started = False
        self._pid = os.getpid()
        self.thread_idents: frozenset[int] = frozenset()
        self._lost_at_last_drain = 0
        #: What the last write_out took, and what had been accepted then: shutdown takes
        #: it off its budget when nothing was accepted in between (logging.shutdown()).
        self._last_write_out: tuple[int, float] = (-1, 0.0)
        #: Made by the first delivery worker that needs it (see ``_transport``).
        self.transport: Optional[Transport] = None
        #: The route an earlier run found answering, for the transport to use.
        self._learnt_route: Optional[str] = None
        self._forked = False
        self._usable = self._check(config)
        #: Where this handler's events go; the spool keeps them for this destination only.
        #: An unusable URL is not written anywhere: it may hold a password.
        self.destination = destination_of(self._usable, config.endpoint) if self._usable \
            else f"{UNUSABLE_DESTINATION}/{config.endpoint.strip().lstrip('/')}"
        self.keys = _key_follower(config.api_key, key_store, clock)
        #: The outbox, the engine and its workers: made by the intake thread at start
        #: (see ``_open_delivery``); None until then.
        self.outbox: Optional[Outbox] = None
        self.engine: Optional[DeliveryEngine] = None
        self.workers: Optional[DeliveryWorkers] = None
        #: The outbox whose locks a fork in progress holds (see ``before_fork``).
        self._forking: Optional[Outbox] = None
        self.intake = self._make_intake()
        _register_fork_hooks(self)
        self._start()

    def _check(self, config: PipelineConfig) -> Optional[str]:
        """The API URL checked, with the headers and the timeout, on the app's thread
        without loading the HTTP stack; None (said once) when they are not usable."""
        try:
            url = check_api_url(config.api_url, allow_insecure_http=config.allow_insecure_http)
            check_headers(app_headers(config.headers), config.user_agent)
            coerce_timeout(config.timeout)
            return url
        except Exception as exc:
            self._cannot_send(exc, config.endpoint)
            return None

    def _cannot_send(self, problem: Exception, endpoint: str) -> None:
        self.diagnostics.say_once(
            Topic.CONFIG_URL, logging.ERROR,
            "CloudHandler cannot send: %s. Events are kept in the spool; once this is fixed, "
            "send them with 'massugc-logging spool replay --from %s'.", problem,
            getattr(self, "destination", f"{UNUSABLE_DESTINATION}/{endpoint.strip('/')}"))

    @property
    def settings(self) -> PayloadSettings:
        """The payload settings, made on first use (by the intake thread, normally)."""
        settings = self._settings
        if settings is None:
            with self._settings_lock:
                if self._settings is None:
                    from massugc_logging.redaction import KnownSecrets  # noqa: PLC0415

                    self._secrets = KnownSecrets()
                    self._settings = self.config.settings(self._secrets)
                settings = self._settings
        return settings

    # -- set-up -----------------------------------------------------------------------

    def _make_intake(self) -> Intake:
        """The queue and its thread (anew in a forked child); its outbox comes at start."""
        return Intake(
            self.outbox, self._prepare, capacity=self.config.queue_size,
            counters=self.counters, diagnostics=self.diagnostics,
            on_written=self._wake_workers, on_start=self._on_start, start_delay=START_DELAY,
            clock=self._wall)

    def _open_delivery(self) -> None:
        """On the intake thread at start: the outbox, the engine and its workers (not
        started). In a forked child that had them, the child's own, on the outbox the
        parent's was reopened as."""
        from massugc_logging.pipeline.decisions import Mode  # noqa: PLC0415
        from massugc_logging.pipeline.delivery import (  # noqa: PLC0415
            DeliveryEngine,
            DeliveryWorkers,
        )
        from massugc_logging.pipeline.outbox import open_outbox  # noqa: PLC0415

        outbox = self.outbox
        if outbox is None:
            outbox = open_outbox(self.config.spool_path, self.config.spool_limits,
                                 self.diagnostics, self.counters.drop, self.destination,
                                 clock=self._clock)
        usable = self._usable
        hint = ("Is the local collector running? Start it with 'massugc-logging serve'."
                if usable and is_loopback(_host(usable)) else "")
        engine = DeliveryEngine(
            outbox, self._send, policy=self.policy,
            max_in_flight=self.config.max_in_flight, clock=self._clock, wall=self._wall,
            rng=self._rng, counters=self.counters, diagnostics=self.diagnostics,
            destination=self.destination, unreachable_hint=hint, memory_key=usable)
        if self.engine is not None:
            engine.set_hold(self.engine.hold)  # a forked child keeps the parent's hold
        elif not usable:
            engine.set_hold(Mode.BAD_URL)
        workers = DeliveryWorkers(engine, before_take=self._follow_key,
                                  look_again_within=self._key_poll)
        if self.transport is not None:
            workers.use_transport(self.transport)
        self.outbox, self.engine, self.workers = outbox, engine, workers
        self.intake.use_outbox(outbox)

    def _spool_file(self) -> Optional[str]:
        """The spool file the configuration names (before the start, without opening it)."""
        from massugc_logging.pipeline.outbox import resolve_spool_path  # noqa: PLC0415

        path = resolve_spool_path(self.config.spool_path)
        return str(path) if path is not None else None

    def _wake_workers(self) -> None:
        """Something to send, or something changed: one idle worker looks again."""
        workers = self.workers
        if workers is not None:
            workers.wake()

    def _start(self) -> None:
        """Start the intake thread (never during interpreter shutdown); it starts the
        delivery workers once the transport, the key and the spool are ready."""
        if sys.is_finalizing():
            return
        self.intake.start()
        intake_thread = self.intake.thread
        if intake_thread is not None and intake_thread.ident is not None:
            self.thread_idents = frozenset({intake_thread.ident})
        self._started = True

    def _transport(self) -> Optional[Transport]:
        """The transport, made on first use by a delivery worker: the HTTP stack and the
        trust store load there, when there is something to send, never on the app's
        thread. A configuration it refuses (a CA bundle that cannot be read) holds
        sending, said once."""
        transport = self.transport
        if transport is not None or not self._usable:
            return transport
        with self._lock:
            if self.transport is not None:
                return self.transport
            from massugc_logging.pipeline.transport import Transport  # noqa: PLC0415

            config = self.config
            try:
                transport = Transport(
                    config.api_url, self.keys.state.key, endpoint=config.endpoint,
                    timeout=config.timeout, allow_insecure_http=config.allow_insecure_http,
                    max_connections=config.max_in_flight, ca_bundle=config.ca_bundle,
                    user_agent=config.user_agent, headers=app_headers(config.headers),
                    on_route=self._remember_route)
            except Exception as exc:
                from massugc_logging.pipeline.decisions import Mode  # noqa: PLC0415

                self._cannot_send(exc, config.endpoint)
                if self.engine is not None:
                    self.engine.set_hold(Mode.BAD_URL)
                return None
            if self._learnt_route is not None:
                transport.use_route(self._learnt_route)
            if self.workers is not None:
                self.workers.use_transport(transport)
            self.transport = transport
            return transport

    # -- the app thread ------------------------------------------------------------------

    def submit(self, record: logging.LogRecord) -> None:
        """Queue a record that the handler accepted; never blocks, never raises past the
        handler's guard. Records of the pipeline's own threads never come back in."""
        if threading.get_ident() in self.thread_idents:
            return
        if self._pid != os.getpid():
            self._restart_in_child()
        if self._closed or not self._started:
            self._write_without_threads(record)
            return
        exc = _captured(record) if record.exc_info else None
        if not self.intake.accept((record, exc)):
            self.counters.drop_on_app_thread("queue_full")
            self.diagnostics.say_once(
                Topic.DROP_QUEUE_FULL, logging.WARNING,
                "CloudHandler's queue is full (%d events): new events are dropped until it "
                "drains. The count is in stats()['dropped'].", self.config.queue_size)

    def _write_without_threads(self, record: logging.LogRecord) -> None:
        """After shutdown (or when made during interpreter shutdown) there is no thread:
        write straight to the spool file for the next run, without waiting for a lock, or
        count a drop at once."""
        from massugc_logging.pipeline.outbox import resolve_spool_path  # noqa: PLC0415
        from massugc_logging.pipeline.spool import Spool, SpoolError  # noqa: PLC0415

        path = resolve_spool_path(self.config.spool_path)
        if path is None:
            self.counters.drop("closed")
            return
        written = False
        try:
            prepared = self._prepare((record, _captured(record)))
            spool = Spool(path, destination=self.destination, busy_timeout=0.0,
                          **self.config.spool_limits)
            try:
                spool.write(_write_of(prepared), self._wall())
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

    # -- flush, drain, shutdown ------------------------------------------------------------

    def write_out(self, deadline: float) -> bool:
        """Wait until everything accepted so far is in the spool (or counted as dropped),
        at most until ``deadline`` (monotonic); True when it is."""
        started = time.monotonic()
        try:
            if self._pid != os.getpid() or not self._started or self._closed:
                return False
            accepted = self.intake.accepted
            return self.intake.wait_written(accepted, deadline)
        finally:
            self._last_write_out = (self.intake.accepted, time.monotonic() - started)

    def drain(self, deadline: float) -> bool:
        """Deliver everything accepted so far and any backlog replayed from the spool, by
        ``deadline`` (monotonic). True only when all of it was delivered and no event was
        dropped or dead-lettered since the previous drain; False at once when nothing can
        be sent before the deadline (a pause, a backoff, a missing or refused key)."""
        if self._pid != os.getpid() or not self._started or self._closed:
            return False
        # The spool's backlog counts too: the pipeline starts now if it had not yet.
        if not self.intake.begin_now(deadline):
            return False
        workers, engine = self.workers, self.engine
        if workers is None or engine is None \
                or not self.intake.wait_written(self.intake.accepted, deadline):
            return False
        engine.end_start_delay()  # the app wants its events now
        workers.wake()
        delivered = workers.wait_quiet(deadline)
        lost = self.counters.lost()
        clean = lost == self._lost_at_last_drain
        self._lost_at_last_drain = lost
        return delivered and clean

    def shutdown(self, budget: float) -> None:
        """Write out what is queued, deliver what can be delivered within ``budget``
        seconds (less what a write-out just before took, when nothing came in since:
        ``logging.shutdown()`` flushes, then closes), then stop and release everything.

        At exit, jobs still running are reported as shut down. A request still in flight
        at the deadline is cut off; its event is sent again by the next run. Safe to call
        twice; never raises.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        start = time.monotonic()
        accepted_then, spent = self._last_write_out
        if self._started and accepted_then == self.intake.accepted:
            budget -= spent
        deadline = start + max(0.0, budget)
        intake_stopped = True
        try:
            if self._pid == os.getpid() and self._started:
                intake_stopped = self.intake.stop(
                    deadline, then=self._abandon_open_jobs if process_is_exiting() else None)
                workers = self.workers
                if workers is not None:
                    if self.engine is not None:
                        self.engine.end_start_delay()
                    workers.wake()
                    # An API known to be down is not waited for: what is left stays in
                    # the spool for the next run.
                    workers.wait_quiet(deadline, give_up_when_paused=True)
                    workers.stop(time.monotonic() + _WORKERS_GRACE)
            outbox = self.outbox
            if outbox is not None:
                with contextlib.suppress(Exception):
                    outbox.release()  # what is left may be sent by any process, now
                if intake_stopped:
                    outbox.close()
                else:
                    self.intake.close_outbox_on_exit()
            if self.transport is not None:
                self.transport.close()
        except Exception:  # noqa: S110 - closing at exit never raises
            pass

    # -- fork -------------------------------------------------------------------------

    def before_fork(self) -> None:
        """Let the pipeline finish starting (its start reads the key store, which may
        import the keyring's backends) and finish the imports its threads make on first
        use, then hold the outbox's locks so that no transaction is open at the fork."""
        if not self._closed:
            if self._started and self._pid == os.getpid():
                self.intake.begin_now(time.monotonic() + _FORK_WAIT)
            _finish_lazy_imports()
            self._forking = self.outbox
            if self._forking is not None:
                self._forking.prepare_fork()

    def after_fork_in_parent(self) -> None:
        """Carry on."""
        forking, self._forking = self._forking, None
        if forking is not None:
            forking.after_fork_parent()

    def for_child(self) -> None:
        """In a forked child: fresh locks, connection, session and threads (started at the
        child's first event); the parent's queue and backlog stay the parent's."""
        if self._closed:
            return
        self.diagnostics.after_fork_in_child()
        self.counters.after_fork_in_child()
        self.keys.after_fork_in_child()
        self._lock = threading.Lock()
        self._key_lock = threading.Lock()
        self._settings_lock = threading.Lock()  # the parent's intake may have held it
        forking, self._forking = self._forking, None
        if forking is not None:
            forking.after_fork_child()  # a file it cannot reopen: memory stands in
        if self.transport is not None:
            self.transport.renew_session()
        self.intake = self._make_intake()  # the engine and workers come at its start
        self._started = False
        self._forked = True  # a child is not a restart: its start is not spread
        self.thread_idents = frozenset()
        self._pid = -1

    def _restart_in_child(self) -> None:
        with self._lock:
            if self._pid == os.getpid() or self._closed:
                return
            self._pid = os.getpid()
            self._start()

    # -- the key ----------------------------------------------------------------------------

    def set_key(self, key: Optional[ApiKey]) -> None:
        """Send with ``key`` from now on, whatever the store says; None follows it again."""
        state = self.keys.pin(key)
        if key is not None:
            self._use_key(state, changed=True)
        else:
            self._wake_workers()  # a worker reads the store again at once

    def _use_key(self, state: KeyState, *, changed: bool) -> None:
        """Send with ``state``'s key from now on; hold sending while there is none
        (before the start there is nothing to tell: the start reads the key it finds)."""
        engine = self.engine
        if not self._usable or engine is None:
            return
        from massugc_logging.pipeline.decisions import Mode  # noqa: PLC0415

        if self.transport is not None:
            self.transport.set_key(state.key)
        if state.key is not None:
            _ = self.settings  # the scrubber exists from here on
            assert self._secrets is not None
            self._secrets.add(state.key.reveal())
            self.diagnostics.forget(Topic.CONFIG_NO_KEY)
            self.diagnostics.forget(Topic.CONFIG_BAD_KEY)
            self.diagnostics.publish(engine.key_changed())
            if changed:
                self.diagnostics.say_once(
                    Topic.CONFIG_KEY_CHANGED, logging.INFO,
                    "CloudHandler: now sending with the API key from %s (%s).",
                    state.source, state.key.masked)
                self.diagnostics.forget(Topic.CONFIG_KEY_CHANGED)
        elif state.problem is not None:
            engine.set_hold(Mode.BAD_KEY)
            self.diagnostics.forget(Topic.CONFIG_NO_KEY)
            self.diagnostics.say_once(
                Topic.CONFIG_BAD_KEY, logging.ERROR,
                "CloudHandler cannot use its API key: %s. Events are kept in the spool until "
                "a valid key is set.", state.problem)
        else:
            engine.set_hold(Mode.NO_KEY)
            self.diagnostics.forget(Topic.CONFIG_BAD_KEY)
            self.diagnostics.say_once(
                Topic.CONFIG_NO_KEY, logging.WARNING,
                "CloudHandler has no API key: set MASSUGC_API_KEY, pass api_key, or run "
                "'massugc-logging key set'%s. Events are kept in the spool until a key is set, "
                "and the key store is read again every few seconds meanwhile.",
                f" (the local collector accepts any well-formed key, e.g. MASSUGC_API_KEY="
                f"{LOCAL_COLLECTOR_KEY})" if is_loopback(_host(self._usable)) else "")
        self._wake_workers()

    def _follow_key(self) -> None:
        """On a delivery thread, before it takes work: read the key store again if due.

        One worker reads and applies at a time; the others wait for it, so none takes an
        event with a key that is on its way out.
        """
        engine = self._delivering()
        if not (self.keys.due(engine.waiting_for_key()) or self._key_lock.locked()):
            return
        with self._key_lock:
            if self.keys.due(engine.waiting_for_key()):
                state = self.keys.refresh()
                if state is not None:
                    self._use_key(state, changed=True)

    def _key_poll(self) -> Optional[float]:
        """How soon an idle worker looks at the key store again: soon while events wait
        for a usable key, else never (no polling when there is nothing to send)."""
        engine = self._delivering()
        if self._usable and self.keys.follows_the_store \
                and engine.waiting_for_key() and engine.has_pending():
            return KEY_CHECK_WHILE_HELD
        return None

    def _delivering(self) -> DeliveryEngine:
        """The engine, for its workers' callbacks (they run only once it exists)."""
        engine = self.engine
        assert engine is not None
        return engine

    # -- what sending learns about the API ------------------------------------------------

    def _remember_route(self, endpoint: str) -> None:
        """On a delivery thread: the API answered on ``endpoint``, not the configured path;
        keep it for this API URL, for the next runs too, and say so once."""
        transport = self.transport
        if transport is None:
            return
        self.diagnostics.say_once(
            Topic.ROUTE_LEARNT, logging.WARNING,
            "CloudHandler: %s answers on %s, not on %s; events go there from now on (and in "
            "the next runs). Set endpoint: %s to say so in the configuration.",
            transport.api_url, endpoint, transport.endpoints[0], endpoint, about=endpoint)
        outbox = self.outbox
        if outbox is not None:
            with contextlib.suppress(Exception):
                outbox.remember(transport.api_url, "route", endpoint, float("inf"))

    def _on_start(self) -> None:
        """On the intake thread at start: open the spool and make the engine, use what
        earlier runs learnt about the API, point out what the spool keeps for others,
        and turn jobs left running by a process that is gone into their failure events.

        A spool another program keeps locked skips what reads it (the next start does
        it); the delivery workers start whatever happens.
        """
        from massugc_logging.pipeline.spool import SpoolError  # noqa: PLC0415

        self._open_delivery()
        outbox, engine, workers = self.outbox, self.engine, self.workers
        assert outbox is not None and engine is not None and workers is not None
        outbox.start(self._wall())
        _ = self.settings
        if self._usable:
            # The store is read here unless the environment gave the key when it was made.
            read = self.keys.refresh() if self.keys.due(False) else None
            self._use_key(read or self.keys.state, changed=False)
            with contextlib.suppress(SpoolError):
                learnt = outbox.recall(self._usable, self._wall())
                self._learnt_route = learnt.get("route")
                if "health" in learnt:
                    engine.recall(learnt["health"])
        with contextlib.suppress(SpoolError):
            self._point_out_other_destinations(outbox)
        found = 0
        with contextlib.suppress(SpoolError):
            found = outbox.recover_abandoned(self._wall())
        if found:
            self.diagnostics.count("jobs_recovered", found)
            self.diagnostics.say_once(
                Topic.JOBS_RECOVERED, logging.WARNING,
                "CloudHandler: %d job(s) were still running when the app last stopped; each "
                "is reported as a failure.", found)
        self._spread_start(outbox, engine)
        # Started while closing too: shutdown delivers what it can within its budget.
        if not sys.is_finalizing():
            workers.start()
            self.thread_idents = self.thread_idents | workers.idents
        workers.wake()

    def _spread_start(self, outbox: Outbox, engine: DeliveryEngine) -> None:
        """With a backlog in the spool and no pause remembered, wait a random moment before
        the first send (a fleet restarted at once comes back spread out); ``drain``
        (``force_flush``) or the shutdown ends the wait. A forked child does not wait:
        the backlog it would count is its parent's."""
        if not self._forked:
            engine.spread_start(outbox.pending_count())

    def _point_out_other_destinations(self, outbox: Outbox) -> None:
        """Say once what the spool keeps that this handler does not send: events of release
        0.1 (no destination) and events logged for other APIs, which wait for a handler of
        theirs, or for 'spool replay --from', within the spool's age bound."""
        counts = outbox.counts_by_destination()
        unaddressed = counts.pop(None, 0)
        counts.pop(self.destination, None)
        if unaddressed:
            self.diagnostics.say_once(
                Topic.SPOOL_UNADDRESSED, logging.WARNING,
                "CloudHandler: the spool %s holds %d event(s) kept by release 0.1, which do "
                "not say which API they were logged for, so no handler sends them. Send them "
                "with 'massugc-logging spool replay --from unaddressed --api-url URL', or "
                "delete them with 'massugc-logging spool purge'.", outbox.path,
                unaddressed)
        if counts:
            self.diagnostics.say_once(
                Topic.SPOOL_OTHERS, logging.INFO,
                "CloudHandler: the spool %s also holds events logged for other APIs (%s); "
                "this handler sends only those for %s. They wait for a handler of theirs; "
                "if one is this API under an earlier address, send them here with "
                "'massugc-logging spool replay --from DESTINATION --api-url URL'.",
                outbox.path, "; ".join(f"{d}: {n}" for d, n in sorted(counts.items())),
                self.destination)

    def _abandon_open_jobs(self) -> None:
        """On the intake thread, last thing at exit: jobs still running are reported as
        failures of the shutdown."""
        from massugc_logging.payload import restamp_failure  # noqa: PLC0415

        outbox = self.outbox
        if outbox is None:
            return
        found = outbox.abandon_running(
            lambda body, now: restamp_failure(body, SHUTDOWN_MESSAGE, now), self._wall())
        if found:
            self.diagnostics.count("jobs_open_at_shutdown", found)

    # -- the intake's and the workers' callbacks ------------------------------------------

    def _prepare(self, item: tuple[logging.LogRecord, Optional[ExceptionSummary]]) -> Prepared:
        """Build and redact one event, or the stand-in failure of a job that started (on
        the intake thread); report field warnings once."""
        record, exc = item
        mark = getattr(record, JOB_MARK, None)
        if not isinstance(mark, JobMark) or mark.event_type != self.settings.event_type:
            mark = None
        if mark is not None and mark.started:
            stand_in = types.SimpleNamespace(**{
                **record.__dict__, "success": False, "error_message": STOPPED_MESSAGE,
                "levelno": logging.ERROR, "exc_info": None})
            from massugc_logging.pipeline.spool import RunningJob  # noqa: PLC0415

            built = self._build_event(stand_in, None)
            return Prepared(started=RunningJob(mark.token, built.event_id, built.body(),
                                               _created(record)))
        built = self._build_event(record, exc)
        return Prepared(event=(built.event_id, built.body(), _created(record)),
                        finished=mark.token if mark is not None else None)

    def _build_event(self, record: Any, exc: Optional[ExceptionSummary]) -> BuiltEvent:
        from massugc_logging.payload import build_event  # noqa: PLC0415

        built = build_event(record, self.settings, exception=exc,
                            fallback_id=str(uuid.uuid4()), now=self._wall())
        for warning in built.warnings:
            self.diagnostics.count("field_warnings")
            self.diagnostics.say_once(Topic.FIELD, logging.WARNING,
                                      "CloudHandler: %s (said once)", warning, about=warning)
        return built

    def _send(self, row: SpooledEvent) -> Outcome:
        """POST one event and redact what the server said (it is logged and stored)."""
        if self._send_instead is not None:
            outcome = self._send_instead(row)
        else:
            transport = self._transport()
            if transport is None:  # the engine holds from now on
                return Outcome(OutcomeKind.TRANSIENT, reason="the transport cannot be made")
            outcome = transport.send(row.body, row.event_id)
        if outcome.reason:
            outcome = dataclasses.replace(
                outcome, reason=self.settings.scrub(outcome.reason, _REASON_CHARS))
        return outcome

    # -- stats ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The counters, the delivery state and where events are kept (see ``CloudHandler``)."""
        counts = self.counters.snapshot()
        outbox, engine = self.outbox, self.engine
        kept = 0
        with contextlib.suppress(Exception):  # a busy spool cannot say; 0 meanwhile
            kept = outbox.pending_count() if outbox is not None else 0
        path = outbox.path if outbox is not None else self._spool_file()
        return {
            "enqueued": self.intake.accepted,
            "sent": counts["sent"],
            "retried": counts["retried"],
            "spooled": counts["spooled"],
            "pending": self.intake.waiting + kept,
            "dropped": counts["dropped"],
            "dead_lettered": counts["dead_lettered"],
            "last_error": counts["last_error"],
            "last_status": counts["last_status"],
            "state": engine.status() if engine is not None else (
                "idle" if self._usable else "held"),
            "holds": engine.holds() if engine is not None else (
                {} if self._usable else {"bad_url": None}),
            "destination": self.destination,
            "key_source": self.keys.state.source,
            "in_flight": engine.in_flight() if engine is not None else 0,
            "spool": str(path) if path else None,
            "spool_in_memory": outbox.using_memory if outbox is not None else False,
            "trust": self.transport.trust.description if self.transport else None,
            "problems": self.diagnostics.snapshot(),
        }


def _captured(record: logging.LogRecord) -> Optional[ExceptionSummary]:
    """The record's exception, summarised on the app's thread while it is at hand."""
    from massugc_logging.payload import capture_exception  # noqa: PLC0415

    return capture_exception(record.exc_info)


def default_api_url(api_url: Optional[str]) -> str:
    """``api_url``, else ``$MASSUGC_API_URL``, else the production API."""
    return api_url or os.environ.get("MASSUGC_API_URL") or PRODUCTION_API_URL


def spool_limits(policy: RetryPolicy, max_events: Optional[int], max_age: Optional[float],
                 max_bytes: Optional[int]) -> dict[str, Any]:
    """The spool's bounds from a handler's arguments (None: the default)."""
    limits: dict[str, Any] = {}
    if max_events is not None:
        limits["max_events"] = int(max_events)
    if max_age is not None:
        limits["max_age"] = float(max_age)
    if max_bytes is not None:
        limits["max_bytes"] = int(max_bytes)
    # No event is ever scheduled further ahead than its longest backoff: a due time
    # beyond that comes from a wall clock set back, and is due now.
    limits["schedule_horizon"] = policy.backoff_cap + 1.0
    return limits


def _register_fork_hooks(pipeline: Pipeline) -> None:
    """Fork safety for this pipeline alone; the hooks do nothing once it is gone."""
    if not hasattr(os, "register_at_fork"):
        return
    ref = weakref.ref(pipeline)

    def hook(name: str) -> Callable[[], None]:
        def call() -> None:
            target = ref()
            if target is not None:
                getattr(target, name)()
        return call

    os.register_at_fork(before=hook("before_fork"),
                        after_in_parent=hook("after_fork_in_parent"),
                        after_in_child=hook("for_child"))


#: What the pipeline's threads import on first use (the app's start does not pay for it),
#: with what the first request imports (a host name's codec, the trust store).
_LOADED_ON_FIRST_USE = (
    "massugc_logging.payload", "massugc_logging.pipeline.spool",
    "massugc_logging.pipeline.outbox", "massugc_logging.pipeline.decisions",
    "massugc_logging.pipeline.delivery",
    "massugc_logging.redaction", "massugc_logging.payload_config", "massugc_logging.classify",
    "massugc_logging.pipeline.processes", "massugc_logging.pipeline.transport",
    "massugc_logging.pipeline.trust", "truststore", "certifi", "encodings.idna",
    "email.utils", "urllib.request",
)
#: How long a fork waits for the pipeline to finish starting (see ``before_fork``).
_FORK_WAIT = 2.0


def _finish_lazy_imports() -> None:
    """Import, in the forking thread, what the pipeline's threads import on first use.

    A module one of them is importing at the fork would be left half made in the child,
    where that thread does not exist: importing it there fails or never returns.
    Importing it here waits for that thread to finish it. A process that forks pays for
    these imports once (a few tens of milliseconds).
    """
    for name in _LOADED_ON_FIRST_USE:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _key_follower(api_key: Optional[Union[str, ApiKey]], key_store: Optional[KeyStore],
                  clock: Callable[[], float]) -> KeyFollower:
    """A key given to the handler is pinned (a malformed one holds sending); without one
    the handler follows the environment and the key store."""
    if isinstance(api_key, ApiKey):
        return KeyFollower(key_store, KeyState(api_key, "argument"), clock=clock)
    if api_key is not None and str(api_key).strip():
        try:
            return KeyFollower(key_store, KeyState(ApiKey(str(api_key).strip()), "argument"),
                               clock=clock)
        except ValueError as exc:
            return KeyFollower(key_store, KeyState(None, "argument", str(exc)), clock=clock)
    return KeyFollower(key_store, clock=clock, read_now=False)  # read on the intake thread


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


def _write_of(prepared: Prepared) -> Write:
    """The spool write for one prepared item."""
    from massugc_logging.pipeline.spool import Write  # noqa: PLC0415

    return Write(events=(prepared.event,) if prepared.event is not None else (),
                 started=(prepared.started,) if prepared.started is not None else (),
                 finished=(prepared.finished,) if prepared.finished is not None else ())


def _created(record: Any) -> float:
    """The record's creation time, or now if it has none usable."""
    created = getattr(record, "created", None)
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        return float(created)
    return time.time()


__all__ = ["SHUTDOWN_MESSAGE", "STOPPED_MESSAGE", "Pipeline", "PipelineConfig"]
