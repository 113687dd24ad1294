"""massugc-logging: report MassUGC job outcomes through ordinary Python logging.

App code logs; a :class:`CloudHandler` in the logging configuration turns
records tagged ``event_type=video_generation`` into MassUGC Cloud API events
and delivers them from its own threads, durably, without slowing the app.
"""

from massugc_logging._exiting import shutdown
from massugc_logging._version import __version__
from massugc_logging.client import UsageClient
from massugc_logging.config import ConfigError, configure
from massugc_logging.handler import CloudHandler, set_api_key
from massugc_logging.jobs import JobReport, report_job
from massugc_logging.keystore import ApiKey, InvalidApiKey, KeyStore
from massugc_logging.outcome import Outcome, OutcomeKind
from massugc_logging.payload import PayloadSettings, build_event
from massugc_logging.pipeline.retry import RetryPolicy

__all__ = [
    "ApiKey",
    "CloudHandler",
    "ConfigError",
    "InvalidApiKey",
    "JobReport",
    "KeyStore",
    "Outcome",
    "OutcomeKind",
    "PayloadSettings",
    "RetryPolicy",
    "UsageClient",
    "__version__",
    "build_event",
    "configure",
    "report_job",
    "set_api_key",
    "shutdown",
]
