"""The shell blocks of README.md and docs/*.md, and the mark before each.

Every fenced ```bash or ```console block is preceded (blank lines between allowed) by one
HTML comment, invisible on GitHub and in the site:

    <!-- docs-test: session NAME from clone|repro -->   run by tests/test_docs.py
    <!-- docs-test: illustrative REASON -->             not run, and why (real Instagram, GPUs, ...)

Blocks of one session run in order (file order, README.md first, then docs/*.md by name) in
one temporary copy of the project: ``clone``, a fresh copy with no outputs, or ``repro``, a
copy after ``make repro`` on a tiny world.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = ("bash", "console", "sh", "shell")
MARK = re.compile(r"<!--\s*docs-test:\s*(?:session\s+(?P<session>[\w-]+)\s+from\s+(?P<base>clone|repro)"
                  r"|illustrative\s+(?P<reason>\S.*?))\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    session: str | None = None
    base: str | None = None
    reason: str | None = None
    mark: str | None = None  # the comment as written, when it is no valid mark

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"

    @property
    def script(self) -> str:
        """The commands: a bash block as it is; a console block's ``$ `` lines."""
        if self.lang == "console":
            return "\n".join(line[2:] for line in self.text.splitlines() if line.startswith("$ "))
        return self.text


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """Every shell block of a Markdown file, with its mark."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        lang = fence.group("lang")
        if lang in SHELL_LANGS:
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = MARK.fullmatch(before)
            found.append(Block(path, i + 1, lang, "\n".join(lines[i + 1:end]) + "\n",
                               session=mark and mark.group("session"), base=mark and mark.group("base"),
                               reason=mark and mark.group("reason"),
                               mark=None if mark or not before.startswith("<!--") else before))
        i = end + 1
    return found


def all_blocks(root: Path = ROOT) -> list[Block]:
    return [b for path in doc_files(root) for b in blocks(path)]


def sessions(found: list[Block]) -> dict[str, list[Block]]:
    """The runnable blocks by session, in order."""
    out: dict[str, list[Block]] = {}
    for block in found:
        if block.session:
            out.setdefault(block.session, []).append(block)
    return out
