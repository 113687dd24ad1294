"""Turn a LogRecord into the cloud event of the wire contract.

Pure functions: values in, values out, no clock reads or I/O (the caller
passes the fallback time and id). :func:`build_event` never raises; a field
it cannot use gets its default and a warning string the caller reports once.

Work is split across threads on purpose: :func:`capture_exception` runs on
the app thread inside ``emit`` (an exception's text must be taken before
anything can strip ``exc_info``); everything else runs on the listener.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import json
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from massugc_logging.contract import (
    DEFAULT_EVENT_TYPE,
    DEFAULT_EVENT_VERSION,
    DEFAULT_SOURCE,
    DEFAULT_WORKFLOW_TYPE,
    JOB_FIELD_DEFAULTS,
    KNOWN_EXTRA_FIELDS,
)

#: Namespace of the stable event ids sent as ``Idempotency-Key``.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c3a52-8f0e-4f53-9d43-3f2b7f0c9a11")

#: Fields the builder derives itself; an allowlisted extra of the same name is ignored.
_DERIVED_FIELDS = frozenset(
    {"success", "error_message", "failure_time", "generation_time", "workflow_type"}
)

Scrub = Callable[[str, int], str]


def _no_scrub(text: str, limit: int) -> str:
    """Cap without redaction: the fallback when no redactor is configured."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


@dataclass(frozen=True)
class ExceptionSummary:
    """What the app thread keeps of ``exc_info``: the type and the text, no traceback."""

    type_name: str
    qualified_names: tuple[str, ...]
    text: str

    def describe(self) -> str:
        """``Type: message`` (or just ``Type`` for an exception without text)."""
        return f"{self.type_name}: {self.text}" if self.text else self.type_name


@dataclass(frozen=True)
class PayloadSettings:
    """How records become events: identity fields, the allowlist and the caps."""

    event_type: str = DEFAULT_EVENT_TYPE
    source: str = DEFAULT_SOURCE
    version: str = DEFAULT_EVENT_VERSION
    #: Extra job fields allowed to leave the machine besides the contract's.
    extra_fields: tuple[str, ...] = ()
    error_message_limit: int = 4096
    field_limit: int = 256
    #: Redacts and caps a string: ``scrub(text, limit) -> text``.
    scrub: Scrub = field(default=_no_scrub, compare=False)
    #: Optional ``(summary, text) -> category`` used when ``error_category`` is allowlisted.
    categorize: Optional[Callable[[Optional[ExceptionSummary], str], str]] = field(
        default=None, compare=False
    )


@dataclass(frozen=True)
class BuiltEvent:
    """An event ready to spool: its stable id, the JSON body, and any warnings."""

    event_id: str
    event: dict[str, Any]
    warnings: tuple[str, ...]

    def body(self) -> bytes:
        """The UTF-8 JSON body as sent on the wire."""
        return encode_event(self.event)


def encode_event(event: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities are never produced by the builder."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
        "utf-8"
    )


def safe_str(value: Any) -> str:
    """``str(value)``, falling back to ``repr`` and then to a type tag; never raises."""
    for convert in (str, repr):
        try:
            text = convert(value)
        except Exception:  # noqa: S112 - hostile __str__/__repr__ must not lose the event
            continue
        if isinstance(text, str):
            return text
    return f"<unprintable {type(value).__name__}>"


def _clean(text: str) -> str:
    """Replace lone surrogates, which no JSON peer accepts, by ``?``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def capture_exception(exc_info: Any) -> Optional[ExceptionSummary]:
    """Summarize ``record.exc_info`` on the app thread; None when there is none.

    Never raises: an exception whose ``str()`` raises is summarized by its type.
    """
    try:
        if not exc_info or exc_info is True:
            return None
        exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        if exc is None:
            return None
        cls = type(exc)
        names = tuple(
            f"{k.__module__}.{k.__qualname__}" if k.__module__ != "builtins" else k.__qualname__
            for k in cls.__mro__
            if k is not object
        )
        try:
            text = str(exc)
        except Exception:
            text = ""
        return ExceptionSummary(type_name=cls.__name__, qualified_names=names, text=text)
    except Exception:
        return None


def format_utc(created: float) -> str:
    """Seconds since the epoch as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC, milliseconds truncated)."""
    millis = math.floor(created * 1000)
    seconds, ms = divmod(millis, 1000)
    moment = _dt.datetime.fromtimestamp(seconds, tz=_dt.timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms:03d}Z"


#: How a success looks in a body this module encoded (compact JSON): inside a string the
#: quotes would be escaped, so only the field itself can match.
_SUCCESS_FIELD = b'"success":true'


def costs_credits(body: bytes) -> bool:
    """Whether an event reports a success, which costs the user credits (failures do not).

    Reads the compact JSON that :func:`encode_event` writes, without parsing it.
    """
    return _SUCCESS_FIELD in body


def restamp_failure(body: bytes, message: str, when: float) -> bytes:
    """A failure event's body with a new ``error_message`` and its times set to ``when``.

    For the stand-in failure of a job still running when the app shuts down: it was
    built when the job started, and is sent with the moment of the shutdown. A body
    that is not such an event is returned unchanged.
    """
    try:
        event = json.loads(body)
        job = event["job_data"]
        stamp = format_utc(when)
        job["error_message"] = message
        job["failure_time"] = stamp
        event["timestamp"] = stamp
        return encode_event(event)
    except (ValueError, TypeError, KeyError):
        return body


def event_id_for(event_type: str, run_id: str, success: bool, fallback: str) -> str:
    """The ``Idempotency-Key``: derived from run and outcome, so a double report collides.

    Without a ``run_id`` there is nothing to collide on, and ``fallback`` (a fresh
    UUID chosen by the caller once per record) is used.
    """
    if not run_id:
        return fallback
    outcome = "success" if success else "failure"
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{event_type}\x1f{run_id}\x1f{outcome}"))


#: Integers outside 64 bits are not portable JSON (and past 4,300 digits Python
#: refuses to even turn them into text): such a value is defaulted, never fatal.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _int_out_of_range(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and not (
        _INT_MIN <= value <= _INT_MAX)


def _out_of_range(name: str, warnings: list[str]) -> None:
    warnings.append(f"job field {name!r} is an integer outside 64 bits; sent as null")


def lossless_text(value: Any) -> Optional[str]:
    """The text a value stands for without loss, for the values apps pass as job fields:
    a ``uuid.UUID`` (a ``run_id``), a path, a ``str``-valued enum member, a ``Decimal``,
    a ``datetime`` (UTC ISO 8601; a naive one is taken as local time) or a ``date``.
    None for anything else (and for a ``str``, which needs no conversion)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        return path.decode("utf-8", "replace") if isinstance(path, bytes) else path
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, str) else None
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, _dt.datetime):
        try:
            moment = value.astimezone(_dt.timezone.utc)
        except (ValueError, OverflowError, OSError):
            return None
        return moment.isoformat().replace("+00:00", "Z")
    if isinstance(value, _dt.date):
        return value.isoformat()
    return None


def _text_field(
    name: str, value: Any, default: Any, limit: int, scrub: Scrub, warnings: list[str]
) -> Any:
    """A string job field: strings kept, lossless text forms used (a UUID ``run_id``, a
    path), scalars turned to text with a warning, anything else the default."""
    if value is None:
        return default
    if not isinstance(value, str):
        converted = lossless_text(value)
        if converted is not None:
            value = converted
    if isinstance(value, str):
        text = value
    elif _int_out_of_range(value):
        warnings.append(f"job field {name!r} is an integer outside 64 bits; sent the default")
        return default
    elif isinstance(value, (bool, int, float)) and not (
        isinstance(value, float) and not math.isfinite(value)
    ):
        warnings.append(f"job field {name!r} should be a string, got {type(value).__name__}; "
                        "sent as text")
        text = str(value)
    else:
        warnings.append(f"job field {name!r} should be a string, got {type(value).__name__}; "
                        "sent the default instead")
        return default
    return scrub(_clean(text), limit)


def _known_extra_field(name: str, value: Any, types: tuple[type, ...], limit: int,
                       scrub: Scrub, warnings: list[str]) -> Any:
    """An allowlisted field of a known JSON type: kept if it has it, else text or null."""
    if value is None:
        return None
    if _int_out_of_range(value):
        _out_of_range(name, warnings)
        return None
    is_int_like = isinstance(value, int) and not isinstance(value, bool)
    if (bool in types and isinstance(value, bool)) or (int in types and is_int_like):
        return value
    if str in types:
        text = value if isinstance(value, str) else lossless_text(value)
        if text is None:
            warnings.append(f"job field {name!r} should be a string, got "
                            f"{type(value).__name__}; sent as text")
            text = safe_str(value)
        return scrub(_clean(text), limit)
    warnings.append(f"job field {name!r} should be {' or '.join(t.__name__ for t in types)}, "
                    f"got {type(value).__name__}; sent as null")
    return None


def _extra_field(name: str, value: Any, limit: int, scrub: Scrub, warnings: list[str]) -> Any:
    """An allowlisted extra: JSON scalars kept (strings scrubbed), anything else as text."""
    known = KNOWN_EXTRA_FIELDS.get(name)
    if known is not None:
        return _known_extra_field(name, value, known, limit, scrub, warnings)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if _int_out_of_range(value):
            _out_of_range(name, warnings)
            return None
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        warnings.append(f"job field {name!r} is not a finite number; sent as null")
        return None
    if isinstance(value, str):
        return scrub(_clean(value), limit)
    text = lossless_text(value)
    if text is None:
        warnings.append(f"job field {name!r} has type {type(value).__name__}; sent as text")
        text = safe_str(value)
    return scrub(_clean(text), limit)


def _record_message(record: Any, warnings: list[str]) -> str:
    """``record.getMessage()``, or the raw ``msg`` when its %-format is broken."""
    try:
        message = record.getMessage()
    except Exception:
        warnings.append("log message could not be formatted with its arguments; sent unformatted")
        message = safe_str(getattr(record, "msg", ""))
    return message if isinstance(message, str) else safe_str(message)


_TRACEBACK_HEADER = "Traceback (most recent call last):"


def _from_formatted_traceback(message: str) -> str:
    """``Type: message`` from a message that has a traceback appended to it.

    A stdlib ``QueueHandler`` formats the traceback into the message and strips
    ``exc_info``; the exception's own line is the last line of that text.
    """
    at = message.find(_TRACEBACK_HEADER)
    if at < 0:
        return message
    lines = [line for line in message[at:].splitlines() if line.strip()]
    last = lines[-1].strip() if len(lines) > 1 else ""
    return last or message


def build_event(
    record: Any,
    settings: PayloadSettings,
    *,
    exception: Optional[ExceptionSummary],
    fallback_id: str,
    now: float,
) -> BuiltEvent:
    """Build the contract's event from a LogRecord (or anything with its attributes).

    Args:
        record: the LogRecord; its extras are its attributes.
        settings: identity fields, allowlist, caps and the redactor.
        exception: what :func:`capture_exception` kept on the app thread; when None
            and the record still has ``exc_info``, it is captured here.
        fallback_id: a fresh id used as the event id when the record has no ``run_id``.
        now: the time used only if ``record.created`` is unusable.
    """
    warnings: list[str] = []
    fields: Mapping[str, Any] = getattr(record, "__dict__", {})
    scrub = settings.scrub
    limit = settings.field_limit

    created = fields.get("created")
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(
        created) or not 0 <= created < 253402300800:
        warnings.append("record has no usable creation time; used the time it was processed")
        created = now
    when = format_utc(float(created))

    job: dict[str, Any] = {
        name: _text_field(name, fields.get(name), default, limit, scrub, warnings)
        for name, default in JOB_FIELD_DEFAULTS.items()
    }

    explicit = fields.get("success")
    if isinstance(explicit, bool):
        success = explicit
    else:
        if explicit is not None:
            warnings.append(f"'success' should be a boolean, got {type(explicit).__name__}; "
                            "decided by the log level instead")
        levelno = fields.get("levelno")
        if isinstance(levelno, bool) or not isinstance(levelno, int):
            levelno = 40
        success = levelno < 40
    job["success"] = success

    if exception is None and fields.get("exc_info"):
        exception = capture_exception(fields.get("exc_info"))

    error_text = ""
    if not success:
        given = fields.get("error_message")
        if isinstance(given, str) and given:
            error_text = given
        else:
            if given is not None and not isinstance(given, str):
                warnings.append(f"'error_message' should be a string, got "
                                f"{type(given).__name__}; sent as text")
                error_text = safe_str(given)
            elif exception is not None:
                error_text = exception.describe()
            if not error_text:
                error_text = _from_formatted_traceback(_record_message(record, warnings))
        job["error_message"] = scrub(_clean(error_text), settings.error_message_limit)
        job["failure_time"] = when
    else:
        job["generation_time"] = when
    job["workflow_type"] = _text_field(
        "workflow_type", fields.get("workflow_type"), DEFAULT_WORKFLOW_TYPE, limit, scrub, warnings
    )

    for name in settings.extra_fields:
        if name in job or name in _DERIVED_FIELDS:
            continue
        if name == "error_category" and fields.get(name) is None:
            if not success and settings.categorize is not None:
                try:
                    job[name] = settings.categorize(exception, error_text)
                except Exception:
                    warnings.append("error category could not be determined")
            continue
        if name in fields:
            job[name] = _extra_field(name, fields[name], limit, scrub, warnings)

    event = {
        "event_type": settings.event_type,
        "job_data": job,
        "timestamp": when,
        "source": settings.source,
        "version": settings.version,
    }
    run_id = job["run_id"] if isinstance(job["run_id"], str) else ""
    return BuiltEvent(
        event_id=event_id_for(settings.event_type, run_id, success, fallback_id),
        event=event,
        warnings=tuple(warnings),
    )
