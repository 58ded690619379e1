"""House rules checked mechanically: shared/ stays free of azure.functions; triggers are wired as declared."""

from __future__ import annotations

import re
from pathlib import Path

from . import registered

REPO = Path(__file__).resolve().parents[2]


def test_shared_never_imports_azure_functions() -> None:
    pattern = re.compile(r"^\s*(import azure\.functions|from azure\.functions|from azure import functions)", re.M)
    offenders = [p for p in (REPO / "shared").rglob("*.py") if pattern.search(p.read_text())]
    assert (REPO / "shared" / "__init__.py").exists()
    assert offenders == []


def test_function_app_registers_health() -> None:
    functions = registered.functions()
    assert "health" in functions
    trigger = functions["health"].get_trigger().get_dict_repr()
    assert trigger["route"] == "health"


def test_host_and_sample_settings() -> None:
    import json

    host = json.loads((REPO / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"]["version"] == "[4.*, 5.0.0)"
    assert host["extensions"]["blobs"]["poisonBlobThreshold"] == 5
    sample = json.loads((REPO / "local.settings.sample.json").read_text())
    assert sample["Values"]["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert not (REPO / "local.settings.json").exists() or "local.settings.json" in (REPO / ".gitignore").read_text()


def test_a_job_changes_state_only_through_advance() -> None:
    # ledger.advance checks every move against the transition table; a replace(..., state=...) elsewhere would not.
    setter = re.compile(r"replace\([^)]*\bstate=", re.S)
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "shared").rglob("*.py")
        if p.name != "_model.py" and setter.search(p.read_text())
    ]
    assert offenders == []


PENDING: set[str] = set()  # links allowed to lead nowhere yet (none)


def _tracked_text_files() -> list[Path]:
    import subprocess

    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    paths = [REPO / n for n in names.splitlines() if not n.startswith("tests/data/") and n != "package-lock.json"]
    return [p for p in paths if p.is_file() and p.suffix in {".py", ".md", ".json", ".toml", ".txt", ".html", ""}]


def test_no_file_points_outside_the_repository() -> None:
    # The project's reference folder lives beside the repository, never in a clone: nothing may point there.
    outside = re.compile(
        r"\.\./shared|/work/|(?<![\w/])(?:seeds|reference)/[\w-]+\.md"
        r"|\b(?:iothub-api|iotcentral-api|functions-and-azurite|DESIGN|STYLE)\.md"
    )
    files = [p for p in _tracked_text_files() if p != Path(__file__).resolve()]  # this file names the patterns
    assert len(files) > 100
    offenders = [str(p.relative_to(REPO)) for p in files if outside.search(p.read_text(errors="replace"))]
    assert offenders == []


def test_every_relative_link_in_the_docs_leads_to_a_file_here() -> None:
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    docs = [p for p in _tracked_text_files() if p.suffix == ".md"]
    assert REPO / "README.md" in docs and REPO / "docs" / "architecture.md" in docs
    broken = []
    for doc in docs:
        for target in link.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (doc.parent / target).resolve()
            if str(resolved.relative_to(REPO)) in PENDING:
                continue
            if not resolved.exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert broken == []
