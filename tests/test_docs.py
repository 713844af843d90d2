"""The documentation holds together: every relative link in README.md and docs/*.md reaches a file
of the repository (and, with an #anchor, a heading of that file, by GitHub's slug rule), the README
stays a five-minute read that shows the two commands, and no Python source outside tests/ carries a
date (dated measurements age in docstrings; they belong in bench/RESULTS.md and docs/)."""
from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
DATE = re.compile(r"20\d{2}-[01]\d-[0-3]\d")
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M)
# Folders whose .py files are not the workbench's source: tests, run outputs, environments, caches.
NOT_SOURCE = {"tests", "runs", "build", "__pycache__", "node_modules"}


def prose(markdown: str) -> str:
    """The text outside fenced code blocks and inline code, where links and headings are real."""
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text of any link in it, lowercase, punctuation dropped
    except '-' and '_', spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor, a repeated one also with GitHub's -1, -2, … suffixes."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(markdown: str) -> list[str]:
    """The targets of the inline links and images of a Markdown text, outside code."""
    return LINK.findall(prose(markdown))


def broken_links(doc: Path, repo: Path = REPO) -> list[str]:
    """One line for each relative link of `doc` that reaches no file of `repo`, or no heading of it."""
    bad = []
    for target in links(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http(s), mailto: not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.is_relative_to(repo.resolve()):
            bad.append(f"{doc.name}: {target} leaves the repository")
        elif not file.exists():
            bad.append(f"{doc.name}: {target} is missing")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file.read_text(encoding="utf-8"))):
            bad.append(f"{doc.name}: {target} names no heading of {file.name}")
    return bad


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_sources(repo: Path = REPO) -> list[Path]:
    """The .py files of the repository outside tests/, hidden folders (.venv, .git) and outputs."""
    found = []
    for root, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in NOT_SOURCE and not d.endswith(".egg-info")]
        found += [Path(root) / f for f in files if f.endswith(".py")]
    return sorted(found)


def test_the_checks_find_what_they_look_for(tmp_path):
    assert slug("The phase change (`make induction`)") == "the-phase-change-make-induction"
    assert slug("A run on disk (`store/runlayout.py`)") == "a-run-on-disk-storerunlayoutpy"
    assert slug("Threads: one_rule, re-read?") == "threads-one_rule-re-read"
    assert anchors("# Title\n## Setup\n## Setup\n```\n# not a heading\n```\n") == {"title", "setup", "setup-1"}
    text = "[a](x.md) ![b](img.png) `[c](code.md)` [d](https://e.org/f) [g](#h)\n```\n[i](j.md)\n```\n"
    assert links(text) == ["x.md", "img.png", "https://e.org/f", "#h"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n## Its part\n")
    doc = tmp_path / "docs" / "guide.md"
    doc.write_text("# Guide\n[ok](other.md#its-part) [here](#guide) [web](http://x.org/y.md)\n"
                   "[gone](missing.md) [no heading](other.md#nothing) [out](../../elsewhere.md) [self](#none)\n")
    assert broken_links(doc, tmp_path) == [
        "guide.md: missing.md is missing", "guide.md: other.md#nothing names no heading of other.md",
        "guide.md: ../../elsewhere.md leaves the repository", "guide.md: #none names no heading of guide.md"]
    assert DATE.search("measured 2026-12-03 on") and not DATE.search("FAST_SEED = 20_251_207, 2026-13-40")


def test_every_relative_link_reaches_a_file_and_heading():
    docs = documents()
    assert len(docs) > 2 and all(d.exists() for d in docs)
    assert [line for d in docs for line in broken_links(d)] == []


def test_readme_is_short_and_shows_the_two_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "make demo" in text and "make test" in text


def test_no_python_source_outside_tests_holds_a_date():
    sources = python_sources()
    assert REPO / "model" / "device.py" in sources and not any("tests" in p.relative_to(REPO).parts for p in sources)
    dated = [f"{p.relative_to(REPO)}:{n}" for p in sources
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if DATE.search(line)]
    assert dated == []
