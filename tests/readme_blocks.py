"""The README's fenced code blocks, section by section, and how its placeholders are filled.

Pure text work, so that tests/test_readme_e2e.py can run the examples as a reader would and
check, without a hub, that no block of the README is left neither run nor explained."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass(frozen=True)
class Block:
    """One fenced block: the heading it is under, its language and its text (dedented)."""

    section: str
    lang: str
    text: str
    line: int  # where it starts in the README, for messages

    def __str__(self) -> str:
        first = self.text.strip().splitlines()[0] if self.text.strip() else ""
        return f"README.md:{self.line} ({self.section}) ```{self.lang} {first[:60]}"


def blocks(markdown: str) -> list[Block]:
    """Every fenced block, indented ones (inside list items) included."""
    found, section, fence = [], "", None
    for number, line in enumerate(markdown.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("#") and not line.startswith(" "):
                section = stripped.lstrip("#").strip()
            elif stripped.startswith("```"):
                indent = len(line) - len(line.lstrip())
                fence = (stripped[3:].strip(), indent, number, [])
        elif stripped == "```":
            lang, _, start, lines = fence
            found.append(Block(section, lang, "\n".join(lines) + "\n", start))
            fence = None
        else:
            fence[3].append(line[fence[1] :] if line[: fence[1]].isspace() else line.lstrip())
    return found


@dataclass(frozen=True)
class Where:
    """Names a block: its section and a piece of text only that block there holds."""

    section: str
    marker: str

    def matches(self, block: Block) -> bool:
        return block.section == self.section and self.marker in block.text


def classify(found: list[Block], listed: list[Where]) -> tuple[dict[Where, Block], list[str]]:
    """Pair each listed place with its one block; the problems, if a block is listed
    nowhere, twice, or a listed one is gone."""
    problems, pairs = [], {}
    for block in found:
        places = [where for where in listed if where.matches(block)]
        if not places:
            problems.append(f"{block}: neither run by the README test nor listed as not runnable")
        elif len(places) > 1:
            problems.append(f"{block}: matches {len(places)} entries of the README test")
    for where in listed:
        matching = [block for block in found if where.matches(block)]
        if len(matching) != 1:
            problems.append(f"{where}: matches {len(matching)} README blocks, not one")
        else:
            pairs[where] = matching[0]
    return pairs, problems


@dataclass(frozen=True)
class Place:
    """Where the reader's commands go: the test hub instead of the README's example host."""

    port: int
    ssh_port: int
    image: str  # what `"image": "..."` stands for

    def fill(self, text: str) -> str:
        """The README's example addresses and ports become the test hub's."""
        text = re.sub(r"\b127\.0\.0\.1:8000\b", f"127.0.0.1:{self.port}", text)
        text = text.replace("hub.example.org", "127.0.0.1")
        text = re.sub(r"(-p |-P |Port )2222\b", rf"\g<1>{self.ssh_port}", text)
        text = text.replace("203.0.113.0/24", "127.0.0.1/32")  # documentation range: yours
        return text.replace('"image": "..."', f'"image": "{self.image}"')


def alternatives(text: str) -> str:
    """`atelier instances stop|start|show|delete exp-5` is four commands, in that order."""

    def expand(match: re.Match) -> str:
        head, words, tail = match.group(1), match.group(2).split("|"), match.group(3)
        return "\n".join(f"{head}{word}{tail}" for word in words)

    return re.sub(r"^(atelier [a-z]+ )([a-z]+(?:\|[a-z]+)+)( .*)$", expand, text, flags=re.M)


def unfilled(text: str) -> list[str]:
    """Placeholders a filled block must no longer hold."""
    return re.findall(r"<[a-z][a-z ]*>|\"\.\.\.\"|hub\.example\.org", text)
