"""Run the local Functions host as a child process (``make run`` and the end-to-end tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from emulators.azurite import ACCOUNT_KEY, REPO, Azurite, free_port
from emulators.iotcentral import IoTCentralEmulator
from emulators.iothub import IoTHubEmulator

from .host import FUNCTION_KEY, MASTER_KEY

# Azurite's well-known development key under another account name: an example, not an account anywhere.
CENTRAL_ARCHIVE_STORAGE = (
    f"DefaultEndpointsProtocol=https;AccountName=devarchive;AccountKey={ACCOUNT_KEY};EndpointSuffix=core.windows.net"
)


def stack_settings(
    azurite: Azurite, hub: IoTHubEmulator, central: IoTCentralEmulator | None = None, **overrides: str
) -> dict[str, str]:
    """Settings for the app on a local Azurite, IoT Hub emulator and (optionally) IoT Central emulator, with the
    same names as in production. The IoT Central emulator must share the hub's CA (``tls_dir``)."""
    values = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": azurite.connection_string,
        "DEVICE_STORAGE": azurite.connection_string,
        "IOTHUB_HUBS": "devhub",
        "IOTHUB_DEVHUB_CONNECTION_STRING": hub.connection_string("iothubowner"),
        "IOTHUB_STORAGE_AUTH": "keyBased",
        "BACKUP_SCHEDULE": "0 0 2 * * *",
        "BACKUP_RETENTION_DAYS": "7",
        "MONITOR_SCHEDULE": "*/2 * * * * *",
        "REQUESTS_CA_BUNDLE": str(hub.ca_path),
        # The local stack's demo and its tests count the jobs an upload makes: no snapshot plan job ahead of an
        # import unless a test asks for one (tests/e2e/test_fleet.py); the app's default is "changes".
        "IMPORT_SNAPSHOTS": "off",
    }
    if central is not None:
        values["IOTCENTRAL_APP_URL"] = central.url
        values["IOTCENTRAL_API_TOKEN"] = central.api_token()
        # The app settings the sample data-export file refers to (local development values only).
        # A storage account IoT Central (a cloud service) would write telemetry to, never the local Azurite: a fixed
        # value, so that a stack started again on other ports does not read as a changed destination (its endpoint
        # is compared; only its key comes back masked).
        values["CENTRAL_ARCHIVE_STORAGE"] = CENTRAL_ARCHIVE_STORAGE
        values["CENTRAL_ALERTS_API_KEY"] = "local-dev-alerts-api-key-0000"
    values.update(overrides)
    return values


@dataclass
class HostProcess:
    """One host process serving ``function_app.py`` with ``values`` as its settings; ``start`` again after
    ``kill`` models a restart."""

    workdir: Path
    values: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # Its own session: a Ctrl-C in the terminal then reaches only the parent, which stops the host with SIGTERM
    # (make run), instead of interrupting it mid-work.
    own_session: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "host.log"

    def start(self, *extra: str, timeout: float = 60) -> HostProcess:
        """Start and wait for ``/api/health``; ``extra`` are host options such as ``--crash-at``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "local.settings.json"
        path.write_text(json.dumps({"IsEncrypted": False, "Values": self.values}, indent=2))
        path.chmod(0o600)  # it holds connection strings
        env = {k: v for k, v in os.environ.items() if k not in self.values}
        env["PYTHONPATH"] = str(REPO)
        command = [sys.executable, "-m", "emulators.functions_host", "--settings", str(path), "--port", str(self.port)]
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*command, "--blob-poll", "0.3", *extra],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.own_session,
            )
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Functions host exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            try:
                if requests.get(f"{self.url}/api/health", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"the Functions host did not answer:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 120) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Ask the host to shut down cleanly (SIGTERM: a SIGINT is lost on a host started with SIGINT ignored, as
        under nohup); kill it if it has not exited after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = FUNCTION_KEY,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> requests.Response:
        headers = {**({"x-functions-key": key} if key else {}), **(headers or {})}
        return requests.request(method, f"{self.url}/api/{path}", headers=headers, timeout=60, **kw)

    def fire(self, function: str) -> None:
        r = requests.post(
            f"{self.url}/admin/functions/{function}", headers={"x-functions-key": MASTER_KEY}, json={}, timeout=300
        )
        assert r.status_code == 202, r.text
