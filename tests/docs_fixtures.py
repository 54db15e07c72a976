"""Code blocks of README.md and docs/*.md, as tests/test_docs_examples.py runs them.

A fenced block is Python (```python), a shell block (some line starts with a known command) or text (diagrams,
outputs, error messages). Shell blocks are split into commands: ``\\`` continuations joined, ``# comments`` cut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))

COMMANDS = ("tilecast", "rio", "python", "pip", "make", ".venv/bin/python", "docker", "curl", "eval", "gdalinfo")
COMMANDS += ("torch-model-archiver",)
"""First words that make a line a shell command (``NAME=value`` prefixes are skipped first)."""

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its file, 1-based line of the opening fence, info string and text (dedented)."""

    file: str
    line: int
    lang: str
    text: str

    @property
    def kind(self) -> str:
        if self.lang in ("python", "py"):
            return "python"
        return "shell" if any(is_command(line) for line in logical_lines(self.text)) else "text"

    @property
    def first_line(self) -> str:
        return next((ln.strip() for ln in self.text.splitlines() if ln.strip()), "")


def read_blocks(rel: str) -> list[Block]:
    """Every fenced block of one Markdown file (``rel`` relative to the repository root)."""
    blocks: list[Block] = []
    lines = (ROOT / rel).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2), i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        blocks.append(Block(rel, start + 1, lang, "\n".join(body)))
        i += 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for rel in DOC_FILES for b in read_blocks(rel)]


def strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` outside quotes, at the start or after a space)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def logical_lines(text: str) -> list[str]:
    """Shell lines with continuations joined and comments cut, whitespace collapsed; empty lines dropped."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = strip_comment(raw)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = " ".join((pending + line).split())
        pending = ""
        if full:
            out.append(full)
    if pending.strip():
        out.append(" ".join(pending.split()))
    return out


def is_command(line: str) -> bool:
    words = line.split()
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    return bool(words) and words[0] in COMMANDS


def doc_items() -> list[tuple[str, str, Block]]:
    """``(file, key, block)`` for every command (shell), Python block (key: its first line) and text block."""
    items = []
    for block in all_blocks():
        if block.kind == "shell":
            items.extend((block.file, cmd, block) for cmd in logical_lines(block.text))
        else:
            items.append((block.file, block.first_line, block))
    return items
