"""A tiny app run in a subprocess by the process-level tests.

It logs job events through a CloudHandler and prints one line per emit that
returned (``emitted <i> <monotonic>``), so the parent knows exactly which
events the app handed over and when.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from massugc_logging import CloudHandler

KEY = "massugc_" + "Ab3_dEf-9" * 3 + "Zq1x9"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--prefix", default="run")
    parser.add_argument("--shutdown-timeout", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--forever", action="store_true", help="keep emitting until killed")
    parser.add_argument("--flush", type=float, default=0.0, help="flush(timeout) before exit")
    parser.add_argument("--fork-child-events", type=int, default=0)
    parser.add_argument("--fast-retry", action="store_true")
    args = parser.parse_args()

    retry = {"backoff_base": 0.05, "backoff_cap": 0.2} if args.fast_retry else None
    handler = CloudHandler(api_url=args.url, api_key=KEY, spool_path=args.spool,
                           shutdown_timeout=args.shutdown_timeout, timeout=(1, 5), retry=retry)
    log = logging.getLogger("massugc.jobs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    logging.getLogger("massugc_logging").addHandler(logging.StreamHandler(sys.stderr))

    i = 0
    while args.forever or i < args.events:
        log.error("job failed", extra={"event_type": "video_generation",
                                       "run_id": f"{args.prefix}-{i}", "error_message": "x"})
        print(f"emitted {i} {time.monotonic():.6f}", flush=True)
        i += 1
        if args.interval:
            time.sleep(args.interval)

    if args.fork_child_events:
        pid = os.fork()
        if pid == 0:
            for j in range(args.fork_child_events):
                log.error("job failed", extra={"event_type": "video_generation",
                                               "run_id": f"child-{j}", "error_message": "x"})
            ok = handler.force_flush(10)
            print(f"child flushed {ok}", flush=True)
            if not ok:  # leave a trace of every thread for whoever reads the test failure
                import faulthandler
                print(f"child stats {handler.stats()}", file=sys.stderr, flush=True)
                faulthandler.dump_traceback(all_threads=True)
            logging.shutdown()
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print(f"child exit {os.waitstatus_to_exitcode(status)}", flush=True)

    if args.flush:
        flushed = handler.force_flush(args.flush)
        print(f"flushed {flushed}", flush=True)
        if not flushed:
            print(f"stats {handler.stats()}", file=sys.stderr, flush=True)
    print(f"done {time.monotonic():.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
