"""The shell blocks of README.md and docs/operations.md: each says, in an HTML comment above its fence (invisible on
GitHub), whether it runs as it is against ``make run``'s stack (``<!-- runnable -->``, run by tests/e2e/test_docs.py)
or why not (``<!-- not runnable: <why> -->``); and the docs agree on what ``$APP`` is."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKED = (REPO / "README.md", REPO / "docs" / "operations.md")
SHELL_FENCE = re.compile(r"^```(bash|sh|shell|console)\s*$")
MARK = re.compile(r"^<!-- (runnable|not runnable: \S.*\S) -->$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    mark: str | None  # "runnable", "not runnable: why", or None (unmarked)
    code: str

    @property
    def runnable(self) -> bool:
        return self.mark == "runnable"

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def shell_blocks(path: Path) -> list[Block]:
    """The fenced shell blocks of a Markdown file, with the mark on the last non-blank line above each."""
    lines = path.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        if SHELL_FENCE.match(lines[i]):
            above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = MARK.match(above)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            found.append(Block(path, i + 1, mark.group(1) if mark else None, "\n".join(lines[i + 1 : end]) + "\n"))
            i = end
        i += 1
    return found


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.name)
def test_every_shell_block_says_whether_it_runs_and_runnable_ones_have_no_placeholders(path: Path) -> None:
    blocks = shell_blocks(path)
    assert blocks and any(b.runnable for b in blocks)
    unmarked = [str(b) for b in blocks if b.mark is None]
    assert unmarked == [], "mark each: <!-- runnable --> or <!-- not runnable: why -->"
    for block in blocks:
        if block.runnable:  # a placeholder (<job id>) cannot run as it is: the block must not be runnable
            code = re.sub(r"#.*", "", block.code)  # comments may name placeholders
            assert not re.search(r"<[a-z][a-z ]*>", code), f"{block}: a placeholder in a runnable block"


def test_the_docs_agree_that_app_is_the_api_address() -> None:
    # README and the runbook set APP=<address>/api, so every call is $APP/<route>; $APP/api/<route> is a 404.
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "$APP/api/" not in text and "${APP}/api/" not in text, path.name
        for value in re.findall(r"\bAPP=(\S+)", text):
            assert value.endswith("/api"), f"{path.name}: APP={value}"


def test_the_block_reader_sees_marks_fences_and_placeholders(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- runnable -->\n```bash\necho one\n```\n\n<!-- not runnable: Azure only -->\n\n```sh\naz login\n```\n"
        "```bash\nunmarked\n```\n```text\nnot shell\n```\n"
    )
    blocks = shell_blocks(doc)
    assert [(b.line, b.mark, b.code) for b in blocks] == [
        (2, "runnable", "echo one\n"),
        (8, "not runnable: Azure only", "az login\n"),
        (11, None, "unmarked\n"),
    ]
