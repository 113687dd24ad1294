"""A pytest plugin: the ``massugc_events`` fixture, registered by the package's entry point."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from massugc_logging.testing import CapturedEvents, capture_events


@pytest.fixture
def massugc_events() -> Iterator[CapturedEvents]:
    """The events the code under test reports, as they would be sent."""
    with capture_events() as events:
        yield events
