"""The function app run by the local Functions runner in a child process, as a user runs it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from emulators.azurite import REPO, Azurite, free_port
from emulators.functions_host import FUNCTION_KEY, MASTER_KEY
from emulators.iothub import IoTHubEmulator

TERMINAL = {"completed", "completed_with_errors", "failed", "cancelled", "rejected"}


def settings(azurite: Azurite, hub: IoTHubEmulator, **overrides: str) -> dict[str, str]:
    values = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": azurite.connection_string,
        "DEVICE_STORAGE": azurite.connection_string,
        "IOTHUB_HUBS": "devhub",
        "IOTHUB_DEVHUB_CONNECTION_STRING": hub.connection_string("iothubowner"),
        "IOTHUB_STORAGE_AUTH": "keyBased",
        "BACKUP_SCHEDULE": "0 0 2 * * *",
        "BACKUP_RETENTION_DAYS": "7",
        "MONITOR_SCHEDULE": "* * * * * *",  # every second: tests wait on outcomes, never on fixed sleeps
        "SUBMIT_GRACE_SECONDS": "1",
        "REQUESTS_CA_BUNDLE": str(hub.ca_path),
    }
    values.update(overrides)
    return values


@dataclass
class App:
    """One runner process; ``start`` again after ``kill`` to model a restart."""

    workdir: Path
    values: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "host.log"

    def start(self, *extra: str, timeout: float = 60) -> App:
        path = self.workdir / "local.settings.json"
        path.write_text(json.dumps({"IsEncrypted": False, "Values": self.values}))
        env = {k: v for k, v in os.environ.items() if k not in self.values}
        env["PYTHONPATH"] = str(REPO)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "emulators.functions_host", "--settings", str(path), "--port", str(self.port),
                 "--blob-poll", "0.3", *extra],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.starts += 1
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the runner exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if requests.get(f"{self.url}/api/health", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"the runner did not answer:\n{self.log()}")
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 120) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
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

    # --- talking to it ---------------------------------------------------------------------------

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

    def jobs(self, **query: str) -> list[dict[str, Any]]:
        r = self.call("GET", "jobs", params={"limit": "200", **query})
        assert r.status_code == 200, r.text
        jobs: list[dict[str, Any]] = r.json()["jobs"]
        return jobs

    def job(self, hub: str, job_id: str) -> dict[str, Any]:
        r = self.call("GET", f"jobs/{hub}/{job_id}")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def wait_jobs(self, count: int, *, states: Iterable[str] = TERMINAL, timeout: float = 300) -> list[dict[str, Any]]:
        """Wait until ``count`` jobs exist and all are in ``states``; the timeout only stops a hung test."""
        wanted = set(states)
        end = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            if len(jobs) >= count and all(j["state"] in wanted for j in jobs):
                return jobs
            if time.monotonic() > end:
                raise TimeoutError(f"jobs did not settle: {jobs}\n{self.log()[-4000:]}")
            time.sleep(0.2)


@dataclass
class Stack:
    azurite: Azurite
    hub: IoTHubEmulator
    app: App

    @property
    def blobs(self) -> BlobServiceClient:
        return BlobServiceClient.from_connection_string(self.azurite.connection_string)

    @property
    def tables(self) -> TableServiceClient:
        return TableServiceClient.from_connection_string(self.azurite.connection_string)

    def drop(self, name: str, lines: Iterable[dict[str, Any] | str]) -> str:
        data = "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()
        blobs = self.blobs
        ensure(blobs, "uploads")
        return str(blobs.get_blob_client("uploads", name).upload_blob(data, overwrite=True)["etag"])

    def names(self, container: str, prefix: str = "") -> list[str]:
        try:
            return [b.name for b in self.blobs.get_container_client(container).list_blobs(name_starts_with=prefix)]
        except Exception:
            return []

    def read(self, container: str, name: str) -> bytes:
        return bytes(self.blobs.get_blob_client(container, name).download_blob().readall())


def control(hub: IoTHubEmulator, path: str, body: dict[str, Any]) -> None:
    """Drive the IoT Hub emulator's control plane (faults, pausing jobs)."""
    r = requests.post(f"{hub.url}/_emulator/{path}", json=body, verify=str(hub.ca_path), timeout=10)
    r.raise_for_status()


def wait_until(condition: Callable[[], object], *, timeout: float = 120) -> None:
    """Poll until ``condition()`` is truthy; the timeout only stops a hung test."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


def ensure(blobs: BlobServiceClient, container: str) -> None:
    with contextlib.suppress(ResourceExistsError):
        blobs.create_container(container)
