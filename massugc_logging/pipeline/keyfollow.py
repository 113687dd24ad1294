"""The key a handler sends, kept in step with wherever the key is kept.

The desktop app's Settings page writes and deletes its own key file while the
backend runs, and ``massugc-logging key set`` writes the package's store. A
handler that read the key once, at start, would send a deleted key for ever,
or hold its events for a key that has long been set. :class:`KeyFollower`
reads the key store again (on a handler thread: it touches files and maybe the
OS keyring): every :data:`KEY_CHECK_INTERVAL` seconds while sending, and every
:data:`KEY_CHECK_WHILE_HELD` seconds while sending waits for a key (none, a
malformed one, or one the API refused), so that a new key is used before the
next attempt.

A key given to the handler itself (the ``api_key`` argument, or
:meth:`KeyFollower.pin` through ``set_api_key``) is pinned: it is used as given
and the store is not followed until the pin is lifted with ``None``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from massugc_logging.keystore import ApiKey, KeyStore, KeyStoreError

#: Seconds between two readings of the key store while sending works.
KEY_CHECK_INTERVAL = 60.0
#: Seconds between two readings while sending waits for a usable key.
KEY_CHECK_WHILE_HELD = 2.0


@dataclass(frozen=True)
class KeyState:
    """The key in use, where it came from, and why there is none when there is none.

    ``problem`` is set when a source holds something that is not a usable key (the
    message never contains the value); ``key`` is None then, as when no source
    holds a key at all.
    """

    key: Optional[ApiKey]
    source: str
    problem: Optional[str] = None

    def same_as(self, other: KeyState) -> bool:
        """True when both name the same key (or the same absence and problem)."""
        return self.key == other.key and self.problem == other.problem


class KeyFollower:
    """Reads the key store again now and then; thread-safe.

    Args:
        store: where the key is looked up (None: a ``KeyStore()`` made on first use).
        pinned: a key given directly (or a malformed one given directly, with its
            problem); the store is not followed while one is pinned.
        clock: monotonic seconds.
        read_now: read the store here; else only the environment here (it reads no
            file), the rest at the first :meth:`refresh`, on the pipeline's thread: the
            app's thread never reads files.
    """

    def __init__(self, store: Optional[KeyStore] = None, pinned: Optional[KeyState] = None,
                 *, clock: Callable[[], float] = time.monotonic, read_now: bool = True) -> None:
        self._store = store
        self._pinned = pinned
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at = clock()
        if pinned is not None:
            self._state = pinned
        elif read_now:
            self._state = self._read()
        else:
            self._state = self._read_environment()

    def _read_environment(self) -> KeyState:
        """The key from ``MASSUGC_API_KEY`` alone, as :meth:`_read` would find it; with
        none there, the store is due to be read at once."""
        try:
            store = self._store if self._store is not None else KeyStore()
            self._store = store
            key = store.from_environment()
        except KeyStoreError as exc:
            return KeyState(None, getattr(exc, "source", None) or "environment", str(exc))
        if key is None:
            self._checked_at = -float("inf")
            return KeyState(None, "not read yet")
        return KeyState(key, "environment")

    @property
    def state(self) -> KeyState:
        """The key in use now."""
        return self._state

    @property
    def follows_the_store(self) -> bool:
        """False while a key is pinned."""
        return self._pinned is None

    def pin(self, key: Optional[ApiKey]) -> KeyState:
        """Use ``key`` from now on, whatever the store says; None follows the store again
        (read at the next check, which is due at once)."""
        with self._lock:
            if key is not None:
                self._pinned = self._state = KeyState(key, "argument")
            else:
                self._pinned = None
                self._checked_at = -float("inf")
            return self._state

    def after_fork_in_child(self) -> None:
        """A fresh lock: a parent thread may have held it at the fork."""
        self._lock = threading.Lock()

    def due(self, waiting_for_a_key: bool) -> bool:
        """Whether the store should be read again now."""
        if self._pinned is not None:
            return False
        interval = KEY_CHECK_WHILE_HELD if waiting_for_a_key else KEY_CHECK_INTERVAL
        return self._clock() - self._checked_at >= interval

    def refresh(self) -> Optional[KeyState]:
        """Read the store; return the new state if the key changed, else None.

        Does file (and keyring) I/O: call it on a handler thread, never the app's.
        """
        if self._pinned is not None:
            return None
        found = self._read()
        with self._lock:
            self._checked_at = self._clock()
            if self._pinned is not None or found.same_as(self._state):
                return None
            self._state = found
            return found

    def _read(self) -> KeyState:
        try:
            store = self._store if self._store is not None else KeyStore()
            self._store = store
            key, source = store.resolve()
        except KeyStoreError as exc:
            return KeyState(None, getattr(exc, "source", None) or "key store", str(exc))
        except Exception as exc:  # a broken keyring backend must not stop the handler
            return KeyState(None, "key store",
                            f"the key store could not be read ({type(exc).__name__}); set "
                            "MASSUGC_API_KEY instead")
        return KeyState(key, source)
