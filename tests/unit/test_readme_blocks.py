"""How tests/e2e/test_readme.py reads README.md: which blocks are commands, which carry a skip
marker, what a console block's commands and outputs are, and when an output matches."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.readme import command_blocks, console_commands, output_matches

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

SAMPLE = """# Title

<!-- readme-test: skip: needs a Docker engine -->

```sh
docker compose up
```

```sh
kubectl apply -f deploy/k8s
```

```ts
const x = 1;
```

```console
$ grpcurl -plaintext \\
    localhost:50051 list
a.Service

$ true
$ echo two; echo lines
two
lines

```

```python
print("hi")
```
"""


def test_a_marker_skips_only_the_block_right_after_it() -> None:
    blocks = command_blocks(SAMPLE)
    assert [(b.language, b.skip) for b in blocks] == [
        ("sh", "needs a Docker engine"),
        ("sh", None),  # unmarked: it runs (and fails here), so it cannot slip by
        ("console", None),
        ("python", None),
    ]
    assert blocks[1].text == "kubectl apply -f deploy/k8s\n" and blocks[1].line == 9


@pytest.mark.parametrize(
    "text",
    [
        "<!-- readme-test: skip -->\n```sh\nls\n```\n",  # no reason
        "<!-- readme-test: skp: typo -->\n```sh\nls\n```\n",
        "<!-- readme-test: skip: not a command -->\n```ts\nx\n```\n",
        "```sh\nls\n",  # never closed
    ],
)
def test_malformed_markers_and_blocks_are_errors(text: str) -> None:
    with pytest.raises(ValueError):
        command_blocks(text)


def test_console_commands_with_continuations_and_their_output() -> None:
    console = command_blocks(SAMPLE)[2]
    commands = console_commands(console)
    assert [(c.command, c.output) for c in commands] == [
        ("grpcurl -plaintext \\\n    localhost:50051 list", ["a.Service"]),
        ("true", []),
        ("echo two; echo lines", ["two", "lines"]),
    ]
    assert commands[0].line == 18


def test_output_matching() -> None:
    assert output_matches(["a", "b"], ["a  ", "b", "", ""])
    assert not output_matches(["a", "b"], ["a"])
    assert not output_matches(["a"], ["a", "b"])
    assert output_matches(["rcn_…  done"], ["rcn_5f0c9a  done"])
    assert not output_matches(["rcn_…  done"], ["rcn_5f0c9a  failed"])
    assert output_matches(["at 2026-01-01T00:00:00Z ok"], ["at 2027-12-03T08:00:15.400Z ok"])
    assert output_matches(["2026-01-01 00:00:00  x"], ["2026-12-03 08:09:10  x"])
    assert not output_matches(['"version": "2"'], ['"version": "1"'])  # not an id or a time
    assert not output_matches(["a.b"], ["axb"])  # the rest is literal


def test_every_command_block_of_the_readme_runs_or_says_why_not() -> None:
    blocks = command_blocks((ROOT / "README.md").read_text())
    assert len([b for b in blocks if b.skip is None]) >= 5
    for block in blocks:
        if block.language == "console":
            assert console_commands(block), f"README.md:{block.line}: no `$ ` command"
