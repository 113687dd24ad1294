"""Failure groups: the distinct problems behind many failed jobs.

Twenty failures with one cause are one problem to support. A failure's
*signature* names its problem: a short hash of its category, its exception
type (read from the ``Type: message`` form the handler writes) and its error
text *normalised*, with the parts that vary from one occurrence to the next
masked:

* the redaction marker (``[REDACTED]``; ``<host>`` is left as it is) and everything after the
  truncation marker (``…[truncated]``), since where a cap falls varies;
* URLs, quoted strings, Windows and POSIX paths;
* UUIDs, hexadecimal ids (``0x7f3a``, ``8f3a9c01``), timestamps and numbers.

Word characters next to a number are not part of it: ``HTTP2Error`` and
``gpt-4o`` keep their letters, and an exception type is never masked, so two
exception types never share a signature. Signatures are stable across runs,
machines and library versions for as long as :data:`SIGNATURE_VERSION` is
unchanged; a change to the masks bumps it.

:func:`group_failures` folds failures into :class:`FailureGroup` rows with
what support asks first: how often, since when, where (workflows), how much
of what is failing *now* it is, and one full example. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional

from massugc_logging.redaction import REDACTED, TRUNCATION_MARKER

__all__ = [
    "SIGNATURE_VERSION",
    "Failure",
    "FailureGroup",
    "exception_type_of",
    "failure_signature",
    "group_failures",
    "headline",
    "most_active_first",
    "normalise_error_text",
]

#: Part of every signature; bumped whenever normalisation changes what it masks.
SIGNATURE_VERSION = "1"

#: Normalisation looks at this much text; a signature must not cost a megabyte of regex.
MAX_NORMALISED_CHARS = 16384

#: How many of a group's newest events it keeps besides its example.
RECENT_EVENTS_PER_GROUP = 5

_LEADING_TYPE = re.compile(r"\s*((?:[A-Za-z_]\w*\.)*[A-Z]\w*)(?::|\s*$)")
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    # URLs first: redacted ones hold the other markers ("https://<host>/p?[REDACTED]").
    (re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s'\"]*"), "<url>"),
    (re.compile(re.escape(REDACTED)), "<redacted>"),
    # An apostrophe inside a word ("can't") opens no quoted string.
    (re.compile(r"(?<!\w)'[^'\n]{0,1000}'(?!\w)|(?<!\w)\"[^\"\n]{0,1000}\"(?!\w)"), "<str>"),
    (re.compile(r"(?<!\w)[A-Za-z]:\\[^\s'\"<>]*|\\\\[^\s'\"<>\\]+\\[^\s'\"<>]*"), "<path>"),
    # Not after a word character or a dot: "and/or", "3/25" and "a.b/c" are not paths.
    (re.compile(r"(?<![\w./-])(?:~|\.{1,2})?(?:/[^\s/'\"<>():,;]+)+/?"), "<path>"),
    (re.compile(
        r"(?<![\w-])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
        r"(?![\w-])"
    ), "<id>"),
    (re.compile(r"(?<!\w)0[xX][0-9a-fA-F]+(?!\w)"), "<id>"),
    (re.compile(r"(?<!\w)(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{6,}(?!\w)"),
     "<id>"),
    (re.compile(
        r"(?<!\w)\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
        r"(?!\w)"
    ), "<time>"),
    # A digit after a letter is part of a name: "libx264", "HTTP2Error", "v2".
    (re.compile(r"(?<!\w)[0-9]+(?:[.,][0-9]+)*"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def exception_type_of(error_text: str) -> str:
    """The exception type named at the start of ``Type: message`` text, or ``""``.

    A type is a class-like name (its last part starts with a capital letter),
    optionally dotted, directly followed by a colon or ending the text.
    """
    match = _LEADING_TYPE.match(error_text[:512])
    return match.group(1) if match else ""


def normalise_error_text(error_text: str) -> str:
    """The error text with its varying parts masked (see the module docstring)."""
    text = error_text[:MAX_NORMALISED_CHARS]
    cut = text.find(TRUNCATION_MARKER)
    if cut >= 0:
        text = text[:cut]
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text.strip()


def failure_signature(category: Optional[str], error_text: Optional[str]) -> str:
    """A 16-hex-digit name for the problem behind a failure: same problem, same name."""
    text = error_text if isinstance(error_text, str) else ""
    exc_type = exception_type_of(text)
    rest = text.lstrip()[len(exc_type):] if exc_type else text
    material = "\x1f".join(
        (SIGNATURE_VERSION, category or "unknown", exc_type, normalise_error_text(rest))
    )
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def headline(error_text: str, limit: int = 160) -> str:
    """A one-line headline: the first line, and the last when they differ (ffmpeg's cause)."""
    lines = [line.strip() for line in error_text.splitlines() if line.strip()]
    if not lines:
        return "(no error text)"
    title = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    if len(title) <= limit:
        return title
    half = (limit - 3) // 2
    return f"{title[:half]} … {title[-half:]}"


@dataclass(frozen=True)
class Failure:
    """One failed job as grouping needs it; ``occurred_at`` in seconds since the epoch."""

    event_id: int
    occurred_at: float
    category: str
    error_message: str
    workflow_type: str = ""
    signature: str = ""

    def signature_or_computed(self) -> str:
        return self.signature or failure_signature(self.category, self.error_message)


@dataclass
class FailureGroup:
    """The failures that share a signature, summarised for someone deciding what to fix."""

    signature: str
    category: str
    exception_type: str
    title: str
    count: int
    first_seen: float
    last_seen: float
    #: Failures of this group inside the recent window.
    recent_count: int = 0
    #: ``recent_count`` over all failures inside the recent window (0 when there are none).
    share_of_recent_failures: float = 0.0
    #: Failures by workflow type, most affected first.
    workflows: dict[str, int] = field(default_factory=dict)
    #: The newest failure of the group, in full.
    example: Optional[Failure] = None
    #: Event ids of the newest failures, newest first (the example's included).
    recent_event_ids: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, with times as given (the caller formats them)."""
        example = self.example
        return {
            "signature": self.signature,
            "category": self.category,
            "exception_type": self.exception_type,
            "title": self.title,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "recent_count": self.recent_count,
            "share_of_recent_failures": self.share_of_recent_failures,
            "workflows": dict(self.workflows),
            "example": None if example is None else {
                "event_id": example.event_id,
                "occurred_at": example.occurred_at,
                "workflow_type": example.workflow_type,
                "error_message": example.error_message,
            },
            "recent_event_ids": list(self.recent_event_ids),
        }


def group_failures(
    failures: Iterable[Failure],
    *,
    recent_since: float,
    recent_events: int = RECENT_EVENTS_PER_GROUP,
) -> list[FailureGroup]:
    """Group failures by signature, newest activity first.

    ``recent_since`` starts the recent window ("failing now"): a group's
    ``recent_count`` and its share of recent failures count only failures at
    or after it. Ties in time keep the higher event id as the newer.
    """
    members: dict[str, list[Failure]] = {}
    for failure in failures:
        members.setdefault(failure.signature_or_computed(), []).append(failure)
    recent_total = sum(
        1 for group in members.values() for f in group if f.occurred_at >= recent_since
    )
    groups = []
    for signature, items in members.items():
        items.sort(key=lambda f: (f.occurred_at, f.event_id), reverse=True)
        newest = items[0]
        recent = sum(1 for f in items if f.occurred_at >= recent_since)
        workflows = Counter(f.workflow_type or "(none)" for f in items)
        groups.append(FailureGroup(
            signature=signature,
            category=newest.category or "unknown",
            exception_type=exception_type_of(newest.error_message),
            title=headline(newest.error_message),
            count=len(items),
            first_seen=items[-1].occurred_at,
            last_seen=newest.occurred_at,
            recent_count=recent,
            share_of_recent_failures=recent / recent_total if recent_total else 0.0,
            workflows=dict(sorted(workflows.items(), key=lambda kv: (-kv[1], kv[0]))),
            example=newest,
            recent_event_ids=tuple(f.event_id for f in items[:recent_events]),
        ))
    groups.sort(key=lambda g: (g.last_seen, g.recent_event_ids[0]), reverse=True)
    return groups


def most_active_first(groups: Sequence[FailureGroup]) -> list[FailureGroup]:
    """Groups ordered for a person: most failures now, then most overall, then newest."""
    return sorted(groups, key=lambda g: (-g.recent_count, -g.count, -g.last_seen))
