"""iotjobs' output for scripts (issue 24 item 4): listings through JMESPath, laid out as az lays out a --query
result, and the bash completion script generated from the parser, run by a real bash."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iotjobs import completion
from iotjobs.cli import main, parser
from iotjobs.output import emit

JOBS = [{"jobId": "1", "state": "failed", "tags": {"a": 1}}, {"jobId": "2", "state": "completed", "tags": None}]


def _emit(capsys: pytest.CaptureFixture[str], output: str, expression: str | None) -> str:
    args = argparse.Namespace(output=output, json=output == "json", jmespath=expression)
    emit(args, JOBS, ("job", "state"), lambda js: ([j["jobId"], j["state"]] for j in js))
    return capsys.readouterr().out


def test_a_listing_prints_whole_tsv_json_and_jmespath_results(capsys: pytest.CaptureFixture[str]) -> None:
    assert _emit(capsys, "tsv", None) == "job\tstate\n1\tfailed\n2\tcompleted\n"
    assert json.loads(_emit(capsys, "json", "[?state=='failed'].jobId")) == ["1"]
    assert _emit(capsys, "tsv", "[].jobId") == "1\n2\n"  # a list of scalars: one a line
    assert _emit(capsys, "tsv", "[].{id: jobId, tags: tags}") == '1\t{"a":1}\n2\t\n'  # objects: values, JSON whole


def test_jmespath_outside_a_listing_is_refused_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "http://127.0.0.1:9", "job", "devhub", "x", "--jmespath", "state"]) == 2
    assert "applies to listings" in capsys.readouterr().err


def _complete(script: Path, line: str) -> list[str]:
    """What bash offers for ``line`` (the last word is the one completed)."""
    code = (
        f'source {script}; read -ra COMP_WORDS <<< "$1"; [[ "$1" == *" " ]] && COMP_WORDS+=(""); '
        'COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _iotjobs; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", code, "_", line], capture_output=True, text=True, check=True)
    return [w for w in done.stdout.splitlines() if w]


def test_the_bash_completion_completes_commands_options_and_choices(tmp_path: Path) -> None:
    script = tmp_path / "iotjobs.bash"
    done = subprocess.run(
        [sys.executable, "-m", "iotjobs", "completion", "bash"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr  # no app, key or settings needed
    script.write_text(done.stdout)
    assert _complete(script, "iotjobs dev") == ["devices"]
    assert _complete(script, "iotjobs devices ") == ["list", "show", "count"]
    assert _complete(script, "iotjobs devices list --sh") == ["--show-keys"]
    assert _complete(script, "iotjobs backups list -o t") == ["table", "tsv"]
    assert _complete(script, "iotjobs --url http://x rep") == ["report"]  # a global option's value is skipped
    assert "complete -F _iotjobs iotjobs" in completion.zsh(parser()) and "bashcompinit" in completion.zsh(parser())


def _zsh() -> str:
    """zsh, installed with apt-get when it is missing (as the browser test installs Chromium); skipped, saying why,
    only where it cannot be."""
    found = shutil.which("zsh")
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("zsh completion test: zsh is not installed; run `sudo apt-get install zsh` to run this test")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "zsh"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            pytest.skip(f"zsh completion test: `{' '.join(command)}` failed ({done.returncode})")
    return shutil.which("zsh") or pytest.skip("zsh completion test: apt-get installed zsh but it is not on PATH")


# An interactive zsh in a pseudo-terminal (zsh's own zpty module), a word typed and Tab pressed: what the line reads
# then is what a person sees completed.
_ZPTY = r"""
zmodload zsh/zpty
zpty z 'zsh -f -i'
zpty -w z "PS1='> '; PATH=$1:\$PATH; source $2"
zpty -w -n z "$3"$'\t'
zpty -r z out "*$4*" && print -r -- FOUND
zpty -d z
"""


@pytest.mark.parametrize(("typed", "completed"), [("iotjobs dev", "devices"), ("iotjobs devices li", "list")])
def test_the_zsh_completion_completes_in_a_real_zsh(tmp_path: Path, typed: str, completed: str) -> None:
    zsh = _zsh()
    script = tmp_path / "iotjobs.zsh"
    done = subprocess.run(
        [sys.executable, "-m", "iotjobs", "completion", "zsh"], capture_output=True, text=True, check=True
    )
    script.write_text(done.stdout)
    driver = tmp_path / "drive.zsh"
    driver.write_text(_ZPTY)
    bin_dir = str(Path(sys.executable).parent)  # where the iotjobs command is installed
    line = f"{typed.rsplit(' ', 1)[0]} {completed}"
    try:  # the read blocks until the completed line shows: a completion that never comes ends at the timeout
        ran = subprocess.run(
            [zsh, "-f", str(driver), bin_dir, str(script), typed, line],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"zsh never completed {typed!r} to {line!r}: {exc.stdout!r}")
    assert "FOUND" in ran.stdout, ran.stdout[-400:] + ran.stderr[-400:]
