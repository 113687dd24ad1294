"""A logging.Handler base for handlers whose ``emit`` is thread-safe by itself."""

from __future__ import annotations

import logging
from typing import Any


class UnlockedHandler(logging.Handler):
    """Filter and emit without taking the handler's lock.

    ``logging.Handler.handle`` serializes every record through one lock; a handler
    whose ``emit`` only touches thread-safe structures (a queue, its own short
    lock) does not need it, and skipping it keeps the app thread's cost flat.
    """

    def handle(self, record: logging.LogRecord) -> Any:
        """Apply the filters, then emit (the record a filter returned, on 3.12+)."""
        rv = self.filter(record)
        if rv:
            self.emit(rv if isinstance(rv, logging.LogRecord) else record)
        return rv
