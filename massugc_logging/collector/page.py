"""The collector's page: what is failing now, how often, since when, where and why.

Server-rendered HTML that works without JavaScript; from the top:

1. the failure rate now (the recent window, default the last hour) and
   overall, with the time the page was generated;
2. the failure groups (:mod:`massugc_logging.groups`), most active first, each
   a ``<details>`` holding its newest example's full error text and its
   recent events;
3. failure rates by workflow type and by category, as filter links;
4. recent events, newest first, filtered by links (failures only, a
   workflow, a category, a group) and paged back, each with its full error
   text behind a ``<details>``.

Every value from an event is HTML-escaped. The Content-Security-Policy allows
only this page's own style and script, by a per-response nonce, and fetches to
this origin: injected markup could neither run nor load anything. The script
polls ``/api/stats`` and, when an event has arrived, fetches the page again
and swaps its content in, keeping open ``<details>`` open.
"""

from __future__ import annotations

import html
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import urlencode

from massugc_logging.collector.query import count_param, event_filter, last_param
from massugc_logging.collector.store import EventFilter, parse_time
from massugc_logging.groups import FailureGroup, headline, most_active_first

if TYPE_CHECKING:
    from massugc_logging.collector.core import Collector

__all__ = ["PAGE_EVENTS", "respond"]

#: Events listed per page unless ``limit`` asks for another number (up to MAX_PAGE_EVENTS).
PAGE_EVENTS = 100
MAX_PAGE_EVENTS = 1000
#: Groups shown; the rest are counted.
PAGE_GROUPS = 50
#: The windows offered as links.
WINDOW_CHOICES = (("15m", 900), ("1h", 3600), ("24h", 86400), ("7d", 7 * 86400))
#: How often the script asks whether anything changed, and refreshes anyway.
POLL_MS = 2000
REFRESH_ANYWAY_MS = 60000
#: Parameters the page keeps in its links.
_PARAMS = ("window", "outcome", "workflow", "category", "group", "limit")

_STYLE = """
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
 padding:.75em 1em 2em;max-width:76em;color:#1f1f1f;background:#fff;
 overflow-wrap:anywhere}
h1{font-size:1.35em;margin:.3em 0 .1em}
h2{font-size:1.12em;margin:1.5em 0 .5em}
h3{font-size:.95em;margin:.8em 0 .3em}
a{color:#0b57d0}
p{margin:.4em 0}
.note{color:#5f6368;font-size:.9em}
time,.nowrap{white-space:nowrap}
.rates{display:flex;flex-wrap:wrap;gap:.6em;margin:.6em 0}
.rate{flex:1 1 13em;border:1px solid #dadce0;border-radius:8px;padding:.5em .8em}
.big{font-size:1.9em;font-weight:650;line-height:1.2}
.bad{color:#b3261e}.good{color:#146c2e}
details{border:1px solid #dadce0;border-radius:8px;margin:.45em 0;padding:.35em .7em}
details[open]{background:#fbfbfd}
summary{cursor:pointer;overflow-wrap:anywhere}
.line{font-weight:600;overflow-wrap:anywhere}
.meta-below{margin-top:.15em}
.meta{display:flex;flex-wrap:wrap;gap:.1em .9em;font-size:.88em;color:#3c4043}
.count{font-weight:700}
.tag{display:inline-block;background:#e8eaf6;color:#1a237e;border-radius:4px;padding:0 .4em;
 font-size:.85em;font-weight:500}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font:13px/1.45 ui-monospace,SFMono-Regular,
 Menlo,Consolas,monospace;background:#f6f8fa;border-radius:6px;padding:.55em .7em;margin:.35em 0;
 max-height:36em;overflow-y:auto}
ul.plain,ol.events{list-style:none;padding:0;margin:.2em 0}
ul.plain li{margin:.15em 0}
li.event{border-top:1px solid #eceff1;padding:.5em 0}
li.event details{margin:.3em 0 0}
.filters{line-height:2}
.filters a,.filters strong{margin-right:.6em}
.outcome-failure{color:#b3261e;font-weight:600}.outcome-success{color:#146c2e;font-weight:600}
"""

_SCRIPT = """
(function () {
  "use strict";
  var last = document.body.getAttribute("data-last-event");
  var refreshedAt = Date.now();
  var live = document.getElementById("live");
  function say(text) { if (live) { live.textContent = text; } }
  function refresh() {
    return fetch(window.location.href, {cache: "no-store"}).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.text();
    }).then(function (text) {
      var doc = new DOMParser().parseFromString(text, "text/html");
      var fresh = doc.getElementById("content");
      var current = document.getElementById("content");
      if (!fresh || !current) { return; }
      var open = {};
      current.querySelectorAll("details[open][id]").forEach(function (d) { open[d.id] = 1; });
      fresh.querySelectorAll("details[id]").forEach(function (d) {
        if (open[d.id]) { d.setAttribute("open", ""); }
      });
      current.replaceWith(document.importNode(fresh, true));
      last = doc.body.getAttribute("data-last-event");
      document.body.setAttribute("data-last-event", last);
      document.title = doc.title;
      refreshedAt = Date.now();
    });
  }
  function tick() {
    var wait = document.hidden ? Promise.resolve() :
      fetch("/api/stats", {cache: "no-store"}).then(function (response) {
        return response.json();
      }).then(function (stats) {
        if (String(stats.last_event_id) !== last ||
            Date.now() - refreshedAt > REFRESH_ANYWAY_MS) { return refresh(); }
      }).then(function () {
        say("Updates by itself every few seconds.");
      }, function () {
        say("The collector does not answer; retrying.");
      });
    wait.then(function () { window.setTimeout(tick, POLL_MS); });
  }
  window.setTimeout(tick, POLL_MS);
})();
"""


def _e(value: object) -> str:
    """HTML-escape any value for text and attribute positions."""
    return html.escape("" if value is None else str(value), quote=True)


def _percent(rate: float) -> str:
    return f"{rate:.0%}" if rate in (0.0, 1.0) or rate >= 0.1 else f"{rate:.1%}"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now" if seconds < 5 else f"{int(seconds)} s ago"


def _time(epoch: float, now: Optional[float] = None) -> str:
    """A ``<time>`` in UTC to the second, with how long ago when ``now`` is given."""
    moment = datetime.fromtimestamp(epoch, timezone.utc)
    shown = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    stamp = f'<time datetime="{moment.strftime("%Y-%m-%dT%H:%M:%SZ")}">{shown}</time>'
    return stamp if now is None else f'{stamp} <span class="nowrap">({_ago(now - epoch)})</span>'


class _Links:
    """Links that change some parameters of the current view and keep the others."""

    def __init__(self, query: Mapping[str, list[str]]) -> None:
        self.params = {name: value for name in _PARAMS
                       if (value := last_param(query, name)) not in (None, "")}

    def href(self, anchor: str = "", **changes: Optional[str]) -> str:
        params = dict(self.params)
        for name, value in changes.items():
            if value is None:
                params.pop(name, None)
            else:
                params[name] = value
        query = urlencode(sorted(params.items()))
        return _e(("?" + query if query else "./") + (f"#{anchor}" if anchor else ""))

    def choice(self, label: str, name: str, value: Optional[str], anchor: str = "") -> str:
        """A filter link, or the label in bold when it is the current choice."""
        if self.params.get(name) == value:
            return f"<strong>{_e(label)}</strong>"
        return f'<a href="{self.href(anchor, **{name: value})}">{_e(label)}</a>'


def _rate_card(title: str, rate: float, failures: int, events: int, detail: str) -> str:
    tone = "bad" if failures else "good"
    return (
        f'<div class="rate"><div class="big {tone}">{_percent(rate)}</div>'
        f"<div>{_e(title)}</div>"
        f'<div class="note">{failures} of {events} jobs failed {detail}</div></div>'
    )


def _rates(stats: Mapping[str, Any], window_label: str) -> str:
    recent = stats["recent"]
    return (
        '<section class="rates" aria-label="failure rates">'
        + _rate_card("failing now", recent["failure_rate"], recent["failures"],
                     recent["events"], f"in the last {window_label}")
        + _rate_card("failing overall", stats["failure_rate"], stats["failures"],
                     stats["events"], "since the first event stored")
        + f'<div class="rate"><div class="big">{stats["events"]}</div><div>events stored</div>'
        f'<div class="note">{stats["duplicates"]} duplicates dropped, '
        f'{stats["requests_seen"]} requests</div></div>'
        "</section>"
    )


def _event_line(event: Mapping[str, Any], now: float) -> str:
    body = event.get("body")
    job = body.get("job_data") if isinstance(body, dict) else None
    job = job if isinstance(job, dict) else {}
    when = parse_time(event.get("occurred_at"))
    parts = [_time(when, now) if when is not None else _e(event.get("occurred_at"))]
    for name in ("workflow_type", "job_name", "run_id"):
        if job.get(name):
            parts.append(f'<span title="{name}">{_e(job.get(name))}</span>')
    return " ".join(f"<span>{p}</span>" for p in parts)


def _group(group: FailureGroup, events: Mapping[int, Mapping[str, Any]], now: float,
           links: _Links) -> str:
    where = ", ".join(f"{_e(name)} ({n})" for name, n in group.workflows.items())
    recent = (f"{group.recent_count} now ({_percent(group.share_of_recent_failures)} of "
              "recent failures)" if group.recent_count else "none now")
    example = group.example
    example_text = example.error_message if example is not None else ""
    recent_items = "".join(
        f"<li>{_event_line(events[i], now)}</li>" for i in group.recent_event_ids if i in events
    )
    return (
        f'<details class="group" id="group-{_e(group.signature)}"><summary>'
        f'<span class="line"><span class="count">{group.count}&times;</span> '
        f"{_e(group.title)}</span>"
        f'<span class="meta meta-below"><span class="tag">{_e(group.category)}</span>'
        f"<span>{recent}</span>"
        f"<span>first {_time(group.first_seen, now)}</span>"
        f"<span>last {_time(group.last_seen, now)}</span>"
        f"<span>in {where}</span></span></summary>"
        "<h3>Newest example, in full</h3>"
        f"<pre>{_e(example_text) or '(no error text)'}</pre>"
        f'<h3>Recent events</h3><ul class="plain">{recent_items}</ul>'
        f'<p><a href="{links.href("events", group=group.signature, outcome=None)}">'
        f"All {group.count} events of this problem</a></p></details>"
    )


def _groups(groups: Sequence[FailureGroup], events: Mapping[int, Mapping[str, Any]],
            now: float, links: _Links) -> str:
    shown = most_active_first(groups)[:PAGE_GROUPS]
    if not shown:
        return '<section id="groups"><h2>What is failing</h2><p class="note">No failures stored.' \
               "</p></section>"
    hidden = len(groups) - len(shown)
    more = f'<p class="note">{hidden} less active problems not shown.</p>' if hidden else ""
    noun = "problem" if len(groups) == 1 else "distinct problems"
    return (
        f'<section id="groups"><h2>What is failing: {len(groups)} {noun}</h2>'
        '<p class="note">Failures grouped by cause, most failures now first. Open one for its '
        "full error text and recent events.</p>"
        + "".join(_group(g, events, now, links) for g in shown) + more + "</section>"
    )


def _breakdown(stats: Mapping[str, Any], links: _Links) -> str:
    workflows = "".join(
        f'<li>{links.choice(name or "(none)", "workflow", name, "events")} '
        f'{row["failures"]} of {row["events"]} failed ({_percent(row["failure_rate"])}); now '
        f'{row["recent_failures"]} of {row["recent_events"]}</li>'
        for name, row in stats["by_workflow_type"].items()
    ) or '<li class="note">no events yet</li>'
    categories = "".join(
        f'<li>{links.choice(name, "category", name, "events")} {row["failures"]} failures '
        f'({_percent(row["share_of_failures"])} of all); now {row["recent_failures"]}</li>'
        for name, row in stats["by_category"].items()
    ) or '<li class="note">no failures</li>'
    return (
        '<section id="breakdown"><h2>Failure rate by workflow type</h2>'
        f'<ul class="plain">{workflows}</ul>'
        f'<h2>Failures by error category</h2><ul class="plain">{categories}</ul></section>'
    )


def _event(event: Mapping[str, Any], now: float) -> str:
    body = event.get("body")
    job = body.get("job_data") if isinstance(body, dict) else None
    job = job if isinstance(job, dict) else {}
    success = job.get("success") is True
    outcome = ('<span class="outcome-success">success</span>' if success
               else '<span class="outcome-failure">failure</span>')
    category = "" if success else f'<span class="tag">{_e(event.get("category") or "")}</span>'
    message = job.get("error_message")
    if isinstance(message, str) and message:
        detail = (f'<details id="event-{_e(event.get("id"))}"><summary>{_e(headline(message))}'
                  f"</summary><pre>{_e(message)}</pre></details>")
    elif success:
        detail = f'<div class="note">{_e(job.get("output_path") or "")}</div>'
    else:
        detail = ""
    return (f'<li class="event"><div class="meta">{outcome}{category}{_event_line(event, now)}'
            f"</div>{detail}</li>")


def _events(collector: Collector, stats: Mapping[str, Any], where: EventFilter, limit: int,
            links: _Links, now: float) -> str:
    events = list(reversed(collector.events(limit, where)))
    outcome = links.params.get("outcome")
    filters = [
        "Show: " + " ".join((links.choice("all", "outcome", None, "events"),
                             links.choice("failures only", "outcome", "failure", "events"),
                             links.choice("successes", "outcome", "success", "events"))),
        "Workflow: " + " ".join([links.choice("any", "workflow", None, "events")] + [
            links.choice(name, "workflow", name, "events")
            for name in stats["by_workflow_type"] if name]),
    ]
    if outcome != "success":
        filters.append("Category: " + " ".join([links.choice("any", "category", None, "events")] + [
            links.choice(name, "category", name, "events") for name in stats["by_category"]]))
    if where.signature:
        filters.append("Problem: " + links.choice("any", "group", None, "events")
                       + f" <strong>{_e(where.signature)}</strong>")
    rows = "".join(_event(e, now) for e in events) or \
        '<li class="note">No events match.</li>'
    older = ""
    if len(events) == limit and events:
        older = (f'<p><a href="{links.href("events", before=str(events[-1]["id"]))}">'
                 "Older events</a></p>")
    return (
        '<section id="events"><h2>Recent events</h2><nav class="filters" aria-label="filters">'
        + "<br>".join(filters) + "</nav>"
        f'<ol class="events">{rows}</ol>{older}</section>'
    )


def _window_links(links: _Links, window_s: int) -> str:
    labels = []
    for label, seconds in WINDOW_CHOICES:
        if seconds == window_s:
            labels.append(f"<strong>{label}</strong>")
        else:
            labels.append(f'<a href="{links.href(window=label)}">{label}</a>')
    return '<p class="filters">"Now" means the last: ' + " ".join(labels) + "</p>"


def _window_label(window_s: int) -> str:
    for size, name in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if window_s % size == 0 and window_s >= size:
            n = window_s // size
            return name if n == 1 else f"{n} {name}s"
    return f"{window_s} seconds"


def render(collector: Collector, query: Mapping[str, list[str]], window_s: int,
           nonce: str) -> str:
    """The whole page for this query (see the module docstring); ValueError for bad filters."""
    now = collector.clock()
    where = event_filter(query)
    limit = min(count_param(query, "limit") or PAGE_EVENTS, MAX_PAGE_EVENTS)
    links = _Links(query)
    stats = collector.stats(window_s)
    groups = collector.groups(window_s)
    shown_ids: Iterable[int] = (i for g in most_active_first(groups)[:PAGE_GROUPS]
                                for i in g.recent_event_ids)
    group_events = collector.events_by_id(shown_ids)
    label = _window_label(window_s)
    recent = stats["recent"]
    title = (f"{_percent(recent['failure_rate'])} failing now · MassUGC collector"
             if recent["events"] else "MassUGC collector")
    generated = _time(now)
    script = (_SCRIPT.replace("REFRESH_ANYWAY_MS", str(REFRESH_ANYWAY_MS))
              .replace("POLL_MS", str(POLL_MS)))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style nonce=\"{nonce}\">{_STYLE}</style></head>"
        f'<body data-last-event="{stats["last_event_id"]}">'
        '<p id="live" class="note" aria-live="polite"></p>'
        '<div id="content"><header><h1>MassUGC local collector</h1>'
        f'<p class="note">Generated at {generated}. <a href="{links.href()}">Refresh</a>. '
        "For development, demos and tests; not a production server.</p></header>"
        + _rates(stats, label) + _window_links(links, window_s)
        + _groups(groups, group_events, now, links)
        + _breakdown(stats, links)
        + _events(collector, stats, where, limit, links, now)
        + f'</div><script nonce="{nonce}">{script}</script></body></html>\n'
    )


def security_headers(nonce: str) -> tuple[tuple[str, str], ...]:
    """The page's headers: nothing but its own style and script may run or load."""
    policy = (f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return (
        ("Content-Security-Policy", policy),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    )


def respond(collector: Collector, query: Mapping[str, list[str]],
            window_s: int) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The page and its headers, with a fresh nonce."""
    nonce = secrets.token_urlsafe(18)
    return render(collector, query, window_s, nonce), security_headers(nonce)
