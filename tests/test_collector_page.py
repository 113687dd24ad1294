"""The collector's groups, windowed stats and page over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from collector_events import job_event as event
from collector_events import post_event as post

from massugc_logging.collector import Collector
from massugc_logging.collector.store import format_time

NOW = 1764666000.0  # 2025-12-02T09:00:00Z


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(clock=lambda: NOW) as running:
        # Two hours ago: three render timeouts; in the last hour: two more, an upload 403
        # twice in two workflows, and successes.
        for i, at in enumerate((NOW - 7200, NOW - 7100, NOW - 7000, NOW - 600, NOW - 60)):
            post(running, event(f"render-{i}", f"TimeoutError: avatar render timed out after "
                                               f"{290 + i} s (node {i})", at=at))
        for i, workflow in enumerate(("massugc", "randomized")):
            post(running, event(f"upload-{i}", "Upload to https://storage.googleapis.com/b/"
                                               f"c{i}.mp4?[REDACTED] failed: 403 Forbidden",
                                at=NOW - 300 + i, workflow=workflow))
        for i in range(3):
            post(running, event(f"ok-{i}", at=NOW - 100 + i))
        yield running
        running.close()


def test_groups_endpoint_lists_distinct_problems_newest_activity_first(
        collector: Collector) -> None:
    report = requests.get(collector.url + "/api/groups", timeout=10).json()
    assert report["count"] == 2 and report["window_s"] == 3600
    renders, uploads = report["groups"]
    assert (renders["count"], renders["recent_count"]) == (5, 2)
    assert renders["category"] == "video_generation"
    assert renders["exception_type"] == "TimeoutError"
    assert renders["first_seen"] == format_time(NOW - 7200)
    assert renders["last_seen"] == format_time(NOW - 60)
    assert renders["share_of_recent_failures"] == pytest.approx(0.5)
    assert renders["example"]["error_message"] == (
        "TimeoutError: avatar render timed out after 294 s (node 4)")
    assert renders["example"]["job_name"] == "render-4"
    assert [e["job_name"] for e in renders["recent_events"]][:2] == ["render-4", "render-3"]
    assert uploads["category"] == "storage_upload"
    assert uploads["workflows"] == {"massugc": 1, "randomized": 1}
    week = requests.get(collector.url + "/api/groups?window=7d", timeout=10).json()
    assert week["groups"][0]["recent_count"] == 5


def test_stats_give_the_failure_rate_now_beside_all_time(collector: Collector) -> None:
    stats = requests.get(collector.url + "/api/stats", timeout=10).json()
    assert (stats["events"], stats["failures"]) == (10, 7)
    assert stats["recent"]["events"] == 7 and stats["recent"]["failures"] == 4
    assert stats["recent"]["failure_rate"] == pytest.approx(4 / 7)
    assert stats["recent"]["window_s"] == 3600
    assert stats["generated_at"] == format_time(NOW)
    assert stats["last_event_id"] == 10
    short = requests.get(collector.url + "/api/stats?window=2m", timeout=10).json()
    assert (short["recent"]["events"], short["recent"]["failures"]) == (4, 1)
    bad = requests.get(collector.url + "/api/stats?window=forever", timeout=10)
    assert bad.status_code == 400 and "window" in bad.json()["message"]


def test_events_endpoint_filters_like_the_page(collector: Collector) -> None:
    def names(query: str) -> list[str]:
        body = requests.get(collector.url + "/api/events?" + query, timeout=10).json()
        return [e["body"]["job_data"]["job_name"] for e in body["events"]]

    assert names("outcome=success") == ["ok-0", "ok-1", "ok-2"]
    assert names("outcome=failure&workflow=randomized") == ["upload-1"]
    assert names("category=storage_upload") == ["upload-0", "upload-1"]
    signature = requests.get(collector.url + "/api/groups", timeout=10).json()[
        "groups"][1]["signature"]
    assert names(f"group={signature}") == ["upload-0", "upload-1"]
    assert names("before=3") == ["render-0", "render-1"]
    assert requests.get(collector.url + "/api/events?outcome=maybe",
                        timeout=10).status_code == 400


def test_page_answers_what_fails_now_how_often_since_when_where(collector: Collector) -> None:
    response = requests.get(collector.url + "/", timeout=10)
    page = response.text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "Generated at" in page and "2025-12-02 09:00:00 UTC" in page
    assert "57%" in page and "failing now" in page  # 4 of 7 in the last hour
    assert "70%" in page and "failing overall" in page
    groups = page[page.index('id="groups"'):page.index('id="breakdown"')]
    assert groups.index("5&times;") < groups.index("2&times;")
    assert "first <time" in groups and "(2 h ago)" in groups
    assert "massugc (1), randomized (1)" in groups
    # Every event's full error text is on the page, behind a <details>.
    assert "<pre>TimeoutError: avatar render timed out after 290 s (node 0)</pre>" in page


def test_page_filters_are_links_that_work_without_javascript(collector: Collector) -> None:
    page = requests.get(collector.url + "/", timeout=10).text
    links = set(re.findall(r'href="([^"]+)"', page))
    assert "?outcome=failure#events" in links
    assert "?workflow=randomized#events" in links
    assert "?category=storage_upload#events" in links
    failures = requests.get(collector.url + "/?outcome=failure", timeout=10).text
    listed = failures[failures.index('id="events"'):]
    assert "render-0" in listed and "ok-0" not in listed
    assert "<strong>failures only</strong>" in listed


def test_page_pages_back_through_older_events(collector: Collector) -> None:
    page = requests.get(collector.url + "/?limit=4", timeout=10).text
    listed = page[page.index('id="events"'):]
    assert listed.count('<li class="event">') == 4
    older = re.search(r'href="([^"]*before=(\d+)[^"]*)"', listed)
    assert older is not None and older.group(2) == "7"
    back = requests.get(collector.url + "/" + older.group(1).replace("&amp;", "&"),
                        timeout=10).text
    assert "render-4" in back[back.index('id="events"'):]


def test_page_keeps_hostile_text_inert_under_a_nonce_policy(collector: Collector) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    post(collector, event(hostile, hostile, at=NOW - 5, workflow=hostile))
    response = requests.get(collector.url + "/", timeout=10)
    page = response.text
    assert "<script>alert(1)" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img" in page
    policy = response.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy)
    assert nonce is not None
    assert "unsafe-inline" not in policy and "default-src 'none'" in policy
    # Only the page's own script and style carry the nonce; the next response has another.
    assert page.count(f'nonce="{nonce.group(1)}"') == 2
    assert page.count("<script") == 1
    again = requests.get(collector.url + "/", timeout=10).headers["Content-Security-Policy"]
    assert again != policy


def test_a_store_from_an_earlier_version_gains_signatures_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, idempotency_key "
                 "TEXT, received_at TEXT NOT NULL, success INTEGER NOT NULL, workflow_type TEXT "
                 "NOT NULL, category TEXT, body TEXT NOT NULL)")
    for i in range(2):
        body = event(f"old-{i}", f"moov atom not found in render {i}", at=NOW - 50)
        conn.execute("INSERT INTO events (idempotency_key, received_at, success, workflow_type,"
                     " category, body) VALUES (?, ?, 0, 'avatar', 'video_generation', ?)",
                     (f"k{i}", format_time(NOW - 40), json.dumps(body)))
    conn.commit()
    conn.close()
    collector = Collector(path, clock=lambda: NOW)
    try:
        [group] = collector.groups()
        assert (group.count, group.recent_count) == (2, 2)
        assert collector.stats()["recent"]["failures"] == 2
    finally:
        collector.close()
