"""massugc-logging: report MassUGC job outcomes through ordinary Python logging.

App code logs; a :class:`CloudHandler` in the logging configuration turns
records tagged ``event_type=video_generation`` into MassUGC Cloud API events
and delivers them from its own threads, durably, without slowing the app.

The names below are loaded on first use (PEP 562): a desktop app pays at start
only for what its start uses, and the HTTP stack, the redaction rules and the
failure categories load on the handler's own threads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from massugc_logging._version import __version__

if TYPE_CHECKING:
    from massugc_logging._exiting import shutdown
    from massugc_logging.client import UsageClient
    from massugc_logging.config import ConfigError, configure
    from massugc_logging.handler import CloudHandler, set_api_key
    from massugc_logging.jobs import JobReport, report_job
    from massugc_logging.keystore import ApiKey, InvalidApiKey, KeyStore
    from massugc_logging.outcome import Outcome, OutcomeKind
    from massugc_logging.payload import PayloadSettings, build_event
    from massugc_logging.pipeline.retry import RetryPolicy

#: Public name -> the module that defines it.
_WHERE = {
    "shutdown": "massugc_logging._exiting",
    "UsageClient": "massugc_logging.client",
    "ConfigError": "massugc_logging.config",
    "configure": "massugc_logging.config",
    "CloudHandler": "massugc_logging.handler",
    "set_api_key": "massugc_logging.handler",
    "JobReport": "massugc_logging.jobs",
    "report_job": "massugc_logging.jobs",
    "ApiKey": "massugc_logging.keystore",
    "InvalidApiKey": "massugc_logging.keystore",
    "KeyStore": "massugc_logging.keystore",
    "Outcome": "massugc_logging.outcome",
    "OutcomeKind": "massugc_logging.outcome",
    "PayloadSettings": "massugc_logging.payload",
    "build_event": "massugc_logging.payload",
    "RetryPolicy": "massugc_logging.pipeline.retry",
}


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'massugc_logging' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


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
