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
