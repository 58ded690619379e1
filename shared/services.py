"""The app's long-lived objects (storage, ledger, hub clients, pipeline), built once per process from settings.

Triggers call ``services()``; it reads the environment on first use, so a missing setting is reported by the
first invocation (as a clear ``ConfigError``) rather than crashing the host at import time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from azure.data.tables import TableServiceClient

from .backups import apply_retention
from .central import Central, is_central_upload, reject_unconfigured
from .config import ConfigError, Settings, StorageAuth
from .iotcentral import IoTCentralClient
from .iothub import IoTHubClient
from .ledger import Job, JobState, Ledger
from .pipeline import TRANSIENT, Pipeline
from .storage import BlobRef, Storage, StorageSettings

logger = logging.getLogger(__name__)


def _table_service(storage: StorageSettings) -> TableServiceClient:
    if storage.connection_string:
        return TableServiceClient.from_connection_string(storage.connection_string)
    if not storage.table_uri:
        raise ValueError("identity-based storage needs DEVICE_STORAGE__tableServiceUri for the job ledger")
    return TableServiceClient(storage.table_uri, credential=storage.credential())


def _hub_client(hub: str, settings: Settings) -> IoTHubClient:
    conf = settings.hubs[hub]
    if conf.connection_string:
        try:
            return IoTHubClient.from_connection_string(conf.connection_string)
        except ValueError as exc:  # the message names the missing part, never the key
            var = hub.upper().replace("-", "_")
            raise ConfigError(f"IOTHUB_{var}_CONNECTION_STRING: {exc}") from None
    from azure.identity import DefaultAzureCredential

    assert conf.host_name is not None
    return IoTHubClient.from_token_credential(conf.host_name, DefaultAzureCredential())


def _central_client(settings: Settings) -> IoTCentralClient | None:
    conf = settings.central
    if conf is None:
        return None
    if conf.api_token:
        return IoTCentralClient.from_api_token(conf.app_url, conf.api_token)
    from azure.identity import DefaultAzureCredential

    return IoTCentralClient.from_token_credential(conf.app_url, DefaultAzureCredential())


@dataclass
class Services:
    settings: Settings
    storage: Storage
    ledger: Ledger
    pipeline: Pipeline
    central: Central | None = None

    @classmethod
    def build(cls, settings: Settings, env: Mapping[str, str] | None = None) -> Services:
        """``env``: where the data-export file's app-setting references are looked up (default: the process's)."""
        storage = Storage.from_settings(settings.storage, sas_lifetime=settings.sas_lifetime)
        ledger = Ledger.from_service(_table_service(settings.storage), settings.ledger_table)
        hubs = {name: _hub_client(name, settings) for name in settings.hubs}
        pipeline = Pipeline(
            ledger,
            storage,
            hubs,
            containers=settings.containers,
            identity_based=settings.storage_auth is StorageAuth.IDENTITY_BASED,
            max_errors=settings.max_errors,
            submit_grace=settings.submit_grace,
            backup_retention_days=settings.backup_retention_days,
            retry_base=settings.retry_backoff,
        )
        for container in (settings.containers.uploads, settings.containers.reports, settings.containers.backups):
            storage.ensure_container(container)
        client = _central_client(settings)
        central = None
        if client is not None:
            central = Central(
                ledger,
                storage,
                client,
                os.environ if env is None else env,
                settings.containers,
                stale_after=settings.submit_grace,
            )
        return cls(settings, storage, ledger, pipeline, central)

    def require_central(self) -> Central:
        if self.central is None:
            raise ConfigError("IOTCENTRAL_APP_URL is not set: give the IoT Central app's URL to use data export")
        return self.central

    def hub_for_upload(self, name: str) -> str:
        """The hub an upload is for: its first path segment when that names a configured hub, else the default."""
        first = name.split("/", 1)[0]
        return first if "/" in name and first in self.settings.hubs else self.settings.default_hub

    def on_upload(self, container: str, name: str, etag: str, hub: str | None = None) -> Job:
        """Accept an upload (idempotent per version) and start it if the hub is idle: the blob trigger's work, and
        the HTTP import's. ``hub`` defaults to the one the upload's path names. A file under ``central/`` is an IoT
        Central data-export file and is applied instead."""
        if is_central_upload(name):  # by name alone: no hub ever imports a data-export file
            ref = BlobRef(container, name, etag)
            if self.central is None:
                job = reject_unconfigured(self.ledger, self.storage, self.settings.containers, ref, datetime.now(UTC))
            else:
                job = self.central.accept(ref)
            logger.info("data-export file %s/%s is job %s (%s)", container, name, job.job_id, job.state)
            return job
        hub = hub or self.hub_for_upload(name)
        job = self.pipeline.accept_upload(BlobRef(container, name, etag), hub)
        logger.info("upload %s/%s is job %s (%s) on hub %s", container, name, job.job_id, job.state, hub)
        if job.state is JobState.QUEUED:
            job = self._start(job)
        return job

    def export(self, hub: str, *, include_keys: bool, source: str, key: str | None = None) -> Job:
        """Queue an export of ``hub`` (``key``: a repeated request finds the queued one) and start it if idle."""
        job, created = self.pipeline.queue_export(hub, include_keys=include_keys, source=source, key=key)
        return self._start(job) if created else job

    def restore(self, hub: str, backup: str) -> Job:
        """Queue a restore of a backup folder of ``hub`` and start it if the hub is idle."""
        job = self.pipeline.accept_restore(hub, backup)
        return self._start(job) if job.state is JobState.QUEUED else job

    def _start(self, job: Job) -> Job:
        """Start the hub's next job now if the hub is idle; ``job`` as it stands afterwards.

        When this call did not move it, another instance may be (the blob trigger also sees an upload made through
        the API): the job is read again, so a reply never shows ``queued`` for a job already being submitted."""
        started = self.pipeline.start_next(job.hub)
        if started is not None and started.job_id == job.job_id:
            return started
        return self.ledger.get(job.hub, job.job_id)

    def monitor(self) -> list[Job]:
        """One pass of the job monitor over every hub; one hub's trouble never stops the others."""
        changed: list[Job] = []
        for hub in self.settings.hubs:
            with _pass(f"monitor pass over hub {hub}"):
                changed.extend(self.pipeline.poll(hub))
        with _pass("sweeping work containers"):
            self.pipeline.sweep_work_containers(self.settings.orphan_after)
        if self.central is not None:
            with _pass("resuming interrupted IoT Central applies"):
                changed.extend(self.central.resume_stale())
        return changed

    def nightly_backup(self, now: datetime | None = None) -> list[Job]:
        """Queue an export of every hub (once per hour slot, so a re-fired timer adds nothing) and prune."""
        now = now or datetime.now(UTC)
        jobs = []
        for hub in self.settings.hubs:
            key = f"nightly-{hub}-{now:%Y%m%d%H}"
            jobs.append(self.export(hub, include_keys=self.settings.backup_include_keys, source="nightly", key=key))
            # Also here, not only when a backup lands: a hub whose exports keep failing still gets pruned.
            apply_retention(
                self.storage,
                self.settings.containers.backups,
                hub,
                days=self.settings.backup_retention_days,
                now=now,
            )
        if self.central is not None and self.settings.central is not None and self.settings.central.backup:
            # Last, so that an IoT Central outage fails the invocation (visibly) without holding up the hubs.
            self.central.backup(retention_days=self.settings.backup_retention_days)
        return jobs


@contextlib.contextmanager
def _pass(what: str) -> Iterator[None]:
    """One part of a monitor pass: a passing fault is one warning line, anything else an error with its traceback;
    neither stops the other parts, and the next pass tries again."""
    try:
        yield
    except TRANSIENT as exc:
        logger.warning("%s: %s; the next pass retries", what, exc)
    except Exception:
        logger.exception("%s failed; the next pass retries", what)


@functools.cache
def services() -> Services:
    """The process-wide services, built from the environment on first use (a failure is not cached)."""
    return Services.build(Settings.from_env(os.environ))
