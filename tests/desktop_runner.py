"""The MassUGC desktop backend's job runner, migrated as docs/migrating-the-desktop-app.md
says, run in a subprocess by the tests.

Like the app, it configures logging from a logging.yaml, runs each job on a thread pool
(``job_executor.submit(_runner)``) and reports through ``report_job``: an early return on an
invalid configuration, a failure without an exception, a success, and a failure by
exception. A ``hang`` job blocks until the process is killed, as a render that never ends.
The main thread then waits in short naps, as a Flask server's loop does.

    python desktop_runner.py --config logging.yaml ok:run-1 fail:run-2 raise:run-3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import logging
import sys
import threading
import time
from typing import Any

from massugc_logging import configure, report_job

log = logging.getLogger("massugc.jobs")
_forever = threading.Event()


def job_fields(job: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The job's fields as the app sent them in job_data (the guide's helper)."""
    massugc_settings = job.get("massugc_settings")
    random_settings = job.get("random_video_settings")
    return {
        "job_name": job.get("job_name", ""), "product": job.get("product", ""),
        "persona": job.get("persona", ""), "setting": job.get("setting", ""),
        "emotion": job.get("emotion", ""), "hook": job.get("hook", ""),
        "brand_name": job.get("brand_name", ""), "language": job.get("language", "English"),
        "useExactScript": job.get("useExactScript", False),
        "script_generation_type": "exact" if job.get("useExactScript", False)
        else "ai_generated",
        "run_id": run_id,
        "workflow_type": "massugc" if massugc_settings
        else "randomized" if random_settings else "avatar",
    }


def process(job: dict[str, Any]) -> tuple[bool, str]:
    """Stands in for the app's processors: (success, output path or error text)."""
    behaviour = job["behaviour"]
    if behaviour == "fail":
        return False, "Avatar render failed: lipsync model returned no frames"
    if behaviour == "raise":
        raise RuntimeError("ffmpeg exited with code 1: moov atom not found")
    if behaviour == "hang":
        print(f"running {job['run_id']}", flush=True)
        _forever.wait()
    return True, f"/Users/alice/.zyra-video-agent/output/2026-12-06/Glow/{job['job_name']}.mp4"


def runner(job: dict[str, Any]) -> None:
    """The app's _runner, with one report_job block instead of three hand-built payloads."""
    run_id = job["run_id"]
    with report_job(log, job_fields(job, run_id)) as outcome:
        if job["behaviour"] == "invalid":
            print(f"[JOB] {run_id}: Configuration validation failed", flush=True)
            return  # the app's early return: reported as a failure, never billed
        success, output_path = process(job)
        if not success:
            outcome.failed(output_path)
            return
        outcome.succeeded(output_path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--wait", action="store_true",
                        help="after the jobs, wait in short naps until stopped")
    parser.add_argument("jobs", nargs="*", help="behaviour:run_id, behaviour one of ok, fail, "
                        "raise, invalid, hang")
    args = parser.parse_args()
    configure(args.config)
    logging.getLogger("massugc_logging").addHandler(logging.StreamHandler(sys.stderr))
    job_executor = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    futures = []
    for spec in args.jobs:
        behaviour, run_id = spec.split(":", 1)
        job = {"job_name": f"Campaign {run_id}", "product": "Glow Serum",
               "persona": "Tech Reviewer", "behaviour": behaviour, "run_id": run_id}
        futures.append(job_executor.submit(runner, job))
    if not args.wait:
        for future in futures:
            with contextlib.suppress(RuntimeError):  # reported once; the app carries on
                future.result()
        print("ready", flush=True)
    while args.wait:
        time.sleep(0.05)
    job_executor.shutdown(wait=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
