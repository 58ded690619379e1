"""Where the client finds the app and its storage: command-line options, then environment variables, then a
``local.settings.json`` (the local stack writes one to ``.devstack/functions/``).

- ``IOTJOBS_URL``: the function app's address (``http://127.0.0.1:7071``), or a function URL as Azure shows it
  (``https://<app>.azurewebsites.net/api/jobs?code=<key>``: the key is taken from it).
- ``IOTJOBS_KEY``: a function key (sent as ``x-functions-key``).
- ``IOTJOBS_STORAGE``: the storage account of ``uploads/``: a connection string, or its blob endpoint
  (``https://<account>.blob.core.windows.net``) to sign in with Azure credentials (``az login``, a managed identity).
- In a ``local.settings.json``: ``Values`` may hold the three above; ``DEVICE_STORAGE`` (the app's own setting)
  stands for ``IOTJOBS_STORAGE`` and ``Host.LocalHttpPort`` for a local ``IOTJOBS_URL``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

SETTINGS_FILES = (Path("local.settings.json"), Path(".devstack/functions/local.settings.json"))


class ConfigError(ValueError):
    """Something the client needs is not configured; the message says what to set."""


@dataclass(frozen=True)
class Config:
    url: str  # scheme://host[:port], no path
    key: str | None = field(default=None, repr=False)
    storage: str | None = field(default=None, repr=False)  # connection string or blob endpoint URL
    settings_file: Path | None = None
    # The instance id of the local stack the settings file names (IOTJOBS_INSTANCE_ID), when the app's address came
    # from that file: the app that answers there must be that stack (GET /api/health), not another one on its port.
    instance: str | None = None

    @property
    def api(self) -> str:
        return f"{self.url}/api"


def _settings(path: Path | None) -> tuple[dict[str, str], Path | None]:
    """``Values`` (plus ``Host.LocalHttpPort`` as a URL) of the first settings file found."""
    candidates = [path] if path is not None else list(SETTINGS_FILES)
    for candidate in candidates:
        if candidate.is_file():
            try:
                doc = json.loads(candidate.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ConfigError(f"{candidate} is not JSON: {exc}") from None
            values = {str(k): str(v) for k, v in (doc.get("Values") or {}).items()}
            port = (doc.get("Host") or {}).get("LocalHttpPort")
            if port and "IOTJOBS_URL" not in values:
                values["IOTJOBS_URL"] = f"http://127.0.0.1:{int(port)}"
            return values, candidate
    if path is not None:
        raise ConfigError(f"no settings file at {path}")
    return {}, None


def split_function_url(url: str) -> tuple[str, str | None]:
    """``https://app/api/jobs?code=K`` -> (``https://app``, ``K``); a bare address -> (it, None)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"IOTJOBS_URL must be an http(s) address such as http://127.0.0.1:7071, not '{url}'")
    code = parse_qs(parts.query).get("code", [None])[0]
    return f"{parts.scheme}://{parts.netloc}", code


def load(
    *,
    url: str | None = None,
    key: str | None = None,
    settings: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """The configuration from options, then the environment, then a settings file.

    Raises:
        ConfigError: no address of the app anywhere.
    """
    env = os.environ if env is None else env
    path = settings or (Path(env["IOTJOBS_SETTINGS"]) if env.get("IOTJOBS_SETTINGS") else None)
    values, found = _settings(path)
    raw_url = url or env.get("IOTJOBS_URL") or values.get("IOTJOBS_URL")
    if not raw_url:
        raise ConfigError(
            "where is the app? set IOTJOBS_URL (and IOTJOBS_KEY), pass --url, or run from the repository while "
            "`make run` serves (it writes .devstack/functions/local.settings.json)"
        )
    base, code = split_function_url(raw_url)
    from_file = not (url or env.get("IOTJOBS_URL"))
    storage = env.get("IOTJOBS_STORAGE") or values.get("IOTJOBS_STORAGE") or values.get("DEVICE_STORAGE")
    return Config(
        url=base,
        key=key or env.get("IOTJOBS_KEY") or code or values.get("IOTJOBS_KEY"),
        storage=storage or None,
        settings_file=found,
        instance=(values.get("IOTJOBS_INSTANCE_ID") or None) if from_file else None,
    )
