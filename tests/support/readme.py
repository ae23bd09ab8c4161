"""README.md's shell command blocks, read for tests/e2e/test_readme.py.

A command block is a fenced block in one of RUN_LANGUAGES: ```console (commands after `$ `,
continued by a trailing backslash, each followed by the output it prints), ```sh (a script;
it must exit 0) and ```python (a script run with the environment's python; it must exit 0).
Every command block runs, unless the line just before its opening fence (blank lines aside)
is a marker with the reason it cannot run here:

    <!-- readme-test: skip: needs a Docker engine -->

Other blocks (```ts, diagrams) are not commands. In shown output, `…` stands for any text
within a line (ids, paths), and RFC 3339 / `YYYY-MM-DD HH:MM:SS` times match any time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RUN_LANGUAGES = frozenset({"console", "sh", "bash", "shell", "python"})
MARKER = re.compile(r"^<!--\s*readme-test:\s*skip:\s*(?P<reason>\S.*?)\s*-->$")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    skip: str | None  # the marker's reason


@dataclass(frozen=True)
class Command:
    line: int
    command: str
    output: list[str]


def command_blocks(markdown: str) -> list[Block]:
    """Every command block, in order, with its marker's reason if it has one. A malformed
    marker (or one before a block that is not a command block) is an error."""
    lines = markdown.splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = lines[i]
        if "readme-test:" in fence and not MARKER.match(fence.strip()):
            raise ValueError(f"README.md:{i + 1}: malformed marker {fence.strip()!r}")
        if not fence.startswith("```"):
            i += 1
            continue
        language = fence[3:].strip().split(" ")[0]
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: unclosed code block")
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        if language in RUN_LANGUAGES:
            text = "\n".join(lines[i + 1 : end]) + "\n"
            found.append(Block(i + 1, language, text, marker["reason"] if marker else None))
        elif marker:
            raise ValueError(f"README.md:{i + 1}: a marker before a ```{language} block")
        i = end + 1
    return found


def console_commands(block: Block) -> list[Command]:
    """The `$ ` commands of a console block, each with the output lines shown after it."""
    commands: list[Command] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            if lines[i].strip() and not commands:
                raise ValueError(f"README.md:{block.line + 1 + i}: output before any `$ ` command")
            i += 1
            continue
        start = i
        parts = [lines[i][2:]]
        while parts[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            parts.append(lines[i])
        output = []
        i += 1
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        while output and not output[-1].strip():
            output.pop()
        commands.append(Command(block.line + 1 + start, "\n".join(parts), output))
    return commands


def _pattern(shown: str) -> re.Pattern[str]:
    pieces = [
        re.escape(_TIME.sub("\0", piece)).replace("\0", _TIME.pattern) for piece in shown.split("…")
    ]
    return re.compile(".*?".join(pieces))


def output_matches(shown: list[str], printed: list[str]) -> bool:
    """Whether `printed` (what the command wrote, stdout and stderr) is the output shown:
    line for line, trailing blanks aside, with `…` and times as wildcards."""
    printed = [line.rstrip() for line in printed]
    while printed and not printed[-1]:
        printed.pop()
    shown = [line.rstrip() for line in shown]
    return len(shown) == len(printed) and all(
        _pattern(s).fullmatch(p) is not None for s, p in zip(shown, printed, strict=True)
    )
