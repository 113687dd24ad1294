"""The payload settings a handler builds from its arguments, composed once.

The payload builder is pure and takes its redactor and classifier as values;
this module is where they are made for this machine (home directory and host
name read once) and wrapped for speed and safety. :class:`CloudHandler` and
:mod:`massugc_logging.testing` both use it, so captured events are built
exactly as sent.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from massugc_logging.classify import Classifier, classify
from massugc_logging.contract import DEFAULT_EVENT_TYPE, DEFAULT_EVENT_VERSION, DEFAULT_SOURCE
from massugc_logging.payload import ExceptionSummary, PayloadSettings
from massugc_logging.redaction import KnownSecrets, Redactor, system_redactor


def payload_settings(
    *,
    event_type: str = DEFAULT_EVENT_TYPE,
    source: str = DEFAULT_SOURCE,
    version: str = DEFAULT_EVENT_VERSION,
    extra_fields: Sequence[str] = (),
    redact_patterns: Sequence[str] = (),
    error_message_limit: int = 4096,
    field_limit: int = 256,
    classification_rules: Sequence[Mapping[str, Any]] = (),
    known_secrets: Optional[KnownSecrets] = None,
) -> PayloadSettings:
    """The payload settings a :class:`CloudHandler` builds from these arguments.

    Shared with :mod:`massugc_logging.testing`, so captured events are built
    exactly as sent: this machine's redactor (failing closed, with a small cache
    for the short strings that repeat from job to job) and the classifier.
    ``known_secrets`` (the handler's API key, in any encoding) is scrubbed after the
    rules, outside the cache: the key can change while the handler runs.
    """
    redactor = system_redactor(tuple(redact_patterns))
    return PayloadSettings(
        event_type=str(event_type),
        source=str(source),
        version=str(version),
        extra_fields=tuple(str(f) for f in extra_fields),
        error_message_limit=int(error_message_limit),
        field_limit=int(field_limit),
        scrub=_fail_closed(_with_known_secrets(
            _cached_for_short_text(redactor.redact_and_cap), redactor, known_secrets)),
        categorize=_categorizer(classification_rules),
    )


_CACHED_TEXT_CHARS = 512


def _cached_for_short_text(scrub: Callable[[str, int], str]) -> Callable[[str, int], str]:
    """Memoize redaction of short strings: product, persona, hook and the like repeat
    on every job, and redaction is a pure function of the text and the limit."""
    cached = functools.lru_cache(maxsize=2048)(scrub)

    def scrub_text(text: str, limit: int) -> str:
        return cached(text, limit) if len(text) <= _CACHED_TEXT_CHARS else scrub(text, limit)

    return scrub_text


def _with_known_secrets(scrub: Callable[[str, int], str], redactor: Redactor,
                        known: Optional[KnownSecrets]) -> Callable[[str, int], str]:
    """Scrub the known secrets from what the rules left; where one was found, the rules
    run once more on the result (as :meth:`Redactor.redact` does with known secrets)."""
    if known is None:
        return scrub

    def scrub_text(text: str, limit: int) -> str:
        done = scrub(text, limit)
        if not known:
            return done
        cleaned = known.scrub(done)
        return done if cleaned is done else redactor.redact_and_cap(cleaned, limit)

    return scrub_text


def _fail_closed(scrub: Callable[[str, int], str]) -> Callable[[str, int], str]:
    """Wrap the redactor so a failure withholds the text instead of losing the event."""

    def guarded(text: str, limit: int) -> str:
        try:
            return scrub(text, limit)
        except Exception:
            return "[withheld: text could not be redacted]"[:limit]

    return guarded


def _categorizer(
    rules: Sequence[Mapping[str, Any]],
) -> Callable[[Optional[ExceptionSummary], str], str]:
    """The failure classifier as a ``(summary, text) -> category`` function. Rules given in
    the configuration are checked now (a mistake there is the configuration's); the
    default table is compiled on first use, on the thread that builds events."""
    given = Classifier.from_config(list(rules)) if rules else None

    def categorize(summary: Optional[ExceptionSummary], text: str) -> str:
        names = summary.qualified_names if summary is not None else ()
        if given is not None:
            return given.classify(exc_type_names=names, text=text).category
        return classify(exc_type_names=names, text=text).category

    return categorize
