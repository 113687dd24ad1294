"""Tests for massugc_logging.redaction.KnownSecrets: a known key is scrubbed in any encoding."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from massugc_logging.redaction import REDACTED, KnownSecrets, Redactor

KEY = "massugc_" + "Ab3_dEf-9" * 3 + "Zq1x9"
BODY = KEY[len("massugc_") :]
assert len(BODY) == 32

KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
# No character here can be part of a key, its base64, hex or percent-encoding.
NOT_KEY_ALPHABET = "!\"#$&'()*,.:;<>?@[\\]^`{|}~ \t\r\n\u00e9\u0130\u00df\u20ac\u65e5\u672c"

# No example database: nothing is written into the repository.
PROPERTY = settings(database=None, deadline=None, max_examples=200)

BODIES = st.text(alphabet=KEY_ALPHABET, min_size=32, max_size=32)
SEPARATORS = st.sampled_from(["\n", "\r\n", " ", "\t", "  \n  "])
VARIANT_KINDS = [
    "plain", "body", "base64", "base64-urlsafe", "hex-lower", "hex-upper", "wrapped", "slice",
]  # fmt: skip


def windows(text: str) -> set[str]:
    """Every run of 16 characters of ``text``."""
    return {text[start : start + 16] for start in range(len(text) - 15)}


def without_whitespace(text: str) -> str:
    """``text`` with all whitespace removed, as a wrapped key reads once joined."""
    return "".join(text.split())


def base64_of(prefix: bytes, data: bytes, suffix: bytes, *, urlsafe: bool) -> tuple[str, str]:
    """The base64 of ``prefix + data + suffix``, and its characters that hold only ``data``."""
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    whole = encode(prefix + data + suffix).decode("ascii")
    first = -(-8 * len(prefix) // 6)
    end = 8 * (len(prefix) + len(data)) // 6
    return whole, whole[first:end]


def distinct_key(seed: int) -> str:
    """A valid key sharing no 16-character run with the other seeds' keys."""
    return "massugc_" + hashlib.sha256(str(seed).encode()).hexdigest()[:32]


@st.composite
def disguised(draw: st.DrawFn, kind: str, key: str) -> tuple[str, str]:
    """``key`` disguised as ``kind``, and the encoding whose 16-character runs must all go."""
    body = key[len("massugc_") :]
    if kind == "plain":
        return key, key
    if kind == "body":
        return body, body
    if kind in ("base64", "base64-urlsafe"):
        prefix = draw(st.binary(max_size=7))
        suffix = draw(st.binary(max_size=7))
        whole, inner = base64_of(prefix, key.encode(), suffix, urlsafe=kind == "base64-urlsafe")
        if draw(st.booleans()):
            whole = whole.rstrip("=")
        return whole, inner
    if kind == "hex-lower":
        return key.encode().hex(), key.encode().hex()
    if kind == "hex-upper":
        return key.encode().hex().upper(), key.encode().hex().upper()
    if kind == "wrapped":
        cuts = sorted(draw(st.sets(st.integers(1, len(key) - 1), min_size=1, max_size=5)))
        pieces = [key[start:end] for start, end in zip([0, *cuts], [*cuts, len(key)])]
        wrapped = pieces[0]
        for piece in pieces[1:]:
            wrapped += draw(SEPARATORS) + piece
        return wrapped, key
    assert kind == "slice"
    length = draw(st.integers(16, len(body)))
    start = draw(st.integers(0, len(body) - length))
    return body[start : start + length], body[start : start + length]


# --- the plain key and its disguises ----------------------------------------------------------


def test_plain_key_is_replaced_by_the_marker() -> None:
    """The key as it is becomes ``[REDACTED]`` and the text around it is kept."""
    assert KnownSecrets([KEY]).scrub(f"auth failed for {KEY}.") == f"auth failed for {REDACTED}."


def test_secret_part_alone_is_replaced() -> None:
    """The 32 characters after ``massugc_`` are found without the prefix."""
    assert KnownSecrets([KEY]).scrub(f"key={BODY};") == f"key={REDACTED};"


def test_base64_key_file_content_is_replaced_whole() -> None:
    """The standard base64 of the key, padding included, leaves nothing behind."""
    encoded = base64.b64encode(KEY.encode()).decode()
    assert encoded.endswith("=")
    assert KnownSecrets([KEY]).scrub(f"bad key file: {encoded}\n") == f"bad key file: {REDACTED}\n"


def test_urlsafe_base64_without_padding_is_replaced() -> None:
    """URL-safe base64 with the padding stripped is found too."""
    encoded = base64.urlsafe_b64encode(KEY.encode()).decode().rstrip("=")
    result = KnownSecrets([KEY]).scrub(f"blob {encoded} end")
    assert result == f"blob {REDACTED} end"


def test_urlsafe_alphabet_is_found_where_it_differs_from_the_standard_one() -> None:
    """``-`` and ``_`` in place of ``+`` and ``/`` do not hide a secret."""
    # A MassUGC key's base64 never holds ``+`` or ``/``; a secret with ``?>~`` does.
    secret = "pass?word>~~~?>>>~~~?secret"
    encoded = base64.urlsafe_b64encode(secret.encode()).decode()
    assert "-" in encoded
    assert "_" in encoded
    assert KnownSecrets([secret]).scrub(f"[{encoded}]") == f"[{REDACTED}]"


@pytest.mark.parametrize("offset", [0, 1, 2])
def test_key_inside_a_longer_base64_text_is_replaced_at_every_alignment(offset: int) -> None:
    """A key encoded as part of a longer text is found wherever its bytes fall in base64 groups."""
    prefix = b'{"user": "x", "k": "'[: 18 + offset]
    whole, inner = base64_of(prefix, KEY.encode(), b'"}', urlsafe=False)
    result = KnownSecrets([KEY]).scrub(whole)
    assert REDACTED in result
    assert not windows(inner) & windows(result)


def test_percent_encoding_leaves_a_key_unchanged() -> None:
    """A key is unreserved in URLs, so its percent-encoded form is the key itself."""
    assert quote(KEY, safe="") == KEY


def test_percent_encoded_base64_in_a_query_is_replaced() -> None:
    """Standard base64 whose ``+`` and ``/`` became ``%2B`` and ``%2F`` is found."""
    secret = "pass?word>~~~?>>>~~~?secret"
    encoded = quote(base64.b64encode(secret.encode()).decode(), safe="")
    assert "%2B" in encoded
    assert "%2F" in encoded
    result = KnownSecrets([secret]).scrub(f"/v1?k={encoded} 400")
    assert result == f"/v1?k={REDACTED} 400"


def test_percent_encoded_generic_secret_is_replaced() -> None:
    """A secret with reserved characters is found as ``quote`` writes it, in either escape case."""
    secret = "p@ss/word+with=reserved:chars"
    escaped = quote(secret, safe="")
    secrets = KnownSecrets([secret])
    assert secrets.scrub(f"q={escaped}&x=1") == f"q={REDACTED}&x=1"
    assert secrets.scrub(f"q={escaped.lower()}&x=1") == f"q={REDACTED}&x=1"


@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_hex_key_is_replaced_in_either_case(case: Callable[[str], str]) -> None:
    """The hex of the key, lower or upper case, becomes the marker."""
    encoded = case(KEY.encode().hex())
    assert KnownSecrets([KEY]).scrub(f"bytes: {encoded}") == f"bytes: {REDACTED}"


def test_key_wrapped_across_lines_is_replaced_with_its_line_break() -> None:
    """A key split by ``\\r\\n`` goes whole, the break inside it included."""
    wrapped = KEY[:20] + "\r\n" + KEY[20:]
    assert KnownSecrets([KEY]).scrub(f"abc {wrapped} xyz") == f"abc {REDACTED} xyz"


def test_key_split_by_spaces_and_tabs_everywhere_is_replaced() -> None:
    """Whitespace between every character does not hide the key."""
    assert KnownSecrets([KEY]).scrub(" \t".join(KEY)) == REDACTED


def test_run_of_16_characters_of_the_secret_is_replaced() -> None:
    """A key cut down to 16 consecutive characters of its secret part is still scrubbed."""
    assert KnownSecrets([KEY]).scrub(f"...{BODY[5:21]}") == f"...{REDACTED}"


def test_run_of_15_characters_is_left_alone() -> None:
    """Runs shorter than 16 characters are too common to scrub."""
    text = f"...{BODY[5:20]}"
    assert KnownSecrets([KEY]).scrub(text) == text


def test_several_known_secrets_are_all_replaced() -> None:
    """Every secret held is scrubbed from the same text."""
    other = distinct_key(1)
    text = f"old {KEY} new {other.encode().hex()}"
    assert KnownSecrets([KEY, other]).scrub(text) == f"old {REDACTED} new {REDACTED}"


def test_uppercase_dotted_i_before_a_hex_key_does_not_shift_the_match() -> None:
    """Text whose ``lower()`` changes length (``\u0130``) still has the exact span replaced."""
    text = "\u0130" * 5 + KEY.encode().hex() + "\u0130"
    assert KnownSecrets([KEY]).scrub(text) == "\u0130" * 5 + REDACTED + "\u0130"


# --- what is kept -----------------------------------------------------------------------------


def test_text_without_the_secret_is_returned_unchanged() -> None:
    """Text holding no secret comes back as the same object."""
    text = "ffmpeg exited with status 1 while rendering job 42 for massugc_other-key"
    assert KnownSecrets([KEY]).scrub(text) is text


def test_other_valid_key_is_left_to_the_shape_rules() -> None:
    """A different key shares no 16-character run with the known one and is kept."""
    text = f"key {distinct_key(7)}"
    assert KnownSecrets([KEY]).scrub(text) == text


def test_empty_known_secrets_changes_nothing_and_is_false() -> None:
    """With no secret held, scrub is the identity and the object is falsy."""
    secrets = KnownSecrets()
    assert not secrets
    assert secrets.scrub(KEY) == KEY


def test_values_shorter_than_16_characters_are_ignored() -> None:
    """A short value is not held: it would match ordinary text."""
    fifteen = "fifteen-chars-x"
    assert len(fifteen) == 15
    secrets = KnownSecrets(["short-secret", f"  {fifteen}\n"])
    assert not secrets
    assert secrets.scrub(fifteen) == fifteen


def test_surrounding_whitespace_of_a_value_is_ignored() -> None:
    """A key read from a file with its newline is held without it."""
    assert KnownSecrets([f"  {KEY}\n"]).scrub(KEY) == REDACTED


def test_a_single_string_instead_of_an_iterable_is_refused() -> None:
    """``KnownSecrets(key)`` would hold nothing (each character is too short), so it raises."""
    with pytest.raises(TypeError):
        KnownSecrets(KEY)


def test_a_non_string_value_is_refused() -> None:
    """Adding bytes raises instead of being silently ignored."""
    with pytest.raises(TypeError):
        KnownSecrets().add(KEY.encode())  # type: ignore[arg-type]


# --- the object itself --------------------------------------------------------------------------


def test_repr_counts_secrets_without_showing_them() -> None:
    """The repr says how many secrets are held, never any part of one."""
    one = KnownSecrets([KEY])
    two = KnownSecrets([KEY, distinct_key(1)])
    assert repr(one) == "<KnownSecrets 1 secret>"
    assert repr(two) == "<KnownSecrets 2 secrets>"
    assert not windows(BODY) & windows(repr(two) + str(two))


def test_at_most_8_secrets_are_kept_and_the_oldest_is_dropped() -> None:
    """A ninth secret forgets the first; the 8 most recent are still scrubbed."""
    keys = [distinct_key(seed) for seed in range(9)]
    secrets = KnownSecrets(keys)
    assert repr(secrets) == "<KnownSecrets 8 secrets>"
    assert secrets.scrub(keys[0]) == keys[0]
    for key in keys[1:]:
        assert secrets.scrub(key) == REDACTED


def test_adding_a_known_secret_again_makes_it_the_most_recent() -> None:
    """Re-adding the oldest secret keeps it when the next one is added."""
    keys = [distinct_key(seed) for seed in range(9)]
    secrets = KnownSecrets(keys[:8])
    secrets.add(keys[0])
    secrets.add(keys[8])
    assert secrets.scrub(keys[0]) == REDACTED
    assert secrets.scrub(keys[1]) == keys[1]


def test_concurrent_adds_and_scrubs_keep_the_bound() -> None:
    """Threads adding and scrubbing at once neither fail nor exceed 8 secrets."""
    secrets = KnownSecrets([KEY])
    failures: list[BaseException] = []

    def add_keys(first: int) -> None:
        try:
            for seed in range(first, first + 20):
                secrets.add(distinct_key(seed))
        except Exception as exc:
            failures.append(exc)

    def scrub_texts() -> None:
        try:
            for _ in range(200):
                # Held at first, dropped once 8 newer keys are in: never half-scrubbed.
                assert secrets.scrub(f"x {KEY}") in (f"x {REDACTED}", f"x {KEY}")
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=add_keys, args=(n * 100,)) for n in range(4)]
    threads += [threading.Thread(target=scrub_texts) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert repr(secrets) == "<KnownSecrets 8 secrets>"


# --- Redactor ---------------------------------------------------------------------------------


def test_redactor_applies_known_secrets_after_its_rules() -> None:
    """``redact(..., known_secrets=...)`` scrubs the base64 key the shape rules miss."""
    encoded = base64.b64encode(KEY.encode()).decode()
    text = f"token file {encoded} for /home/alice"
    assert Redactor().redact(text, known_secrets=KnownSecrets([KEY])) == (
        f"token file {REDACTED} for ~"
    )


def test_redact_and_cap_applies_known_secrets() -> None:
    """``redact_and_cap`` passes the known secrets through before capping."""
    text = "error: " + KEY.encode().hex()
    result = Redactor().redact_and_cap(text, 100, known_secrets=KnownSecrets([KEY]))
    assert result == f"error: {REDACTED}"


def test_rules_run_again_after_a_secret_is_replaced() -> None:
    """A host name glued to the key is scrubbed once the key is gone: a second pass is a no-op."""
    redactor = Redactor(hostname="bobs-box")
    secrets = KnownSecrets([KEY])
    once = redactor.redact(f"err {BODY}bobs-box", known_secrets=secrets)
    assert once == f"err {REDACTED}<host>"
    assert redactor.redact(once, known_secrets=secrets) == once


# --- properties -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", VARIANT_KINDS)
@PROPERTY
@given(body=BODIES, before=st.text(max_size=40), after=st.text(max_size=40), data=st.data())
def test_no_16_character_run_of_a_disguised_key_survives(
    kind: str, body: str, before: str, after: str, data: st.DataObject
) -> None:
    """Any key, disguised any way and embedded in any text, leaves no 16-character run behind."""
    key = "massugc_" + body
    disguise, encoding = data.draw(disguised(kind, key))
    result = without_whitespace(KnownSecrets([key]).scrub(before + disguise + after))
    if kind.startswith("hex"):
        assert not {w.lower() for w in windows(encoding)} & windows(result.lower())
    else:
        assert not windows(encoding) & windows(result)
    assert not windows(body) & windows(result)


@pytest.mark.parametrize("kind", VARIANT_KINDS)
@PROPERTY
@given(body=BODIES, before=st.text(max_size=40), after=st.text(max_size=40), data=st.data())
def test_scrub_is_idempotent(
    kind: str, body: str, before: str, after: str, data: st.DataObject
) -> None:
    """Scrubbing twice changes nothing more than scrubbing once."""
    key = "massugc_" + body
    disguise, _ = data.draw(disguised(kind, key))
    secrets = KnownSecrets([key])
    once = secrets.scrub(before + disguise + after)
    assert secrets.scrub(once) == once


@PROPERTY
@given(body=BODIES, text=st.text(alphabet=NOT_KEY_ALPHABET, max_size=200))
def test_text_that_cannot_hold_the_key_is_unchanged(body: str, text: str) -> None:
    """Text made of characters no key encoding uses comes back exactly as it was."""
    assert KnownSecrets(["massugc_" + body]).scrub(text) == text


FRAGMENTS = st.sampled_from(
    [
        KEY, BODY, BODY[:16], base64.b64encode(KEY.encode()).decode(), KEY.encode().hex(),
        KEY[:20] + "\n" + KEY[20:], "massugc_", "/home/alice", "/Users/bob", "bobs-box",
        "Bearer ", "api_key=", "https://h/p?", "Basic ", REDACTED, "~", " ", "\n", "=", ":",
        "\\", '"', "a", "0", "-", "_", "/",
    ]
)  # fmt: skip


@PROPERTY
@given(st.lists(st.one_of(FRAGMENTS, st.text(max_size=3)), max_size=20).map("".join))
def test_redact_with_known_secrets_is_idempotent(text: str) -> None:
    """The rules plus the known secrets, applied twice, change nothing more than once."""
    redactor = Redactor(hostname="bobs-box")
    secrets = KnownSecrets([KEY])
    once = redactor.redact(text, known_secrets=secrets)
    assert redactor.redact(once, known_secrets=secrets) == once


@PROPERTY
@given(st.lists(st.one_of(FRAGMENTS, st.text(max_size=3)), max_size=20).map("".join))
def test_redact_without_known_secrets_is_unchanged(text: str) -> None:
    """No secrets, or an empty set of them, gives exactly what the rules alone give."""
    redactor = Redactor(home="/home/alice", hostname="bobs-box")
    expected = redactor.redact(text)
    assert redactor.redact(text, known_secrets=None) == expected
    assert redactor.redact(text, known_secrets=KnownSecrets()) == expected
