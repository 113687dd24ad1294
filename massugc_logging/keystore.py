"""The API key store: where the key lives, and the value that never shows itself.

The key is the one secret this package holds, so it is wrapped in
:class:`ApiKey` as soon as it is read: its ``repr``, ``str`` and ``format``
are masked, it refuses to be pickled, and :meth:`ApiKey.reveal` is the only
way back to the text (for the ``X-API-Key`` header and nothing else).

:class:`KeyStore` finds the key: an explicit argument, else the
``MASSUGC_API_KEY`` environment variable, else the newer of two places that
can both hold one:

- the package's own store: the OS keyring (when the optional ``keyring``
  package has a usable backend), else the key file ``<config dir>/api_key``
  (one line of plain text, mode 0600);
- the desktop app's own key file ``~/.zyra-video-agent/.massugc_api_key`` (the
  key base64-encoded), which the app's Settings page writes and deletes while
  the app runs.

The one written last wins, so a key changed in either place is the key used.
Beside the stored key, ``api_key.meta.json`` (no secret in it) records when it
was written and whether ``key migrate`` copied it from the app's file; such a
copy goes with the app's file: once the app deletes its key, the copy is not
used either. The app's file is never written or deleted by ``key migrate``,
since the app checks for it.

Errors, none of which ever contains the key::

    KeyStoreError                 a key file cannot be read, written or removed
     └── InvalidApiKey            a source holds something that is not a key
                                  (also a ValueError)
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import secrets
import stat
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn, Optional, Protocol, Union

from massugc_logging.contract import API_KEY_PATTERN
from massugc_logging.diagnostics import Diagnostics, Topic, logger

__all__ = [
    "ENV_VAR",
    "KEYRING_SERVICE",
    "KEYRING_USERNAME",
    "KEY_FILE_NAME",
    "ApiKey",
    "InvalidApiKey",
    "KeyStore",
    "KeyStoreError",
    "mask",
]

ENV_VAR = "MASSUGC_API_KEY"
KEYRING_SERVICE = "massugc-logging"
KEYRING_USERNAME = "api_key"
KEY_FILE_NAME = "api_key"
META_FILE_NAME = "api_key.meta.json"
APP_NAME = "massugc-logging"
LEGACY_RELATIVE_PATH = Path(".zyra-video-agent") / ".massugc_api_key"

_PREFIX = "massugc_"
_BODY_LENGTH = 32
_EXPECTED = "'massugc_' followed by 32 characters of A-Z a-z 0-9 _ -"
_ELLIPSIS = "\u2026"
#: Bodies shorter than this mask to a bare ellipsis: showing 4 characters of
#: a short string would show too much of it.
_MIN_MASKABLE = 12
#: A key file is one short line; anything much bigger is not a key file.
_MAX_FILE_BYTES = 64 * 1024

_diagnostics = Diagnostics(logger)


class KeyStoreError(Exception):
    """A key source could not be read, written or removed; the message says which and why."""


class InvalidApiKey(KeyStoreError, ValueError):
    """A value, or a source, does not hold a well-formed MassUGC API key.

    The message names where the value came from and the expected format; it
    never contains the value. ``source`` is the :meth:`KeyStore.resolve` source
    name (``"environment"``, ``"file"``...) or ``None`` for a bare value.
    """

    def __init__(self, message: str, source: Optional[str] = None) -> None:
        super().__init__(message)
        self.source = source


def mask(value: object) -> str:
    """Mask a secret for display: ``'massugc_ab…yz'``, or ``'…'`` when it is short.

    Never raises, whatever it is given; an :class:`ApiKey` masks as itself.
    """
    if isinstance(value, ApiKey):
        return value.masked
    if not isinstance(value, str):
        return _ELLIPSIS
    prefix = _PREFIX if value.startswith(_PREFIX) else ""
    body = value[len(prefix) :]
    if len(body) < _MIN_MASKABLE:
        return prefix + _ELLIPSIS
    return f"{prefix}{body[:2]}{_ELLIPSIS}{body[-2:]}"


def _why_invalid(value: str) -> str:
    """Say what is wrong with ``value`` without quoting any of it."""
    if not value:
        return "it is empty"
    if not value.startswith(_PREFIX):
        return f"it does not start with '{_PREFIX}'"
    body_length = len(value) - len(_PREFIX)
    if body_length != _BODY_LENGTH:
        return f"it has {body_length} characters after '{_PREFIX}'"
    return "it contains characters outside that set"


def _invalid(where: str, source: Optional[str], reason: str, hint: str = "") -> InvalidApiKey:
    message = f"{where} does not hold a valid MassUGC API key: expected {_EXPECTED}, but {reason}"
    return InvalidApiKey(f"{message}. {hint}" if hint else message, source)


class ApiKey:
    """A MassUGC API key that never shows itself.

    ``repr``, ``str`` and ``format`` give the masked form (``'massugc_ab…yz'``),
    so a key that ends up in a log line, an f-string or a traceback shows
    nothing usable. Equality is by value, in constant time. Pickling is refused
    so the key cannot be written to disk or sent to another process by accident.
    """

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"an API key must be a str, not {type(value).__name__}")
        if not API_KEY_PATTERN.fullmatch(value):
            raise _invalid("the value given to ApiKey", None, _why_invalid(value))
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        """The secret itself: for the ``X-API-Key`` header, and for nothing that gets shown."""
        return self._value

    @property
    def masked(self) -> str:
        """The key with all but ``massugc_``, two leading and two trailing characters hidden."""
        return mask(self._value)

    def __repr__(self) -> str:
        return f"ApiKey({self.masked!r})"

    def __str__(self) -> str:
        return self.masked

    def __format__(self, format_spec: str) -> str:
        return format(self.masked, format_spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ApiKey):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ApiKey is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("ApiKey is immutable")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("an ApiKey cannot be pickled: that would write the secret out")

    def __reduce__(self) -> NoReturn:
        raise TypeError("an ApiKey cannot be pickled: that would write the secret out")

    # Immutable, so copies can be the object itself; this keeps copy.copy and
    # copy.deepcopy of settings that hold a key working despite __reduce_ex__.
    def __copy__(self) -> ApiKey:
        return self

    def __deepcopy__(self, memo: Any) -> ApiKey:
        return self


class _KeyringBackend(Protocol):
    """The part of a ``keyring`` backend (or of the ``keyring`` module) that is used."""

    def get_password(self, service: str, username: str) -> Optional[str]: ...

    def set_password(self, service: str, username: str, password: str) -> None: ...

    def delete_password(self, service: str, username: str) -> None: ...


def _usable_backend(candidate: Any) -> Optional[_KeyringBackend]:
    """The backend behind ``candidate`` if it can really store secrets, else None.

    ``candidate`` is the ``keyring`` module (or a stand-in with ``get_keyring``)
    or a backend. keyring's fail and null backends, and a chainer with nothing
    to chain, report a priority of 0 or less: they cannot hold a key.
    """
    try:
        backend = candidate.get_keyring() if hasattr(candidate, "get_keyring") else candidate
        if type(backend).__module__.startswith(("keyring.backends.fail", "keyring.backends.null")):
            return None
        priority = getattr(backend, "priority", 1)
        if not isinstance(priority, (int, float)) or priority <= 0:
            return None
        if not all(
            callable(getattr(backend, name, None))
            for name in ("get_password", "set_password", "delete_password")
        ):
            return None
    except Exception:  # a backend that fails while being probed is no backend
        return None
    result: _KeyringBackend = backend
    return result


def _import_keyring() -> Any:
    """The optional ``keyring`` module, or None when it is not installed or will not import."""
    try:
        import keyring  # noqa: PLC0415 - an optional extra, imported only when wanted
    except Exception:  # ImportError, or a broken install failing at import time
        return None
    return keyring


def _read_bytes(path: Path) -> Optional[tuple[bytes, int]]:
    """Up to ``_MAX_FILE_BYTES + 1`` bytes of ``path`` and its permission bits.

    None when the file does not exist.
    """
    try:
        with open(path, "rb") as fh:
            mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            return fh.read(_MAX_FILE_BYTES + 1), mode
    except FileNotFoundError:
        return None


def _is_posix() -> bool:
    return os.name != "nt"


class KeyStore:
    """Finds, stores and removes the MassUGC API key.

    Args:
        config_dir: where the key file ``api_key`` lives; defaults to the
            platform's user config dir for ``massugc-logging``.
        legacy_path: the desktop app's old key file (base64 of the key);
            defaults to ``~/.zyra-video-agent/.massugc_api_key``.
        use_keyring: ``None`` uses the OS keyring when the optional ``keyring``
            package has a usable backend, ``False`` never does, ``True``
            requires it (raising :class:`KeyStoreError` when there is none).
        environ: where ``MASSUGC_API_KEY`` is looked up; defaults to ``os.environ``.
        keyring_module: a stand-in for the ``keyring`` module, or a backend
            with ``get_password``/``set_password``/``delete_password``; for tests.
    """

    def __init__(
        self,
        config_dir: Optional[Path] = None,
        legacy_path: Optional[Path] = None,
        use_keyring: Optional[bool] = None,
        environ: Optional[Mapping[str, str]] = None,
        keyring_module: Optional[Any] = None,
    ) -> None:
        if config_dir is None:
            import platformdirs  # noqa: PLC0415 - only needed for the default

            # appauthor=False: no "massugc-logging\massugc-logging" on Windows.
            config_dir = Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))
        if legacy_path is None:
            legacy_path = Path(os.path.expanduser("~")) / LEGACY_RELATIVE_PATH
        self.config_dir = Path(config_dir)
        self.key_file = self.config_dir / KEY_FILE_NAME
        self.meta_file = self.config_dir / META_FILE_NAME
        self.legacy_file = Path(legacy_path)
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._use_keyring = use_keyring
        self._keyring_module = keyring_module
        self._backend: Optional[_KeyringBackend] = None
        self._backend_checked = False
        if use_keyring and self._keyring() is None:
            raise KeyStoreError(
                "use_keyring=True, but no usable OS keyring was found: install the extra "
                "with `pip install massugc-logging[keyring]` and make sure the system "
                "keyring service is running, or pass use_keyring=None to fall back to the key file"
            )

    # -- the sources -------------------------------------------------------

    def _keyring(self) -> Optional[_KeyringBackend]:
        """The keyring backend to use, decided once, on first need (importing keyring is slow)."""
        if not self._backend_checked:
            if self._use_keyring is not False:
                module = self._keyring_module
                if module is None:
                    module = _import_keyring()
                self._backend = None if module is None else _usable_backend(module)
            self._backend_checked = True
        return self._backend

    @property
    def uses_keyring(self) -> bool:
        """Whether this store reads and writes the OS keyring."""
        return self._keyring() is not None

    def _describe(self, source: str) -> str:
        return {
            "argument": "the api_key argument",
            "environment": f"the {ENV_VAR} environment variable",
            "keyring": f"the OS keyring entry {KEYRING_SERVICE!r}/{KEYRING_USERNAME!r}",
            "file": f"the key file {self.key_file}",
            "legacy-file": f"the legacy key file {self.legacy_file}",
        }[source]

    def _parse(self, value: str, source: str, hint: str = "") -> ApiKey:
        """``value``, stripped, as an ApiKey; InvalidApiKey naming ``source`` if it is none."""
        value = value.strip()
        if not API_KEY_PATTERN.fullmatch(value):
            raise _invalid(self._describe(source), source, _why_invalid(value), hint)
        return ApiKey(value)

    def _from_keyring(self) -> Optional[ApiKey]:
        backend = self._keyring()
        if backend is None:
            return None
        try:
            value = backend.get_password(KEYRING_SERVICE, KEYRING_USERNAME)
        except Exception as exc:  # locked, no D-Bus...: fall back, and say so once
            _diagnostics.count("keyring_read_failed")
            _diagnostics.say_once(
                Topic.KEYRING_READ,
                logging.WARNING,
                "could not read the API key from the OS keyring (%s); trying the key file",
                type(exc).__name__,
            )
            return None
        if value is None or not value.strip():
            return None
        return self._parse(value, "keyring")

    def _read_text(self, path: Path, source: str, hint: str = "") -> Optional[str]:
        """The text of a key file, or None when there is none; warns once if others can read it."""
        what = self._describe(source)
        try:
            read = _read_bytes(path)
            if read is None:
                return None
            data, mode = read
        except PermissionError:
            raise KeyStoreError(
                f"cannot read {what}: permission denied. Give your user read access "
                f"(chmod 600) or delete it and store the key again"
            ) from None
        except IsADirectoryError:
            raise KeyStoreError(f"cannot read {what}: it is a directory") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise KeyStoreError(f"cannot read {what}: {reason}") from None
        if _is_posix() and mode & 0o077:
            _diagnostics.count("key_file_permissions")
            _diagnostics.say_once(
                Topic.KEY_FILE_PERMISSIONS,
                logging.WARNING,
                "%s can be read by other users (mode %s); restrict it with: chmod 600 %s",
                what,
                oct(mode)[2:].zfill(3),
                path,
                about=str(path),
            )
        if len(data) > _MAX_FILE_BYTES:
            raise _invalid(what, source, "it is far too large to be a key file", hint)
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise _invalid(what, source, "it is not text", hint) from None

    def _from_file(self) -> Optional[ApiKey]:
        text = self._read_text(self.key_file, "file")
        if text is None or not text.strip():
            return None
        return self._parse(text, "file")

    def _from_legacy_file(self) -> Optional[ApiKey]:
        hint = "Delete that file and store the key again"
        text = self._read_text(self.legacy_file, "legacy-file", hint)
        if text is None or not text.strip():
            return None
        text = text.strip()
        if API_KEY_PATTERN.fullmatch(text):  # a plain key: accept it as it is
            return ApiKey(text)
        try:
            decoded = base64.b64decode(text, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise _invalid(
                self._describe("legacy-file"),
                "legacy-file",
                "it is neither a key nor a base64-encoded one",
                hint,
            ) from None
        return self._parse(decoded, "legacy-file", hint)

    def _stored(self) -> tuple[Optional[ApiKey], str]:
        """The key held by this store itself (keyring, then key file), ignoring env and legacy."""
        key = self._from_keyring()
        if key is not None:
            return key, "keyring"
        key = self._from_file()
        if key is not None:
            return key, "file"
        return None, "none"

    def _meta(self) -> dict[str, Any]:
        """What ``api_key.meta.json`` says of the stored key (empty when there is none)."""
        try:
            meta = json.loads(self.meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def _stored_written_at(self, source: str, meta: dict[str, Any]) -> float:
        """When the stored key was written: the meta file's record, else the key file's
        modification time; a keyring entry without a record counts as oldest."""
        written = meta.get("written_at")
        if isinstance(written, (int, float)) and not isinstance(written, bool):
            return float(written)
        if source == "file":
            try:
                return self.key_file.stat().st_mtime
            except OSError:
                return 0.0
        return 0.0

    def _legacy_written_at(self) -> float:
        try:
            return self.legacy_file.stat().st_mtime
        except OSError:
            return 0.0

    # -- the public operations ---------------------------------------------

    def resolve(self, explicit: Union[str, ApiKey, None] = None) -> tuple[Optional[ApiKey], str]:
        """Find the key and say where it came from.

        ``explicit`` wins, then ``MASSUGC_API_KEY``; after them, of the key in this
        store (keyring or key file) and the one in the app's legacy file, the one
        written last (a tie goes to this store). A blank value counts as nothing. A
        stored key that ``key migrate`` copied from the app's file is not used once
        that file is gone. Returns ``(key, source)`` with ``source`` one of
        ``"argument"``, ``"environment"``, ``"keyring"``, ``"file"``,
        ``"legacy-file"`` or ``"none"``.

        Raises:
            InvalidApiKey: the winning source holds something that is not a key.
            KeyStoreError: a key file exists but cannot be read.
        """
        if isinstance(explicit, ApiKey):
            return explicit, "argument"
        if explicit is not None and explicit.strip():
            return self._parse(explicit, "argument"), "argument"
        from_env = self.from_environment()
        if from_env is not None:
            return from_env, "environment"
        stored, source = self._stored()
        if stored is None:
            key = self._from_legacy_file()
            return (key, "legacy-file") if key is not None else (None, "none")
        meta = self._meta()
        try:
            legacy = self._from_legacy_file()
        except KeyStoreError:
            legacy = None  # a broken app file never hides a good stored key
        if legacy is None:
            if meta.get("origin") == "legacy-file" and not self.legacy_file.exists():
                return None, "none"  # the app deleted the key this copy came from
            return stored, source
        if legacy != stored and self._legacy_written_at() > self._stored_written_at(source,
                                                                                     meta):
            return legacy, "legacy-file"
        return stored, source

    def from_environment(self) -> Optional[ApiKey]:
        """The key in ``MASSUGC_API_KEY``, or None when it is unset or blank; reads no file.

        Raises:
            InvalidApiKey: the variable holds something that is not a key.
        """
        from_env = self._environ.get(ENV_VAR)
        if from_env is not None and from_env.strip():
            return self._parse(from_env, "environment")
        return None

    def get(self) -> Optional[ApiKey]:
        """The key from the environment or the store, or None; raises as :meth:`resolve` does."""
        return self.resolve()[0]

    def has(self) -> bool:
        """Whether a key can be found; raises as :meth:`resolve` does if one is malformed."""
        return self.get() is not None

    def store(self, key: Union[str, ApiKey], *, origin: str = "store",
              written_at: Optional[float] = None) -> str:
        """Validate ``key`` and keep it: in the keyring if usable, else in the key file (0600).

        Returns ``"keyring"`` or the key file's path. Storing in the keyring
        deletes an existing key file, so no stale plaintext copy is left behind.
        ``origin`` and ``written_at`` (default: now) go to the meta file, which
        decides between this key and the app's own file.
        """
        api_key = key if isinstance(key, ApiKey) else self._parse(key, "argument")
        where = self._store_key(api_key)
        self._write_meta({"written_at": time.time() if written_at is None else written_at,
                          "origin": origin})
        return where

    def _store_key(self, api_key: ApiKey) -> str:
        backend = self._keyring()
        if backend is not None:
            try:
                backend.set_password(KEYRING_SERVICE, KEYRING_USERNAME, api_key.reveal())
            except Exception as exc:  # keyring locked or refused: the file still works
                _diagnostics.count("keyring_write_failed")
                _diagnostics.say_once(
                    Topic.KEYRING_WRITE,
                    logging.WARNING,
                    "could not store the API key in the OS keyring (%s); using the key file %s",
                    type(exc).__name__,
                    self.key_file,
                )
                self._delete_from_keyring(backend)  # an older key there would shadow the file
            else:
                self._unlink(self.key_file, "file")
                return "keyring"
        self._write_key_file(api_key)
        return str(self.key_file)

    def remove(self, legacy: bool = False) -> list[str]:
        """Delete the key from the keyring and the key file (and the legacy file if ``legacy``).

        The environment is left alone. Returns what was removed: ``"keyring"``
        and file paths.
        """
        removed: list[str] = []
        backend = self._keyring()
        if backend is not None and self._delete_from_keyring(backend):
            removed.append("keyring")
        if self._unlink(self.key_file, "file"):
            removed.append(str(self.key_file))
        self._unlink(self.meta_file, "file")
        if legacy and self._unlink(self.legacy_file, "legacy-file"):
            removed.append(str(self.legacy_file))
        return removed

    def migrate_legacy(self) -> bool:
        """Copy the key from the desktop app's legacy file into this store.

        Returns True if a key was copied. A different key already in the store is
        kept when it was written after the app's file. The app's file is left as
        it is (the app checks for it); the copy follows it: a newer key in the app's
        file wins over the copy, and once the app deletes its file the copy is not
        used.

        Raises:
            InvalidApiKey: the legacy file holds no valid key (it is left in place).
        """
        legacy_key = self._from_legacy_file()
        if legacy_key is None:
            return False
        current, source = self._stored()
        legacy_time = self._legacy_written_at()
        if current is not None and self._stored_written_at(source, self._meta()) >= legacy_time:
            return False
        self.store(legacy_key, origin="legacy-file", written_at=legacy_time)
        return True

    def __repr__(self) -> str:
        return (
            f"KeyStore(key_file={str(self.key_file)!r}, "
            f"legacy_file={str(self.legacy_file)!r}, keyring={self.uses_keyring})"
        )

    # -- effects -----------------------------------------------------------

    @staticmethod
    def _delete_from_keyring(backend: _KeyringBackend) -> bool:
        """Delete the keyring entry; True if there was one and it is gone."""
        try:
            if backend.get_password(KEYRING_SERVICE, KEYRING_USERNAME) is None:
                return False
            backend.delete_password(KEYRING_SERVICE, KEYRING_USERNAME)
        except Exception:  # nothing there, or the keyring refused
            return False
        return True

    def _unlink(self, path: Path, source: str) -> bool:
        """Delete ``path``; True if it existed."""
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise KeyStoreError(
                f"cannot delete {self._describe(source)}: {exc.strerror or type(exc).__name__}"
            ) from None
        return True

    def _ensure_config_dir(self) -> None:
        """Create the config dir as 0700 (parents with the default mode)."""
        if self.config_dir.is_dir():
            return
        self.config_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.config_dir.mkdir(mode=0o700)
        except FileExistsError:
            return
        if _is_posix():
            os.chmod(self.config_dir, 0o700)  # mkdir's mode is filtered by the umask

    def _write_meta(self, meta: dict[str, Any]) -> None:
        """Record when and how the stored key was written (no secret in it); best effort."""
        try:
            self._ensure_config_dir()
            tmp = self.config_dir / f".{META_FILE_NAME}.{secrets.token_hex(8)}.tmp"
            tmp.write_text(json.dumps(meta), encoding="utf-8")
            os.replace(tmp, self.meta_file)
        except OSError:
            _diagnostics.count("key_meta_write_failed")

    def _write_key_file(self, key: ApiKey) -> None:
        """Write the key file atomically, readable by its owner only from the first byte."""
        tmp = self.config_dir / f".{KEY_FILE_NAME}.{secrets.token_hex(8)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        flags |= getattr(os, "O_NOFOLLOW", 0)
        try:
            self._ensure_config_dir()
            fd = os.open(tmp, flags, 0o600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    if sys.platform != "win32":
                        os.fchmod(fh.fileno(), 0o600)  # exactly 0600, whatever the umask
                    fh.write(key.reveal().encode("ascii") + b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.key_file)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise KeyStoreError(
                f"cannot write the key file {self.key_file}: {exc.strerror or type(exc).__name__}"
            ) from None
