"""Failure classification: which kind of failure is this, and is it worth retrying?

Pure: an exception (or its type names, captured earlier) and some error text
go in, a :class:`Classification` comes out. No I/O, no clock, never raises.

The rule table is ordered and is read in two passes. First the exception's
type names (the class and its MRO) are matched against every rule's
``exception_types``; the first rule that names one of them wins. Only if no
type matches are the rules' ``keywords`` matched against the error text, again
first match wins. Nothing matched means ``unknown`` (not retryable).

Order of the default table, and why. A support engineer wants the *cause*
(what to fix, whether a retry can help) before the *stage* that failed, since
the stage is visible in the message anyway. So the cause rules come first:

1. ``system_resources``: out of memory, disk full, too many open files. Before
   rate limits so that "Disk quota exceeded" is a disk problem, not an API quota;
   likewise an exceeded Drive or bucket *storage* quota is ``storage_upload``.
2. ``rate_limit``: 429, rate limit, quota. Before authentication because
   ElevenLabs reports an exhausted character quota with status 401.
3. ``authentication``: 401, unauthorized, invalid API key; then 403 and
   forbidden, *unless the text names a storage upload*: a 403 from a signed
   URL (GCS, S3) or from Google Drive is a ``storage_upload`` failure (the URL
   expired or is wrong, or the bucket refuses), not the user's key.
4. ``network``: refused/reset connections, DNS failures, connect timeouts, 5xx.
   Other timeouts (``TimeoutError``, read timeouts, "timed out") are network
   failures *unless the text names a stage*: "TimeoutError: avatar render
   timed out" is ``video_generation``, a TTS or script-generation call that
   timed out belongs to that stage. A rule's ``yields_to`` lists the
   categories whose keywords, found in the text, take precedence over it.
5. ``file_system``: missing paths, permission denied. So
   "ffmpeg: voice.mp3: No such file or directory" is ``file_system``: the input
   is missing, which no change to ffmpeg will fix.

then the stage rules, strongest signal first:

6. ``video_generation``: ffmpeg/ffprobe, codecs, lipsync and avatar renders.
   First among stages because ffmpeg errors quote whole command lines that
   name voice files and storage URLs.
7. ``storage_upload``: GCS, S3, buckets, signed URLs, Google Drive, failed uploads.
8. ``audio_generation``: ElevenLabs, TTS, voices.
9. ``script_generation``: OpenAI, GPT, prompts, completions, content policy.

Keywords are case-insensitive and match whole words: ``"tts"`` matches
"TTS failed" and "app.tts.client" but not "watts". Spaces and punctuation in a
keyword match any short run of non-alphanumeric characters, so
``"rate limit"`` also matches "rate_limit_exceeded" and ``"code 401"`` matches
"status_code': 401". A ``*`` at either end lifts the word boundary on that
side: ``"elevenlabs*"`` matches "ElevenLabsError". Only the first 8 KiB
(8192 characters) of text are examined, lower-cased once.

Exception type names: a bare name (``"TimeoutError"``) matches any class of
that name in the exception's MRO, whatever its module; a dotted name matches a
class with the same top-level package and the same class name, so
``"openai.RateLimitError"`` matches ``openai._exceptions.RateLimitError``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

__all__ = [
    "CATEGORIES",
    "DEFAULT_RULES",
    "MAX_TEXT_CHARS",
    "Classification",
    "Classifier",
    "Rule",
    "classify",
    "exception_type_names",
]

CATEGORIES = (
    "authentication",
    "rate_limit",
    "network",
    "file_system",
    "audio_generation",
    "video_generation",
    "storage_upload",
    "script_generation",
    "system_resources",
    "unknown",
)

#: How much error text the keyword pass looks at.
MAX_TEXT_CHARS = 8192


@dataclass(frozen=True)
class Classification:
    """The verdict: a category label and whether retrying the job could help."""

    category: str
    retryable: bool


@dataclass(frozen=True)
class Rule:
    """One row of the rule table: what to match, and the verdict when it does."""

    category: str
    retryable: bool
    exception_types: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    #: Categories whose keywords, when also found in the text, win over this rule.
    yields_to: tuple[str, ...] = ()


UNKNOWN = Classification("unknown", False)


def _status_keywords(*codes: int) -> tuple[str, ...]:
    """The usual ways an HTTP status appears in error text ("Error code: 429", ...)."""
    forms = ("code {}", "status {}", "http {}", "error {}", "httperror {}", "response {}",
             "{} client error",
             "{} server error", "{} get", "{} post", "{} put", "{} patch", "{} delete")
    return tuple(form.format(code) for code in codes for form in forms)


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        "system_resources", False,
        exception_types=("MemoryError",),
        keywords=(
            "out of memory", "cannot allocate memory", "memoryerror",
            "no space left on device", "disk full", "disk quota exceeded",
            "not enough space on the disk", "too many open files",
            "resource temporarily unavailable", "killed", "sigkill", "oom",
        ),
    ),
    Rule(
        # A full Drive or bucket quota is not an API rate limit, and waiting will not help.
        "storage_upload", False,
        keywords=("storage quota", "storagequotaexceeded", "drive storage quota"),
    ),
    Rule(
        "rate_limit", True,
        exception_types=(
            "openai.RateLimitError",
            "google.api_core.exceptions.TooManyRequests",
            "google.api_core.exceptions.ResourceExhausted",
        ),
        keywords=(
            *_status_keywords(429),
            "too many requests", "rate limit*", "ratelimit*", "rate limited",
            "quota*", "throttled", "throttling*", "slow down",
        ),
    ),
    Rule(
        "authentication", False,
        exception_types=(
            "openai.AuthenticationError",
            "google.api_core.exceptions.Unauthorized",
            "google.auth.exceptions.RefreshError",
            "botocore.exceptions.NoCredentialsError",
        ),
        keywords=(
            *_status_keywords(401),
            "unauthorized", "unauthorised", "unauthenticated",
            "invalid api key", "incorrect api key", "api key not valid", "invalid key",
            "missing api key", "authentication failed", "authentication error",
            "authenticationerror", "invalid credentials", "invalid token",
        ),
    ),
    Rule(
        "authentication", False,
        exception_types=(
            "openai.PermissionDeniedError",
            "google.api_core.exceptions.Forbidden",
            "google.api_core.exceptions.PermissionDenied",
        ),
        keywords=(
            *_status_keywords(403),
            "forbidden", "access denied", "accessdenied", "signaturedoesnotmatch",
        ),
        yields_to=("storage_upload",),
    ),
    Rule(
        "network", True,
        exception_types=(
            "ConnectionError",
            "socket.gaierror",
            "requests.exceptions.ConnectionError",
            "requests.exceptions.ChunkedEncodingError",
            "urllib3.exceptions.ConnectTimeoutError",
            "urllib3.exceptions.NewConnectionError",
            "urllib3.exceptions.MaxRetryError",
            "urllib3.exceptions.ProtocolError",
            "http.client.RemoteDisconnected",
            "http.client.IncompleteRead",
            "openai.APIConnectionError",
            "openai.InternalServerError",
            "httpx.ConnectError",
            "httpx.ConnectTimeout",
            "httpx.NetworkError",
        ),
        keywords=(
            *_status_keywords(500, 502, 503, 504),
            "connect timeout", "connecttimeout*", "connection timed out", "gateway timeout",
            "connection reset", "connection refused", "connection aborted",
            "connection error", "*connectionerror", "remote end closed connection",
            "remotedisconnected", "max retries exceeded", "name or service not known",
            "temporary failure in name resolution", "nodename nor servname provided",
            "getaddrinfo failed", "failed to resolve", "network is unreachable",
            "no route to host", "bad gateway", "service unavailable",
            "internal server error",
        ),
    ),
    Rule(
        "network", True,
        exception_types=(
            "TimeoutError",
            "socket.timeout",
            "asyncio.TimeoutError",
            "concurrent.futures.TimeoutError",
            "requests.exceptions.Timeout",
            "urllib3.exceptions.TimeoutError",
            "openai.APITimeoutError",
            "httpx.TimeoutException",
            "httpx.TransportError",
        ),
        keywords=(
            "timed out", "timeout error", "timeouterror", "read timeout", "readtimeout*",
            "deadline exceeded", "timeout",
        ),
        yields_to=("video_generation", "storage_upload", "audio_generation",
                   "script_generation"),
    ),
    Rule(
        "file_system", False,
        exception_types=(
            "FileNotFoundError",
            "PermissionError",
            "IsADirectoryError",
            "NotADirectoryError",
            "FileExistsError",
        ),
        keywords=(
            "no such file or directory", "file not found", "filenotfounderror",
            "permission denied", "access is denied", "is a directory", "not a directory",
            "read only file system", "cannot find the path specified",
            "cannot find the file specified", "file exists",
        ),
    ),
    Rule(
        "video_generation", False,
        # In this app the subprocesses that hang are ffmpeg renders.
        exception_types=("subprocess.TimeoutExpired",),
        keywords=(
            "ffmpeg*", "ffprobe*", "codec*", "moov atom",
            "invalid data found when processing input", "encoder", "decoder", "muxer",
            "demuxer", "conversion failed",
            "lipsync*", "lip sync*", "avatar render*", "render failed", "rendering failed",
            "video generation", "video render*",
        ),
    ),
    Rule(
        "storage_upload", True,
        keywords=(
            "gcs", "google cloud storage", "storage.googleapis.com", "s3", "s3uploadfailederror",
            "bucket", "nosuchbucket", "upload failed", "failed to upload", "upload error",
            "signed url", "presigned url", "blob upload", "x-goog-signature",
            "x-amz-signature", "request has expired", "google drive", "drive.google.com",
            "upload/drive", "googleapis.com/drive",
        ),
    ),
    Rule(
        "audio_generation", False,
        keywords=(
            "elevenlabs*", "eleven labs", "tts", "text to speech", "voice", "voice id",
            "audio generation", "generate audio", "speech synthesis",
        ),
    ),
    Rule(
        "script_generation", False,
        keywords=(
            "openai*", "gpt*", "chatgpt", "script generation", "generate script",
            "prompt", "prompts", "completion*", "content policy", "content filter",
            "content management policy", "anthropic",
        ),
    ),
)

_CATEGORY_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TYPE_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
# Runs of what is not a letter or digit (underscore counts as punctuation here).
_SEPARATOR_SPLIT = re.compile(r"[\W_]+")
_NOT_PRECEDED_BY_WORD = r"(?<![^\W_])"
_NOT_FOLLOWED_BY_WORD = r"(?![^\W_])"
_SEPARATOR = r"[\W_]{1,4}"


@dataclass(frozen=True)
class _Keyword:
    """A compiled keyword: cheap necessary conditions, then the exact pattern.

    Every word of the keyword that has a word boundary on both sides must be
    one of the text's words (set lookups); a word next to a ``*`` must at
    least be a substring of the text. Only then is the pattern searched.
    """

    whole_words: frozenset[str]
    partial_words: tuple[str, ...]
    pattern: re.Pattern[str]

    def matches(self, lowered: str, words: frozenset[str]) -> bool:
        return (
            self.whole_words <= words
            and all(w in lowered for w in self.partial_words)
            and self.pattern.search(lowered) is not None
        )


@dataclass(frozen=True)
class _CompiledRule:
    verdict: Classification
    bare_types: frozenset[str]
    dotted_types: frozenset[tuple[str, str]]
    keywords: tuple[_Keyword, ...]
    yields_to: frozenset[str]


def _compile_keyword(keyword: str) -> _Keyword:
    """Turn one keyword into its pattern; ValueError says what is wrong with it."""
    if not isinstance(keyword, str):
        raise ValueError(f"must be a string, not {type(keyword).__name__}")
    text = keyword.strip().lower()
    open_left, open_right = text.startswith("*"), text.endswith("*")
    core = text.strip("*")
    if "*" in core:
        raise ValueError(f"{keyword!r}: '*' is allowed only at either end")
    words = [w for w in _SEPARATOR_SPLIT.split(core) if w]
    if not words:
        raise ValueError(f"{keyword!r}: must contain a letter or digit")
    body = _SEPARATOR.join(re.escape(w) for w in words)
    pattern = (
        ("" if open_left else _NOT_PRECEDED_BY_WORD)
        + body
        + ("" if open_right else _NOT_FOLLOWED_BY_WORD)
    )
    last = len(words) - 1
    partial = {i for i in (0 if open_left else -1, last if open_right else -1) if i >= 0}
    return _Keyword(
        whole_words=frozenset(w for i, w in enumerate(words) if i not in partial),
        partial_words=tuple(words[i] for i in sorted(partial)),
        pattern=re.compile(pattern),
    )


def _split_type_name(name: str) -> tuple[str, str]:
    """``"a.b.C"`` -> ``("a", "C")``; a bare ``"C"`` -> ``("", "C")``."""
    last = name.rsplit(".", 1)[-1]
    top = name.split(".", 1)[0] if "." in name else ""
    return top, last


def _compile_rule(rule: Rule) -> _CompiledRule:
    """Validate and compile one rule; ValueError names the offending field."""
    if not isinstance(rule.category, str) or not _CATEGORY_PATTERN.fullmatch(rule.category):
        raise ValueError(
            f"category: {rule.category!r} must be a lower-case identifier such as 'network'"
        )
    if not isinstance(rule.retryable, bool):
        raise ValueError("retryable: must be true or false")
    for field in ("exception_types", "keywords", "yields_to"):
        if isinstance(getattr(rule, field), (str, bytes)):
            raise ValueError(f"{field}: must be a tuple of strings, not a single string")
    bare: set[str] = set()
    dotted: set[tuple[str, str]] = set()
    for name in rule.exception_types:
        if not isinstance(name, str) or not _TYPE_NAME_PATTERN.fullmatch(name.strip()):
            raise ValueError(f"exception_types: {name!r} is not a type name")
        top, last = _split_type_name(name.strip())
        if top:
            dotted.add((top, last))
        else:
            bare.add(last)
    keywords = []
    for keyword in rule.keywords:
        try:
            keywords.append(_compile_keyword(keyword))
        except ValueError as exc:
            raise ValueError(f"keywords: {exc}") from None
    if not bare and not dotted and not keywords:
        raise ValueError("exception_types/keywords: a rule needs at least one of them")
    for category in rule.yields_to:
        if not isinstance(category, str) or not _CATEGORY_PATTERN.fullmatch(category):
            raise ValueError(f"yields_to: {category!r} is not a category name")
    return _CompiledRule(
        Classification(rule.category, rule.retryable),
        frozenset(bare), frozenset(dotted), tuple(keywords), frozenset(rule.yields_to),
    )


def exception_type_names(error: BaseException) -> tuple[str, ...]:
    """``module.qualname`` of the exception's class and of each class in its MRO.

    This is what to capture on the app thread and pass later as
    ``exc_type_names``: names survive pickling and queueing, classes may not.
    """
    names: list[str] = []
    try:
        for cls in type(error).__mro__:
            if cls is object:
                continue
            module = getattr(cls, "__module__", None) or "builtins"
            qualname = getattr(cls, "__qualname__", None) or cls.__name__
            names.append(f"{module}.{qualname}")
    except Exception:  # a hostile metaclass must not break classification
        return tuple(names)
    return tuple(names)


def _type_label(full_name: str) -> str:
    """How a type is shown in error text: builtins bare, others qualified."""
    return full_name[len("builtins."):] if full_name.startswith("builtins.") else full_name


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__ must not break classification
        return ""


def _as_names(value: Any) -> list[str]:
    """Caller-supplied type names, tolerating a lone string or junk entries."""
    if isinstance(value, str):
        return [value]
    try:
        return [n for n in value if isinstance(n, str)]
    except Exception:  # classification never raises
        return []


def _coerce_names(value: Any, index: int, field: str) -> tuple[str, ...]:
    """A YAML string or list of strings -> tuple of strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)):
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"rules[{index}].{field}: {item!r} is not a string")
        return tuple(value)
    raise ValueError(f"rules[{index}].{field}: must be a string or a list of strings")


_RULE_FIELDS = ("category", "retryable", "exception_types", "keywords", "yields_to")


class Classifier:
    """An ordered rule table, compiled once; :meth:`classify` is cheap and never raises."""

    def __init__(self, rules: Sequence[Rule] = DEFAULT_RULES) -> None:
        compiled = []
        for index, rule in enumerate(rules):
            try:
                compiled.append(_compile_rule(rule))
            except ValueError as exc:
                raise ValueError(f"rules[{index}].{exc}") from None
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._compiled: tuple[_CompiledRule, ...] = tuple(compiled)

    def __repr__(self) -> str:
        return f"Classifier(<{len(self.rules)} rules>)"

    @classmethod
    def from_config(
        cls, rules: Sequence[Mapping[str, Any]], *, extend_defaults: bool = True
    ) -> Classifier:
        """Build from YAML-style dicts; the user's rules come before the defaults.

        Each entry has ``category`` (required), ``retryable`` (default false),
        ``exception_types`` and/or ``keywords`` (a string or a list), and
        optionally ``yields_to`` (categories whose keywords win over it).
        A bad entry raises ValueError naming its index and field.
        """
        given: object = rules
        if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
            raise ValueError("rules: must be a list of rule mappings")
        parsed: list[Rule] = []
        for index, entry in enumerate(rules):
            if not isinstance(entry, Mapping):
                raise ValueError(f"rules[{index}]: must be a mapping, not {type(entry).__name__}")
            unknown = sorted(str(k) for k in entry if k not in _RULE_FIELDS)
            if unknown:
                raise ValueError(
                    f"rules[{index}].{unknown[0]}: unknown field (expected one of "
                    f"{', '.join(_RULE_FIELDS)})"
                )
            if "category" not in entry:
                raise ValueError(f"rules[{index}].category: missing")
            rule = Rule(
                category=entry["category"],
                retryable=entry.get("retryable", False),
                exception_types=_coerce_names(entry.get("exception_types"), index,
                                              "exception_types"),
                keywords=_coerce_names(entry.get("keywords"), index, "keywords"),
                yields_to=_coerce_names(entry.get("yields_to"), index, "yields_to"),
            )
            try:
                _compile_rule(rule)
            except ValueError as exc:
                raise ValueError(f"rules[{index}].{exc}") from None
            parsed.append(rule)
        return cls((*parsed, *DEFAULT_RULES) if extend_defaults else parsed)

    def classify(
        self,
        error: Union[BaseException, str, None] = None,
        *,
        exc_type_names: Sequence[str] = (),
        text: str = "",
    ) -> Classification:
        """Classify an exception or error text (or type names captured earlier).

        Args:
            error: the exception, or its text, or None.
            exc_type_names: type names captured earlier, e.g. by
                :func:`exception_type_names`; the first is shown in the text.
            text: more error text, e.g. the event's ``error_message``.
        """
        names: list[str] = []
        if isinstance(error, BaseException):
            names.extend(exception_type_names(error))
        names.extend(_as_names(exc_type_names))
        parts: list[str] = []
        if names:
            parts.append(_type_label(names[0].strip()) + ":")
        if error is not None:
            parts.append(_safe_str(error))
        if text:
            parts.append(_safe_str(text))

        lowered = " ".join(parts)[:MAX_TEXT_CHARS].lower()
        words = frozenset(_SEPARATOR_SPLIT.split(lowered)) if lowered else frozenset()
        rule = self._match_types(names) or self._match_keywords(lowered, words)
        if rule is None:
            return UNKNOWN
        if rule.yields_to:
            stronger = self._match_keywords(lowered, words, among=rule.yields_to)
            if stronger is not None:
                return stronger.verdict
        return rule.verdict

    def _match_types(self, names: Sequence[str]) -> Optional[_CompiledRule]:
        if not names:
            return None
        bare: set[str] = set()
        dotted: set[tuple[str, str]] = set()
        for name in names:
            top, last = _split_type_name(name.strip())
            bare.add(last)
            if top:
                dotted.add((top, last))
        for rule in self._compiled:
            if rule.bare_types & bare or rule.dotted_types & dotted:
                return rule
        return None

    def _match_keywords(
        self, lowered: str, words: frozenset[str], among: Optional[frozenset[str]] = None
    ) -> Optional[_CompiledRule]:
        if not lowered:
            return None
        for rule in self._compiled:
            if among is not None and rule.verdict.category not in among:
                continue
            if any(keyword.matches(lowered, words) for keyword in rule.keywords):
                return rule
        return None


@functools.lru_cache(maxsize=1)
def _default_classifier() -> Classifier:
    """The default rule table, compiled on first use (on the thread that first classifies,
    the handler's intake thread for an app that only logs)."""
    return Classifier()


def classify(
    error: Union[BaseException, str, None] = None,
    *,
    exc_type_names: Sequence[str] = (),
    text: str = "",
) -> Classification:
    """Classify with :data:`DEFAULT_RULES`; see :meth:`Classifier.classify`."""
    return _default_classifier().classify(error, exc_type_names=exc_type_names, text=text)
