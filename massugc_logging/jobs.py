"""One call per job: ``report_job`` reports each job's outcome exactly once.

An app has three ways a job ends: it succeeds with an output, it fails without an
exception (the job returned ``success = False`` and a message), or it fails by an
exception. Written by hand, that is a try/except in three places, and one of them
goes wrong (the app once reported a workflow's successes twice). Here::

    with report_job(log, job_fields) as job:
        path = render(job_fields)
        if path is None:
            job.failed("render produced no file")
        else:
            job.succeeded(path)

- leaving the block by an exception reports a failure with that exception
  (``Type: message``) and lets it propagate;
- leaving it without calling either reports a failure too ("the job ended
  without reporting an outcome"), with one local warning naming the file and
  line of the ``with``: a success is billed to the user, so it is never assumed;
- the first of ``succeeded`` / ``failed`` wins: a second call, or both, change
  nothing but one local warning.

Entering the block logs a ``job started`` record carrying the job's fields and
a :class:`JobMark` (and no ``event_type``, so nothing that counts outcomes takes
it for one). A :class:`~massugc_logging.CloudHandler` keeps the job as running
in its spool from then on, so a job whose process is killed still ends in one
failure event, sent by the next run; the outcome record carries the same mark
and replaces it.

Each report carries ``duration_s``, the seconds the block took. Like any extra it
leaves the machine only when the cloud handler lists it in ``extra_fields``.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Optional

from massugc_logging.contract import DEFAULT_EVENT_TYPE
from massugc_logging.diagnostics import Diagnostics, Topic
from massugc_logging.diagnostics import logger as diagnostics_logger

#: The extra that marks a job's start and outcome records.
JOB_MARK = "massugc_job"
#: ``error_message`` of a job whose block ended without an outcome.
NO_OUTCOME_MESSAGE = ("The job ended without reporting an outcome: its report_job block was "
                      "left without succeeded() or failed() and without an exception")

_diagnostics = Diagnostics(diagnostics_logger)


@dataclass(frozen=True)
class JobMark:
    """Names one job run across its ``started`` and ``ended`` records."""

    token: str
    event_type: str
    phase: str  # "started" or "ended"

    @property
    def started(self) -> bool:
        """True on the record that opens the job."""
        return self.phase == "started"


class JobReport:
    """The outcome of one job, reported once when the ``report_job`` block ends."""

    def __init__(self) -> None:
        self._outcome: Optional[tuple[bool, Optional[str], Optional[str], dict[str, Any]]] = None
        self._extra_calls = 0

    @property
    def reported(self) -> bool:
        """True once ``succeeded`` or ``failed`` was called."""
        return self._outcome is not None

    def succeeded(self, output_path: Optional[str] = None, **fields: Any) -> None:
        """The job succeeded, with its output (a path or a link) and any more fields."""
        self._set(True, output_path, None, fields)

    def failed(self, message: str, **fields: Any) -> None:
        """The job failed without an exception; ``message`` says what went wrong."""
        self._set(False, None, message, fields)

    def _set(self, success: bool, output_path: Optional[str], message: Optional[str],
             fields: dict[str, Any]) -> None:
        if self._outcome is None:
            self._outcome = (success, output_path, message, fields)
        else:
            self._extra_calls += 1


class JobScope:
    """The context manager :func:`report_job` returns (see the module)."""

    def __init__(self, logger: logging.Logger, fields: Mapping[str, Any],
                 clock: Callable[[], float], where: tuple[str, int]) -> None:
        self._logger = logger
        self._base = {"event_type": DEFAULT_EVENT_TYPE, **fields}
        self._clock = clock
        self._where = where
        self._report = JobReport()
        self._started = 0.0
        self._mark = JobMark(uuid.uuid4().hex, str(self._base["event_type"]), "ended")

    def __enter__(self) -> JobReport:
        self._started = self._clock()
        started = JobMark(self._mark.token, self._mark.event_type, "started")
        fields = {k: v for k, v in self._base.items() if k != "event_type"}
        _log(self._logger, logging.INFO, "job started", {**fields, JOB_MARK: started})
        return self._report

    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        duration = self._clock() - self._started
        base = {**self._base, JOB_MARK: self._mark}
        report = self._report
        if exc is not None and not report.reported:
            _log(self._logger, logging.ERROR, "job failed",
                 {**base, "success": False, "duration_s": duration},
                 exc_info=(type(exc), exc, tb))
            return
        if report._outcome is None:
            _log(self._logger, logging.ERROR, "job failed",
                 {**base, "success": False, "error_message": NO_OUTCOME_MESSAGE,
                  "duration_s": duration})
            self._warn_no_outcome()
            return
        success, output_path, message, fields = report._outcome
        extra = {**base, **fields, "success": success, "duration_s": duration}
        if success:
            _log(self._logger, logging.INFO, "job succeeded", {**extra, "output_path": output_path})
        else:
            if message is not None:
                extra["error_message"] = message
            _log(self._logger, logging.ERROR, "job failed", extra)
        if report._extra_calls:
            diagnostics_logger.warning(
                "report_job: succeeded()/failed() called %d more time(s) for run_id %r; only "
                "the first counts (one event per job)", report._extra_calls,
                self._base.get("run_id"))

    def _warn_no_outcome(self) -> None:
        filename, line = self._where
        _diagnostics.count("job_without_outcome")
        _diagnostics.say_once(
            Topic.REPORT_JOB_NO_OUTCOME, logging.WARNING,
            "report_job at %s:%d: the block ended without succeeded(), failed() or an "
            "exception; the job is reported as a failure, never as an unseen success. Call "
            "job.succeeded(output) or job.failed(reason) before leaving it (said once for "
            "this place).", filename, line, about=f"{filename}:{line}")


def report_job(logger: logging.Logger, fields: Mapping[str, Any], *,
               clock: Callable[[], float] = time.monotonic) -> JobScope:
    """Report the job run inside the ``with`` block exactly once on ``logger`` (see the module).

    Args:
        logger: the app's job logger, e.g. ``logging.getLogger("massugc.jobs")``.
        fields: the job's fields (``run_id``, ``job_name``, ``workflow_type``...);
            ``event_type`` defaults to ``video_generation``.
        clock: seconds, for ``duration_s`` (injectable for tests).
    """
    caller = sys._getframe(1)
    return JobScope(logger, fields, clock, (caller.f_code.co_filename, caller.f_lineno))


#: Names a LogRecord owns: an extra by one of these names would make logging raise.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime"}


def _log(logger: logging.Logger, level: int, message: str, extra: dict[str, Any],
         exc_info: Optional[tuple[type[BaseException], BaseException,
                                  Optional[TracebackType]]] = None) -> None:
    clashing = sorted(k for k in extra if k in _RECORD_ATTRIBUTES)
    if clashing:  # logging would raise KeyError into the job's code: leave them out
        _diagnostics.say_once(
            Topic.REPORT_JOB_CLASH, logging.WARNING,
            "report_job: job field(s) %s share a name with LogRecord attributes and are left "
            "out", ", ".join(clashing), about=",".join(clashing))
        extra = {k: v for k, v in extra.items() if k not in _RECORD_ATTRIBUTES}
    # stacklevel 3: the record names the app's line, not this module's.
    logger.log(level, message, exc_info=exc_info, extra=extra, stacklevel=3)
