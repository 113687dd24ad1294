"""Whether a spool owner's process is gone: for real on Linux, through fakes for Windows, macOS."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from fakeapi import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from massugc_logging.pipeline import processes
from massugc_logging.pipeline.processes import process_is_gone, process_start_marker

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the real /proc of a Linux kernel"
)

NOBODY = 65534


@contextmanager
def sleeping_child() -> Iterator[subprocess.Popen[bytes]]:
    """A child process that runs until killed; always killed and reaped on exit."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield child
    finally:
        child.kill()
        child.wait(timeout=30)


def pid_nobody_has() -> int:
    """A pid above the kernel's pid_max, which no process can have."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def evaluate_as_another_user_than_pid_1(expression: str) -> str:
    """Print `expression` from a child that does not own pid 1 (root drops to nobody first)."""
    script = "\n".join(
        [
            "import os",
            # Imported while still privileged: the interpreter's own files may be root-only.
            "from massugc_logging.pipeline import processes",
            "if os.geteuid() == 0:",
            f"    os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})",
            "assert os.stat('/proc/1').st_uid != os.geteuid(), 'pid 1 is ours: no foreign pid'",
            f"print({expression})",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def stat_line(comm: bytes, state: bytes, start_ticks: int, tail: tuple[int, ...] = ()) -> bytes:
    """A ``/proc/<pid>/stat`` line: pid, (comm), state, fields 4-21, starttime, then `tail`."""
    fields_4_to_21 = [str(n).encode() for n in range(4, 22)]
    after_comm = [state, *fields_4_to_21, str(start_ticks).encode()]
    after_comm += [str(n).encode() for n in tail]
    return b"4242 (" + comm + b") " + b" ".join(after_comm) + b"\n"


# --- Linux, for real ------------------------------------------------------------------------------


@linux_only
def test_own_marker_is_known_and_stable() -> None:
    """This process has a marker, and it does not change between calls."""
    first = process_start_marker()
    assert first is not None
    assert process_start_marker() == first
    assert process_start_marker(os.getpid()) == first


@linux_only
def test_marker_is_short_ascii_without_pipe() -> None:
    """A marker fits in a ``host|pid|marker|token`` tag: short printable ASCII, no ``|``."""
    marker = process_start_marker()
    assert marker is not None
    assert marker.isascii()
    assert marker.isprintable()
    assert "|" not in marker
    assert len(marker) <= 40


@linux_only
def test_marker_names_the_boot() -> None:
    """The marker carries this boot's id, so a start tick from an earlier boot cannot match."""
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    marker = process_start_marker()
    assert marker is not None
    assert marker.endswith("@" + boot_id[:16])


@linux_only
def test_running_child_is_not_gone() -> None:
    """A child that is still running, checked with its own marker, is not gone."""
    with sleeping_child() as child:
        marker = process_start_marker(child.pid)
        assert marker is not None
        assert process_is_gone(child.pid, marker) is False


@linux_only
def test_killed_and_reaped_child_is_gone() -> None:
    """Once a child is killed and reaped, its pid and marker say gone."""
    with sleeping_child() as child:
        marker = process_start_marker(child.pid)
        assert marker is not None
        child.kill()
        child.wait(timeout=30)
        assert process_is_gone(child.pid, marker) is True


@linux_only
def test_killed_unreaped_child_is_gone() -> None:
    """A killed child that nobody has reaped yet (a zombie) is already gone."""
    with sleeping_child() as child:
        marker = process_start_marker(child.pid)
        assert marker is not None
        child.kill()
        assert wait_until(lambda: process_is_gone(child.pid, marker))
        assert child.returncode is None  # still a zombie: the pid cannot have been reused


@linux_only
def test_live_pid_with_another_marker_is_gone() -> None:
    """A live pid whose process started at another time (a reused pid) means the owner is gone."""
    with sleeping_child() as child:
        marker = process_start_marker(child.pid)
        assert marker is not None
        ticks, boot = marker.split("@")
        earlier_owner = f"{int(ticks) - 1}@{boot}"
        assert process_is_gone(child.pid, earlier_owner) is True


@linux_only
def test_pid_nobody_has_is_gone() -> None:
    """A pid that no process has is gone, whatever the marker."""
    assert process_is_gone(pid_nobody_has(), "12345@0123456789abcdef") is True


@linux_only
def test_pid_nobody_has_has_no_marker() -> None:
    """A pid that no process has has no start marker."""
    assert process_start_marker(pid_nobody_has()) is None


@linux_only
def test_existing_pid_without_marker_is_not_gone() -> None:
    """Without a marker, a pid that exists cannot be told from its owner: not gone."""
    assert process_is_gone(os.getpid(), None) is False


@linux_only
def test_other_users_process_with_its_marker_is_not_gone() -> None:
    """Pid 1, seen by a user that does not own it, is not gone under its own marker."""
    marker = process_start_marker(1)
    assert marker is not None
    answer = evaluate_as_another_user_than_pid_1(f"processes.process_is_gone(1, {marker!r})")
    assert answer == "False"


@linux_only
def test_pid_we_may_not_signal_counts_as_alive() -> None:
    """Signal 0 refused with EPERM means the process exists."""
    assert evaluate_as_another_user_than_pid_1("processes._kill_probe(1)") == "True"


@linux_only
def test_pid_hidden_from_proc_but_alive_is_not_gone(tmp_path: Path) -> None:
    """A live pid missing from /proc (as under hidepid) is asked of the kernel, and is alive."""
    state = processes._procfs_state(os.getpid(), proc_root=tmp_path)
    assert state == processes._ProcessState(alive=True, marker=None)
    assert processes._is_gone(state, "12345@0123456789abcdef") is False


@linux_only
def test_out_of_range_pid_does_not_raise() -> None:
    """A pid too large for the kernel is answered, not raised: no marker, not known gone."""
    assert process_start_marker(2**80) is None
    assert process_is_gone(2**80, "1@0123456789abcdef") is False


def test_marker_is_none_when_probing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error inside the probe gives no marker instead of an exception."""

    def broken(pid: int) -> processes._ProcessState:
        raise RuntimeError("probe broke")

    monkeypatch.setattr(processes, "_state_of", broken)
    assert process_start_marker(os.getpid()) is None


def test_not_gone_when_probing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error inside the probe answers "not gone" instead of raising."""

    def broken(pid: int) -> processes._ProcessState:
        raise RuntimeError("probe broke")

    monkeypatch.setattr(processes, "_state_of", broken)
    assert process_is_gone(os.getpid(), "1@0123456789abcdef") is False


# --- Parsing /proc/<pid>/stat ---------------------------------------------------------------------


def test_stat_parser_reads_past_parentheses_and_spaces_in_comm() -> None:
    """A comm like ``a) (b c`` does not shift the fields after it."""
    line = stat_line(b"a) (b c", b"S", 987654, tail=(0, 1, 2))
    assert processes._parse_proc_stat(line) == processes._ProcStat("S", 987654)


@settings(database=None, deadline=None, max_examples=300)
@given(
    comm=st.binary(max_size=64),
    state=st.sampled_from([b"R", b"S", b"D", b"Z", b"T", b"t", b"X", b"I"]),
    start_ticks=st.integers(min_value=0, max_value=2**64),
    tail=st.lists(st.integers(min_value=-(2**63), max_value=2**64), max_size=32).map(tuple),
)
def test_stat_parser_finds_state_and_starttime_for_any_comm(
    comm: bytes, state: bytes, start_ticks: int, tail: tuple[int, ...]
) -> None:
    """Whatever bytes the comm holds, the state and field 22 come out right."""
    parsed = processes._parse_proc_stat(stat_line(comm, state, start_ticks, tail))
    assert parsed == processes._ProcStat(state.decode(), start_ticks)


def test_stat_parser_rejects_a_truncated_line() -> None:
    """A line that ends before field 22 gives None, not a wrong number."""
    assert processes._parse_proc_stat(b"4242 (python) S 1 2 3 4\n") is None


def test_stat_parser_rejects_a_line_without_comm() -> None:
    """A line with no closing parenthesis gives None."""
    assert processes._parse_proc_stat(b" ".join([b"4242", b"S", *[b"7"] * 30])) is None


# --- Windows, through a fake kernel32 -------------------------------------------------------------

INVALID_PARAMETER = 87
ACCESS_DENIED = 5
STILL_ACTIVE = 259
CREATED = 133_500_000_000_000_000  # a FILETIME: 100 ns ticks since 1601


@dataclass
class FakeKernel32:
    """kernel32 as seen by one pid: either a handle opens, or `open_error` is the last error."""

    open_error: Optional[int] = None
    exit_code: Optional[int] = STILL_ACTIVE
    creation_time: Optional[int] = CREATED
    exit_code_raises: bool = False
    opened: list[int] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)

    def open_process(self, pid: int) -> Optional[int]:
        if self.open_error is not None:
            return None
        handle = 0x100 + len(self.opened)
        self.opened.append(handle)
        return handle

    def last_error(self) -> int:
        assert self.open_error is not None
        return self.open_error

    def get_exit_code(self, handle: int) -> Optional[int]:
        assert handle in self.opened and handle not in self.closed
        if self.exit_code_raises:
            raise OSError("GetExitCodeProcess blew up")
        return self.exit_code

    def get_creation_time(self, handle: int) -> Optional[int]:
        assert handle in self.opened and handle not in self.closed
        return self.creation_time

    def close(self, handle: int) -> None:
        self.closed.append(handle)


def windows_is_gone(kernel32: FakeKernel32, marker: Optional[str]) -> bool:
    return processes._is_gone(processes._windows_state(kernel32, 4242), marker)


def test_windows_pid_nobody_has_is_gone() -> None:
    """OpenProcess failing with ERROR_INVALID_PARAMETER means no process has the pid."""
    assert windows_is_gone(FakeKernel32(open_error=INVALID_PARAMETER), str(CREATED)) is True


def test_windows_access_denied_counts_as_alive() -> None:
    """OpenProcess failing with ERROR_ACCESS_DENIED means the process exists: not gone."""
    state = processes._windows_state(FakeKernel32(open_error=ACCESS_DENIED), 4242)
    assert state == processes._ProcessState(alive=True, marker=None)
    assert processes._is_gone(state, str(CREATED)) is False


def test_windows_other_open_error_is_not_gone() -> None:
    """Any other OpenProcess error cannot tell, so the owner is not declared gone."""
    assert windows_is_gone(FakeKernel32(open_error=1450), str(CREATED)) is False


def test_windows_exited_process_with_open_handle_is_gone() -> None:
    """A handle that still opens to a process with an exit code means it has exited."""
    assert windows_is_gone(FakeKernel32(exit_code=1), str(CREATED)) is True


def test_windows_live_process_with_same_creation_time_is_not_gone() -> None:
    """A running process created when the owner was is the owner."""
    assert windows_is_gone(FakeKernel32(), str(CREATED)) is False


def test_windows_live_process_with_other_creation_time_is_gone() -> None:
    """A running process created at another time has reused the owner's pid."""
    assert windows_is_gone(FakeKernel32(creation_time=CREATED + 1), str(CREATED)) is True


def test_windows_marker_is_the_creation_filetime() -> None:
    """The marker is the creation FILETIME as a decimal integer."""
    state = processes._windows_state(FakeKernel32(), 4242)
    assert state == processes._ProcessState(alive=True, marker=str(CREATED))


@pytest.mark.parametrize(
    "kernel32",
    [
        FakeKernel32(),
        FakeKernel32(exit_code=0),
        FakeKernel32(exit_code=None),
        FakeKernel32(creation_time=None),
        FakeKernel32(exit_code_raises=True),
    ],
    ids=["alive", "exited", "exit-code-unreadable", "times-unreadable", "exit-code-raises"],
)
def test_windows_handle_is_always_closed(kernel32: FakeKernel32) -> None:
    """Every handle OpenProcess gives is closed, whatever happens after."""
    with suppress(OSError):
        processes._windows_state(kernel32, 4242)
    assert kernel32.opened == [0x100]
    assert kernel32.closed == kernel32.opened


@contextmanager
def pretend_platform(
    monkeypatch: pytest.MonkeyPatch, platform: str, **fakes: object
) -> Iterator[None]:
    """Run the public functions as on `platform`, with the OS seams replaced by `fakes`."""
    with monkeypatch.context() as patch:
        for name, fake in fakes.items():
            patch.setattr(processes, name, fake)
        patch.setattr(sys, "platform", platform)
        yield


def test_windows_goes_through_kernel32_and_never_os_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Windows the answer comes from kernel32; os.kill, which would terminate, is not called."""
    kills: list[int] = []
    kernel32 = FakeKernel32(creation_time=CREATED + 1)
    with pretend_platform(monkeypatch, "win32", _kernel32_api=lambda: kernel32):
        monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append(pid))
        gone = process_is_gone(4242, str(CREATED))
    assert gone is True
    assert kills == []


def test_windows_pid_zero_is_not_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pid 0 is the Idle process, which OpenProcess refuses as if absent: never called gone."""
    kernel32 = FakeKernel32(open_error=INVALID_PARAMETER)
    with pretend_platform(monkeypatch, "win32", _kernel32_api=lambda: kernel32):
        gone = process_is_gone(0, str(CREATED))
    assert gone is False


# --- macOS, through a fake libproc ----------------------------------------------------------------


@dataclass
class FakeLibproc:
    info: Optional[processes._BsdInfo]

    def bsd_info(self, pid: int) -> Optional[processes._BsdInfo]:
        return self.info


STARTED = processes._BsdInfo(start_seconds=1_700_000_000, start_microseconds=42, is_zombie=False)
STARTED_MARKER = "1700000000.000042"


def darwin_state(libproc: FakeLibproc, exists: Optional[bool] = True) -> processes._ProcessState:
    return processes._darwin_state(libproc, 4242, probe=lambda pid: exists)


def test_darwin_pid_nobody_has_is_gone() -> None:
    """Signal 0 answering ESRCH means no process has the pid."""
    state = darwin_state(FakeLibproc(STARTED), exists=False)
    assert processes._is_gone(state, STARTED_MARKER) is True


def test_darwin_marker_is_start_seconds_and_microseconds() -> None:
    """The marker is pbi_start_tvsec, a dot, and pbi_start_tvusec padded to six digits."""
    state = darwin_state(FakeLibproc(STARTED))
    assert state == processes._ProcessState(alive=True, marker=STARTED_MARKER)


def test_darwin_same_start_is_not_gone() -> None:
    """A live process that started when the owner did is the owner."""
    assert processes._is_gone(darwin_state(FakeLibproc(STARTED)), STARTED_MARKER) is False


def test_darwin_other_start_is_gone() -> None:
    """A live process that started at another time has reused the owner's pid."""
    later = STARTED._replace(start_microseconds=43)
    assert processes._is_gone(darwin_state(FakeLibproc(later)), STARTED_MARKER) is True


def test_darwin_zombie_is_gone() -> None:
    """A process libproc reports as SZOMB has exited, though signal 0 still finds it."""
    zombie = STARTED._replace(is_zombie=True)
    assert processes._is_gone(darwin_state(FakeLibproc(zombie)), STARTED_MARKER) is True


def test_darwin_unreadable_info_is_not_gone() -> None:
    """A live process whose info libproc will not give (another user's) is not declared gone."""
    state = darwin_state(FakeLibproc(None))
    assert state == processes._ProcessState(alive=True, marker=None)
    assert processes._is_gone(state, STARTED_MARKER) is False


def test_darwin_struct_matches_proc_info_header() -> None:
    """struct proc_bsdinfo has the <sys/proc_info.h> layout: 136 bytes, start time at 120."""
    bsdinfo = processes._ProcBsdInfo
    assert ctypes.sizeof(bsdinfo) == 136
    assert bsdinfo.pbi_status.offset == 4
    assert bsdinfo.pbi_pid.offset == 12
    assert bsdinfo.pbi_comm.offset == 48
    assert bsdinfo.pbi_nice.offset == 116
    assert bsdinfo.pbi_start_tvsec.offset == 120
    assert bsdinfo.pbi_start_tvusec.offset == 128


@pytest.mark.skipif(os.name != "posix", reason="probes this process with signal 0")
def test_darwin_goes_through_libproc(monkeypatch: pytest.MonkeyPatch) -> None:
    """On macOS the marker of a live pid comes from libproc's start time."""
    with pretend_platform(monkeypatch, "darwin", _libproc_api=lambda: FakeLibproc(STARTED)):
        marker = process_start_marker(os.getpid())
    assert marker == STARTED_MARKER
