"""massugc-logging: report MassUGC job outcomes through ordinary Python logging."""

from massugc_logging._version import __version__

__all__ = ["__version__"]
