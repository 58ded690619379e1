"""The app as the client sees it: its HTTP API (``Api``), the ``uploads`` container (``upload``) and the backups
(``Backup``, read in place)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import requests

from .config import Config, ConfigError

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

# As the app's own name check (shared/names.py; this package is installed without the app): no backslash or control
# character in a part of a path.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")
TERMINAL = frozenset({"completed", "completed_with_errors", "failed", "cancelled", "rejected"})
UPLOADS = "uploads"
CENTRAL = "central"  # the partition (and uploads/ folder) of IoT Central data-export files


class ApiError(Exception):
    """The app refused a request or did not answer; the message is the app's own (code and message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.status, self.code, self.message = status, code, message


class Api:
    """The app's HTTP API (``/api``), with the function key in a header (never in a URL this client prints)."""

    def __init__(self, config: Config, *, timeout: float = 60) -> None:
        self.config = config
        self.timeout = timeout
        self.session = requests.Session()
        if config.key:
            self.session.headers["x-functions-key"] = config.key

    def call(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> Any:
        """One API call (``timeout``: seconds for this one, when it may take longer than most).

        Raises:
            ConfigError: a part of ``path`` (a hub, job id or bulk id as typed) is empty, ``.`` or ``..``, or holds a
                backslash or control character: the HTTP layer would resolve the dot segments and reach another route
                (``jobs/devhub/../../imports``), so nothing is sent.
        """
        for part in path.split("/"):
            if part in ("", ".", "..") or _UNSAFE.search(part):
                raise ConfigError(f"'{part}' in '{path}' is not a hub, job id or bulk id: check what you typed")
        url = f"{self.config.api}/{path}"
        try:
            reply = self.session.request(method, url, timeout=timeout or self.timeout, **kw)
        except requests.RequestException as exc:
            raise ApiError(0, "", f"the app at {self.config.url} does not answer ({type(exc).__name__})") from None
        try:
            body = reply.json()
        except ValueError:
            body = {}
        if reply.status_code >= 400:
            err = body.get("error", {}) if isinstance(body, dict) else {}
            raise ApiError(reply.status_code, err.get("code", ""), err.get("message", reply.reason or "refused"))
        return body

    def check_instance(self) -> None:
        """When the settings file names a local stack (``Config.instance``), refuse to talk to another app that holds
        its address (a second stack on the same machine, started after this one moved its ports).

        Raises:
            ConfigError: the app that answers is another instance.
        """
        want = self.config.instance
        if not want:
            return
        got = self.call("GET", "health").get("instance")
        if got != want:
            raise ConfigError(
                f"the app at {self.config.url} is not the local stack {self.config.settings_file} names (instance "
                f"{want}) but {'instance ' + got if got else 'an app without an instance id'}: another `make run` or "
                "program holds that port. Start this checkout's stack (`make run`, which prints its addresses), or "
                "choose the app with IOTJOBS_URL, --url or --settings"
            )

    def jobs(
        self, *, hub: str | None = None, states: str | None = None, limit: int = 50, source: str | None = None
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"hub": hub, "state": states, "limit": str(limit), "source": source}.items() if v}
        jobs: list[dict[str, Any]] = self.call("GET", "jobs", params=params)["jobs"]
        return jobs

    def job(self, hub: str, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.call("GET", f"jobs/{hub}/{job_id}")
        return job

    def job_of_upload(self, name: str, etag: str, *, hub: str | None, wait: float, poll: float = 0.5) -> dict[str, Any]:
        """The job of one version of an upload (``uploads/<name>`` as written with ``etag``), once the app has
        recorded it: found by that version, never by the name alone (an earlier upload of the same name has a job
        of its own).

        Raises:
            TimeoutError: no such job after ``wait`` seconds.
        """
        want = etag.strip('"')
        end = time.monotonic() + wait
        while True:
            for job in self.jobs(hub=hub, source=f"{UPLOADS}/{name}", limit=20):
                if (job.get("sourceEtag") or "").strip('"') == want:
                    return job
            if time.monotonic() > end:
                raise TimeoutError(
                    f"the app has recorded no job for {UPLOADS}/{name} after {wait:.0f} s: is its blob trigger "
                    "running? (the job monitor also picks up uploads missed by the trigger)"
                )
            time.sleep(poll)

    def follow(
        self, job: dict[str, Any], on_change: Callable[[dict[str, Any]], None], *, poll: float = 1.0
    ) -> dict[str, Any]:
        """Read ``job`` again until it has ended; ``on_change`` sees each new state or progress."""
        seen = None
        while True:
            now = (job["state"], job.get("progress"), job.get("waitingFor"))
            if now != seen:
                on_change(job)
                seen = now
            if job["state"] in TERMINAL:
                return job
            time.sleep(poll)
            job = self.job(job["hub"], job["jobId"])

    def report(self, job: dict[str, Any], name: str) -> bytes | None:
        """A report of a job, read with the job's short-lived link (None: no such report)."""
        link = job.get("links", {}).get(name)
        if not link:
            return None
        reply = requests.get(link, timeout=self.timeout)
        reply.raise_for_status()
        return reply.content


def upload(config: Config, path: Path, name: str, progress: Callable[[int, int | None], None] | None = None) -> str:
    """Stream ``path`` to ``uploads/<name>`` (blocks of 4 MiB, never the whole file in memory); returns the new
    version's ETag. An upload of that name already there is replaced: the new version gets its own job.

    Raises:
        ConfigError: no storage configured.
    """
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    service = _service(config, "where do uploads go?")
    blob = service.get_blob_client(UPLOADS, name)
    size = path.stat().st_size

    def send(stream: BinaryIO) -> str:
        result = blob.upload_blob(stream, length=size, overwrite=True, max_concurrency=2, progress_hook=progress)
        return str(result["etag"])

    with path.open("rb") as stream:
        try:
            return send(stream)
        except ResourceNotFoundError:  # no uploads container yet (the app makes it when it first runs)
            with contextlib.suppress(ResourceExistsError):
                service.create_container(UPLOADS)
            stream.seek(0)
            return send(stream)


def _service(config: Config, question: str) -> BlobServiceClient:
    from azure.storage.blob import BlobServiceClient

    if not config.storage:
        raise ConfigError(
            f"{question} set IOTJOBS_STORAGE to the storage account's connection string or blob endpoint "
            "(or DEVICE_STORAGE in local.settings.json)"
        )
    if config.storage.startswith(("https://", "http://")):
        from azure.identity import DefaultAzureCredential

        return BlobServiceClient(config.storage, credential=DefaultAzureCredential())
    return BlobServiceClient.from_connection_string(config.storage)


BACKUPS = "backups"
BACKUP_DEVICES, BACKUP_MANIFEST = "devices.txt", "manifest.json"
_STAMP = re.compile(r"\d{8}T\d{6}Z")


class Backup:
    """One complete backup folder (``backups/<hub>/<stamp>/`` with its manifest), read straight from storage."""

    def __init__(self, config: Config, hub: str | None, stamp: str) -> None:
        """Find the backup of ``hub`` (the only hub with backups when None) named ``stamp`` or ``latest``.

        Raises:
            ConfigError: no storage configured, no such backup, or several hubs and none named.
        """
        from azure.core.exceptions import ResourceNotFoundError

        service = _service(config, "where are the backups?")
        self.container = service.get_container_client(BACKUPS)
        try:
            names = [b.name for b in self.container.list_blobs(name_starts_with=f"{hub}/" if hub else None)]
        except ResourceNotFoundError:  # no backups container yet: no backup was ever taken here
            names = []
        complete: dict[str, list[str]] = {}
        for name in names:
            parts = name.split("/")
            if len(parts) == 3 and parts[2] == BACKUP_MANIFEST and _STAMP.fullmatch(parts[1]):
                complete.setdefault(parts[0], []).append(parts[1])
        if hub is None:
            if len(complete) != 1:
                raise ConfigError(
                    "which hub? give --hub"
                    + (f" (backups of: {', '.join(sorted(complete))})" if complete else " (no backups found)")
                )
            hub = next(iter(complete))
        stamps = sorted(complete.get(hub, []))
        if not stamps:
            raise ConfigError(f"hub '{hub}' has no complete backup in {BACKUPS}/: take one with `iotjobs export`")
        wanted = stamp.strip().strip("/").removeprefix(f"{hub}/")
        if wanted == "latest":
            wanted = stamps[-1]
        if wanted not in stamps:
            raise ConfigError(f"no complete backup '{hub}/{wanted}'; the newest are: {', '.join(stamps[-5:])}")
        self.hub, self.stamp = hub, wanted
        manifest = json.loads(self.container.download_blob(f"{hub}/{wanted}/{BACKUP_MANIFEST}").readall())
        self.includes_keys = bool(manifest.get("includesKeys"))

    def lines(self) -> Iterator[bytes]:
        """The backup's JSON lines, streamed (blocks of 4 MiB, never the whole file)."""
        carry = b""
        for chunk in self.container.download_blob(f"{self.hub}/{self.stamp}/{BACKUP_DEVICES}").chunks():
            parts = (carry + chunk).split(b"\n")
            carry = parts.pop()
            yield from parts
        if carry:
            yield carry
