"""Every relative link in the project's Markdown files points to a file that exists, and every
`#anchor` to a heading of that file (anchors as GitHub makes them). Links to other sites are not
followed."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+).*?\1")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def _markdown_files() -> list[Path]:
    """The project's own Markdown: the top level's, and under docs/, bench/ and examples/ (a folder
    such as a virtualenv holds other projects' files)."""
    found = set(ROOT.glob("*.md"))
    for folder in ("docs", "bench", "examples"):
        found.update((ROOT / folder).rglob("*.md"))
    return sorted(found)


def _prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces made hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        anchor = _anchor(match.group(1))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def _broken_links(path: Path) -> list[str]:
    broken = []
    for line in _prose_lines(path):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{target}: no heading with that anchor in {linked.name}")
    return broken


def test_the_anchor_rule_matches_githubs() -> None:
    assert _anchor("Checking it: `--info` and `--info --check`") == "checking-it---info-and---info---check"
    assert _anchor("Logs (`bench/logs/record_cost.py`, load 3.4)") == "logs-benchlogsrecord_costpy-load-34"


def test_every_relative_link_in_the_markdown_files_resolves() -> None:
    files = _markdown_files()
    assert ROOT / "README.md" in files and ROOT / "docs" / "configuration.md" in files
    broken = {str(path.relative_to(ROOT)): problems for path in files if (problems := _broken_links(path))}
    assert not broken, broken


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[fine](other.md#a-heading) [gone](missing.md) [no anchor](other.md#nothing)\n"
        "```\n[in a code block](ignored.md)\n```\n`[inline code](ignored.md)` [site](https://example.com)\n"
    )
    assert _broken_links(page) == [
        "missing.md: no such file",
        "other.md#nothing: no heading with that anchor in other.md",
    ]
