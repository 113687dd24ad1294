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
- leaving it without calling either reports a success;
- the first of ``succeeded`` / ``failed`` wins: a second call, or both, change
  nothing but one local warning.

Each report carries ``duration_s``, the seconds the block took. Like any extra it
leaves the machine only when the cloud handler lists it in ``extra_fields``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Callable, Optional

from massugc_logging.contract import DEFAULT_EVENT_TYPE
from massugc_logging.diagnostics import logger as diagnostics_logger


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


@contextlib.contextmanager
def report_job(logger: logging.Logger, fields: Mapping[str, Any], *,
               clock: Callable[[], float] = time.monotonic) -> Iterator[JobReport]:
    """Report the job run inside the block exactly once on ``logger`` (see the module).

    Args:
        logger: the app's job logger, e.g. ``logging.getLogger("massugc.jobs")``.
        fields: the job's fields (``run_id``, ``job_name``, ``workflow_type``...);
            ``event_type`` defaults to ``video_generation``.
        clock: seconds, for ``duration_s`` (injectable for tests).
    """
    report = JobReport()
    started = clock()
    base = {"event_type": DEFAULT_EVENT_TYPE, **fields}
    try:
        yield report
    except BaseException as exc:
        if not report.reported:
            _log(logger, False, None, None, {**base, "duration_s": clock() - started},
                 exc_info=(type(exc), exc, exc.__traceback__))
        else:
            _report(logger, report, base, clock() - started)
        raise
    _report(logger, report, base, clock() - started)


def _report(logger: logging.Logger, report: JobReport, base: dict[str, Any],
            duration: float) -> None:
    if report._outcome is None:
        _log(logger, True, None, None, {**base, "duration_s": duration})
        return
    success, output_path, message, fields = report._outcome
    _log(logger, success, output_path, message, {**base, **fields, "duration_s": duration})
    if report._extra_calls:
        diagnostics_logger.warning(
            "report_job: succeeded()/failed() called %d more time(s) for run_id %r; only the "
            "first counts (one event per job)", report._extra_calls, base.get("run_id"))


#: Names a LogRecord owns: an extra by one of these names would make logging raise.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime"}


def _log(logger: logging.Logger, success: bool, output_path: Optional[str],
         message: Optional[str], extra: dict[str, Any],
         exc_info: Optional[tuple[type[BaseException], BaseException,
                                  Optional[TracebackType]]] = None) -> None:
    clashing = sorted(k for k in extra if k in _RECORD_ATTRIBUTES)
    if clashing:  # logging would raise KeyError into the job's code: leave them out
        diagnostics_logger.warning("report_job: job field(s) %s share a name with LogRecord "
                                   "attributes and are left out", ", ".join(clashing))
    extra = {**{k: v for k, v in extra.items() if k not in _RECORD_ATTRIBUTES},
             "success": success}
    if success:
        extra["output_path"] = output_path
        logger.info("job succeeded", extra=extra, stacklevel=3)
        return
    if message is not None:
        extra["error_message"] = message
    logger.error("job failed", exc_info=exc_info, extra=extra, stacklevel=3)
