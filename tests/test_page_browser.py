"""The collector's page in a real browser: headless Chromium at 1280 px and at a phone's 390 px.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it when it is
missing), driven over its DevTools pipe by ``tools/chromium.py``. Without it
these tests skip and say why.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from collector_events import job_event, post_event

from massugc_logging.collector import Collector

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from chromium import Browser, BrowserError, find_chromium

NOW = 1764666000.0
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium: install Debian's 'chromium' package (.ci/run does) or set CHROMIUM",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        launched = Browser.launch()
    except BrowserError as exc:
        pytest.skip(f"Chromium could not be started: {exc}")
    with launched:
        yield launched


@pytest.fixture
def collector() -> Iterator[Collector]:
    # The clock sits just after the events' time, so they are all "now".
    with Collector(clock=lambda: NOW + 600) as running:
        for i in range(7):
            text = f"TimeoutError: avatar render timed out after {300 + i} s on node {i}"
            post_event(running, job_event(f"render-{i}", text, at=NOW))
        for i in range(3):
            text = f"Upload to https://storage.googleapis.com/b/x{i}.mp4?[REDACTED] failed: 403"
            post_event(running, job_event(f"upload-{i}", text, at=NOW, workflow="massugc"))
        post_event(running, job_event("hostile", HOSTILE, at=NOW, workflow=HOSTILE))
        post_event(running, job_event("fine", at=NOW))
        yield running
        running.close()


def test_wide_page_shows_the_groups_with_their_counts(browser: Browser,
                                                      collector: Collector) -> None:
    """At 1280 px: the rates, then the groups, most active first, each with its count."""
    page = browser.new_page(1280, 900)
    page.goto(collector.url + "/")
    groups = page.evaluate(
        "[...document.querySelectorAll('#groups details.group')].map("
        "g => g.querySelector('.count').textContent)")
    assert groups[:2] == ["7\u00d7", "3\u00d7"]
    assert page.evaluate("document.querySelector('.rates').innerText").count("%") >= 2
    # A group opens to its example's full text.
    page.evaluate("document.querySelector('#groups details').open = true")
    example = page.evaluate("document.querySelector('#groups details pre').innerText")
    assert example.startswith("TimeoutError: avatar render timed out after 306 s on node 6")
    assert page.evaluate("document.querySelector('#groups details pre').offsetHeight") > 0


def test_phone_width_has_no_horizontal_scrolling(browser: Browser, collector: Collector) -> None:
    """At 390 px, with the viewport meta honoured, nothing runs off the right edge."""
    page = browser.new_page(390, 844, mobile=True)
    page.goto(collector.url + "/")
    page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
    width = page.evaluate("[window.innerWidth, document.documentElement.scrollWidth, "
                          "document.body.scrollWidth]")
    assert width[0] == 390
    assert max(width[1:]) <= 390, width


def test_hostile_event_text_is_shown_and_never_run(browser: Browser,
                                                   collector: Collector) -> None:
    """Markup in an event is text on the page: no script runs, no image loads."""
    page = browser.new_page(1280, 900)
    page.before_each_document(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.__violations.push(e.violatedDirective));")
    page.goto(collector.url + "/")
    assert page.evaluate("window.__pwned === undefined")
    assert page.evaluate("document.images.length") == 0
    assert HOSTILE in page.evaluate("document.body.innerText")
    # The page's own style and script run under its CSP; nothing else tried to.
    page.wait_until("document.getElementById('live').textContent.length > 0")
    assert page.evaluate("window.__violations") == []


def test_an_event_posted_after_loading_appears_without_a_reload(
        browser: Browser, collector: Collector) -> None:
    """The page's script fetches what is new; the document itself is never reloaded."""
    page = browser.new_page(1280, 900)
    page.goto(collector.url + "/")
    page.evaluate("window.__loaded_once = true")
    assert "late-arrival" not in page.evaluate("document.body.innerText")
    post_event(collector, job_event("late-arrival", "ffmpeg exited: moov atom not found",
                                    at=NOW + 599))
    page.wait_until("document.body.innerText.includes('late-arrival')", timeout=20)
    assert page.evaluate("window.__loaded_once === true")
