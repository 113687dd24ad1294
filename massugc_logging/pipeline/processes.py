"""Tell whether the process that owned spool rows is certainly gone, on Linux, macOS and Windows.

Rows in the shared SQLite spool carry an owner tag ``host|pid|marker|token``. A process that
starts later must decide, for another tag on the same host, whether its owner is dead (killed,
crashed, exited) so it can take the rows over at once instead of waiting for a lease to expire.

A pid alone cannot answer that: the operating system hands pids out again, so "some process
has this pid" does not mean "the owner is alive". So each owner also records a *start marker*:
an opaque text naming when its process started. The owner is gone when no live process has the
pid, or when the process that has it now started at another time.

* Linux: ``starttime`` (field 22 of ``/proc/<pid>/stat``, clock ticks since boot) plus the boot
  id, so the same tick count after a reboot cannot alias. A tick is usually 10 ms: a pid reused
  within the tick its first owner started in would alias, which does not happen in practice,
  as the kernel hands pids out in rising order and reuses one only after wrapping around.
* macOS: ``pbi_start_tvsec``/``pbi_start_tvusec`` from libproc's ``proc_pidinfo``.
* Windows: the creation FILETIME from ``GetProcessTimes``. ``os.kill(pid, 0)`` is never used
  there, as on Windows it is no probe: 0 is ``CTRL_C_EVENT``, a Ctrl+C sent to a console process
  group, and any other number calls ``TerminateProcess``.

A process that has exited but not been reaped (a zombie, or on Windows one that other handles keep
open) counts as gone: it will never touch the spool again.

Every answer leans towards "not gone": a false "alive" costs only a delay until the lease
expires, while a false "gone" would let two processes work on the same rows. Only the Linux
branch is tested for real; the Windows and macOS decisions are tested on Linux through fakes of
the small ``_Kernel32Api`` and ``_LibprocApi`` seams, and their ctypes calls are only
type-checked (``mypy --platform win32`` / ``--platform darwin``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Protocol

__all__ = ["process_is_gone", "process_start_marker"]

_PROC_ROOT = Path("/proc")


class _ProcessState(NamedTuple):
    """What can be known of a pid now: is a live process there, and when did it start."""

    alive: Optional[bool]  # None: cannot tell
    marker: Optional[str]  # None: cannot tell


_GONE = _ProcessState(alive=False, marker=None)
_UNKNOWN = _ProcessState(alive=None, marker=None)


def process_start_marker(pid: Optional[int] = None) -> Optional[str]:
    """An opaque text naming the start of process `pid` (this process when None): the same for
    the whole life of that process, different for a later process that reuses the pid; None
    when it cannot be known (no such process, no permission, unsupported platform). Never raises."""
    try:
        return _state_of(os.getpid() if pid is None else pid).marker
    except Exception:  # a liveness probe must never take its caller down
        return None


def process_is_gone(pid: int, start_marker: Optional[str]) -> bool:
    """True only when it is certain that the process that had `start_marker` is gone: no process
    has `pid`, or the process that has it now started at another time (a reused pid). False when
    it is alive or when it cannot be told (permission denied, unknown platform, no marker and the
    pid exists). Never raises."""
    try:
        return _is_gone(_state_of(pid), start_marker)
    except Exception:  # a liveness probe must never take its caller down
        return False


def _is_gone(state: _ProcessState, start_marker: Optional[str]) -> bool:
    if state.alive is False:
        return True
    if state.alive is None or start_marker is None or state.marker is None:
        return False
    return state.marker != start_marker


def _state_of(pid: int) -> _ProcessState:
    if pid <= 0:
        # Never an owner's pid; os.kill reads it as a process group, Windows as the Idle process.
        return _UNKNOWN
    if sys.platform == "win32":
        kernel32 = _kernel32_api()
        return _UNKNOWN if kernel32 is None else _windows_state(kernel32, pid)
    elif sys.platform == "darwin":
        libproc = _libproc_api()
        if libproc is None:
            return _ProcessState(alive=_kill_probe(pid), marker=None)
        return _darwin_state(libproc, pid)
    elif sys.platform.startswith("linux"):
        return _procfs_state(pid)
    elif os.name == "posix":
        return _ProcessState(alive=_kill_probe(pid), marker=None)
    else:
        return _UNKNOWN


def _kill_probe(pid: int) -> Optional[bool]:
    """Signal 0 checks that `pid` exists without touching it. POSIX only."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just is not ours to signal
    except (OSError, OverflowError, ValueError):
        return None
    return True


# --- Linux ------------------------------------------------------------------------------------


class _ProcStat(NamedTuple):
    state: str
    start_ticks: int


def _parse_proc_stat(line: bytes) -> Optional[_ProcStat]:
    """Read the state and starttime out of one ``/proc/<pid>/stat`` line, or None.

    Field 2 (comm) is the program name in parentheses and may itself hold spaces and
    parentheses, so the numeric fields are the ones after the *last* ``)``.
    """
    _, closing, after_comm = line.rpartition(b")")
    fields = after_comm.split()
    # fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
    if not closing or len(fields) < 20:
        return None
    state, start_ticks = fields[0], fields[19]
    if not start_ticks.isdigit():
        return None
    return _ProcStat(state.decode("ascii", "replace"), int(start_ticks))


def _procfs_state(pid: int, proc_root: Path = _PROC_ROOT) -> _ProcessState:
    try:
        stat = _parse_proc_stat((proc_root / str(pid) / "stat").read_bytes())
    except OSError:
        # Gone, or hidden from us (mount option hidepid): let the kernel tell which.
        return _ProcessState(alive=_kill_probe(pid), marker=None)
    if stat is None:
        return _ProcessState(alive=True, marker=None)
    if stat.state in ("Z", "X"):  # exited, only waiting to be reaped
        return _GONE
    boot_id = _boot_id(proc_root)
    if boot_id is None:
        return _ProcessState(alive=True, marker=None)
    return _ProcessState(alive=True, marker=f"{stat.start_ticks}@{boot_id}")


def _boot_id(proc_root: Path = _PROC_ROOT) -> Optional[str]:
    """The first 16 hex digits of this boot's random id: 64 bits is plenty to tell boots apart."""
    try:
        raw = (proc_root / "sys" / "kernel" / "random" / "boot_id").read_bytes()
    except OSError:
        return None
    digits = raw.decode("ascii", "replace").strip().replace("-", "").lower()
    if len(digits) < 16 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return digits[:16]


# --- macOS --------------------------------------------------------------------------------------

_PROC_PIDTBSDINFO = 3
_FIND_ZOMBIES_TOO = 1  # proc_pidinfo's `arg` for this flavor: without it a zombie reads as ESRCH
_SZOMB = 5  # pbi_status of a process that exited and waits to be reaped (sys/proc.h)
_MAXCOMLEN = 16


class _ProcBsdInfo(ctypes.Structure):
    """``struct proc_bsdinfo`` from <sys/proc_info.h>: fixed-size fields, 136 bytes."""

    _fields_ = (
        ("pbi_flags", ctypes.c_uint32),
        ("pbi_status", ctypes.c_uint32),
        ("pbi_xstatus", ctypes.c_uint32),
        ("pbi_pid", ctypes.c_uint32),
        ("pbi_ppid", ctypes.c_uint32),
        ("pbi_uid", ctypes.c_uint32),
        ("pbi_gid", ctypes.c_uint32),
        ("pbi_ruid", ctypes.c_uint32),
        ("pbi_rgid", ctypes.c_uint32),
        ("pbi_svuid", ctypes.c_uint32),
        ("pbi_svgid", ctypes.c_uint32),
        ("rfu_1", ctypes.c_uint32),
        ("pbi_comm", ctypes.c_char * _MAXCOMLEN),
        ("pbi_name", ctypes.c_char * (2 * _MAXCOMLEN)),
        ("pbi_nfiles", ctypes.c_uint32),
        ("pbi_pgid", ctypes.c_uint32),
        ("pbi_pjobc", ctypes.c_uint32),
        ("e_tdev", ctypes.c_uint32),
        ("e_tpgid", ctypes.c_uint32),
        ("pbi_nice", ctypes.c_int32),
        ("pbi_start_tvsec", ctypes.c_uint64),
        ("pbi_start_tvusec", ctypes.c_uint64),
    )


class _BsdInfo(NamedTuple):
    start_seconds: int
    start_microseconds: int
    is_zombie: bool


class _LibprocApi(Protocol):
    def bsd_info(self, pid: int) -> Optional[_BsdInfo]:
        """The start time and zombie state of `pid`, or None when libproc will not say."""


class _Libproc:
    """The real `_LibprocApi`: ``proc_pidinfo(pid, PROC_PIDTBSDINFO, 1, &info, sizeof info)``.

    The kernel answers EPERM for another user's process unless we are root: no marker then.
    """

    def __init__(self, library: ctypes.CDLL) -> None:
        self._proc_pidinfo = library.proc_pidinfo
        self._proc_pidinfo.argtypes = (
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_uint64,
            ctypes.c_void_p,
            ctypes.c_int,
        )
        self._proc_pidinfo.restype = ctypes.c_int

    def bsd_info(self, pid: int) -> Optional[_BsdInfo]:
        info = _ProcBsdInfo()
        size = ctypes.sizeof(info)
        written = self._proc_pidinfo(
            pid, _PROC_PIDTBSDINFO, _FIND_ZOMBIES_TOO, ctypes.byref(info), size
        )
        if written != size or info.pbi_pid != pid:
            return None
        return _BsdInfo(
            start_seconds=info.pbi_start_tvsec,
            start_microseconds=info.pbi_start_tvusec,
            is_zombie=info.pbi_status == _SZOMB,
        )


@functools.cache
def _libproc_api() -> Optional[_LibprocApi]:
    path = ctypes.util.find_library("proc") or "/usr/lib/libproc.dylib"
    try:
        return _Libproc(ctypes.CDLL(path))
    except (OSError, AttributeError):
        return None


def _darwin_state(
    libproc: _LibprocApi,
    pid: int,
    probe: Callable[[int], Optional[bool]] = _kill_probe,
) -> _ProcessState:
    alive = probe(pid)
    if alive is not True:
        return _ProcessState(alive=alive, marker=None)
    info = libproc.bsd_info(pid)
    if info is None:
        return _ProcessState(alive=True, marker=None)
    if info.is_zombie:
        return _GONE
    return _ProcessState(alive=True, marker=f"{info.start_seconds}.{info.start_microseconds:06d}")


# --- Windows ------------------------------------------------------------------------------------

_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_ERROR_ACCESS_DENIED = 5
_ERROR_INVALID_PARAMETER = 87  # what OpenProcess says for a pid no process has
_STILL_ACTIVE = 259


class _Kernel32Api(Protocol):
    def open_process(self, pid: int) -> Optional[int]:
        """A query handle to `pid`, or None (then `last_error` says why)."""

    def last_error(self) -> int:
        """The error code of the last failed call."""

    def get_exit_code(self, handle: int) -> Optional[int]:
        """The exit code, STILL_ACTIVE while it runs; None when it cannot be read."""

    def get_creation_time(self, handle: int) -> Optional[int]:
        """The creation time as a FILETIME integer; None when it cannot be read."""

    def close(self, handle: int) -> None:
        """Close a handle from `open_process`."""


def _windows_state(kernel32: _Kernel32Api, pid: int) -> _ProcessState:
    handle = kernel32.open_process(pid)
    if handle is None:
        error = kernel32.last_error()
        if error == _ERROR_INVALID_PARAMETER:
            return _GONE
        if error == _ERROR_ACCESS_DENIED:
            return _ProcessState(alive=True, marker=None)
        return _UNKNOWN
    try:
        # A handle still opens to a process that has exited while anyone holds a handle to it.
        # (A process that exits with code 259 looks alive here; that errs on the safe side.)
        exit_code = kernel32.get_exit_code(handle)
        if exit_code is not None and exit_code != _STILL_ACTIVE:
            return _GONE
        created = kernel32.get_creation_time(handle)
        return _ProcessState(alive=True, marker=None if created is None else str(created))
    finally:
        kernel32.close(handle)


@functools.cache
def _kernel32_api() -> Optional[_Kernel32Api]:
    if sys.platform == "win32":
        try:
            return _Kernel32()
        except (OSError, AttributeError):
            return None
    else:
        return None


if sys.platform == "win32":
    from ctypes import wintypes

    class _Kernel32:
        """The real `_Kernel32Api`, on kernel32.dll."""

        def __init__(self) -> None:
            kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
            self._open_process = kernel32.OpenProcess
            self._open_process.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
            self._open_process.restype = wintypes.HANDLE
            self._get_exit_code = kernel32.GetExitCodeProcess
            self._get_exit_code.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
            self._get_exit_code.restype = wintypes.BOOL
            self._get_times = kernel32.GetProcessTimes
            self._get_times.argtypes = (wintypes.HANDLE,) + (ctypes.POINTER(wintypes.FILETIME),) * 4
            self._get_times.restype = wintypes.BOOL
            self._close = kernel32.CloseHandle
            self._close.argtypes = (wintypes.HANDLE,)
            self._close.restype = wintypes.BOOL

        def open_process(self, pid: int) -> Optional[int]:
            handle = self._open_process(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
            return int(handle) if handle else None

        def last_error(self) -> int:
            return ctypes.get_last_error()

        def get_exit_code(self, handle: int) -> Optional[int]:
            code = wintypes.DWORD()
            if not self._get_exit_code(handle, ctypes.byref(code)):
                return None
            return int(code.value)

        def get_creation_time(self, handle: int) -> Optional[int]:
            creation, exited, kernel, user = (wintypes.FILETIME() for _ in range(4))
            if not self._get_times(
                handle,
                ctypes.byref(creation),
                ctypes.byref(exited),
                ctypes.byref(kernel),
                ctypes.byref(user),
            ):
                return None
            return (int(creation.dwHighDateTime) << 32) | int(creation.dwLowDateTime)

        def close(self, handle: int) -> None:
            self._close(handle)
