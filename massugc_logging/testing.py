"""Helpers for app developers to assert on the events their code reports.

``capture_events()`` records, in memory, the payloads a :class:`CloudHandler`
would send, built by the same code with the same redaction, so a test sees
exactly what would go on the wire. Nothing is sent and nothing is spooled::

    from massugc_logging.testing import capture_events

    with capture_events() as events:
        run_job_that_fails()
    assert events[0]["job_data"]["success"] is False

With pytest, the ``massugc_events`` fixture does the same for one test.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional, Union

from massugc_logging.diagnostics import is_internal_logger
from massugc_logging.payload import (
    PayloadSettings,
    build_event,
    capture_exception,
)
from massugc_logging.payload_config import payload_settings


class CapturedEvents(list):  # type: ignore[type-arg]
    """A list of event dicts, with the idempotency keys kept alongside."""

    def __init__(self) -> None:
        super().__init__()
        self.event_ids: list[str] = []
        self.warnings: list[str] = []

    def failures(self) -> list[dict[str, Any]]:
        """The events that report a failed job."""
        return [e for e in self if e["job_data"]["success"] is False]

    def successes(self) -> list[dict[str, Any]]:
        """The events that report a successful job."""
        return [e for e in self if e["job_data"]["success"] is True]


class CaptureHandler(logging.Handler):
    """Builds events synchronously, as the cloud handler would, and keeps them.

    It takes the payload arguments of :class:`CloudHandler` (``event_type``,
    ``extra_fields``, ``source``, ``version``, ``redact_patterns``, the limits
    and ``classification_rules``), so a ``test`` environment in logging.yaml
    can capture exactly what the ``production`` one would send. Each event is
    kept as it goes on the wire: the JSON body, decoded.
    """

    def __init__(
        self,
        settings: Optional[PayloadSettings] = None,
        events: Optional[CapturedEvents] = None,
        level: Union[int, str] = logging.NOTSET,
        **payload_arguments: Any,
    ) -> None:
        super().__init__(level)
        self.settings = settings or payload_settings(**payload_arguments)
        self.events = events if events is not None else CapturedEvents()
        self._lock_events = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        """Build the event for a matching record and append it."""
        if getattr(record, "event_type", None) != self.settings.event_type:
            return
        if is_internal_logger(record.name):
            return
        try:
            built = build_event(record, self.settings,
                                exception=capture_exception(record.exc_info),
                                fallback_id=str(uuid.uuid4()), now=record.created)
            wire = json.loads(built.body())
        except Exception:
            self.handleError(record)
            return
        with self._lock_events:
            self.events.append(wire)
            self.events.event_ids.append(built.event_id)
            self.events.warnings.extend(built.warnings)


@contextmanager
def capture_events(
    logger: Optional[logging.Logger] = None,
    **payload_arguments: Any,
) -> Iterator[CapturedEvents]:
    """Capture the events logged on ``logger`` (default: the root logger) while inside.

    The keyword arguments are those of :func:`~massugc_logging.payload_config.payload_settings`
    (the payload arguments of :class:`CloudHandler`):
    pass the same ones as your configuration does. Records must reach
    ``logger`` (a logger with ``propagate: false`` hides them from the root).
    """
    target = logger if logger is not None else logging.getLogger()
    events = CapturedEvents()
    handler = CaptureHandler(None, events, **payload_arguments)
    old_level = target.level
    target.addHandler(handler)
    if target.getEffectiveLevel() > logging.DEBUG:
        target.setLevel(logging.DEBUG)
    try:
        yield events
    finally:
        target.removeHandler(handler)
        target.setLevel(old_level)
        handler.close()
