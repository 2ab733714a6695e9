"""The documentation holds together: every relative link in README.md, docs/, benchmarks/ and examples/ reaches
a file, and every anchor a heading of it; the README stays a guide of about 12 KB."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT

PAGES = sorted(
    [
        ROOT / "README.md",
        *ROOT.glob("docs/*.md"),
        ROOT / "benchmarks" / "README.md",
        ROOT / "examples" / "README.md",
    ]
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # no headings in code
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def broken_links(page) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with that anchor")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_a_heading(page):
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section, with punctuation!\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-section-with-punctuation) [gone](missing.md) [bad](other.md#nothing) "
        "[web](https://example.org/x)\n```\n[in code](nowhere.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md: no such file", "other.md#nothing: no heading with that anchor"]


def test_the_readme_is_a_guide_that_maps_every_topic_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) < 14_000, (
        "README.md is a guide of about 12 KB: move reference material to docs/"
    )
    unlinked = [p.name for p in ROOT.glob("docs/*.md") if f"(docs/{p.name})" not in readme]
    assert unlinked == []
