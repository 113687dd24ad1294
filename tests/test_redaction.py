"""Tests for massugc_logging.redaction: what is scrubbed, what is kept, and how fast."""

from __future__ import annotations

import os
import re
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from massugc_logging.redaction import (
    DEFAULT_ERROR_MESSAGE_LIMIT,
    DEFAULT_FIELD_LIMIT,
    REDACTED,
    TRUNCATION_MARKER,
    Redactor,
    cap,
    system_redactor,
)

KEY = "massugc_Q7xZp2Lm9Rt4Vw8Yb1Nc5Hd3Kf6Gj0Sa"
assert len(KEY) == 8 + 32

MAC = Redactor(home="/Users/alice", hostname="alice-mbp.local")
WINDOWS = Redactor(home="C:\\Users\\Bob Smith", hostname="BOB-PC")
BARE = Redactor()

# No example database: nothing is written into the repository.
PROPERTY = settings(database=None, deadline=None, max_examples=300)

# --- constants and cap --------------------------------------------------------


def test_public_constants_have_documented_values() -> None:
    """The limits and markers other modules rely on have their documented values."""
    assert DEFAULT_ERROR_MESSAGE_LIMIT == 4096
    assert DEFAULT_FIELD_LIMIT == 256
    assert TRUNCATION_MARKER == "…[truncated]"
    assert REDACTED == "[REDACTED]"


def test_cap_leaves_text_within_limit_unchanged() -> None:
    """Text no longer than the limit comes back as it is."""
    assert cap("hello", 5) == "hello"


def test_cap_cuts_to_limit_and_ends_with_marker() -> None:
    """A cut text is its head plus the marker, exactly ``limit`` characters long."""
    result = cap("x" * 100, 20)
    assert result == "x" * 8 + TRUNCATION_MARKER
    assert len(result) == 20


def test_cap_below_marker_length_returns_marker_prefix() -> None:
    """With no room for the marker, as much of the marker as fits signals the cut."""
    assert cap("abcdefghijklmnop", 3) == "…[t"
    assert cap("abcd", 0) == ""


def test_cap_rejects_negative_limit() -> None:
    """A negative limit is a programming error."""
    with pytest.raises(ValueError, match="limit"):
        cap("x", -1)


# --- MassUGC API keys ---------------------------------------------------------


def test_massugc_key_in_plain_text_is_redacted() -> None:
    """A key in a sentence is replaced."""
    assert BARE.redact(f"bad key {KEY} given") == "bad key [REDACTED] given"


def test_massugc_key_inside_url_path_is_redacted() -> None:
    """A key inside a URL path is replaced."""
    out = BARE.redact(f"https://api.example.com/keys/{KEY}/check")
    assert out == "https://api.example.com/keys/[REDACTED]/check"


def test_massugc_key_inside_json_is_redacted() -> None:
    """A key as a JSON value under an innocent name is replaced."""
    assert BARE.redact(f'{{"k": "{KEY}"}}') == '{"k": "[REDACTED]"}'


def test_massugc_key_glued_to_other_characters_is_redacted() -> None:
    """A key with token characters stuck to either side leaves no part behind."""
    out = BARE.redact(f"x{KEY}_tail more")
    assert out == "x[REDACTED] more"


def test_short_massugc_identifiers_are_kept() -> None:
    """Package and module names that merely start with ``massugc_`` survive."""
    text = "in massugc_logging.redaction"
    assert BARE.redact(text) == text


# --- authorization headers ------------------------------------------------------


def test_authorization_bearer_header_keeps_scheme() -> None:
    """``Authorization: Bearer x`` keeps the header name and scheme word."""
    assert BARE.redact("Authorization: Bearer abc.def") == "Authorization: Bearer [REDACTED]"


def test_bearer_token_without_header_is_redacted() -> None:
    """A bare ``Bearer <token>`` is redacted wherever it appears."""
    assert BARE.redact("sent bearer a1b2/c3+d4== ok") == "sent bearer [REDACTED] ok"


def test_authorization_in_printed_dict_is_redacted() -> None:
    """A headers dict printed by Python keeps its shape."""
    out = BARE.redact("{'Authorization': 'Bearer abc123', 'Accept': '*/*'}")
    assert out == "{'Authorization': 'Bearer [REDACTED]', 'Accept': '*/*'}"


def test_authorization_in_json_without_scheme_is_redacted() -> None:
    """A lower-case JSON ``authorization`` value without a scheme word is replaced whole."""
    assert BARE.redact('{"authorization": "abc123"}') == '{"authorization": "[REDACTED]"}'


def test_basic_credentials_are_redacted() -> None:
    """``Basic <base64 of user:password>`` is replaced."""
    assert BARE.redact("Authorization: Basic dXNlcjpwYXNz") == "Authorization: Basic [REDACTED]"
    assert BARE.redact("retry with Basic dXNlcjpwYXNz") == "retry with Basic [REDACTED]"


def test_basic_followed_by_ordinary_word_is_kept() -> None:
    """``Basic plan`` is prose, not a credential."""
    text = "Upgrade from the Basic plan"
    assert BARE.redact(text) == text


def test_token_scheme_with_digits_is_redacted() -> None:
    """``Token <40 hex>`` (Django REST framework style) is replaced."""
    out = BARE.redact("Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b rejected")
    assert out == "Token [REDACTED] rejected"


def test_token_followed_by_ordinary_words_is_kept() -> None:
    """``Token expired`` and similar prose survive."""
    text = "Token expired; token verification_failed"
    assert BARE.redact(text) == text


def test_x_api_key_header_value_is_redacted() -> None:
    """An ``X-API-Key`` header value is replaced even when it is not a MassUGC key."""
    assert BARE.redact("X-API-Key: abc123") == "X-API-Key: [REDACTED]"


def test_cookie_header_value_is_redacted_to_end_of_line() -> None:
    """Every cookie in a ``Cookie`` header is replaced, up to the end of the line."""
    out = BARE.redact("Cookie: session=abc; csrftoken=def\nnext line")
    assert out == "Cookie: [REDACTED]\nnext line"


# --- name/value pairs -----------------------------------------------------------------

SECRET_NAMES = [
    "password",
    "passwd",
    "pwd",
    "token",
    "access_token",
    "refresh_token",
    "secret",
    "client_secret",
    "key",
    "api_key",
    "apikey",
    "api-key",
    "API_KEY",
    "aws_secret_access_key",
    "OPENAI_API_KEY",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_name_equals_value_keeps_name(name: str) -> None:
    """``name=value`` keeps the name and replaces the value."""
    assert BARE.redact(f"{name}=hunter2 next") == f"{name}=[REDACTED] next"


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_name_in_json_keeps_quotes(name: str) -> None:
    """``"name": "value"`` keeps the name and both quotes."""
    assert BARE.redact(f'{{"{name}": "hunter 2"}}') == f'{{"{name}": "[REDACTED]"}}'


def test_colon_separated_pair_is_redacted() -> None:
    """``password: hunter2`` as in YAML or prose."""
    assert BARE.redact("password: hunter2") == "password: [REDACTED]"


def test_query_string_pair_keeps_other_parameters() -> None:
    """In a bare query string only the secret value goes."""
    assert BARE.redact("?token=abc&x=1") == "?token=[REDACTED]&x=1"


def test_camel_case_names_are_secret_names() -> None:
    """``accessToken`` and ``apiKey`` (JavaScript style) are recognised."""
    out = BARE.redact('{"accessToken": "a1", "apiKey": "b2"}')
    assert out == '{"accessToken": "[REDACTED]", "apiKey": "[REDACTED]"}'


def test_escaped_json_pair_keeps_its_escapes() -> None:
    """JSON inside a JSON string (``\\"password\\": \\"x\\"``) keeps valid escaping."""
    out = BARE.redact('{\\"password\\": \\"hunter2\\"}')
    assert out == '{\\"password\\": \\"[REDACTED]\\"}'


def test_words_containing_a_secret_name_are_kept() -> None:
    """``monkey=``, ``keyframe=`` and ``tokenizer:`` are not secret names."""
    text = "monkey=banana keyframe=12 tokenizer: gpt2 passwordless=true"
    assert BARE.redact(text) == text


def test_comparison_is_not_an_assignment() -> None:
    """Source lines such as ``if token == expected`` survive in tracebacks."""
    text = "    if token == expected:"
    assert BARE.redact(text) == text


def test_empty_quoted_value_is_kept_empty() -> None:
    """An empty password says so; there is nothing to hide."""
    text = '{"password": ""}'
    assert BARE.redact(text) == text


# --- URLs ------------------------------------------------------------------------------


def test_url_user_info_is_redacted() -> None:
    """``user:pass@`` in a URL is replaced, host and path kept."""
    assert BARE.redact("https://user:pass@host/path") == "https://[REDACTED]@host/path"


def test_url_user_info_with_at_sign_in_password_is_redacted_whole() -> None:
    """An unencoded ``@`` in the password does not leave half of it behind."""
    assert BARE.redact("ftp://bob:p@ss@files.example/x") == "ftp://[REDACTED]@files.example/x"


def test_signed_s3_url_loses_its_whole_query_string() -> None:
    """Every query parameter of a URL goes, so no signature can leak."""
    url = "https://bucket.s3.amazonaws.com/a/b.mp4?X-Amz-Signature=abc&X-Amz-Expires=900"
    assert BARE.redact(url) == "https://bucket.s3.amazonaws.com/a/b.mp4?[REDACTED]"


def test_url_fragment_is_redacted() -> None:
    """A fragment can carry tokens (OAuth implicit flow) and is replaced too."""
    out = BARE.redact("https://app.example/cb#access_token=abc")
    assert out == "https://app.example/cb#[REDACTED]"


def test_url_without_query_is_unchanged() -> None:
    """Scheme, host and path of a plain URL survive."""
    text = "see https://massugc-cloud-api.onrender.com/api/desktop/usage/log now"
    assert BARE.redact(text) == text


def test_relative_url_query_in_urllib3_error_is_redacted() -> None:
    """``with url: /path?query`` loses its query string."""
    out = BARE.redact("Max retries exceeded with url: /v1/x?lang=en&id=3 (Caused by X)")
    assert out == "Max retries exceeded with url: /v1/x?[REDACTED] (Caused by X)"


# --- tokens recognised by shape ----------------------------------------------------


def test_aws_access_key_id_is_redacted() -> None:
    """``AKIA`` + 16 upper-case letters or digits."""
    assert BARE.redact("id AKIAIOSFODNN7EXAMPLE used") == "id [REDACTED] used"


def test_aws_temporary_access_key_id_is_redacted() -> None:
    """``ASIA`` + 16 (STS credentials)."""
    assert BARE.redact("ASIAY34FZKBOKMUTVV7A") == REDACTED


def test_aws_secret_access_key_pair_is_redacted() -> None:
    """``aws_secret_access_key = ...`` as in a credentials file."""
    out = BARE.redact("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert out == "aws_secret_access_key = [REDACTED]"


def test_google_api_key_is_redacted() -> None:
    """``AIza`` + 35 characters."""
    assert BARE.redact("key AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q ok") == "key [REDACTED] ok"


def test_google_oauth_token_is_redacted() -> None:
    """``ya29.`` access tokens."""
    assert BARE.redact("got ya29.a0AfH6SMBx-y_z123 back") == "got [REDACTED] back"


def test_jwt_is_redacted() -> None:
    """Three base64url segments starting ``eyJ``."""
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    assert BARE.redact(f"jwt={jwt};") == "jwt=[REDACTED];"


def test_openai_style_sk_key_is_redacted() -> None:
    """``sk-`` followed by 20 or more key characters."""
    out = BARE.redact("Incorrect API key provided: sk-proj-AbCdEfGhIjKlMnOpQrSt12.")
    assert out == "Incorrect API key provided: [REDACTED]."


def test_elevenlabs_style_sk_key_is_redacted() -> None:
    """``sk_`` followed by hex."""
    assert BARE.redact("sk_3f9a0c1b2d3e4f5a6b7c8d9e0f1a2b3c") == REDACTED


def test_words_ending_in_sk_are_not_keys() -> None:
    """``task-`` and ``disk_`` identifiers survive."""
    text = "task-abcdefghijklmnopqrstuvwxyz disk_abcdefghijklmnopqrstuvwxyz"
    assert BARE.redact(text) == text


def test_private_key_block_is_redacted() -> None:
    """A PEM private key, header to footer, becomes one marker."""
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----"
    assert BARE.redact(f"key:\n{pem}\nafter") == "key:\n[REDACTED]\nafter"


def test_private_key_without_footer_is_redacted_to_the_end() -> None:
    """A key cut short (no footer) takes the rest of the text with it."""
    assert BARE.redact("x -----BEGIN PRIVATE KEY-----\nMIIEvQ") == "x [REDACTED]"


def test_private_key_in_service_account_json_is_redacted() -> None:
    """A key as a JSON string with escaped newlines is replaced."""
    text = '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----\\n"}'
    assert BARE.redact(text) == '{"private_key": "[REDACTED]"}'


# --- home directories ------------------------------------------------------------------


def test_configured_posix_home_becomes_tilde() -> None:
    """``/Users/alice/...`` -> ``~/...``."""
    assert MAC.redact("open /Users/alice/Videos/x.mp4") == "open ~/Videos/x.mp4"


def test_configured_home_with_spaces_in_quoted_path_becomes_tilde() -> None:
    """A home with a space, inside a quoted path, is replaced whole."""
    redactor = Redactor(home="/Users/alice smith")
    out = redactor.redact('"/Users/alice smith/My Videos/x.mp4"')
    assert out == '"~/My Videos/x.mp4"'


def test_configured_windows_home_with_backslashes_becomes_tilde() -> None:
    """``C:\\Users\\Bob Smith\\AppData`` -> ``~\\AppData``."""
    assert WINDOWS.redact("C:\\Users\\Bob Smith\\AppData\\x") == "~\\AppData\\x"


def test_configured_windows_home_matches_any_case_and_forward_slashes() -> None:
    """Drive letter, ``Users`` and name match case-insensitively, with ``/`` too."""
    assert WINDOWS.redact("c:/users/bob smith/x") == "~/x"


def test_configured_windows_home_with_doubled_backslashes_becomes_tilde() -> None:
    """The repr form ``C:\\\\Users\\\\Bob Smith\\\\`` is replaced too."""
    assert WINDOWS.redact("'C:\\\\Users\\\\Bob Smith\\\\x'") == "'~\\\\x'"


def test_other_users_posix_homes_become_tilde() -> None:
    """Homes of any account, baked in on another machine, are replaced."""
    out = BARE.redact("/home/carol/a and /Users/dave/b and file:///Users/erin/c")
    assert out == "~/a and ~/b and file://~/c"


def test_other_users_windows_home_with_space_becomes_tilde() -> None:
    """``C:\\Users\\<name with space>\\`` of any account is replaced whole."""
    out = BARE.redact("at C:\\Users\\Jane Doe\\Desktop\\a.txt")
    assert out == "at ~\\Desktop\\a.txt"


def test_windows_short_name_home_becomes_tilde() -> None:
    """An 8.3 short name such as ``BOBSMI~1`` (as in ``%TEMP%``) is a home too."""
    out = BARE.redact("C:\\Users\\BOBSMI~1\\AppData\\Local\\Temp\\x.wav")
    assert out == "~\\AppData\\Local\\Temp\\x.wav"


def test_wsl_mount_of_windows_home_becomes_tilde() -> None:
    """``/mnt/c/Users/<name>`` (WSL) loses the name."""
    assert BARE.redact("/mnt/c/Users/frank/x") == "/mnt/c~/x"


def test_home_prefix_does_not_swallow_part_of_a_longer_name() -> None:
    """With home ``/home/al``, ``/home/alice/x`` is a whole other home, not ``~ice/x``."""
    redactor = Redactor(home="/home/al")
    assert redactor.redact("/home/alice/x") == "~/x"
    assert redactor.redact("/home/al/x") == "~/x"


def test_configured_home_outside_users_dir_becomes_tilde() -> None:
    """A home in an unusual place is replaced, on a path boundary only."""
    redactor = Redactor(home="/srv/accounts/alice")
    assert redactor.redact("/srv/accounts/alice/x /srv/accounts/alicex") == (
        "~/x /srv/accounts/alicex"
    )


def test_url_paths_named_users_or_home_are_kept() -> None:
    """API paths such as ``/users/42`` are not home directories."""
    text = "GET https://api.example.com/users/42/home/feed"
    assert BARE.redact(text) == text


def test_vague_home_is_not_used() -> None:
    """A home of ``/`` or ``C:\\`` or a relative word would mangle everything; it is ignored."""
    for home in ("/", "C:\\", "~", "alice"):
        assert Redactor(home=home).redact("/srv/a alice") == "/srv/a alice"


# --- host name --------------------------------------------------------------------------


def test_hostname_is_replaced_case_insensitively() -> None:
    """The host name, in any case, becomes ``<host>``."""
    assert MAC.redact("on ALICE-MBP.LOCAL today") == "on <host> today"


def test_hostname_first_label_is_replaced_too() -> None:
    """``alice-mbp`` is replaced when the configured name is ``alice-mbp.local``."""
    assert MAC.redact("host alice-mbp.lan down") == "host <host>.lan down"


def test_hostname_inside_a_longer_name_is_kept() -> None:
    """Word boundaries: ``alice-mbp2`` and ``xalice-mbp`` are other names."""
    text = "alice-mbp2 xalice-mbp"
    assert MAC.redact(text) == text


@pytest.mark.parametrize("hostname", ["pc", "localhost", "Host", "123"])
def test_short_common_or_numeric_hostnames_are_ignored(hostname: str) -> None:
    """Names that would mangle ordinary text are not scrubbed."""
    text = "pc localhost host 123"
    assert Redactor(hostname=hostname).redact(text) == text


# --- extra patterns and construction -------------------------------------------------------


def test_extra_pattern_matches_are_redacted() -> None:
    """A configured regex replaces each of its matches."""
    redactor = Redactor(extra_patterns=(r"bucket-[a-z0-9]+",))
    assert redactor.redact("in bucket-prod42/x") == "in [REDACTED]/x"


def test_invalid_extra_pattern_raises_value_error_naming_it() -> None:
    """A broken regex is refused at construction, and the message names it."""
    with pytest.raises(ValueError, match=r"invalid extra redaction pattern '\(unclosed'"):
        Redactor(extra_patterns=("(unclosed",))


def test_extra_pattern_matching_empty_string_is_refused() -> None:
    """``a*`` would insert a marker between every character."""
    with pytest.raises(ValueError, match="empty string"):
        Redactor(extra_patterns=("a*",))


def test_extra_patterns_given_as_string_are_refused() -> None:
    """A single string is not a sequence of patterns (it would be split into characters)."""
    with pytest.raises(TypeError, match="sequence"):
        Redactor(extra_patterns="abc")  # type: ignore[arg-type]


def test_extra_patterns_list_is_stored_as_tuple_so_redactor_is_hashable() -> None:
    """A list from YAML is accepted, frozen, and equal redactors hash alike."""
    a = Redactor(extra_patterns=["x+y"])  # type: ignore[arg-type]
    b = Redactor(extra_patterns=("x+y",))
    assert a.extra_patterns == ("x+y",)
    assert a == b and hash(a) == hash(b)


def test_repr_hides_configured_values() -> None:
    """The repr says what is set, never the home, host or patterns themselves."""
    text = repr(Redactor(home="/Users/alice", hostname="alice-mbp", extra_patterns=("s3cr3t",)))
    assert "alice" not in text and "s3cr3t" not in text
    assert text == "Redactor(home=set, hostname=set, extra_patterns=1)"


def test_system_redactor_reads_home_and_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's home and host name are read when it is built."""
    monkeypatch.setattr(os.path, "expanduser", lambda _: "/home/zed")
    monkeypatch.setattr(socket, "gethostname", lambda: "zed-box")
    redactor = system_redactor(["foo\\d"])
    assert redactor == Redactor(home="/home/zed", hostname="zed-box", extra_patterns=("foo\\d",))
    assert redactor.redact("/home/zed/a on zed-box foo7") == "~/a on <host> [REDACTED]"


def test_system_redactor_without_a_home_scrubs_no_configured_home(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When ``~`` cannot be expanded, no home is configured."""
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)
    assert system_redactor().home is None


def test_system_redactor_survives_hostname_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError from ``gethostname`` leaves the host name unscrubbed instead of failing."""

    def fail() -> str:
        raise OSError("no name")

    monkeypatch.setattr(socket, "gethostname", fail)
    assert system_redactor().hostname is None


# --- redact_and_cap ----------------------------------------------------------------------


def test_redact_and_cap_redacts_before_capping() -> None:
    """A key near the start never shows even partly in the capped result."""
    out = MAC.redact_and_cap(f"token {KEY} " + "x" * 500, 30)
    assert out == "token [REDACTED] x…[truncated]"


def test_redact_and_cap_caps_growth_from_redaction() -> None:
    """Redaction can lengthen text (``a@`` -> ``[REDACTED]@``); the cap still holds."""
    out = BARE.redact_and_cap("ftp://a@b", 12)
    assert len(out) <= 12 and out.endswith(TRUNCATION_MARKER)


def test_redact_and_cap_marks_pre_cut_even_when_result_is_short() -> None:
    """A huge input shrunk by redaction below the limit still says it was cut."""
    text = "-----BEGIN PRIVATE KEY-----\n" + "A" * 100_000
    assert MAC.redact_and_cap(text, 4096) == REDACTED + TRUNCATION_MARKER


def test_redact_and_cap_of_huge_input_reads_only_a_prefix() -> None:
    """10 MB costs no more than the pre-cut window (generous bound: never flaky)."""
    text = ("error at /Users/alice/x.mp4 with password=hunter2 " * 200_000)[:10_000_000]
    start = time.perf_counter()
    out = MAC.redact_and_cap(text, DEFAULT_ERROR_MESSAGE_LIMIT)
    assert time.perf_counter() - start < 1.0
    assert len(out) == DEFAULT_ERROR_MESSAGE_LIMIT and out.endswith(TRUNCATION_MARKER)
    assert "hunter2" not in out and "alice" not in out


@pytest.mark.parametrize("shift", range(-45, 5))
def test_redact_and_cap_never_leaks_a_key_straddling_the_pre_cut(shift: int) -> None:
    """A key cut in half by the pre-cut leaves no fragment of itself in the result."""
    # A private key block fills most of the 16 KiB window and shrinks to one
    # marker, so the text around the window's end does reach the capped result.
    window = 16 * 1024  # the pre-cut window for a limit of 4096
    pem = "-----BEGIN PRIVATE KEY-----\n" + "A" * (window - 300) + "\n-----END PRIVATE KEY-----"
    start = window + shift
    text = (pem + " word" * window)[:start] + KEY + " tail" * 5000
    out = MAC.redact_and_cap(text, DEFAULT_ERROR_MESSAGE_LIMIT)
    assert out.startswith(REDACTED + " word word") and out.endswith(TRUNCATION_MARKER)
    body = KEY[len("massugc_") :]
    assert "massugc" not in out
    assert not any(body[i : i + 4] in out for i in range(len(body) - 3))


def test_redact_and_cap_without_any_separator_keeps_only_the_marker() -> None:
    """A huge unbroken run could be one secret, so none of it is kept."""
    assert BARE.redact_and_cap("a" * 1_000_000, 100) == TRUNCATION_MARKER


def test_redact_and_cap_rejects_negative_limit() -> None:
    """A negative limit is a programming error."""
    with pytest.raises(ValueError, match="limit"):
        BARE.redact_and_cap("x", -5)


# --- robustness -----------------------------------------------------------------------------


def test_lone_surrogate_does_not_raise() -> None:
    """Strings decoded with ``surrogateescape`` are ordinary input."""
    assert MAC.redact("\ud800 password=\udcff x") == "\ud800 password=[REDACTED] x"


ADVERSARIAL = {
    "letters": "a" * 1_000_000,
    "equals": "=" * 1_000_000,
    "slashes": "/" * 1_000_000,
    "backslashes": "\\" * 1_000_000,
    "key prefixes": "massugc_" * 125_000,
    "jwt starts": "eyJ" * 333_334,
    "jwt dots": "eyJa." * 200_000,
    "quotes": "\"'" * 500_000,
    "url anchors": "://" * 333_334,
    "url labels": "url:" * 250_000,
    "path alternation": "=/" * 500_000,
    "open values": 'password="' * 100_000,
    "key names": "key=" * 250_000,
    "bearer words": "Bearer " * 150_000,
    "user info": "://" + "a@" * 500_000,
    "windows homes": "C:\\Users\\" * 100_000,
    "posix homes": "/home/" * 170_000,
    "pem headers": "-----BEGIN PRIVATE KEY-----" * 40_000,
    "no spaces": ("ab/cd=ef:gh@ij?kl&mn" * 50_000),
    "nested quotes": '{"a": "{\\"b\\": \\"' * 50_000,
    "mixed": ("password: 'x' https://a:b@c/d?e=f /Users/bob/x C:\\Users\\x y\\z alice-mbp token ")
    * 12_000,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_redact_takes_linear_time_on_adversarial_input(name: str) -> None:
    """1 MB of hostile text is redacted in well under a second."""
    # A regression guard against catastrophic backtracking, not a benchmark: a
    # quadratic pattern takes minutes here, a linear one milliseconds, so the
    # generous bound never flakes on a slow CI machine.
    text = ADVERSARIAL[name]
    start = time.perf_counter()
    MAC.redact(text)
    assert time.perf_counter() - start < 1.0


# --- corpus of realistic errors --------------------------------------------------------------

CORPUS = {
    "ffmpeg argv": (
        MAC,
        'ffmpeg exited with 1: ffmpeg -y -headers "Authorization: Bearer xyz" -i '
        "/Users/alice/Movies/MassUGC/in.mp4 -vf scale=1080:1920 "
        "/Users/alice/Movies/MassUGC/out.mp4",
        'ffmpeg exited with 1: ffmpeg -y -headers "Authorization: Bearer [REDACTED]" -i '
        "~/Movies/MassUGC/in.mp4 -vf scale=1080:1920 ~/Movies/MassUGC/out.mp4",
    ),
    "windows appdata path": (
        WINDOWS,
        "FileNotFoundError: [Errno 2] No such file or directory: "
        "'C:\\\\Users\\\\Bob Smith\\\\AppData\\\\Local\\\\MassUGC\\\\cache\\\\clip.mp4' on BOB-PC",
        "FileNotFoundError: [Errno 2] No such file or directory: "
        "'~\\\\AppData\\\\Local\\\\MassUGC\\\\cache\\\\clip.mp4' on <host>",
    ),
    "signed gcs url": (
        MAC,
        "download failed: 403 for https://storage.googleapis.com/massugc-renders/u/123/final.mp4"
        "?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=svc%40proj.iam.gserviceaccount.com"
        "%2F20250730%2Fauto%2Fstorage%2Fgoog4_request&X-Goog-Date=20250730T123456Z"
        "&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature=5f2a9c",
        "download failed: 403 for https://storage.googleapis.com/massugc-renders/u/123/final.mp4"
        "?[REDACTED]",
    ),
    "signed s3 url": (
        MAC,
        "GET https://massugc-renders.s3.amazonaws.com/a/b.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20250730%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Signature=abcdef0123 returned 403",
        "GET https://massugc-renders.s3.amazonaws.com/a/b.mp4?[REDACTED] returned 403",
    ),
    "requests connection error": (
        MAC,
        "HTTPSConnectionPool(host='api.example.com', port=443): Max retries exceeded with url: "
        f"/v1/x?api_key={KEY}&lang=en (Caused by NewConnectionError('<urllib3.connection."
        "HTTPSConnection object at 0x10a2b3c4d>: Failed to establish a new connection: "
        "[Errno 8] nodename nor servname provided, or not known'))",
        "HTTPSConnectionPool(host='api.example.com', port=443): Max retries exceeded with url: "
        "/v1/x?[REDACTED] (Caused by NewConnectionError('<urllib3.connection."
        "HTTPSConnection object at 0x10a2b3c4d>: Failed to establish a new connection: "
        "[Errno 8] nodename nor servname provided, or not known'))",
    ),
    "sdk headers dict": (
        MAC,
        "APIError: 401 Unauthorized; request headers: {'User-Agent': 'MassUGC-Desktop/1.4.2 "
        f"(macOS-14.5-arm64)', 'X-API-Key': '{KEY}', 'Authorization': "
        "'Bearer sk-proj-4f9XaB2cD3eF4gH5iJ6kL7mN8', 'Content-Type': 'application/json'}",
        "APIError: 401 Unauthorized; request headers: {'User-Agent': 'MassUGC-Desktop/1.4.2 "
        "(macOS-14.5-arm64)', 'X-API-Key': '[REDACTED]', 'Authorization': "
        "'Bearer [REDACTED]', 'Content-Type': 'application/json'}",
    ),
    "openai incorrect key": (
        MAC,
        "openai.AuthenticationError: Error code: 401 - {'error': {'message': 'Incorrect API key "
        "provided: sk-proj-AbCdEfGhIjKlMnOpQrStUvWx1234. You can find your API key at "
        "https://platform.openai.com/account/api-keys.', 'code': 'invalid_api_key'}}",
        "openai.AuthenticationError: Error code: 401 - {'error': {'message': 'Incorrect API key "
        "provided: [REDACTED]. You can find your API key at "
        "https://platform.openai.com/account/api-keys.', 'code': 'invalid_api_key'}}",
    ),
    "json body with password": (
        MAC,
        'login failed, body was {"email": "a@example.com", "password": "hunter2", '
        '"remember": true}',
        'login failed, body was {"email": "a@example.com", "password": "[REDACTED]", '
        '"remember": true}',
    ),
    "traceback with host name": (
        MAC,
        "Traceback (most recent call last):\n"
        '  File "/Users/alice/massugc/app/worker.py", line 88, in run\n'
        "    upload(path)\n"
        "ConnectionError: could not reach render node on alice-mbp.local (ALICE-MBP): timed out",
        "Traceback (most recent call last):\n"
        '  File "~/massugc/app/worker.py", line 88, in run\n'
        "    upload(path)\n"
        "ConnectionError: could not reach render node on <host> (<host>): timed out",
    ),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_realistic_error_is_redacted_to_its_exact_expected_form(name: str) -> None:
    """Errors the app really produced come out exactly as support should see them."""
    redactor, raw, expected = CORPUS[name]
    assert redactor.redact(raw) == expected


# --- properties -------------------------------------------------------------------------------

# Fragments that exercise the rules and their interactions far more often than
# uniformly random text would.
FRAGMENTS = st.sampled_from(
    [
        "password", "token", "key", "Key", "api_key", "Authorization", "Cookie", "Bearer",
        "Basic", "url", "=", ":", ": ", "==", " ", "  ", "\t", "\n", '"', "'", "\\", "\\\\",
        "/", "?", "#", "&", "@", "~", "<", ">", "[", "]", "(", ")", "{", "}", ",", ";",
        "https://", "://", "/Users/", "/home/", "C:\\Users\\", "C:/Users/", "\\Users\\",
        "/mnt/c", "alice", "Alice Smith", "bob", "alice-mbp", ".local", "massugc_", KEY,
        "eyJ", "eyJhbGciOi.eyJzdWIi.sig", ".", "sk-", "sk-" + "a1" * 12, "AKIA", "AIza",
        "ya29.", "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----", REDACTED,
        "<host>", "dXNlcjpwYXNz", "0123456789abcdef0123", "a", "Z", "0", "-", "_",
    ]
)  # fmt: skip
TEXTS = st.one_of(
    st.text(),
    st.lists(st.one_of(FRAGMENTS, st.text(max_size=3)), max_size=30).map("".join),
)
NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,15}", fullmatch=True)


@PROPERTY
@given(TEXTS)
def test_redact_never_raises_and_returns_a_string(text: str) -> None:
    """Any string in, a string out."""
    assert isinstance(MAC.redact(text), str)


@PROPERTY
@given(TEXTS, st.integers(min_value=0, max_value=300))
def test_redact_and_cap_result_fits_the_limit(text: str, limit: int) -> None:
    """Whatever the input, the result is at most ``limit`` characters."""
    assert len(MAC.redact_and_cap(text, limit)) <= limit


@PROPERTY
@given(TEXTS)
def test_redact_is_idempotent(text: str) -> None:
    """Redacting twice changes nothing more than redacting once."""
    awkward = Redactor(home="/home/al", hostname="sig")  # a home prefix, a host like a name
    for redactor in (MAC, WINDOWS, BARE, awkward):
        once = redactor.redact(text)
        assert redactor.redact(once) == once


@PROPERTY
@given(
    TEXTS,
    TEXTS,
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
        min_size=32,
        max_size=32,
    ),
)
def test_embedded_massugc_key_never_survives(before: str, after: str, body: str) -> None:
    """A valid key anywhere in any text is gone after redaction."""
    key = "massugc_" + body
    assert key not in MAC.redact(before + key + after)
    assert key not in WINDOWS.redact(before + key + after)


@PROPERTY
@given(
    TEXTS,
    TEXTS,
    st.sampled_from(["/Users/{}", "/home/{}", "C:\\Users\\{}", "C:/Users/{}", "C:\\\\Users\\\\{}"]),
    NAME,
    st.sampled_from(["/", "\\", "\\\\", ""]),
)
def test_embedded_home_path_never_survives(
    before: str, after: str, template: str, name: str, separator: str
) -> None:
    """A home directory path, configured or not, never survives redaction."""
    # The configured home matches in any case; the generic POSIX ``/Users/`` and
    # ``/home/`` only as spelled, so that URL paths such as ``/users/42`` survive.
    home = template.format(name)
    text = f"{before} {home}{separator} {after}"
    whole_path = re.escape(home) + r"(?![\w.-])"  # not the start of a longer name
    assert not re.search(whole_path, Redactor(home=home).redact(text), re.IGNORECASE)
    assert not re.search(whole_path, BARE.redact(text))
