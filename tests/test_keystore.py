"""The API key store: resolution order, file formats and modes, and a key that never shows."""

from __future__ import annotations

import base64
import copy
import logging
import os
import pickle
import stat
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from massugc_logging import keystore
from massugc_logging.keystore import (
    ApiKey,
    InvalidApiKey,
    KeyStore,
    KeyStoreError,
    mask,
)

KEY = "massugc_" + "Ab3_-xYz" * 4
OTHER_KEY = "massugc_" + "Q" * 31 + "9"
MIDDLE = KEY[10:-2]
KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")


class FakeKeyring:
    """An in-memory keyring backend with keyring's three methods, optionally failing."""

    priority = 5

    def __init__(self, fail_get: bool = False, fail_set: bool = False) -> None:
        self.entries: dict[tuple[str, str], str] = {}
        self.fail_get = fail_get
        self.fail_set = fail_set

    def get_password(self, service: str, username: str) -> Optional[str]:
        if self.fail_get:
            raise RuntimeError("keyring is locked")
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        if self.fail_set:
            raise RuntimeError("keyring refused")
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        del self.entries[(service, username)]


class FakeKeyringModule:
    """Stands in for the ``keyring`` module: ``get_keyring()`` returns the backend."""

    def __init__(self, backend: object) -> None:
        self.backend = backend

    def get_keyring(self) -> object:
        return self.backend


class NullBackend(FakeKeyring):
    """Like keyring's fail/null backends: priority 0, cannot hold a key."""

    priority = 0


@pytest.fixture(autouse=True)
def _no_real_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import keyring`` fail, so no test can touch the real OS keyring."""
    monkeypatch.setitem(sys.modules, "keyring", None)
    monkeypatch.delenv("MASSUGC_API_KEY", raising=False)


def make_store(tmp_path: Path, env: Optional[dict[str, str]] = None, **kwargs: object) -> KeyStore:
    return KeyStore(
        config_dir=tmp_path / "config",
        legacy_path=tmp_path / "legacy" / ".massugc_api_key",
        environ=env if env is not None else {},
        **kwargs,  # type: ignore[arg-type]
    )


def write_legacy(store: KeyStore, content: str) -> None:
    store.legacy_file.parent.mkdir(parents=True, exist_ok=True)
    store.legacy_file.write_text(content)
    if os.name != "nt":
        os.chmod(store.legacy_file, 0o600)


def write_key_file(store: KeyStore, content: str, mode: int = 0o600) -> None:
    store.config_dir.mkdir(parents=True, exist_ok=True)
    store.key_file.write_text(content)
    if os.name != "nt":
        os.chmod(store.key_file, mode)


def assert_no_secret(exc: BaseException, secret: str) -> None:
    middle = secret[10:-2]
    for text in (str(exc), repr(exc)):
        assert secret not in text
        assert middle not in text


# -- ApiKey -------------------------------------------------------------------


def test_valid_key_is_revealed_unchanged() -> None:
    """reveal() returns exactly the key that was given."""
    assert ApiKey(KEY).reveal() == KEY


def test_masked_shows_prefix_two_leading_and_two_trailing_characters() -> None:
    """The masked form is 'massugc_' + first 2 + '…' + last 2."""
    assert ApiKey(KEY).masked == "massugc_Ab\u2026Yz"


def test_repr_and_str_are_masked() -> None:
    """repr and str show only the masked form."""
    key = ApiKey(KEY)
    assert repr(key) == "ApiKey('massugc_Ab\u2026Yz')"
    assert str(key) == "massugc_Ab\u2026Yz"


def test_every_formatting_route_is_masked() -> None:
    """f-strings, format(), str.format and %-formatting never show the key."""
    key = ApiKey(KEY)
    rendered = [
        f"{key}",
        f"{key!r}",
        f"{key:>30}",
        format(key),
        "{}".format(key),  # noqa: UP032 - str.format is the route under test
        "%s" % key,  # noqa: UP031 - %-format is the route under test
        "%r" % key,  # noqa: UP031
        str([key]),
        str({"api_key": key}),
    ]
    for text in rendered:
        assert MIDDLE not in text
        assert "massugc_Ab\u2026Yz" in text


def test_logging_a_key_shows_it_masked(caplog: pytest.LogCaptureFixture) -> None:
    """A key passed as a logging argument, or in extra, is rendered masked."""
    key = ApiKey(KEY)
    with caplog.at_level(logging.INFO, logger="test.keystore"):
        logging.getLogger("test.keystore").info("using %s / %r", key, key, extra={"k": key})
    assert caplog.records
    assert MIDDLE not in caplog.text
    assert "massugc_Ab\u2026Yz" in caplog.text


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "empty"),
        ("massugc_" + "a" * 31, "31 characters"),
        ("massugc_" + "a" * 33, "33 characters"),
        ("MASSUGC_" + "a" * 32, "does not start with"),
        ("massugc_" + "a" * 31 + "!", "outside"),
        (KEY + "\n", "33 characters"),
    ],
)
def test_invalid_key_message_explains_format_without_the_key(bad: str, reason: str) -> None:
    """An invalid value raises InvalidApiKey saying why, never quoting the value."""
    with pytest.raises(InvalidApiKey) as info:
        ApiKey(bad)
    message = str(info.value)
    assert "'massugc_' followed by 32 characters" in message
    assert reason in message
    if bad:
        assert_no_secret(info.value, bad)


def test_invalid_key_is_a_value_error_and_a_keystore_error() -> None:
    """InvalidApiKey can be caught as ValueError or as KeyStoreError."""
    with pytest.raises(ValueError):
        ApiKey("nope")
    with pytest.raises(KeyStoreError):
        ApiKey("nope")


def test_non_string_key_is_a_type_error_without_the_value() -> None:
    """Bytes are refused with a TypeError that does not show them."""
    with pytest.raises(TypeError) as info:
        ApiKey(KEY.encode())  # type: ignore[arg-type]
    assert MIDDLE not in str(info.value)


def test_equality_and_hash_are_by_value() -> None:
    """Two ApiKeys with the same value are equal and hash alike; others differ."""
    assert ApiKey(KEY) == ApiKey(KEY)
    assert hash(ApiKey(KEY)) == hash(ApiKey(KEY))
    assert ApiKey(KEY) != ApiKey(OTHER_KEY)
    assert len({ApiKey(KEY), ApiKey(KEY), ApiKey(OTHER_KEY)}) == 2


def test_key_is_not_equal_to_its_string() -> None:
    """Comparing with a plain string is not equality (no accidental string use)."""
    assert ApiKey(KEY) != KEY


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_is_refused(protocol: int) -> None:
    """pickle.dumps raises TypeError at every protocol, without showing the key."""
    with pytest.raises(TypeError) as info:
        pickle.dumps(ApiKey(KEY), protocol=protocol)
    assert_no_secret(info.value, KEY)


def test_pickling_a_structure_holding_a_key_is_refused() -> None:
    """A key nested in a dict still cannot be pickled."""
    with pytest.raises(TypeError):
        pickle.dumps({"settings": [ApiKey(KEY)]})


def test_copy_and_deepcopy_return_the_same_key() -> None:
    """copy works (the key is immutable) despite pickling being refused."""
    key = ApiKey(KEY)
    assert copy.copy(key) is key
    assert copy.deepcopy({"k": key})["k"] is key


def test_no_instance_dict_and_immutable() -> None:
    """vars() has nothing to show and attributes cannot be set or deleted."""
    key = ApiKey(KEY)
    assert not hasattr(key, "__dict__")
    with pytest.raises(TypeError):
        vars(key)
    with pytest.raises(AttributeError):
        key._value = OTHER_KEY
    with pytest.raises(AttributeError):
        del key._value
    assert key.reveal() == KEY


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "\u2026"),
        ("short", "\u2026"),
        ("massugc_short", "massugc_\u2026"),
        ("abcdefghijklmnop", "ab\u2026op"),
        (KEY, "massugc_Ab\u2026Yz"),
        (None, "\u2026"),
        (12345, "\u2026"),
    ],
)
def test_mask_handles_any_value(value: object, expected: str) -> None:
    """mask() never raises and shows at most 2+2 characters of a long string."""
    assert mask(value) == expected


def test_mask_of_an_api_key_is_its_masked_form() -> None:
    """mask(ApiKey) equals ApiKey.masked."""
    assert mask(ApiKey(KEY)) == ApiKey(KEY).masked


keys = st.text(alphabet=KEY_CHARS, min_size=32, max_size=32).map(lambda body: "massugc_" + body)


@given(keys)
def test_masked_forms_never_contain_the_middle_of_the_key(value: str) -> None:
    """For any valid key, masked, repr, str and format hide the middle 28 characters."""
    key = ApiKey(value)
    middle = value[10:-2]
    for text in (key.masked, repr(key), str(key), f"{key}", mask(value)):
        assert middle not in text


@given(keys, st.integers(min_value=8, max_value=39), st.sampled_from(" !@#$%+/=\u00e9"))
def test_invalid_key_messages_never_contain_the_middle(
    value: str, position: int, bad_char: str
) -> None:
    """A near-key with one bad character is refused without its middle in the message."""
    bad = value[:position] + bad_char + value[position + 1 :]
    with pytest.raises(InvalidApiKey) as info:
        ApiKey(bad)
    assert bad[10:-2] not in str(info.value)
    assert bad[10:-2] not in repr(info.value)


# -- KeyStore: resolution -----------------------------------------------------


def test_nothing_anywhere_resolves_to_none(tmp_path: Path) -> None:
    """With no source at all, resolve() returns (None, 'none')."""
    store = make_store(tmp_path)
    assert store.resolve() == (None, "none")
    assert store.get() is None
    assert not store.has()


def test_explicit_argument_wins_over_everything(tmp_path: Path) -> None:
    """An explicit key beats the environment, keyring, key file and legacy file."""
    fake = FakeKeyring()
    store = make_store(tmp_path, {"MASSUGC_API_KEY": OTHER_KEY}, keyring_module=fake)
    fake.set_password("massugc-logging", "api_key", OTHER_KEY)
    write_key_file(store, OTHER_KEY)
    write_legacy(store, base64.b64encode(OTHER_KEY.encode()).decode())
    assert store.resolve(KEY) == (ApiKey(KEY), "argument")


def test_explicit_api_key_object_is_accepted(tmp_path: Path) -> None:
    """An ApiKey can be passed as the explicit argument."""
    assert make_store(tmp_path).resolve(ApiKey(KEY)) == (ApiKey(KEY), "argument")


def test_environment_wins_over_keyring_and_files(tmp_path: Path) -> None:
    """MASSUGC_API_KEY beats the keyring, the key file and the legacy file."""
    fake = FakeKeyring()
    fake.set_password("massugc-logging", "api_key", OTHER_KEY)
    store = make_store(tmp_path, {"MASSUGC_API_KEY": KEY}, keyring_module=fake)
    write_key_file(store, OTHER_KEY)
    assert store.resolve() == (ApiKey(KEY), "environment")


def test_environment_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an environ mapping the real process environment is used."""
    monkeypatch.setenv("MASSUGC_API_KEY", KEY)
    store = KeyStore(config_dir=tmp_path / "c", legacy_path=tmp_path / "l")
    assert store.resolve() == (ApiKey(KEY), "environment")


def test_blank_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    """An empty MASSUGC_API_KEY falls through to the next source."""
    store = make_store(tmp_path, {"MASSUGC_API_KEY": "  "})
    write_key_file(store, KEY)
    assert store.resolve() == (ApiKey(KEY), "file")


def test_environment_value_is_stripped(tmp_path: Path) -> None:
    """Surrounding whitespace in the environment variable is ignored."""
    store = make_store(tmp_path, {"MASSUGC_API_KEY": f"  {KEY}\n"})
    assert store.get() == ApiKey(KEY)


def test_keyring_wins_over_key_file(tmp_path: Path) -> None:
    """The keyring entry beats the key file."""
    fake = FakeKeyring()
    fake.set_password("massugc-logging", "api_key", KEY)
    store = make_store(tmp_path, keyring_module=fake)
    write_key_file(store, OTHER_KEY)
    assert store.resolve() == (ApiKey(KEY), "keyring")


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))


def test_the_key_file_wins_over_an_older_legacy_file(tmp_path: Path) -> None:
    """Of the key file and the app's file, the one written last wins: here the key file."""
    store = make_store(tmp_path)
    write_legacy(store, base64.b64encode(OTHER_KEY.encode()).decode())
    write_key_file(store, KEY + "\n")
    set_mtime(store.legacy_file, 1_000_000)
    set_mtime(store.key_file, 2_000_000)
    assert store.resolve() == (ApiKey(KEY), "file")


def test_a_legacy_file_written_after_the_key_file_wins(tmp_path: Path) -> None:
    """The app's Settings page wrote a new key after the package's store did: it is used."""
    store = make_store(tmp_path)
    store.store(KEY)
    write_legacy(store, base64.b64encode(OTHER_KEY.encode()).decode())
    set_mtime(store.legacy_file, time.time() + 5)
    assert store.resolve() == (ApiKey(OTHER_KEY), "legacy-file")


def test_a_keyring_key_stored_after_the_legacy_file_wins(tmp_path: Path) -> None:
    """A key stored in the keyring records when it was written, and wins over an older
    app file; a newer app file wins over it."""
    fake = FakeKeyring()
    store = make_store(tmp_path, keyring_module=fake)
    write_legacy(store, base64.b64encode(OTHER_KEY.encode()).decode())
    set_mtime(store.legacy_file, time.time() - 60)
    store.store(KEY)
    assert store.resolve() == (ApiKey(KEY), "keyring")
    set_mtime(store.legacy_file, time.time() + 60)
    assert store.resolve() == (ApiKey(OTHER_KEY), "legacy-file")


def test_a_broken_legacy_file_never_hides_a_stored_key(tmp_path: Path) -> None:
    """A newer app file that holds no key does not stop the stored key being used."""
    store = make_store(tmp_path)
    store.store(KEY)
    write_legacy(store, "%%% not a key %%%")
    set_mtime(store.legacy_file, time.time() + 60)
    assert store.resolve() == (ApiKey(KEY), "file")


def test_legacy_base64_file_is_read(tmp_path: Path) -> None:
    """The app's base64-encoded legacy file is decoded."""
    store = make_store(tmp_path)
    write_legacy(store, base64.b64encode(KEY.encode()).decode())
    assert store.resolve() == (ApiKey(KEY), "legacy-file")


def test_legacy_file_with_trailing_whitespace_is_read(tmp_path: Path) -> None:
    """Trailing newlines and spaces around the base64 text are tolerated."""
    store = make_store(tmp_path)
    write_legacy(store, base64.b64encode(KEY.encode()).decode() + " \n\n")
    assert store.get() == ApiKey(KEY)


def test_legacy_file_holding_a_plain_key_is_accepted(tmp_path: Path) -> None:
    """A legacy file holding the key itself (not base64) is accepted."""
    store = make_store(tmp_path)
    write_legacy(store, KEY + "\n")
    assert store.resolve() == (ApiKey(KEY), "legacy-file")


def test_legacy_default_path_is_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the legacy file is ~/.zyra-video-agent/.massugc_api_key."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    store = KeyStore(config_dir=tmp_path / "c", environ={})
    assert store.legacy_file == tmp_path / ".zyra-video-agent" / ".massugc_api_key"


def test_default_key_file_is_in_the_user_config_dir() -> None:
    """By default the key file is <platformdirs user config dir>/api_key."""
    import platformdirs

    store = KeyStore(environ={}, use_keyring=False)
    expected = Path(platformdirs.user_config_dir("massugc-logging", appauthor=False))
    assert store.key_file == expected / "api_key"


# -- KeyStore: invalid sources ------------------------------------------------


def test_invalid_environment_key_names_the_variable(tmp_path: Path) -> None:
    """A malformed MASSUGC_API_KEY names the variable, never the value."""
    bad = KEY[:-1] + "!"
    store = make_store(tmp_path, {"MASSUGC_API_KEY": bad})
    with pytest.raises(InvalidApiKey) as info:
        store.resolve()
    assert str(info.value).startswith(
        "the MASSUGC_API_KEY environment variable does not hold a valid MassUGC API key: "
        "expected 'massugc_' followed by 32 characters of A-Z a-z 0-9 _ -"
    )
    assert info.value.source == "environment"
    assert_no_secret(info.value, bad)


def test_invalid_explicit_key_names_the_argument(tmp_path: Path) -> None:
    """A malformed explicit key names the argument."""
    bad = KEY + "x"
    with pytest.raises(InvalidApiKey) as info:
        make_store(tmp_path).resolve(bad)
    assert "argument" in str(info.value)
    assert_no_secret(info.value, bad)


def test_invalid_key_file_names_the_file(tmp_path: Path) -> None:
    """A malformed key file names its path and does not fall through to legacy."""
    store = make_store(tmp_path)
    bad = "massugc_" + "z" * 30
    write_key_file(store, bad)
    write_legacy(store, base64.b64encode(KEY.encode()).decode())
    with pytest.raises(InvalidApiKey) as info:
        store.resolve()
    assert str(store.key_file) in str(info.value)
    assert info.value.source == "file"
    assert_no_secret(info.value, bad)


def test_invalid_keyring_entry_names_the_keyring(tmp_path: Path) -> None:
    """A malformed keyring entry names the keyring."""
    fake = FakeKeyring()
    bad = KEY[:-3]
    fake.set_password("massugc-logging", "api_key", bad)
    with pytest.raises(InvalidApiKey) as info:
        make_store(tmp_path, keyring_module=fake).resolve()
    assert "keyring" in str(info.value)
    assert_no_secret(info.value, bad)


def test_invalid_base64_legacy_file_says_where_and_what_to_do(tmp_path: Path) -> None:
    """Garbage in the legacy file names the file and says to delete it and store again."""
    store = make_store(tmp_path)
    bad = "not base64 at all: " + KEY[:-4]
    write_legacy(store, bad)
    with pytest.raises(InvalidApiKey) as info:
        store.resolve()
    message = str(info.value)
    assert str(store.legacy_file) in message
    assert "base64" in message
    assert "Delete" in message
    assert info.value.source == "legacy-file"
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert_no_secret(info.value, bad)


def test_legacy_file_decoding_to_a_bad_key_names_the_file(tmp_path: Path) -> None:
    """Valid base64 of something that is not a key is refused without showing it."""
    store = make_store(tmp_path)
    bad = KEY[:-1] + "%"
    write_legacy(store, base64.b64encode(bad.encode()).decode())
    with pytest.raises(InvalidApiKey) as info:
        store.get()
    assert str(store.legacy_file) in str(info.value)
    assert_no_secret(info.value, bad)


def test_binary_key_file_is_invalid(tmp_path: Path) -> None:
    """A key file that is not text is reported as such."""
    store = make_store(tmp_path)
    store.config_dir.mkdir()
    store.key_file.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidApiKey, match="not text"):
        store.get()


def test_empty_key_file_counts_as_no_key(tmp_path: Path) -> None:
    """An empty key file falls through to the next source."""
    store = make_store(tmp_path)
    write_key_file(store, "\n")
    assert store.resolve() == (None, "none")


# -- KeyStore: unreadable and too-open files ---------------------------------


def test_unreadable_key_file_raises_keystore_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PermissionError becomes a KeyStoreError naming the file and the fix."""
    store = make_store(tmp_path)
    write_key_file(store, KEY)

    def denied(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(keystore, "_read_bytes", denied)
    with pytest.raises(KeyStoreError) as info:
        store.get()
    assert not isinstance(info.value, InvalidApiKey)
    assert str(store.key_file) in str(info.value)
    assert "permission denied" in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@posix_only
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_really_unreadable_key_file_raises_keystore_error(tmp_path: Path) -> None:
    """A mode-000 key file is reported, not a traceback."""
    store = make_store(tmp_path)
    write_key_file(store, KEY, mode=0o000)
    with pytest.raises(KeyStoreError, match="permission denied"):
        store.get()


def test_key_file_that_is_a_directory_raises_keystore_error(tmp_path: Path) -> None:
    """A directory where the key file should be is a clear KeyStoreError."""
    store = make_store(tmp_path)
    store.key_file.mkdir(parents=True)
    with pytest.raises(KeyStoreError, match=r"it is a directory|permission denied"):
        store.get()


@posix_only
def test_too_open_key_file_warns_once_and_is_still_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A group/world-readable key file is read, with one warning on the local logger."""
    store = make_store(tmp_path)
    write_key_file(store, KEY, mode=0o644)
    with caplog.at_level(logging.WARNING, logger="massugc_logging"):
        assert store.get() == ApiKey(KEY)
        assert store.get() == ApiKey(KEY)
    warnings = [r for r in caplog.records if r.name == "massugc_logging"]
    assert len(warnings) == 1
    assert "chmod 600" in warnings[0].getMessage()
    assert str(store.key_file) in warnings[0].getMessage()
    assert MIDDLE not in caplog.text


@posix_only
def test_too_open_legacy_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The legacy file gets the same permission warning."""
    store = make_store(tmp_path)
    write_legacy(store, base64.b64encode(KEY.encode()).decode())
    os.chmod(store.legacy_file, 0o604)
    with caplog.at_level(logging.WARNING, logger="massugc_logging"):
        assert store.get() == ApiKey(KEY)
    assert str(store.legacy_file) in caplog.text


@posix_only
def test_private_key_file_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 0600 key file is read silently."""
    store = make_store(tmp_path)
    write_key_file(store, KEY, mode=0o600)
    with caplog.at_level(logging.DEBUG, logger="massugc_logging"):
        store.get()
    assert not caplog.records


# -- KeyStore: store ----------------------------------------------------------


def test_store_writes_one_line_key_file(tmp_path: Path) -> None:
    """Without a keyring the key goes to <config_dir>/api_key as one line."""
    store = make_store(tmp_path)
    where = store.store(KEY)
    assert where == str(tmp_path / "config" / "api_key")
    assert store.key_file.read_text() == KEY + "\n"
    assert store.resolve() == (ApiKey(KEY), "file")


@posix_only
@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_stored_file_is_0600_and_dir_0700_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """The key file is created 0600 and its new directory 0700, even with umask 000."""
    store = make_store(tmp_path)
    old = os.umask(umask)
    try:
        store.store(KEY)
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.config_dir.stat().st_mode) == 0o700


@posix_only
def test_key_file_is_never_world_readable_while_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is created with mode 0600 by os.open itself, not chmod-ed afterwards."""
    store = make_store(tmp_path)
    modes: list[int] = []
    real_open = os.open

    def recording_open(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        if flags & os.O_CREAT:
            modes.append(mode)
            assert flags & os.O_EXCL
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording_open)
    old = os.umask(0)
    try:
        store.store(KEY)
    finally:
        os.umask(old)
    assert modes == [0o600]


def test_store_replaces_an_existing_key_and_leaves_no_temp_files(tmp_path: Path) -> None:
    """Storing again replaces the key atomically; only api_key remains in the dir."""
    store = make_store(tmp_path)
    store.store(OTHER_KEY)
    store.store(ApiKey(KEY))
    assert store.get() == ApiKey(KEY)
    assert sorted(p.name for p in store.config_dir.iterdir()) == ["api_key",
                                                                   "api_key.meta.json"]
    assert KEY not in (store.config_dir / "api_key.meta.json").read_text()


def test_store_refuses_an_invalid_key_and_writes_nothing(tmp_path: Path) -> None:
    """An invalid key raises InvalidApiKey (without the key) and no file appears."""
    store = make_store(tmp_path)
    bad = KEY + "?"
    with pytest.raises(InvalidApiKey) as info:
        store.store(bad)
    assert_no_secret(info.value, bad)
    assert not store.key_file.exists()


def test_store_uses_the_keyring_when_available(tmp_path: Path) -> None:
    """With a usable keyring the key goes there, under massugc-logging/api_key."""
    fake = FakeKeyring()
    store = make_store(tmp_path, keyring_module=fake)
    assert store.store(KEY) == "keyring"
    assert fake.entries == {("massugc-logging", "api_key"): KEY}
    assert not store.key_file.exists()
    assert store.resolve() == (ApiKey(KEY), "keyring")


def test_store_in_keyring_deletes_a_stale_key_file(tmp_path: Path) -> None:
    """Moving to the keyring leaves no plaintext copy behind."""
    fake = FakeKeyring()
    store = make_store(tmp_path, keyring_module=fake)
    write_key_file(store, OTHER_KEY)
    store.store(KEY)
    assert not store.key_file.exists()


def test_keyring_module_with_get_keyring_is_used(tmp_path: Path) -> None:
    """A module-like object exposing get_keyring() is used through its backend."""
    backend = FakeKeyring()
    store = make_store(tmp_path, keyring_module=FakeKeyringModule(backend))
    assert store.uses_keyring
    assert store.store(KEY) == "keyring"
    assert backend.entries[("massugc-logging", "api_key")] == KEY


def test_fail_or_null_keyring_backend_is_not_used(tmp_path: Path) -> None:
    """A backend with priority <= 0 (keyring's fail/null) means: use the key file."""
    store = make_store(tmp_path, keyring_module=FakeKeyringModule(NullBackend()))
    assert not store.uses_keyring
    assert store.store(KEY) == str(store.key_file)


def test_use_keyring_false_never_touches_the_keyring(tmp_path: Path) -> None:
    """use_keyring=False ignores even an injected keyring."""
    fake = FakeKeyring()
    fake.set_password("massugc-logging", "api_key", OTHER_KEY)
    store = make_store(tmp_path, keyring_module=fake, use_keyring=False)
    assert not store.uses_keyring
    store.store(KEY)
    assert store.resolve() == (ApiKey(KEY), "file")
    assert fake.entries[("massugc-logging", "api_key")] == OTHER_KEY


def test_without_keyring_package_the_file_is_used(tmp_path: Path) -> None:
    """When keyring cannot be imported, auto mode falls back to the key file."""
    store = make_store(tmp_path)
    assert not store.uses_keyring
    assert store.store(KEY) == str(store.key_file)


def test_use_keyring_true_without_keyring_is_a_clear_error(tmp_path: Path) -> None:
    """use_keyring=True with no usable keyring raises KeyStoreError naming the extra."""
    with pytest.raises(KeyStoreError, match=r"massugc-logging\[keyring\]"):
        make_store(tmp_path, use_keyring=True)


def test_keyring_write_failure_falls_back_to_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """If the keyring refuses the key, it goes to the file and an old entry is cleared."""
    fake = FakeKeyring()
    fake.set_password("massugc-logging", "api_key", OTHER_KEY)
    fake.fail_set = True
    store = make_store(tmp_path, keyring_module=fake)
    with caplog.at_level(logging.WARNING, logger="massugc_logging"):
        assert store.store(KEY) == str(store.key_file)
    assert store.resolve() == (ApiKey(KEY), "file")
    assert MIDDLE not in caplog.text


def test_keyring_read_failure_falls_back_to_the_file(tmp_path: Path) -> None:
    """A keyring that raises on read does not hide the key file."""
    store = make_store(tmp_path, keyring_module=FakeKeyring(fail_get=True))
    write_key_file(store, KEY)
    assert store.resolve() == (ApiKey(KEY), "file")


def test_unwritable_config_dir_raises_keystore_error(tmp_path: Path) -> None:
    """A config dir that cannot be created gives a KeyStoreError naming the key file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    store = KeyStore(config_dir=blocker / "config", legacy_path=tmp_path / "l", environ={})
    with pytest.raises(KeyStoreError, match="cannot write the key file") as info:
        store.store(KEY)
    assert_no_secret(info.value, KEY)


# -- KeyStore: remove and migrate ---------------------------------------------


def test_remove_deletes_keyring_entry_and_key_file(tmp_path: Path) -> None:
    """remove() clears the keyring and the key file and says so."""
    fake = FakeKeyring()
    fake.set_password("massugc-logging", "api_key", KEY)
    store = make_store(tmp_path, keyring_module=fake)
    write_key_file(store, KEY)
    assert store.remove() == ["keyring", str(store.key_file)]
    assert fake.entries == {}
    assert not store.key_file.exists()


def test_remove_leaves_environment_and_legacy_file(tmp_path: Path) -> None:
    """remove() never touches the environment, nor the legacy file unless asked."""
    env = {"MASSUGC_API_KEY": KEY}
    store = make_store(tmp_path, env)
    write_legacy(store, base64.b64encode(KEY.encode()).decode())
    assert store.remove() == []
    assert env == {"MASSUGC_API_KEY": KEY}
    assert store.legacy_file.exists()
    assert store.remove(legacy=True) == [str(store.legacy_file)]
    assert not store.legacy_file.exists()


def test_remove_with_nothing_stored_returns_empty(tmp_path: Path) -> None:
    """remove() on an empty store removes nothing."""
    assert make_store(tmp_path, keyring_module=FakeKeyring()).remove() == []


def test_migrate_legacy_moves_the_key_into_the_store(tmp_path: Path) -> None:
    """The legacy key is stored in the key file; the legacy file stays by default."""
    store = make_store(tmp_path)
    write_legacy(store, base64.b64encode(KEY.encode()).decode() + "\n")
    assert store.migrate_legacy()
    assert store.key_file.read_text() == KEY + "\n"
    assert store.legacy_file.exists()
    assert store.resolve() == (ApiKey(KEY), "file")


def test_migrate_legacy_to_keyring_never_deletes_the_apps_file(tmp_path: Path) -> None:
    """With a keyring, migration stores there; the app's file stays (the app checks it)."""
    fake = FakeKeyring()
    store = make_store(tmp_path, keyring_module=fake)
    write_legacy(store, base64.b64encode(KEY.encode()).decode())
    assert store.migrate_legacy()
    assert fake.entries[("massugc-logging", "api_key")] == KEY
    assert store.legacy_file.exists()


def test_migrate_legacy_without_legacy_file_is_false(tmp_path: Path) -> None:
    """No legacy file, nothing to migrate."""
    assert not make_store(tmp_path).migrate_legacy()


def test_migrate_legacy_keeps_a_stored_key_written_after_the_apps_file(tmp_path: Path) -> None:
    """A key stored after the app's file was written is newer: migration copies nothing."""
    store = make_store(tmp_path)
    write_legacy(store, base64.b64encode(KEY.encode()).decode())
    set_mtime(store.legacy_file, time.time() - 60)
    store.store(OTHER_KEY)
    assert not store.migrate_legacy()
    assert store.get() == ApiKey(OTHER_KEY)
    assert store.legacy_file.exists()


def test_a_migrated_copy_follows_the_apps_file(tmp_path: Path) -> None:
    """After key migrate, a key changed in the app's file is used, and once the app deletes
    its file the migrated copy is not used either."""
    store = make_store(tmp_path)
    write_legacy(store, base64.b64encode(KEY.encode()).decode())
    assert store.migrate_legacy()
    assert store.get() == ApiKey(KEY)
    write_legacy(store, base64.b64encode(OTHER_KEY.encode()).decode())
    set_mtime(store.legacy_file, time.time() + 5)
    assert store.resolve() == (ApiKey(OTHER_KEY), "legacy-file")
    store.legacy_file.unlink()
    assert store.resolve() == (None, "none")


def test_a_key_set_by_hand_outlives_the_apps_file(tmp_path: Path) -> None:
    """A key stored with key set (not a copy of the app's) stays when the app's file goes."""
    store = make_store(tmp_path)
    write_legacy(store, base64.b64encode(KEY.encode()).decode())
    store.store(OTHER_KEY)
    store.legacy_file.unlink()
    assert store.resolve() == (ApiKey(OTHER_KEY), "file")


def test_migrate_invalid_legacy_file_raises_and_keeps_it(tmp_path: Path) -> None:
    """An invalid legacy file raises InvalidApiKey and is left for the user to inspect."""
    store = make_store(tmp_path)
    write_legacy(store, "%%% not a key %%%")
    with pytest.raises(InvalidApiKey):
        store.migrate_legacy()
    assert store.legacy_file.exists()
    assert not store.key_file.exists()


# -- KeyStore: repr -----------------------------------------------------------


def test_repr_shows_paths_and_keyring_but_never_the_key(tmp_path: Path) -> None:
    """The store's repr names its files and keyring use, and no key."""
    fake = FakeKeyring()
    store = make_store(tmp_path, {"MASSUGC_API_KEY": KEY}, keyring_module=fake)
    store.store(KEY)
    text = repr(store)
    assert str(store.key_file) in text
    assert str(store.legacy_file) in text
    assert "keyring=True" in text
    assert MIDDLE not in text
