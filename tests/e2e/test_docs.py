"""The runnable blocks of README.md and docs/operations.md, run as a reader runs them against ``make run``'s stack:
verbatim, in order, one shell per file (a variable a block sets serves the next), from a folder that has the
repository's ``.venv`` and ``samples``, with ``.venv/bin`` on the PATH. ``curl`` fails on an HTTP error status
(``--fail-with-body``), so a call to a route that does not exist fails its block instead of printing a 404."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from emulators.azurite import REPO
from tests.e2e.devstack_process import start_devstack
from tests.unit.test_docs import CHECKED, Block, shell_blocks

# Runs on one worker with the other module of make run's stacks (tests/conftest.py ONE_WORKER).

USUAL_URL = "http://127.0.0.1:7071"  # the address the docs give; the stack's own when its port moved
PRELUDE = 'set -eo pipefail\ncurl() { command curl --fail-with-body --silent --show-error "$@"; }\n'


@dataclass(frozen=True)
class LocalStack:
    state: Path
    url: str  # the function app's address, as the stack wrote it in its settings


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """``make run`` (its demo, then serving), stopped with Ctrl-C at the end, as a reader leaves it."""
    state = tmp_path_factory.mktemp("devstack-docs")
    proc = start_devstack(state)
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("Serving until Ctrl-C"):
                break
        # a stack that stopped before serving ends its output without the line (it may not be reaped yet)
        assert seen and seen[-1].startswith("Serving until Ctrl-C") and proc.poll() is None, "".join(seen)
        values = json.loads((state / "functions" / "local.settings.json").read_text())["Values"]
        yield LocalStack(state, values["IOTJOBS_URL"])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=120)


def run_blocks(blocks: list[Block], stack: LocalStack, workdir: Path) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(exist_ok=True)
    for name in (".venv", "samples"):
        if not (workdir / name).exists():
            (workdir / name).symlink_to(REPO / name)
    script = PRELUDE
    for block in blocks:
        # Only the address changes, and only when another program held the usual port: the rest runs verbatim.
        script += f"echo '@@ {block}' >&2\n" + block.code.replace(USUAL_URL, stack.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTJOBS_") and k != "REQUESTS_CA_BUNDLE"}
    env.update(
        PATH=f"{REPO / '.venv' / 'bin'}:{env['PATH']}",
        PYTHONPATH=str(REPO),
        # iotjobs finds the stack as it does from the repository root (.devstack/functions/local.settings.json)
        IOTJOBS_SETTINGS=str(stack.state / "functions" / "local.settings.json"),
    )
    return subprocess.run(
        ["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=900, check=False
    )


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.name)
def test_the_runnable_blocks_of_the_docs_run_against_make_run(local_stack: LocalStack, path: Path) -> None:
    blocks = [b for b in shell_blocks(path) if b.runnable]
    assert blocks
    done = run_blocks(blocks, local_stack, local_stack.state.parent / f"reader-{path.stem}")
    failed_in = [line for line in done.stderr.splitlines() if line.startswith("@@ ")][-1:]
    assert done.returncode == 0, f"{failed_in}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    # every block ran, to its end
    assert [line for line in done.stderr.splitlines() if line.startswith("@@ ")] == [f"@@ {b}" for b in blocks]


def test_a_block_that_calls_a_wrong_route_fails(local_stack: LocalStack, tmp_path: Path) -> None:
    # What the runbook had: APP ends with /api, so $APP/api/restores is a 404, which must fail the block.
    wrong = Block(
        REPO / "README.md", 0, "runnable",
        f"APP={USUAL_URL}/api KEY=local-dev-function-key-0000000000000000000000\n"
        'curl -X POST "$APP/api/restores" -H "x-functions-key: $KEY" -d \'{"hub": "devhub", "backup": "latest"}\'\n',
    )  # fmt: skip
    done = run_blocks([wrong], local_stack, tmp_path / "reader")
    assert done.returncode != 0 and "404" in done.stderr, done.stdout + done.stderr
