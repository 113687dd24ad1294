"""CloudHandler: the logging facade over the delivery pipeline.

As CPython's ``QueueHandler`` is to its ``QueueListener``: ``emit`` picks the
records the handler is for and hands them over, and everything else is the
pipeline's (:mod:`massugc_logging.pipeline.lifecycle`), which owns the threads,
the spool, the transport and the key. The handler keeps ``logging.Handler``'s
contract: ``flush()`` makes what was logged durable, ``close()`` delivers what
it can within ``shutdown_timeout`` and releases everything, and
``force_flush(timeout)`` waits for delivery and says whether it happened.
Records from this package's loggers and from the HTTP stack never enter the
handler, so sending can never cause more sending.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from massugc_logging._unlocked import UnlockedHandler
from massugc_logging.contract import (
    DEFAULT_ENDPOINT,
    DEFAULT_EVENT_TYPE,
    DEFAULT_EVENT_VERSION,
    DEFAULT_SOURCE,
)
from massugc_logging.diagnostics import is_internal_logger
from massugc_logging.jobs import JOB_MARK, JobMark
from massugc_logging.keystore import ApiKey, KeyStore
from massugc_logging.pipeline.addresses import DEFAULT_TIMEOUT, Timeout
from massugc_logging.pipeline.lifecycle import (
    SHUTDOWN_MESSAGE,
    STOPPED_MESSAGE,
    Pipeline,
    PipelineConfig,
    default_api_url,
    spool_limits,
)
from massugc_logging.pipeline.retry import RetryPolicy
from massugc_logging.pipeline.sigterm import install_sigterm_flush

if TYPE_CHECKING:
    from massugc_logging.payload import PayloadSettings
    from massugc_logging.redaction import KnownSecrets

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
DEFAULT_MAX_IN_FLIGHT = 4

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


class CloudHandler(UnlockedHandler):
    """Send ``event_type=video_generation`` records to the MassUGC Cloud API.

    Usable as ``class: massugc_logging.CloudHandler`` in a dictConfig. ``emit``
    filters and enqueues in microseconds; building, spooling and sending happen
    on the handler's own threads. Nothing it does raises into app code.

    Args:
        api_url: the API base URL (default: env ``MASSUGC_API_URL``, else production).
        api_key: the API key (default: env ``MASSUGC_API_KEY``, then the newer of the key
            store and the app's key file, followed while the handler runs).
        endpoint: the usage-log path; older servers use ``/api/desktop/usage``.
        event_type: only records whose ``event_type`` extra equals this are sent.
        spool_path: the SQLite outbox file; None keeps events in memory only (they
            do not survive a restart). Default (or ``"default"``): ``spool.sqlite3`` in
            the platform's user data directory.
        timeout: seconds, or ``[connect, read]``, for each request; a request is
            cut off when it has taken both together in all.
        shutdown_timeout: the most ``flush()`` and ``close()`` together spend at exit.
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
            delivered within ``shutdown_timeout``, then end the process as SIGTERM would
            have. Only while SIGTERM has its default disposition and the handler is made
            on the main thread: an app's own SIGTERM handler is never replaced.
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
        self._event_type = str(event_type)
        self.shutdown_timeout = float(shutdown_timeout)
        #: Logger name -> whether its records are this package's own (never sent).
        self._internal_loggers: dict[str, bool] = {}
        policy = RetryPolicy.from_config(retry)
        payload = _payload_arguments(
            event_type=self._event_type, source=source, version=version,
            extra_fields=extra_fields, redact_patterns=redact_patterns,
            error_message_limit=error_message_limit, field_limit=field_limit,
            classification_rules=classification_rules)
        self._pipeline = Pipeline(PipelineConfig(
            api_url=default_api_url(api_url), endpoint=str(endpoint), api_key=api_key,
            spool_path=spool_path, timeout=timeout, settings=payload,
            policy=policy, queue_size=int(queue_size), max_in_flight=max(1, int(max_in_flight)),
            spool_limits=spool_limits(policy, spool_max_events, spool_max_age, spool_max_bytes),
            allow_insecure_http=bool(allow_insecure_http), ca_bundle=ca_bundle,
            user_agent=user_agent, headers=headers), key_store=key_store, rng=rng)
        _LIVE_HANDLERS.add(self)
        if flush_on_sigterm:
            install_sigterm_flush(self._pipeline.diagnostics, self.shutdown_timeout)

    def emit(self, record: logging.LogRecord) -> None:
        """Hand a matching record to the pipeline; never blocks, never raises, re-entrant.

        Matching: its ``event_type`` is this handler's, or it is the ``job started``
        record of a ``report_job`` block for this event type (kept as running).
        """
        try:
            if self._matches(record):
                self._pipeline.submit(record)
        except Exception:
            self._pipeline.counters.drop_on_app_thread("internal_error")

    def _matches(self, record: logging.LogRecord) -> bool:
        if getattr(record, "event_type", None) != self._event_type:
            mark = getattr(record, JOB_MARK, None)
            if not (isinstance(mark, JobMark) and mark.started
                    and mark.event_type == self._event_type):
                return False
        name = record.name
        internal = self._internal_loggers.get(name)
        if internal is None:
            internal = self._internal_loggers[name] = is_internal_logger(name)
        return not internal

    def flush(self) -> None:
        """Make what was logged so far durable: written to the spool, within
        ``shutdown_timeout``. Delivery goes on in the background (``force_flush`` waits
        for it); ``close()`` right after takes what this took off its own budget."""
        with contextlib.suppress(Exception):  # flushing never raises into the app
            self._pipeline.write_out(time.monotonic() + self.shutdown_timeout)

    def force_flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything logged so far, and any backlog replayed from the spool,
        is delivered; at most ``timeout`` (default ``shutdown_timeout``) seconds.

        Returns True only when all of it was delivered and no event was dropped or
        dead-lettered since the previous ``force_flush``. Returns early, False, when
        nothing can be sent before the deadline (a pause, a backoff, a missing or
        refused key): the events stay in the spool.
        """
        budget = self.shutdown_timeout if timeout is None else max(0.0, float(timeout))
        try:
            return self._pipeline.drain(time.monotonic() + budget)
        except Exception:
            return False

    def close(self) -> None:
        """Write out what is queued, deliver what can be delivered within
        ``shutdown_timeout``, then stop and release every resource.

        Safe to call twice and after ``logging.shutdown()``, whose ``flush()`` and this
        share one ``shutdown_timeout``. Whatever is not delivered stays in the spool for
        the next run; a request still in flight at the deadline is cut off, and its
        event is sent again by the next run.
        """
        _LIVE_HANDLERS.discard(self)
        try:
            self._pipeline.shutdown(self.shutdown_timeout)
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
        self._pipeline.set_key(key)

    def stats(self) -> dict[str, Any]:
        """Counters (enqueued, sent, retried, spooled, pending, dropped by reason,
        dead-lettered), the last error and status, the delivery state and its holds,
        requests in flight, where events go and are kept, and the problems said."""
        return self._pipeline.stats()

    @property
    def destination(self) -> str:
        """Where this handler's events go (API URL and endpoint)."""
        return self._pipeline.destination

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<CloudHandler {self._pipeline.destination} ({level})>"


def _payload_arguments(**arguments: Any) -> Callable[[KnownSecrets], PayloadSettings]:
    """The payload settings to make on the pipeline's thread, from arguments checked here:
    a mistake in them (a regular expression, a classification rule) is the
    configuration's, and raises while ``dictConfig`` applies it."""
    for pattern in arguments["redact_patterns"]:
        re.compile(pattern)
    if arguments["classification_rules"]:
        from massugc_logging.classify import Classifier  # noqa: PLC0415 - only with rules

        Classifier.from_config(list(arguments["classification_rules"]))

    def make(secrets: KnownSecrets) -> PayloadSettings:
        from massugc_logging.payload_config import payload_settings  # noqa: PLC0415

        return payload_settings(**arguments, known_secrets=secrets)

    return make


__all__ = ["SHUTDOWN_MESSAGE", "STOPPED_MESSAGE", "CloudHandler", "set_api_key"]
