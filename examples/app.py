"""Ten lines of app code: logging.yaml decides where job outcomes go."""
import logging
import uuid

from massugc_logging import configure

configure("logging.yaml")  # environment from MASSUGC_ENV; development by default
log = logging.getLogger("massugc.jobs")
job = {"event_type": "video_generation", "job_name": "Spring Launch", "product": "Glow Serum",
       "persona": "Tech Reviewer", "run_id": str(uuid.uuid4()), "workflow_type": "avatar"}
log.info("job succeeded", extra={**job, "output_path": "renders/spring-launch.mp4"})
try:
    raise RuntimeError("ffmpeg exited with code 1: moov atom not found")
except RuntimeError:
    log.exception("job failed", extra={**job, "run_id": str(uuid.uuid4())})
