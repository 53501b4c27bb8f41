"""The project cites only the paper itself or files in the repository. Notes kept outside it (a reconstruction
of the paper, `paper.md`, whose section numbers are not the paper's; prototype notes, `organism.md`; design and
style notes, `DESIGN.md` and `STYLE.md`) must not be cited by any tracked file: a reader cannot open them.

The one page of those names inside the repository is docs/organism.md: it may be cited as `docs/organism.md`
(with any leading path, e.g. `../docs/organism.md`), and pages in docs/ may name it relatively, `organism.md`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from selfimprove import artifacts

CHECKOUT = artifacts.CHECKOUT
# A note's name, with the path written before it (if any), at the start of a path-like token.
NOTE = re.compile(rb"(?i)(?<![\w.-])((?:[\w.-]*/)*)(paper|organism|design|style)\.md\b")
THIS = Path(__file__).resolve()


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "-C", str(CHECKOUT), "ls-files", "-z"], capture_output=True, check=True).stdout
    return [CHECKOUT / name for name in out.decode().split("\0") if name]


def _allowed(rel: str, prefix: bytes, name: bytes) -> bool:
    if name.lower() != b"organism":
        return False
    return prefix.lower().endswith(b"docs/") or (prefix == b"" and rel.startswith("docs/"))


def offending(rel: str, data: bytes) -> list[str]:
    """The citations of outside notes in one file's bytes, as `line N: text`.

    >>> offending("x.py", b"# see paper.md section 2.4 and docs/organism.md")
    ['line 1: paper.md']
    >>> offending("docs/a.md", b"[organism.md](organism.md)\\n/work/shared/organism.md STYLE.md")
    ['line 2: /work/shared/organism.md', 'line 2: STYLE.md']
    >>> offending("a.py", b"selfimprove/organism.py mypaper.md_x")
    []
    """
    found = []
    for m in NOTE.finditer(data):
        if not _allowed(rel, m.group(1), m.group(2)):
            line = data.count(b"\n", 0, m.start()) + 1
            found.append(f"line {line}: {m.group(0).decode(errors='replace')}")
    return found


@pytest.mark.skipif(CHECKOUT is None or shutil.which("git") is None
                    or not (CHECKOUT / ".git").exists(), reason="needs a git checkout and git")
def test_no_tracked_file_cites_notes_outside_the_repository():
    bad = {}
    for path in _tracked():
        if path.resolve() == THIS or not path.is_file():
            continue
        rel = path.relative_to(CHECKOUT).as_posix()
        if hits := offending(rel, path.read_bytes()):
            bad[rel] = hits[:5] + ([f"... {len(hits) - 5} more"] if len(hits) > 5 else [])
    assert not bad, ("cite the paper itself (paper §x, Figure x, Algorithm 1) or a file in the repository "
                     f"(docs/organism.md), not notes outside it: {bad}")


@pytest.mark.skipif(CHECKOUT is None, reason="needs the sources (a checkout)")
def test_the_organism_page_is_in_the_repository_and_indexed():
    assert (CHECKOUT / "docs" / "organism.md").is_file()
    assert "(organism.md)" in (CHECKOUT / "docs" / "README.md").read_text()
