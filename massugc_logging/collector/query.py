"""What a read request asks for: the recent window and the event filters, from its query string.

Shared by the JSON API and the page, so that ``/?outcome=failure&workflow=avatar``
and ``/api/events?outcome=failure&workflow=avatar`` mean the same events.
Every parser raises ValueError with a message fit for a 400 answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Optional

from massugc_logging.collector.store import EventFilter

__all__ = [
    "DEFAULT_WINDOW_S",
    "MAX_WINDOW_S",
    "count_param",
    "event_filter",
    "last_param",
    "parse_window",
]

#: "Failing now" means within this many seconds: the last hour.
DEFAULT_WINDOW_S = 3600
#: The longest window a query may ask for.
MAX_WINDOW_S = 366 * 86400

Query = Mapping[str, list[str]]

_DIGITS = re.compile(r"[0-9]{1,18}")
_WINDOW = re.compile(r"([0-9]{1,9})([smhd]?)")
_WINDOW_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: Optional[str], default: int = DEFAULT_WINDOW_S) -> int:
    """``"3600"``, ``"15m"``, ``"1h"`` or ``"7d"`` as seconds (None or blank: ``default``)."""
    if text is None or not text.strip():
        return default
    match = _WINDOW.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError("window must be a number of seconds, or of minutes, hours or days "
                         "such as 15m, 1h or 7d")
    seconds = int(match.group(1)) * _WINDOW_UNITS[match.group(2)]
    if not 1 <= seconds <= MAX_WINDOW_S:
        raise ValueError("window must be between 1 second and 366 days")
    return seconds


def last_param(query: Query, name: str) -> Optional[str]:
    """The last value given for ``name``, or None."""
    values = query.get(name)
    return values[-1] if values else None


def count_param(query: Query, name: str) -> Optional[int]:
    """A non-negative integer parameter, None when absent."""
    raw = last_param(query, name)
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw.strip()):
        raise ValueError(f"{name} must be a non-negative integer")
    return int(raw.strip())


def event_filter(query: Query) -> EventFilter:
    """The filter from ``outcome`` (failure/success), ``workflow``, ``category``, ``group``
    (a failure signature), ``before`` and ``after`` (event ids)."""
    outcome = (last_param(query, "outcome") or "").strip().lower()
    if outcome not in ("", "failure", "success"):
        raise ValueError("outcome must be failure or success")
    return EventFilter(
        success=None if not outcome else outcome == "success",
        workflow_type=last_param(query, "workflow"),
        category=last_param(query, "category"),
        signature=last_param(query, "group"),
        before_id=count_param(query, "before"),
        after_id=count_param(query, "after"),
    )
