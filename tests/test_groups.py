"""Failure groups: signatures that ignore what varies, and the grouping support reads first."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from massugc_logging.groups import (
    Failure,
    exception_type_of,
    failure_signature,
    group_failures,
    headline,
    most_active_first,
    normalise_error_text,
)

# Parts of an error text that differ between occurrences of one problem.
_KINDS = (
    st.integers(0, 10**9).map(str),
    st.uuids().map(str),
    st.integers(0x100000, 2**48).map(lambda n: f"0x{n:x}"),
    st.text(string.ascii_letters + string.digits + " -_.", max_size=30).map(lambda t: f"'{t}'"),
    st.lists(st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12),
             min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts) + ".mp4"),
    st.lists(st.text(string.ascii_letters + string.digits, min_size=1, max_size=12),
             min_size=1, max_size=4).map(lambda parts: "C:\\" + "\\".join(parts)),
    st.text(string.ascii_lowercase, min_size=1, max_size=12).map(
        lambda host: f"https://{host}.example/renders/x.mp4?[REDACTED]"),
    st.just("[REDACTED]"),
)
_WORDS = st.lists(st.sampled_from(["render", "failed", "for", "node", "upload", "to", "with",
                                   "code", "timed", "out", "after", "on", "job"]),
                  min_size=1, max_size=4).map(" ".join)
_TYPE = st.from_regex(r"[A-Z][A-Za-z]{0,12}(Error|Exception|Timeout)", fullmatch=True)


def fill(words: list[str], parts: list[str]) -> str:
    """Fixed words with a varying part between each pair."""
    out = words[0]
    for word, part in zip(words[1:], parts):
        out += f" {part} {word}"
    return out


@given(st.lists(_WORDS, min_size=2, max_size=4), st.data(), _TYPE)
def test_texts_that_differ_only_in_masked_parts_group_together(
        words: list[str], data: st.DataObject, exc_type: str) -> None:
    kinds = [data.draw(st.sampled_from(_KINDS)) for _ in words[1:]]
    a = f"{exc_type}: {fill(words, [data.draw(kind) for kind in kinds])}"
    b = f"{exc_type}: {fill(words, [data.draw(kind) for kind in kinds])}"
    assert failure_signature("network", a) == failure_signature("network", b), (a, b)


@given(_TYPE, _TYPE, st.text(max_size=80))
def test_different_exception_types_never_group(first: str, second: str, message: str) -> None:
    if first == second:
        return
    assert failure_signature("unknown", f"{first}: {message}") != failure_signature(
        "unknown", f"{second}: {message}")


@given(st.text(max_size=300), st.sampled_from(["network", "video_generation", None]))
def test_signatures_are_stable_and_short(text: str, category: str) -> None:
    signature = failure_signature(category, text)
    assert signature == failure_signature(category, text)
    assert len(signature) == 16 and set(signature) <= set("0123456789abcdef")


def test_a_signature_is_the_same_in_every_run_and_version() -> None:
    """A fixed text has a fixed signature: groups survive restarts and upgrades."""
    assert failure_signature("video_generation", "TimeoutError: avatar render timed out") == (
        failure_signature("video_generation", "TimeoutError: avatar render timed out"))
    assert failure_signature("video_generation", "x") != failure_signature("network", "x")


def test_normalisation_masks_what_varies_and_keeps_names() -> None:
    text = ("Upload of '~/Videos/Campaign 7/out.mp4' to https://storage.googleapis.com/b/o?"
            "[REDACTED] failed after 3 tries at 2026-12-02T10:00:00.123Z (req 0x7f3a9c, id "
            "123e4567-e89b-12d3-a456-426614174000, blob 8f3a9c01d) with libx264 and HTTP2Error")
    assert normalise_error_text(text) == (
        "Upload of <str> to <url> failed after <n> tries at <time> (req <id>, id <id>, blob "
        "<id>) with libx264 and HTTP2Error")
    assert normalise_error_text("can't open /tmp/render_42/a.mp4 and/or 3/25") == (
        "can't open <path> and/or <n>/<n>")
    assert normalise_error_text("disk full …[truncated] rest differs 12345") == "disk full"


def test_the_exception_type_is_read_from_the_text() -> None:
    assert exception_type_of("TimeoutError: avatar render timed out") == "TimeoutError"
    assert exception_type_of("requests.exceptions.ConnectionError: x") == (
        "requests.exceptions.ConnectionError")
    assert exception_type_of("MemoryError") == "MemoryError"
    assert exception_type_of("Upload to https://x failed: 403") == ""
    assert exception_type_of("ffmpeg: voice.mp3: No such file") == ""


def test_headline_keeps_the_first_and_last_lines() -> None:
    """ffmpeg's real error comes last; the headline shows it beside the first line."""
    text = "ffmpeg version 6.1\n  built with gcc\n\nConversion failed!"
    assert headline(text) == "ffmpeg version 6.1 … Conversion failed!"
    assert len(headline("x" * 1000)) <= 160
    assert headline("") == "(no error text)"


def _failure(event_id: int, at: float, text: str, workflow: str = "avatar",
             category: str = "video_generation") -> Failure:
    return Failure(event_id=event_id, occurred_at=at, category=category, error_message=text,
                   workflow_type=workflow)


def test_grouping_counts_times_workflows_recent_share_and_example() -> None:
    failures = [
        _failure(1, 100.0, "render node 1 busy"),
        _failure(2, 200.0, "render node 2 busy", workflow="massugc"),
        _failure(3, 900.0, "render node 3 busy"),
        _failure(4, 950.0, "moov atom not found"),
        _failure(5, 960.0, "moov atom not found", workflow="randomized"),
        _failure(6, 970.0, "moov atom not found", workflow="randomized"),
    ]
    groups = group_failures(failures, recent_since=800.0)
    assert [g.count for g in groups] == [3, 3]  # newest activity first
    atoms, renders = groups
    assert atoms.title == "moov atom not found"
    assert (atoms.first_seen, atoms.last_seen, atoms.recent_count) == (950.0, 970.0, 3)
    assert atoms.workflows == {"randomized": 2, "avatar": 1}
    assert atoms.share_of_recent_failures == 3 / 4
    assert renders.recent_count == 1 and renders.share_of_recent_failures == 1 / 4
    assert renders.example is not None and renders.example.event_id == 3
    assert renders.recent_event_ids == (3, 2, 1)
    assert renders.as_dict()["example"]["error_message"] == "render node 3 busy"
    assert [g.title for g in most_active_first(groups)] == [
        "moov atom not found", "render node <n> busy".replace("<n>", "3")]


def test_no_failures_no_groups() -> None:
    assert group_failures([], recent_since=0.0) == []
