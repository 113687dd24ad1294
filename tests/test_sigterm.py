"""flush_on_sigterm: the desktop shell stops the backend with SIGTERM; nothing is lost."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fakeapi import FakeApi

from massugc_logging import CloudHandler

KEY = "massugc_" + "Ab3_dEf-9" * 3 + "Zq1x9"

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")


def start_app(api_url: str, spool: Path, *, app_handler: bool = False) -> subprocess.Popen[str]:
    code = f"""
        import faulthandler, logging, signal, sys, time
        # Should the child outlive its bounded exit, its threads' stacks say where it hung.
        faulthandler.dump_traceback_later(20, exit=True)
        if {app_handler!r}:
            def mine(signum, frame):
                print("app handler ran", flush=True)
                sys.exit(7)
            signal.signal(signal.SIGTERM, mine)
        from massugc_logging import CloudHandler
        handler = CloudHandler(api_url={api_url!r}, api_key={KEY!r}, spool_path={str(spool)!r},
                               flush_on_sigterm=True, shutdown_timeout=3)
        log = logging.getLogger("massugc.jobs")
        log.addHandler(handler)
        log.propagate = False
        for i in range(300):
            log.error("job failed", extra={{"event_type": "video_generation",
                                           "run_id": f"r{{i}}", "error_message": "x"}})
        print("emitted", flush=True)
        # Short naps, as an app's main loop would take: CPython runs a Python signal
        # handler only between bytecodes, so a signal landing after print() returns and
        # before the sleep begins would otherwise wait for the whole sleep. (So these
        # tests no longer see a signal held up on one of the handler's threads; the
        # mask tests below do.)
        for _ in range(600):
            time.sleep(0.1)
    """
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def test_events_logged_just_before_sigterm_are_delivered_in_that_run_or_the_next(
        api: FakeApi, tmp_path: Path) -> None:
    """SIGTERM a moment after a burst of 300 events: the process dies of SIGTERM as usual,
    and every one of them arrives, in that run or from the spool in the next."""
    spool = tmp_path / "spool.sqlite3"
    proc = start_app(api.url, spool)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "emitted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM, err
    handler = CloudHandler(api_url=api.url, api_key=KEY, spool_path=spool)
    assert handler.force_flush(20)
    handler.close()
    runs = {c.json["job_data"]["run_id"] for c in api.captured}
    assert runs == {f"r{i}" for i in range(300)}


def test_an_apps_own_sigterm_handler_is_never_replaced(api: FakeApi, tmp_path: Path) -> None:
    """With a SIGTERM handler of the app's, flush_on_sigterm leaves it in place."""
    proc = start_app(api.url, tmp_path / "spool.sqlite3", app_handler=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "emitted"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert "app handler ran" in out, err
    assert proc.returncode == 7, err


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux's /proc")
def test_the_handlers_threads_leave_signals_to_the_main_thread(api: FakeApi,
                                                               tmp_path: Path) -> None:
    """A process-wide SIGTERM must reach the main thread: if the kernel could hand it to
    one of the handler's threads, a main thread asleep in time.sleep would never run the
    Python handler (flush_on_sigterm's, or the app's)."""
    import threading

    handler = CloudHandler(api_url=api.url, api_key=KEY, spool_path=tmp_path / "s.db")
    assert handler.force_flush(10)  # the delivery threads start with the pipeline's start
    ours = [t for t in threading.enumerate() if t.name.startswith("massugc-logging")]
    assert len(ours) >= 2
    for thread in ours:
        status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
        blocked = int(next(line for line in status.splitlines()
                           if line.startswith("SigBlk:")).split()[1], 16)
        assert blocked & (1 << (signal.SIGTERM - 1)), thread.name
    handler.close()


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_starting_the_handler_leaves_the_callers_signal_mask_as_it_was(
        api: FakeApi, tmp_path: Path) -> None:
    """The threads are born with the app's signals blocked; the thread that made the
    handler keeps receiving them."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    handler = CloudHandler(api_url=api.url, api_key=KEY, spool_path=tmp_path / "s.db")
    try:
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
        assert signal.SIGTERM not in before
    finally:
        handler.close()


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_thread_is_born_with_the_apps_signals_blocked() -> None:
    """Blocked before its first instruction, not by it: a signal cannot land on the thread
    in the moment before it runs (on a loaded machine that moment can be long)."""
    import threading

    from massugc_logging.pipeline._signals import start_leaving_signals_to_the_main_thread

    first_mask: list[set[int]] = []
    thread = threading.Thread(
        target=lambda: first_mask.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, []))))
    start_leaving_signals_to_the_main_thread(thread)
    thread.join(5)
    assert {signal.SIGTERM, signal.SIGINT} <= first_mask[0]
