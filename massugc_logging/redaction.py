"""Scrub secrets and personal data from text before it leaves the machine.

This module is pure: values in, values out (a :class:`KnownSecrets` only
remembers the secrets it is given). Only :func:`system_redactor` reads the
environment (home directory and host name), once, when it is called.

What is redacted, in the order it is applied, and what replaces it:

* user ``extra_patterns`` (regexes) -> ``[REDACTED]`` (they see the raw text);
* PEM private key blocks ``-----BEGIN ... PRIVATE KEY-----`` through the
  matching ``-----END ... PRIVATE KEY-----`` (or the end of the text when the
  end line is missing) -> ``[REDACTED]``;
* ``Authorization`` / ``Proxy-Authorization`` header values, as text, JSON or a
  printed dict -> ``Authorization: Bearer [REDACTED]`` (a known scheme word is
  kept); ``Cookie`` / ``Set-Cookie`` values up to the end of the line;
* tokens recognised by shape -> ``[REDACTED]``: MassUGC API keys (``massugc_``
  + 32 or more of ``[A-Za-z0-9_-]``), JWTs (``eyJ...``, three dot-separated
  base64url segments), AWS access key ids (``AKIA``/``ASIA`` + 16), Google API
  keys (``AIza`` + 35), Google OAuth tokens (``ya29.``), ``sk-``/``sk_`` keys
  (OpenAI, ElevenLabs, Stripe style: 20 or more characters after the prefix);
* ``Bearer <token>`` anywhere; ``Basic <base64>`` when it decodes to
  ``user:password`` (or is long and has a digit); ``Token <x>`` when ``<x>`` is
  16 or more characters with a digit -> the scheme word kept, ``[REDACTED]``;
* the query string of a relative ``url: /path?query`` as printed by requests
  and urllib3 -> ``url: /path?[REDACTED]``;
* ``name=value`` / ``name: value`` / ``"name": "value"`` / ``'name': 'value'``
  pairs whose name ends in password, passwd, passphrase, pwd, secret, token,
  key, apikey, signature, sig or credential(s) (``api_key``, ``X-API-Key``,
  ``client_secret``, ``aws_secret_access_key``, ``accessToken``,
  ``X-Amz-Signature``, ...): the name and quotes are kept, the value becomes
  ``[REDACTED]``;
* the configured home directory (any separator style, doubled backslashes,
  case-insensitive) -> ``~``;
* the configured host name (whole word, case-insensitive; also its first DNS
  label) -> ``<host>``;
* any other home directory: ``/Users/<name>``, ``/home/<name>``,
  ``X:\\Users\\<name>`` and ``\\Users\\<name>`` -> ``~``;
* URLs: user-info ``https://user:pass@host`` -> ``https://[REDACTED]@host``, and
  the whole query string and fragment of *every* ``scheme://`` URL, so signed
  URLs cannot leak -> ``https://host/path?[REDACTED]`` (scheme, host and path
  are kept).
* last, and only when the caller passes a :class:`KnownSecrets`: every
  appearance of a secret the process knows by value (its API key) ->
  ``[REDACTED]``, whatever its shape: as it is or its part after ``massugc_``,
  base64 (standard or URL-safe, padded or not, at any byte alignment inside a
  longer encoded text), percent-encoded, hex in either case, wrapped across
  lines or split by spaces, or cut down to a run of 16 or more of its
  characters. When that step replaced anything the rules above run once more,
  because a replacement changes what some of them look at around a match
  (in ``<the key in hex>/home/bob`` the generic home rule skips a path glued
  to a word, and scrubs it once the hex is gone), and redacting must stay
  idempotent.

Markers: :data:`REDACTED` ``[REDACTED]``, :data:`HOME_REPLACEMENT` ``~``,
:data:`HOST_REPLACEMENT` ``<host>``, and :data:`TRUNCATION_MARKER`
``…[truncated]``: a capped string is exactly ``text[:limit - 12] + "…[truncated]"``
(or the first ``limit`` characters of the marker when ``limit`` < 12).

Every built-in pattern is linear: repetitions are bounded or anchored on a
literal whose start cannot recur inside the run, so adversarial input cannot
trigger catastrophic backtracking. :class:`KnownSecrets` uses no regex over its
secrets: it looks the text's 16-character windows up in precomputed sets, also
linear. Redacting is idempotent (``redact(redact(x)) == redact(x)``) as long
as the extra patterns do not match the markers themselves.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import os
import re
import socket
import string
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional
from urllib.parse import quote, quote_plus

__all__ = [
    "DEFAULT_ERROR_MESSAGE_LIMIT",
    "DEFAULT_FIELD_LIMIT",
    "HOME_REPLACEMENT",
    "HOST_REPLACEMENT",
    "REDACTED",
    "TRUNCATION_MARKER",
    "KnownSecrets",
    "Redactor",
    "cap",
    "system_redactor",
]

DEFAULT_ERROR_MESSAGE_LIMIT = 4096
DEFAULT_FIELD_LIMIT = 256
TRUNCATION_MARKER = "…[truncated]"
REDACTED = "[REDACTED]"
HOME_REPLACEMENT = "~"
HOST_REPLACEMENT = "<host>"

#: ``redact_and_cap`` only ever looks at this many leading characters
#: (at least): a 10 MB error costs the same as a 16 KiB one.
_PRECUT_MIN = 16 * 1024
_PRECUT_FACTOR = 4

_Sub = Callable[["re.Match[str]"], str]

# --- shared pieces ----------------------------------------------------------


def _words(words: Sequence[str], camel: Sequence[str] = ()) -> str:
    """A regex for any of ``words``, case-insensitive, with no letter or digit just before it.

    Words in ``camel`` also match Capitalised right after a lower-case letter or
    digit (``accessToken``, ``apiKey``). Every branch starts with a literal
    character and checks what precedes it afterwards, so the regex engine can
    skip ahead to candidate characters instead of trying every position.
    """
    branches = []
    for first in sorted({word[0].lower() for word in words}):
        rests = "|".join(
            sorted({re.escape(w[1:]) for w in words if w[0] == first}, key=len, reverse=True)
        )
        for literal in (first, first.upper()):
            branch = f"{literal}(?<![A-Za-z0-9]{literal})(?i:{rests})"
            camel_rests = sorted({re.escape(w[1:]) for w in camel if w[0] == first}, key=len)
            if literal.isupper() and camel_rests:
                camel_alt = "|".join(reversed(camel_rests))
                branch = (
                    f"{literal}(?:(?<![A-Za-z0-9]{literal})(?i:{rests})"
                    f"|(?<=[a-z0-9]{literal})(?:{camel_alt}))"
                )
            branches.append(branch)
    return "(?:" + "|".join(branches) + ")"


# A name's closing quote (possibly escaped, as in repr'd JSON) or ``]``, then
# ``=`` (not ``==``) or ``:``, with a little horizontal space around it.
_ASSIGN = r"(?P<assign>(?:\\{0,2}[\"'`])?\]?[ \t]{0,4}(?:=(?!=)|:)[ \t]{0,4})"

# A value: an earlier redaction standing alone (kept, for idempotence), a
# double- or single-quoted string (to its closing quote or the end of the line),
# or a bare word. ``~`` counts as a word's end and never starts a bare value: a
# home directory replaced after this rule ran must not change its match on a
# second pass.
_KEPT_OR_QUOTED_VALUE = (
    r"(?P<lit>\[REDACTED\](?![^\s\"',;&<>\\~]))"
    r"|(?P<dq>\\{0,2}\")(?P<dbody>[^\"\n]*)"
    r"|(?P<sq>\\{0,2}')(?P<sbody>[^'\n]*)"
)
_BARE_START = r"[^\s\"',;&<>\\~]"
_BARE_REST = r"[^\s\"',;&<>\\]*"

# Scheme words of the Authorization header, kept in front of the redaction.
_AUTH_SCHEMES = (
    "bearer|basic|token|digest|negotiate|ntlm|hoba|mutual|dpop|hmac|oauth|apikey"
    "|aws4-hmac-sha256|goog4-hmac-sha256"
)
_SCHEME_PREFIX = re.compile(rf"(?i:{_AUTH_SCHEMES})[ \t]+(?=\S)")

# --- patterns ---------------------------------------------------------------

_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,16}-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,16}-----")

_AUTH_HEADER = re.compile(
    _words(["authorization", "proxy-authorization"])
    + _ASSIGN
    + r"(?P<value>"
    + _KEPT_OR_QUOTED_VALUE
    + rf"|(?P<scheme>(?i:{_AUTH_SCHEMES})[ \t]+)?(?P<bare>{_BARE_START}[^\s\"',;&<>\\]*)"
    + r")"
)

_COOKIE_HEADER = re.compile(
    _words(["cookie", "set-cookie"])
    + _ASSIGN
    + r"(?P<value>"
    + _KEPT_OR_QUOTED_VALUE
    + rf"|(?P<bare>{_BARE_START}[^\n\"'\\]*)"
    + r")"
)

# Runs of token characters are consumed whole, each pattern starts with a
# literal (so the scan is a fast substring search), and runs that could start
# again inside themselves are anchored with a look-behind placed after the
# literal, so each character is scanned a bounded number of times. The MassUGC
# key comes first: no later rule can split one.
_MASSUGC_KEY = re.compile(r"massugc_[A-Za-z0-9_-]{32,}")
_SHAPED_TOKENS = (
    _MASSUGC_KEY,
    re.compile(r"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
    re.compile(r"sk(?<![A-Za-z0-9_-]sk)[-_][A-Za-z0-9_-]{20,}"),
    re.compile(r"AIza[A-Za-z0-9_-]{35,}"),
    re.compile(r"ya29\.[A-Za-z0-9._-]+"),
    re.compile(r"A(?:KIA|SIA)[A-Z0-9]{16}"),
)

_TOKEN_RUN = r"[A-Za-z0-9._+/-][A-Za-z0-9._~+/=-]*"  # noqa: S105 (a pattern, not a password)
_BEARER = re.compile(rf"(?P<scheme>{_words(['bearer'])}[ \t]+){_TOKEN_RUN}")
_BASIC = re.compile(
    rf"(?P<scheme>{_words(['basic'])}[ \t]+)(?P<token>[A-Za-z0-9+/]{{4,}}={{0,2}})"
    r"(?![A-Za-z0-9+/=])"
)
_TOKEN_WORD = re.compile(
    rf"(?P<scheme>{_words(['token'])}[ \t]+)"
    r"(?P<token>[A-Za-z0-9._+/-][A-Za-z0-9._~+/=-]{15,})"
)

# Anchored on the literal ``://``; the scheme in front is left alone. The query
# runs to a space, quote or angle bracket: a backslash (as in a repr'd ``\n``)
# does not end it, so no part of a signed query can hide behind one.
_URL = re.compile(
    r"://(?P<userinfo>[^\s/?#\"'\\~][^\s/?#\"'\\]{0,255}@)?"
    r"(?P<rest>[^\s?#\"'\\]*)"
    r"(?P<query>[?#][^\s\"'<>]*)?"
)
# ``... with url: /v1/x?api_key=...`` (requests, urllib3). The path excludes
# ``:`` so the ``url:`` anchor cannot recur inside a scanned path.
_RELATIVE_URL = re.compile(
    rf"(?P<head>{_words(['url'])}[ \t]{{0,4}}[:=][ \t]{{0,4}}/[^\s?#\"'<>\\:]*)"
    r"(?P<query>[?#][^\s\"'<>]+)"
)

#: Names whose value is a secret. A name may end one of these after ``_``,
#: ``-`` or ``.`` (``client_secret``, ``X-API-Key``, ``aws_secret_access_key``).
_SECRET_WORDS = (
    "password", "passwd", "passphrase", "pwd", "secret", "secretkey", "privatekey",
    "token", "key", "apikey", "accesskey", "signature", "sig", "credential", "credentials",
)  # fmt: skip
#: ... and Capitalised after a lower-case letter (``accessToken``, ``apiKey``).
_CAMEL_SECRET_WORDS = (
    "password", "passwd", "passphrase", "secret", "token", "key", "signature",
    "credential", "credentials",
)  # fmt: skip
_KEY_VALUE = re.compile(
    _words(_SECRET_WORDS, camel=_CAMEL_SECRET_WORDS)
    + _ASSIGN
    + r"(?P<value>"
    + _KEPT_OR_QUOTED_VALUE
    + rf"|(?P<bare>{_BARE_START}{_BARE_REST})"
    + r")"
)

_SEP = r"(?:\\{1,2}|/)"
# Generic home directories. POSIX: not inside a longer path such as
# ``/api/v1/home/x`` (look-behind), except the WSL/Git Bash ``/mnt/c``, ``/c``.
# Not after ``~`` either, so that ``/Users/a/Users/b`` -> ``~/Users/b`` is final.
_POSIX_HOME = re.compile(
    r"/(?:(?<![\w.~-]/)|(?<=/mnt/[A-Za-z]/)|(?<=(?<![\w.~-])/[A-Za-z]/))"
    r"(?:Users|home)/[A-Za-z0-9._-]{1,64}(?![A-Za-z0-9._-])"
)
# Windows: a name may hold spaces when a separator follows it; a name that
# does not fit is left whole rather than split. A name without spaces may hold
# ``~`` (short names such as ``BOBSMI~1``) but not start with one: that is a
# home replaced earlier.
_WIN_NAME_SPACED = r"[^\\/\"'`<>|?*:;,=()\[\]{}&~\r\n\t]{1,64}(?=[\\/])"
_WIN_NAME = r"[^\\/\"'`<>|?*:\s]{1,64}(?![^\\/\"'`<>|?*:\s])"
_WINDOWS_HOME = re.compile(
    rf"(?:(?<![A-Za-z0-9])[A-Za-z]:{_SEP}(?i:users){_SEP}|\\{{1,2}}(?i:users)\\{{1,2}})"
    rf"(?!~)(?:{_WIN_NAME_SPACED}|{_WIN_NAME})"
)

#: Host names too generic to scrub without mangling ordinary words.
_COMMON_HOSTNAMES = frozenset(
    {
        "admin", "api", "app", "chars", "computer", "default", "desktop", "home",
        "host", "hostname", "http", "https", "laptop", "linux", "local",
        "localdomain", "localhost", "mac", "macbook", "none", "null", "pc",
        "redacted", "root", "server", "test", "truncated", "ubuntu", "unknown",
        "user", "users", "windows", "workstation",
    }
)  # fmt: skip

# Characters no token-shaped secret (key, JWT, bearer token, URL, host name)
# contains: a cut just before one cannot leave a fragment of one. Secrets that
# do span them (quoted values, cookies, private keys) are redacted up to the
# end of the text when their end is missing.
_SEPARATOR = re.compile(r"[\s\"'`,;&<>(){}\[\]\\|]")


# --- replacement helpers ----------------------------------------------------


def _redacted_body(body: str, keep_scheme: bool) -> str:
    """The redaction of a quoted value's body, keeping its escape tail (and scheme word)."""
    if not body:
        return body
    stripped = body.rstrip("\\")
    tail = body[len(stripped) :]
    head = ""
    if keep_scheme:
        scheme = _SCHEME_PREFIX.match(stripped)
        if scheme is not None:
            head = scheme.group(0)
    return head + REDACTED + tail


def _value_replacer(keep_scheme: bool) -> _Sub:
    """A ``re.sub`` callback that keeps the name and quotes and redacts the value."""

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        head = whole[: match.start("value") - match.start()]
        if match.group("lit") is not None:
            return whole
        if match.group("dq") is not None:
            return head + match.group("dq") + _redacted_body(match.group("dbody"), keep_scheme)
        if match.group("sq") is not None:
            return head + match.group("sq") + _redacted_body(match.group("sbody"), keep_scheme)
        scheme = match.groupdict().get("scheme") or ""
        return head + scheme + REDACTED

    return replace


def _redact_nonempty(match: re.Match[str]) -> str:
    """A user pattern's match -> ``[REDACTED]``; an empty match changes nothing."""
    return REDACTED if match.group(0) else ""


def _replace_scheme_token(match: re.Match[str]) -> str:
    """``Bearer <token>`` -> ``Bearer [REDACTED]``."""
    return match.group("scheme") + REDACTED


def _replace_basic(match: re.Match[str]) -> str:
    """Redact ``Basic <b64>`` when it decodes to ``user:password`` or looks like a credential."""
    token = match.group("token")
    if _looks_like_credential(token) or _decodes_to_user_password(token):
        return match.group("scheme") + REDACTED
    return match.group(0)


def _replace_token_word(match: re.Match[str]) -> str:
    """Redact ``Token <x>`` when ``<x>`` holds a digit (so ``Token verification`` survives)."""
    if any(ch.isdigit() for ch in match.group("token")):
        return match.group("scheme") + REDACTED
    return match.group(0)


def _looks_like_credential(token: str) -> bool:
    """Long and with a digit: not an English word."""
    return len(token) >= 20 and any(ch.isdigit() for ch in token)


def _decodes_to_user_password(token: str) -> bool:
    """True when ``token`` is base64 for ``something:something``."""
    padded = token.rstrip("=")
    padded += "=" * (-len(padded) % 4)
    try:
        decoded = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


def _replace_url(match: re.Match[str]) -> str:
    """Replace a URL's user-info and its whole query string / fragment."""
    userinfo = REDACTED + "@" if match.group("userinfo") else ""
    query = match.group("query") or ""
    if len(query) > 1:
        query = query[0] + REDACTED
    return "://" + userinfo + match.group("rest") + query


def _replace_relative_url(match: re.Match[str]) -> str:
    """``url: /path?query`` -> ``url: /path?[REDACTED]``."""
    return match.group("head") + match.group("query")[0] + REDACTED


def _redact_private_keys(text: str) -> str:
    """Replace each PEM private key block, or from its header to the end when cut short."""
    if "PRIVATE KEY" not in text:
        return text
    pieces: list[str] = []
    pos = 0
    while True:
        begin = _PEM_BEGIN.search(text, pos)
        if begin is None:
            break
        pieces.append(text[pos : begin.start()])
        pieces.append(REDACTED)
        end = _PEM_END.search(text, begin.end())
        if end is None:
            pos = len(text)
            break
        pos = end.end()
    pieces.append(text[pos:])
    return "".join(pieces)


class _Rule(NamedTuple):
    """One substitution, skipped cheaply when none of its trigger words is in the text."""

    pattern: re.Pattern[str]
    replacement: str | _Sub
    #: Lower-case substrings one of which any match contains; empty = always run.
    triggers: tuple[str, ...] = ()

    def apply(self, text: str, lowered: str) -> str:
        """Substitute in ``text`` unless ``lowered`` (the input, lower-cased) rules a match out."""
        if self.triggers and not any(word in lowered for word in self.triggers):
            return text
        return self.pattern.sub(self.replacement, text)


# Trigger checks use the lower-cased *input*: every rule only replaces text by
# a marker, so no rule can create a trigger word that the input lacked.
_SECRET_RULES: tuple[_Rule, ...] = (
    _Rule(_AUTH_HEADER, _value_replacer(keep_scheme=True), ("authorization",)),
    _Rule(_COOKIE_HEADER, _value_replacer(keep_scheme=False), ("cookie",)),
    *(_Rule(pattern, REDACTED) for pattern in _SHAPED_TOKENS),
    _Rule(_BEARER, _replace_scheme_token, ("bearer",)),
    _Rule(_BASIC, _replace_basic, ("basic",)),
    _Rule(_TOKEN_WORD, _replace_token_word, ("token",)),
    _Rule(_RELATIVE_URL, _replace_relative_url, ("url",)),
    _Rule(
        _KEY_VALUE,
        _value_replacer(keep_scheme=False),
        ("pass", "pwd", "secret", "token", "key", "sig", "credential"),
    ),
)
_URL_RULE = _Rule(_URL, _replace_url)
_GENERIC_HOME_RULES: tuple[_Rule, ...] = (
    _Rule(_POSIX_HOME, HOME_REPLACEMENT, ("users/", "home/")),
    _Rule(_WINDOWS_HOME, HOME_REPLACEMENT, ("users",)),
)


# --- compiling the per-user patterns ----------------------------------------


def _home_rule(home: str) -> Optional[_Rule]:
    """A rule replacing ``home`` in any separator style, or None when it is too vague to scrub."""
    home = home.strip()
    parts = [part for part in re.split(r"[\\/]+", home) if part]
    if not parts:
        return None
    if re.fullmatch(r"[A-Za-z]:", parts[0]):
        prefix = re.escape(parts.pop(0)) + _SEP
    elif home[0] in "\\/":
        prefix = r"[\\/]{1,4}"
    else:
        return None  # not absolute: "~" or a bare word would match too much
    if not parts:
        return None
    body = _SEP.join(re.escape(part) for part in parts)
    pattern = re.compile(prefix + body + r"(?![\w-])", re.IGNORECASE)
    return _Rule(pattern, HOME_REPLACEMENT, (parts[-1].lower(),))


def _host_rule(hostname: str) -> Optional[_Rule]:
    """A whole-word rule for ``hostname`` and its first label, or None if too generic."""
    name = hostname.strip().rstrip(".")
    candidates = {name, name.split(".", 1)[0]}
    usable = sorted(
        (
            c
            for c in candidates
            if len(c) >= 3 and c.lower() not in _COMMON_HOSTNAMES and any(ch.isalpha() for ch in c)
        ),
        key=len,
        reverse=True,
    )
    if not usable:
        return None
    names = "|".join(re.escape(c) for c in usable)
    pattern = re.compile(rf"(?<![\w-])(?:{names})(?![\w-])", re.IGNORECASE)
    return _Rule(pattern, HOST_REPLACEMENT, (usable[-1].lower(),))


def _compile_extra(pattern: str) -> re.Pattern[str]:
    """Compile one user pattern, refusing invalid ones and ones that match the empty string."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid extra redaction pattern {pattern!r}: {exc}") from None
    if compiled.search("") is not None:
        raise ValueError(f"extra redaction pattern {pattern!r} matches the empty string")
    return compiled


# --- secrets known by value ---------------------------------------------------

#: The shortest run of a known secret (or of one of its encodings) that is
#: scrubbed: much shorter runs turn up in ordinary text by chance.
_MIN_SECRET_RUN = 16
#: How many secrets a :class:`KnownSecrets` keeps, the most recently added.
_MAX_KNOWN_SECRETS = 8
_MASSUGC_KEY_PREFIX = "massugc_"

# The scan looks one 8-character block up every 9 characters: every
# 16-character window wholly contains exactly one such block, so only the few
# windows around a block that belongs to some secret are looked up in full.
_BLOCK = 8
_BLOCK_STRIDE = _MIN_SECRET_RUN + 1 - _BLOCK

_WHITESPACE = re.compile(r"\s+")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")
_TO_URLSAFE_BASE64 = str.maketrans("+/", "-_")
_BASE64_CHARS = frozenset(string.ascii_letters + string.digits + "+/-_")
_ASCII_LOWERCASE = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
#: At most this many ``=`` end a base64 text.
_BASE64_MAX_PADDING = 2


class _SecretIndex(NamedTuple):
    """What a scan needs to know about the secrets; immutable, so a scan takes no lock."""

    secrets: tuple[str, ...]
    #: Every 16-character window of every case-sensitive variant -> whether the
    #: variant is base64, whose neighbouring characters hold a few of its bits.
    windows: Mapping[str, bool]
    #: Lower-case 16-character windows of the hex variants, found in either case.
    folded_windows: frozenset[str]
    #: Every window's 8-character blocks, A-Z lower-cased: the first, cheap filter.
    blocks: frozenset[str]


def _secret_parts(secret: str) -> tuple[str, ...]:
    """The secret, and for a MassUGC key also its part after ``massugc_`` (which is public)."""
    rest = secret[len(_MASSUGC_KEY_PREFIX) :]
    if secret.startswith(_MASSUGC_KEY_PREFIX) and len(rest) >= _MIN_SECRET_RUN:
        return (secret, rest)
    return (secret,)


def _aligned_base64(data: bytes) -> tuple[str, ...]:
    """The standard base64 characters that depend on ``data`` alone, at each of its 3 alignments.

    Inside a longer encoded text, ``data`` can start at any byte offset modulo
    3; at each, the characters that also hold bits of the neighbouring bytes
    differ from text to text and are left out.
    """
    encodings = []
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode("ascii")
        first = -(-8 * offset // 6)  # the first character holding no bit of the bytes before
        end = 8 * (offset + len(data)) // 6  # past the last one holding no bit of the bytes after
        encodings.append(encoded[first:end])
    return tuple(encodings)


def _percent_encodings(text: str) -> set[str]:
    """``text`` as ``quote`` and ``quote_plus`` write it, with upper- and lower-case escapes."""
    forms = {quote(text, safe=""), quote(text), quote_plus(text)}
    return forms | {_PERCENT_ESCAPE.sub(lambda m: m.group(0).lower(), form) for form in forms}


def _ascii_lower(text: str) -> str:
    """``text`` with only A-Z lower-cased: ``str.lower`` may change its length (``İ``)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWERCASE)


def _windows(variant: str) -> set[str]:
    """Every run of :data:`_MIN_SECRET_RUN` characters of ``variant``."""
    return {
        variant[start : start + _MIN_SECRET_RUN]
        for start in range(len(variant) - _MIN_SECRET_RUN + 1)
    }


def _index_secrets(secrets: tuple[str, ...]) -> _SecretIndex:
    """Precompute the windows of every variant of every secret."""
    windows: dict[str, bool] = {}
    folded: set[str] = set()
    for secret in secrets:
        for part in _secret_parts(secret):
            data = part.encode("utf-8")
            # Text is scanned with its whitespace removed, so the plain secret is too.
            for variant in {"".join(part.split()), *_percent_encodings(part)}:
                for window in _windows(variant):
                    windows.setdefault(window, False)
            for standard in _aligned_base64(data):
                for variant in (standard, standard.translate(_TO_URLSAFE_BASE64)):
                    for window in _windows(variant):
                        windows[window] = True
                for variant in _percent_encodings(standard):
                    for window in _windows(variant):
                        windows.setdefault(window, False)
            folded |= _windows(data.hex())
    blocks = {
        _ascii_lower(window)[start : start + _BLOCK]
        for window in (*windows, *folded)
        for start in range(_MIN_SECRET_RUN - _BLOCK + 1)
    }
    return _SecretIndex(secrets, windows, frozenset(folded), frozenset(blocks))


_NO_SECRETS = _index_secrets(())


def _secret_spans(compact: str, index: _SecretIndex) -> list[tuple[int, int, bool]]:
    """The merged spans of ``compact`` made of windows of some secret's variants.

    Each span says whether a base64 variant matched in it.
    """
    lowered = _ascii_lower(compact)
    last_start = len(compact) - _MIN_SECRET_RUN
    spans: list[tuple[int, int, bool]] = []
    for block in range(0, len(compact) - _BLOCK + 1, _BLOCK_STRIDE):
        if lowered[block : block + _BLOCK] not in index.blocks:
            continue
        first_start = max(0, block + _BLOCK - _MIN_SECRET_RUN)
        for start in range(first_start, min(block, last_start) + 1):
            found = index.windows.get(compact[start : start + _MIN_SECRET_RUN])
            if found is None and lowered[start : start + _MIN_SECRET_RUN] in index.folded_windows:
                found = False
            if found is None:
                continue
            # Windows are found in order of their start, so each one ends last.
            if spans and start <= spans[-1][1]:
                merged_start, _, merged_base64 = spans.pop()
                spans.append((merged_start, start + _MIN_SECRET_RUN, merged_base64 or found))
            else:
                spans.append((start, start + _MIN_SECRET_RUN, found))
    return spans


def _text_spans(
    text: str, compact: str, compact_spans: list[tuple[int, int, bool]]
) -> list[tuple[int, int]]:
    """Map spans of ``compact`` (``text`` without whitespace) back onto ``text``.

    A span covers the whitespace inside it, so a secret wrapped across lines
    goes whole. A base64 span also takes the character on each side that may
    hold a few of the secret's bits, and the padding after it; it is widened in
    ``text``, so it never reaches across whitespace into a neighbouring word.
    """
    piece_compact_starts = [0]
    piece_text_starts = [0]
    if len(compact) != len(text):
        removed = 0
        for gap in _WHITESPACE.finditer(text):
            removed += gap.end() - gap.start()
            piece_compact_starts.append(gap.end() - removed)
            piece_text_starts.append(gap.end())

    def in_text(position: int) -> int:
        piece = bisect.bisect_right(piece_compact_starts, position) - 1
        return piece_text_starts[piece] + position - piece_compact_starts[piece]

    spans: list[tuple[int, int]] = []
    for compact_start, compact_end, is_base64 in compact_spans:
        start, end = in_text(compact_start), in_text(compact_end - 1) + 1
        if is_base64:
            start, end = _widen_base64(text, start, end)
        if spans and start <= spans[-1][1]:
            start = spans.pop()[0]
        spans.append((start, end))
    return spans


def _widen_base64(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a base64 span over one more base64 character each side, then its padding."""
    if start > 0 and text[start - 1] in _BASE64_CHARS:
        start -= 1
    if end < len(text) and text[end] in _BASE64_CHARS:
        end += 1
    padding_end = min(end + _BASE64_MAX_PADDING, len(text))
    while end < padding_end and text[end] == "=":
        end += 1
    return start, end


def _replace_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each of the ordered, disjoint ``spans`` replaced by ``[REDACTED]``."""
    pieces = []
    copied_up_to = 0
    for start, end in spans:
        pieces.append(text[copied_up_to:start])
        pieces.append(REDACTED)
        copied_up_to = end
    pieces.append(text[copied_up_to:])
    return "".join(pieces)


class KnownSecrets:
    """The exact secrets this process holds (its API keys), scrubbed from text in any encoding.

    The rules of :class:`Redactor` find a MassUGC key by its shape, which its
    base64, its hex or a copy wrapped across two lines do not have. Knowing the
    value itself, this finds it as it is or its part after ``massugc_``;
    base64-encoded (standard or URL-safe alphabet, with or without padding,
    also inside a longer encoded text at any byte alignment); percent-encoded
    (which leaves a MassUGC key as it is, but not the ``+`` and ``/`` of
    standard base64); hex in either case; with whitespace or line breaks
    anywhere inside; or cut down to 16 or more consecutive characters of any of
    these. Each appearance becomes ``[REDACTED]``; a base64 one takes along the
    neighbouring character that holds a few of the secret's bits, and its padding.

    The 8 most recently added secrets are kept, so a key replaced at run time
    is still scrubbed for a while and memory stays bounded. Thread-safe:
    :meth:`add` swaps in a new immutable index under a lock and :meth:`scrub`
    reads whichever index is current without one. A scan takes time linear in
    the text: a 16-character window matches only if its one 8-character block
    at a multiple of 9 is a block of some secret, and that is a set look-up.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        """Remember each of ``values`` as :meth:`add` does."""
        if isinstance(values, (str, bytes)):
            raise TypeError("values must be an iterable of strings, not a single string")
        self._lock = threading.Lock()
        self._index = _NO_SECRETS
        for value in values:
            self.add(value)

    def add(self, value: str) -> None:
        """Remember ``value`` as the most recent secret, without its surrounding whitespace.

        A value shorter than 16 characters is ignored: runs that short cannot be
        told from ordinary text. Adding a ninth secret forgets the oldest one;
        adding one that is already known makes it the most recent again.
        """
        if not isinstance(value, str):
            raise TypeError(f"a secret must be a string, not {type(value).__name__}")
        value = value.strip()
        if len(value) < _MIN_SECRET_RUN:
            return
        with self._lock:
            known = self._index.secrets
            if known and known[-1] == value:
                return
            kept = (*(secret for secret in known if secret != value), value)
            self._index = _index_secrets(kept[-_MAX_KNOWN_SECRETS:])

    def scrub(self, text: str) -> str:
        """Return ``text`` with every appearance of a known secret replaced by ``[REDACTED]``.

        Text that holds none comes back as it is (the same object).
        """
        index = self._index
        if not index.secrets or len(text) < _MIN_SECRET_RUN:
            return text
        # str.split() is several times faster than _WHITESPACE.sub, and both
        # count exactly the str.isspace() characters as whitespace.
        compact = "".join(text.split())
        if len(compact) < _MIN_SECRET_RUN:
            return text
        compact_spans = _secret_spans(compact, index)
        if not compact_spans:
            return text
        return _replace_spans(text, _text_spans(text, compact, compact_spans))

    def __bool__(self) -> bool:
        """True when at least one secret is known."""
        return bool(self._index.secrets)

    def __repr__(self) -> str:
        """How many secrets are known, never what they are."""
        count = len(self._index.secrets)
        return f"<KnownSecrets {count} secret{'' if count == 1 else 's'}>"


# --- the public API ---------------------------------------------------------


def cap(text: str, limit: int) -> str:
    """Return ``text`` cut to at most ``limit`` characters, ending in the marker when cut."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    if len(text) <= limit:
        return text
    return _cut_with_marker(text, limit)


def _cut_with_marker(text: str, limit: int) -> str:
    """``text`` shortened so that it plus the marker fits in ``limit`` characters."""
    room = limit - len(TRUNCATION_MARKER)
    if room < 0:
        return TRUNCATION_MARKER[:limit]
    return text[:room] + TRUNCATION_MARKER


def _precut(text: str, size: int) -> str:
    """The first ``size`` characters, trimmed back to a separator so no secret is split."""
    if _SEPARATOR.match(text, size):
        return text[:size]
    head = text[:size]
    last = _SEPARATOR.search(head[::-1])
    if last is None:
        return ""
    return head[: size - 1 - last.start()]


@dataclass(frozen=True, repr=False)
class Redactor:
    """Scrubs secrets, the home directory and the host name from text; immutable and shareable.

    Args:
        home: the user's home directory (``/Users/alice``, ``C:\\Users\\alice``);
            None leaves only the generic home-directory scrubbing.
        hostname: the machine's host name; None (or a name shorter than 3
            characters or a common word such as ``localhost``) is not scrubbed.
        extra_patterns: more regexes whose matches become ``[REDACTED]``;
            compiled once here, ``ValueError`` names an invalid one.
    """

    home: Optional[str] = None
    hostname: Optional[str] = None
    extra_patterns: tuple[str, ...] = ()
    _extra: tuple[re.Pattern[str], ...] = field(init=False, compare=False, default=())
    _home: Optional[_Rule] = field(init=False, compare=False, default=None)
    _host: Optional[_Rule] = field(init=False, compare=False, default=None)

    def __post_init__(self) -> None:
        """Validate the settings and compile every pattern once."""
        home: object = self.home
        hostname: object = self.hostname
        patterns: object = self.extra_patterns
        if home is not None and not isinstance(home, str):
            raise TypeError(f"home must be a string or None, not {type(home).__name__}")
        if hostname is not None and not isinstance(hostname, str):
            raise TypeError(f"hostname must be a string or None, not {type(hostname).__name__}")
        if isinstance(patterns, (str, bytes)) or not isinstance(patterns, (tuple, list)):
            raise TypeError("extra_patterns must be a sequence of regex strings")
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise TypeError(f"extra pattern {pattern!r} is not a string")
        as_tuple: tuple[str, ...] = tuple(patterns)
        object.__setattr__(self, "extra_patterns", as_tuple)
        object.__setattr__(self, "_extra", tuple(_compile_extra(p) for p in as_tuple))
        object.__setattr__(self, "_home", _home_rule(home) if home else None)
        object.__setattr__(self, "_host", _host_rule(hostname) if hostname else None)

    def __repr__(self) -> str:
        """Say what is configured without showing the values, which may be personal or secret."""
        home = "set" if self._home is not None else "unset"
        host = "set" if self._host is not None else "unset"
        return f"Redactor(home={home}, hostname={host}, extra_patterns={len(self.extra_patterns)})"

    def redact(self, text: str, *, known_secrets: Optional[KnownSecrets] = None) -> str:
        """Return ``text`` with every secret and personal detail this redactor knows replaced.

        ``known_secrets``, when given, is applied after the rules; if it replaced
        anything, the rules run once more (see the module docstring for why).
        """
        redacted = self._apply_rules(text)
        if not known_secrets:
            return redacted
        scrubbed = known_secrets.scrub(redacted)
        if scrubbed is redacted:
            return redacted
        return self._apply_rules(scrubbed)

    def _apply_rules(self, text: str) -> str:
        """Apply the extra patterns and every built-in rule, in their documented order."""
        for extra in self._extra:
            text = extra.sub(_redact_nonempty, text)
        lowered = text.lower()
        text = _redact_private_keys(text)
        for rule in _SECRET_RULES:
            text = rule.apply(text, lowered)
        # Order matters for idempotence: a rule whose match depends on the
        # characters around it runs after every rule that could change them.
        # The generic homes look at the character before ``/home/``, which
        # ``<host>`` may replace; a URL's user-info ends at a ``/`` that a home
        # replaced by ``~`` may have held.
        if self._home is not None:
            text = self._home.apply(text, lowered)
        if self._host is not None:
            text = self._host.apply(text, lowered)
        for rule in _GENERIC_HOME_RULES:
            text = rule.apply(text, lowered)
        return _URL_RULE.apply(text, lowered)

    def redact_and_cap(
        self, text: str, limit: int, *, known_secrets: Optional[KnownSecrets] = None
    ) -> str:
        """Redact, then cap to ``limit`` characters; reads only a bounded prefix of huge text."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        size = max(_PRECUT_FACTOR * limit, _PRECUT_MIN)
        if len(text) <= size:
            return cap(self.redact(text, known_secrets=known_secrets), limit)
        head = _precut(text, size)
        return _cut_with_marker(self.redact(head, known_secrets=known_secrets), limit)


def system_redactor(extra_patterns: Sequence[str] = ()) -> Redactor:
    """Build a :class:`Redactor` for this machine's home and host name, read once, now."""
    home: Optional[str] = os.path.expanduser("~")
    if home in ("", "~"):
        home = None
    try:
        hostname: Optional[str] = socket.gethostname()
    except OSError:
        hostname = None
    return Redactor(home=home, hostname=hostname, extra_patterns=tuple(extra_patterns))
