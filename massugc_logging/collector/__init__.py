"""A local stand-in for the MassUGC Cloud API, for development, demos and tests.

Not a production server. It speaks the wire contract of
:mod:`massugc_logging.contract` on the same endpoints, answers with the same
status codes and error bodies, drops duplicates by ``Idempotency-Key``, keeps
events in SQLite, groups failures by cause and shows them on a page. It does
not check keys beyond their shape, and has no TLS, no rate limits and no
multi-process story.

Its parts: :mod:`.store` (the SQLite table and its queries), :mod:`.core`
(:class:`Collector`: ingest, stats, groups, lifecycle), :mod:`.server` (HTTP),
:mod:`.query` (what a read request asks for) and :mod:`.page` (the HTML).
"""

from massugc_logging.collector.core import Collector, Ingested, serve_forever
from massugc_logging.collector.query import DEFAULT_WINDOW_S
from massugc_logging.collector.store import DatabaseUnusable, EventFilter, NotACollectorDatabase

__all__ = ["DEFAULT_WINDOW_S", "Collector", "DatabaseUnusable", "EventFilter", "Ingested",
           "NotACollectorDatabase", "serve_forever"]
