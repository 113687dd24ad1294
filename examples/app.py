"""Ten lines of app code: logging.yaml decides where job outcomes go."""
import logging
import uuid

from massugc_logging import configure, report_job

configure("logging.yaml")  # MASSUGC_ENV, else production when frozen, else development
log = logging.getLogger("massugc.jobs")
job = {"job_name": "Spring Launch", "product": "Glow Serum", "persona": "Tech Reviewer",
       "workflow_type": "avatar"}
with report_job(log, {**job, "run_id": str(uuid.uuid4())}) as outcome:
    outcome.succeeded("renders/spring-launch.mp4")
try:
    with report_job(log, {**job, "run_id": str(uuid.uuid4())}):  # a failure by exception
        raise RuntimeError("ffmpeg exited with code 1: moov atom not found")
except RuntimeError:
    pass  # reported once, with the exception's text; the app carries on
