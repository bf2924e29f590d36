"""The README and docs/ hold together: every relative link and image resolves to a file of the checkout, every
``#anchor`` into a Markdown file names one of its headings (GitHub's slugs), every docs page is reachable
from the README, and the README stays a five-minute read that starts with the two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import ROOT

README = ROOT / "README.md"
MAX_README_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title"; the text holds no brackets once code spans go
LINK = re.compile(r"!?\[[^\[\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = ("http://", "https://", "mailto:")


def documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans: links and headings there are examples."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    return LINK.findall(prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: Markdown marks dropped, lower case, punctuation removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor the headings of a Markdown file define (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``doc`` that name no file of the checkout, or no heading of a Markdown file."""
    broken = []
    for target in links(doc.read_text()):
        if target.startswith(EXTERNAL):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.is_relative_to(root.resolve()) or not dest.exists():
            broken.append(f"{doc.name}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{doc.name}: {target} (no heading #{anchor} in {dest.name})")
    return broken


def test_slugs_follow_github():
    assert slug("Running on a cluster (`run --ray`)") == "running-on-a-cluster-run---ray"
    assert slug("Beyond CLIP: SigLIP and SigLIP 2") == "beyond-clip-siglip-and-siglip-2"
    assert slug("A prompts file (for `rescore`)") == "a-prompts-file-for-rescore"
    assert slug("What the demo's [store](x.md) holds") == "what-the-demos-store-holds"


def test_the_checker_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## A section\n\n```\n# not a heading\n```\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md#a-section) [gone](missing.md) [bad](other.md#not-a-heading) "
                   "![pic](other.md) [self](#here) [web](https://example.org/x#y) `[code](nowhere.md)`\n"
                   "```\n[fenced](nowhere.md)\n```\n# Here\n[out](../../outside.md)\n")
    assert broken_links(doc, tmp_path) == [
        "doc.md: missing.md (no such file)",
        "doc.md: other.md#not-a-heading (no heading #not-a-heading in other.md)",
        "doc.md: ../../outside.md (no such file)",
    ]


@pytest.mark.parametrize("doc", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc):
    assert broken_links(doc) == []


def test_the_links_are_really_checked():
    # the README links into docs/ and shows a screenshot; a parser that finds nothing would pass the test above
    targets = links(README.read_text())
    assert sum(t.startswith("docs/") and t.endswith(".md") for t in targets) >= 8
    assert any(t.startswith("docs/screenshots/") for t in targets)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README.read_text())}
    orphans = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert orphans == []


def test_the_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    assert "make demo" in text and "make test" in text
    # the commands come before any timing or test count
    first_command = text.index("make demo")
    assert not re.search(r"\d+(\.\d+)?\s*(s|min|tests)\b", text[:first_command])
