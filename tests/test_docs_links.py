"""Every relative link and image in README.md and docs/*.md leads somewhere: the file
exists and, for a Markdown target, its ``#anchor`` names one of that file's headings
under GitHub's slug rules. The README stays a landing page of at most 250 lines."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MAX_README_LINES = 250

#: ``[text](target)`` and ``![alt](target)``, with an optional ``<...>`` and title.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
EXTERNAL = ("http://", "https://", "mailto:")


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """The numbered lines outside fenced code blocks."""
    fence = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip()
        if fence:
            if stripped.startswith(fence):
                fence = ""
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            continue
        yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case; characters other than
    letters, digits, spaces, hyphens and underscores dropped; spaces become hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (a repeated one gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(INLINE_CODE.sub(r"\2", match.group(2)))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> Iterator[tuple[int, str]]:
    """Line number and target of every link and image outside code."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` whose file or anchor does not exist, described."""
    problems = []
    for number, target in links(path):
        if target.startswith(EXTERNAL):
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        where = f"line {number}: ({target})"
        if not linked.exists():
            problems.append(f"{where}: no such file {linked}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            problems.append(f"{where}: {linked.name} has no heading with the anchor "
                            f"#{fragment}")
    return problems


def test_the_readme_is_a_landing_page() -> None:
    """The README stays short; the rest lives in docs/."""
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines, at most " \
                                      f"{MAX_README_LINES} allowed: move detail to docs/"
    assert len(PAGES) > 1, "no Markdown pages under docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    """Every relative link and image leads to a file, and every anchor to a heading."""
    problems = broken_links(page)
    assert not problems, (f"{page.relative_to(REPO).as_posix()} has broken links:\n  "
                          + "\n  ".join(problems))


def test_the_check_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    """The checker itself: good links pass, each kind of broken one is named."""
    (tmp_path / "other.md").write_text("# Other page\n\n## Retries, the circuit: and `pauses`\n"
                                       "## Retries, the circuit: and `pauses`\n",
                                       encoding="utf-8")
    (tmp_path / "pic.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md) [ok](other.md#retries-the-circuit-and-pauses) "
        "[ok](other.md#retries-the-circuit-and-pauses-1) ![ok](pic.png) [ok](#page) "
        "[ok](https://example.com/missing) `[not a link](gone.md)`\n\n"
        "```\n[not a link](gone.md)\n```\n\n"
        "[bad](missing.md) ![bad](missing.png) [bad](other.md#no-such-heading) "
        "[bad](#nowhere)\n",
        encoding="utf-8")
    problems = broken_links(page)
    assert len(problems) == 4, problems
    assert [p.split(": (")[1].split(")")[0] for p in problems] == [
        "missing.md", "missing.png", "other.md#no-such-heading", "#nowhere"]


def test_slugs_follow_githubs_rules() -> None:
    """Punctuation dropped, spaces to hyphens, hyphens and underscores kept."""
    assert slug("Company networks and TLS") == "company-networks-and-tls"
    assert slug("Desktop apps (PyInstaller)") == "desktop-apps-pyinstaller"
    assert slug("The page: what is failing now, and why") == "the-page-what-is-failing-now-and-why"
    assert slug("massugc-logging") == "massugc-logging"
    assert slug("FailureRateAlertHandler arguments") == "failureratealerthandler-arguments"
    assert slug("Using report_job") == "using-report_job"
