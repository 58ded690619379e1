"""How iotjobs finds the app and its storage, and how it shortens what it lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iotjobs.cli import cut, exit_code, listing
from iotjobs.client import TERMINAL
from iotjobs.config import ConfigError, load
from shared.ledger import TERMINAL_STATES


def _settings(tmp_path: Path, values: dict[str, str], port: int | None = None) -> Path:
    doc: dict[str, object] = {"IsEncrypted": False, "Values": values}
    if port:
        doc["Host"] = {"LocalHttpPort": port}
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_function_url_as_azure_shows_it_gives_the_address_and_the_key() -> None:
    config = load(env={"IOTJOBS_URL": "https://app.azurewebsites.net/api/jobs?code=abc123"})
    assert (config.url, config.key, config.api) == (
        "https://app.azurewebsites.net",
        "abc123",
        "https://app.azurewebsites.net/api",
    )
    assert "abc123" not in repr(config)  # a key never shows in a repr or a traceback


def test_the_environment_wins_over_the_settings_file_and_options_win_over_both(tmp_path: Path) -> None:
    path = _settings(tmp_path, {"DEVICE_STORAGE": "UseDevelopmentStorage=true", "IOTJOBS_KEY": "file-key"}, port=7099)
    from_file = load(settings=path, env={})
    assert (from_file.url, from_file.key, from_file.storage) == (
        "http://127.0.0.1:7099",
        "file-key",
        "UseDevelopmentStorage=true",
    )
    env = {"IOTJOBS_SETTINGS": str(path), "IOTJOBS_URL": "http://127.0.0.1:8000", "IOTJOBS_KEY": "env-key"}
    assert (load(env=env).url, load(env=env).key) == ("http://127.0.0.1:8000", "env-key")
    assert load(url="http://127.0.0.1:9000", key="opt", env=env).key == "opt"


def test_no_address_anywhere_is_a_usage_error_that_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no local.settings.json here, nor a .devstack/
    with pytest.raises(ConfigError, match="IOTJOBS_URL"):
        load(env={})
    with pytest.raises(ConfigError, match="http"):
        load(env={"IOTJOBS_URL": "ftp://example"})


def test_outcomes_map_to_distinct_exit_codes() -> None:
    codes = {
        s: exit_code({"state": s}) for s in ("completed", "rejected", "failed", "completed_with_errors", "cancelled")
    }
    assert codes["completed"] == 0
    assert len(set(codes.values())) == 5 and 2 not in codes.values()  # 2 is a usage error


def test_a_listing_says_how_many_more_the_report_has_and_long_messages_end_in_an_ellipsis() -> None:
    assert listing(["a", "b"], 2, "x") == ["a", "b"]
    assert listing(["a", "b"], 9, "(see the report)") == ["a", "b", "… and 7 more (see the report)"]
    long = "word " * 40
    assert len(cut(long, 50)) == 50 and cut(long, 50).endswith("…")
    assert cut("short") == "short"


def test_the_instance_the_settings_file_names_is_checked_only_when_its_address_is_used(tmp_path: Path) -> None:
    path = _settings(tmp_path, {"IOTJOBS_URL": "http://127.0.0.1:7071", "IOTJOBS_INSTANCE_ID": "devstack-1"})
    assert load(settings=path, env={}).instance == "devstack-1"
    # an address given another way is the user's choice: no stack to hold it to
    assert load(settings=path, env={"IOTJOBS_URL": "http://127.0.0.1:7999"}).instance is None
    assert load(settings=path, url="http://127.0.0.1:7999", env={}).instance is None


def test_the_client_ends_following_a_job_on_the_servers_terminal_states() -> None:
    # iotjobs is packaged alone (it cannot import shared/): its copy must stay the ledger's set.
    assert {s.value for s in TERMINAL_STATES} == TERMINAL
