"""The app's long-lived objects (storage, ledger, hub clients, the job engine), built once per process from settings.

Triggers call ``services()``; it reads the environment on first use, so a missing setting is reported by the
first invocation (as a clear ``ConfigError``) rather than crashing the host at import time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.data.tables import TableServiceClient

from .backups import apply_retention, locate_backup
from .central import PARTITION as CENTRAL
from .central import Central, is_central_upload
from .config import ConfigError, Settings, StorageAuth
from .engine import TRANSIENT, Context, JobEngine, utcnow
from .fleet.bulk import Bulk, read_manifest, write_bulk
from .iotcentral import IoTCentralClient
from .iothub import IoTHubClient
from .kinds import nightly_key, registry, rollback_refusal
from .kinds.migration import import_key, migration_refusal, verify_key
from .ledger import HubSlot, Job, JobKind, JobNotFound, JobState, Ledger, idempotency_key
from .storage import (
    TABLE_RETRY,
    BlobRef,
    Storage,
    StorageSettings,
    StorageUnavailable,
    UploadChanged,
    reachable,
)

logger = logging.getLogger(__name__)


def _table_service(storage: StorageSettings) -> TableServiceClient:
    if storage.connection_string:
        return TableServiceClient.from_connection_string(storage.connection_string, **TABLE_RETRY)
    if not storage.table_uri:
        raise ValueError("identity-based storage needs DEVICE_STORAGE__tableServiceUri for the job ledger")
    return TableServiceClient(storage.table_uri, credential=storage.credential(), **TABLE_RETRY)


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
    """What the triggers ask for (import an upload, back up, restore, run the monitor), on the job engine."""

    settings: Settings
    storage: Storage
    ledger: Ledger
    engine: JobEngine
    central: Central | None = None

    @classmethod
    def build(cls, settings: Settings, env: Mapping[str, str] | None = None) -> Services:
        """``env``: where the data-export file's app-setting references are looked up (default: the process's)."""
        storage = Storage.from_settings(settings.storage, sas_lifetime=settings.sas_lifetime)
        with reachable("the job ledger (creating its table)"):  # storage down at a cold start: 503, not 500
            table = _table_service(settings.storage).create_table_if_not_exists(settings.ledger_table)
        ledger = Ledger(table)
        hubs = {name: _hub_client(name, settings) for name in settings.hubs}
        containers = settings.containers
        for container in (containers.uploads, containers.reports, containers.backups, containers.snapshots):
            storage.ensure_container(container)
        client = _central_client(settings)
        central = None
        if client is not None:
            central = Central(storage, client, os.environ if env is None else env, settings.containers)
        kinds, off = registry(
            retention_days=settings.backup_retention_days,
            central=central,
            include_configurations=settings.backup_include_configurations,
            snapshots=settings.import_snapshots,
            approval={name: hub.plan_max_updates for name, hub in settings.hubs.items() if hub.require_plan},
            plan_backup_max_age=settings.plan_backup_max_age,
        )
        ctx = Context(
            storage,
            ledger,
            settings.containers,
            hubs,
            utcnow,
            identity_based=settings.storage_auth is StorageAuth.IDENTITY_BASED,
            max_errors=settings.max_errors,
        )
        engine = JobEngine(
            ctx,
            HubSlot(table),
            kinds,
            off,
            submit_grace=settings.submit_grace,
            retry_base=settings.retry_backoff,
            denied_for=settings.storage_denied_for,
        )
        return cls(settings, storage, ledger, engine, central)

    def require_central(self) -> Central:
        if self.central is None:
            raise ConfigError("IOTCENTRAL_APP_URL is not set: give the IoT Central app's URL to use data export")
        return self.central

    def hub_for_upload(self, name: str) -> str:
        """The hub an upload is for: its first path segment when that names a configured hub, else the default."""
        first = name.split("/", 1)[0]
        return first if "/" in name and first in self.settings.hubs else self.settings.default_hub

    def on_upload(self, container: str, name: str, etag: str, hub: str | None = None) -> Job:
        """Accept an upload (idempotent per version) and start it if its partition is idle: the blob trigger's
        work, and the HTTP import's. ``hub`` defaults to the one the upload's path names. A file under ``central/``
        is an IoT Central data-export file and is applied instead."""
        ref = BlobRef(container, name, etag)
        if is_central_upload(name):  # by name alone: no hub ever imports a data-export file
            job = self.engine.accept(self.engine.draft(JobKind.CENTRAL_APPLY, CENTRAL, source=ref))
        else:
            job = self.engine.accept(self.engine.draft(JobKind.IMPORT, hub or self.hub_for_upload(name), source=ref))
        logger.info("%s/%s is job %s (%s) on %s", container, name, job.job_id, job.state, job.hub)
        if job.state is JobState.AWAITING_APPROVAL:
            self._approval_plan(job)
        return self._start(job)

    # --- fleet operations: preview, approval, rollback --------------------------------------------------

    def plan(self, hub: str, ref: BlobRef) -> Job:
        """Queue a preview of importing ``ref`` into ``hub`` (changes nothing) and start it if the hub is idle. The
        blob is read in place: never one in ``uploads/``, which would be imported (and archived) on arrival."""
        self._check_hub(hub)
        if ref.container == self.settings.containers.uploads:
            raise ValueError("a file in uploads/ is imported on arrival: plan it from elsewhere")
        draft = self.engine.draft(JobKind.PLAN, hub, source=ref, keyed_by_source=False)
        return self._start(self.engine.accept(draft, once_while_active=True))

    def _approval_plan(self, job: Job) -> Job:
        """The plan an approver reads: a preview of the held import's staged file (its normalized lines; blank
        lines of the upload are not counted in its line numbers). Once per held import."""
        draft = replace(
            self.engine.draft(JobKind.PLAN, job.hub, key=f"approval-{job.job_id}"),
            source=f"{job.work_container}/devices.txt",
        )
        plan = self.engine.accept(draft)
        if plan.state is not JobState.REJECTED and f"plan job {plan.job_id}" not in (job.waiting_for or ""):
            job = self.ledger.save(replace(job, waiting_for=f"{job.waiting_for} (plan job {plan.job_id})"))
        self._start(plan)
        return job

    def approve(self, job: Job) -> Job:
        """Let a held import run: it is queued (behind the jobs already queued) and started if the hub is idle.

        Raises:
            CannotApprove: the job is not awaiting approval.
        """
        if job.state is not JobState.AWAITING_APPROVAL:
            raise CannotApprove(f"job {job.job_id} is {job.state}, not awaiting approval")
        note = f"approved at {utcnow().isoformat()}"
        job = self.ledger.move(replace(job, waiting_for=None, notes=(*job.notes, note)), JobState.QUEUED, now=utcnow())
        return self._start(job)

    def rollback(self, target: Job, *, force: bool = False) -> Job:
        """Queue the rollback of an ended import (a request sent twice finds the active rollback).

        Raises:
            CannotRollBack: the job cannot be rolled back; the message says why.
        """
        why = rollback_refusal(self.engine.ctx, target)
        if why is not None:
            raise CannotRollBack(why)
        for active in self.ledger.iter_active(target.hub):
            if active.kind is JobKind.ROLLBACK and active.rollback_of == target.job_id:
                return active
        draft = replace(self.engine.draft(JobKind.ROLLBACK, target.hub), rollback_of=target.job_id, force=force)
        return self._start(self.engine.accept(draft))

    def bulk(self, hub: str, query: str, action: str, args: Mapping[str, Any]) -> tuple[Bulk, Job | None]:
        """Act on a query, first step: write ``bulk/<id>/devices.txt`` from the query's devices and queue a plan
        of it (changes nothing). ``run_bulk`` imports it. No plan (None) when the file has no line: the query
        selected no device the action applies to, and an empty file is no import.

        Raises:
            InvalidBulk: the query or args are refused; IoTHubHTTPError: the hub refused the query.
        """
        self._check_hub(hub)
        client = self.engine.ctx.hubs[hub]
        made = write_bulk(
            self.storage, self.settings.containers.bulk, client, hub, query=query, action=action, args=args
        )
        if made.result.devices == 0:
            return made, None
        return made, self.plan(hub, made.ref)

    def run_bulk(self, bulk_id: str) -> Job:
        """Import a generated file as a normal import job (validated, snapshotted, reported, undoable); a request
        sent twice finds the same job (an import is keyed by its source's version).

        Raises:
            NotABulk: no such bulk id, or its file is gone (a regenerateKeys file is deleted after its import).
            NothingToRun: its query selected no device the action applies to.
        """
        container = self.settings.containers.bulk
        manifest = read_manifest(self.storage, container, bulk_id)
        if manifest is None:
            raise NotABulk(f"no bulk '{bulk_id}': POST /api/bulk makes one")
        if not manifest.get("devices"):
            raise NothingToRun(f"bulk '{bulk_id}' selected no device its action applies to: there is nothing to run")
        name = f"{bulk_id}/devices.txt"
        props = self.storage.properties(BlobRef(container, name))
        if props is None:
            listed, _ = self.ledger.list_jobs(manifest["hub"], source=f"{container}/{name}", limit=20)
            imports = [j for j in listed if j.kind is JobKind.IMPORT]
            if imports:
                return imports[0]
            raise NotABulk(f"bulk '{bulk_id}' has no file any more (a regenerateKeys file is deleted after its run)")
        return self.on_upload(container, name, props.etag, manifest["hub"])

    def migrate(self, source: str, target: str, *, include_keys: bool, configurations: bool, mode: str) -> Job:
        """Queue the migration of ``source``'s registry to ``target`` (its first job: the source's export) and start
        it if the source hub is idle. A request sent twice finds the migration between the two that is under way.

        Raises:
            CannotMigrate: the two hubs or the mode are refused; the message says why.
        """
        why = migration_refusal(self.engine.ctx, source, target, mode)
        if why is not None:
            raise CannotMigrate(why)
        for active in self.ledger.iter_active(source):
            if active.kind is JobKind.MIGRATION and active.peer_hub == target:
                return active
        for active in self.ledger.iter_active(target):
            if active.kind in (JobKind.MIGRATION_IMPORT, JobKind.MIGRATION_VERIFY) and active.peer_hub == source:
                assert active.migration_of is not None
                return self.ledger.get(source, active.migration_of)
        draft = replace(
            self.engine.draft(JobKind.MIGRATION, source),
            peer_hub=target,
            import_mode=mode,
            include_keys=include_keys,
            include_configurations=configurations,
        )
        return self._start(self.engine.accept(draft))

    def migration(self, source: str, migration_id: str) -> tuple[Job, Job | None, Job | None]:
        """A migration's three jobs as they stand: the source's export, the import, the verification (None: not
        queued yet).

        Raises:
            JobNotFound: no migration with that id from that hub.
        """
        exported = self.ledger.get(source, migration_id)
        if exported.kind is not JobKind.MIGRATION or exported.peer_hub is None:
            raise JobNotFound(migration_id)
        return self.migration_steps(exported)

    def migration_steps(self, exported: Job) -> tuple[Job, Job | None, Job | None]:
        """The three jobs of the migration whose first job is ``exported``."""
        target = exported.peer_hub
        if target is None or target not in self.settings.hubs:  # configured away since: its jobs cannot be read
            return exported, None, None
        return (
            exported,
            self.ledger.find_by_key(target, import_key(exported.job_id)),
            self.ledger.find_by_key(target, verify_key(exported.job_id)),
        )

    def export(self, hub: str, *, include_keys: bool, key: str | None = None) -> Job:
        """Queue a backup of ``hub`` (``key``: a repeated request finds the queued one) and start it if idle."""
        self._check_hub(hub)
        draft = replace(self.engine.draft(JobKind.EXPORT, hub, key=key), include_keys=include_keys)
        return self._start(self.engine.accept(draft))

    def restore(self, hub: str, backup: str) -> Job:
        """Queue a restore of a backup folder of ``hub`` and start it if the hub is idle.

        Raises:
            NotABackup: no complete backup under that name.
        """
        self._check_hub(hub)
        ref = locate_backup(self.storage, self.settings.containers.backups, hub, backup)
        # Not keyed: the same backup may be restored again later; a request sent twice finds the active job.
        draft = self.engine.draft(JobKind.RESTORE, hub, source=ref, keyed_by_source=False)
        return self._start(self.engine.accept(draft, once_while_active=True))

    def wait(self, job: Job, timeout: timedelta, *, poll: float = 0.2) -> Job:
        """``job`` once it has ended, or as it stands after ``timeout`` (when another instance is running it)."""
        deadline = time.monotonic() + timeout.total_seconds()
        while not job.state.is_terminal and time.monotonic() < deadline:
            time.sleep(poll)
            job = self.ledger.get(job.hub, job.job_id)
        return job

    def _check_hub(self, hub: str) -> None:
        if hub not in self.settings.hubs:
            raise ValueError(f"unknown hub '{hub}': configured hubs are {', '.join(self.settings.hubs)}")

    def _start(self, job: Job) -> Job:
        """Start the partition's next job now if it is idle; ``job`` as it stands afterwards.

        When this call did not move it, another instance may be (the blob trigger also sees an upload made through
        the API): the job is read again, so a reply never shows ``queued`` for a job already being submitted."""
        if job.state is not JobState.QUEUED:
            return job
        started = self.engine.start_next(job.hub)
        if started is not None and started.job_id == job.job_id:
            return started
        return self.ledger.get(job.hub, job.job_id)

    def partitions(self) -> list[str]:
        """The ledger partitions the monitor follows: every hub, and IoT Central's when it is configured."""
        return [*self.settings.hubs, *([CENTRAL] if self.central is not None else [])]

    def monitor(self) -> list[Job]:
        """One pass of the job monitor over every partition; one's trouble never stops the others. Storage that
        does not answer stops the whole pass (every part needs it): one warning line, and the next pass retries."""
        changed: list[Job] = []
        try:
            for partition in self.partitions():
                with _pass(f"monitor pass over {partition}"):
                    changed.extend(self.engine.monitor_pass(partition))
            with _pass("sweeping work containers"):
                self.engine.sweep_work_containers(self.settings.orphan_after)
            with _pass("looking for uploads no trigger delivered"):
                changed.extend(self.sweep_uploads())
        except StorageUnavailable as exc:
            logger.warning("monitor pass: %s; the next pass retries", exc)
        return changed

    def sweep_uploads(self, now: datetime | None = None) -> list[Job]:
        """Give a job to every upload older than ``upload_sweep_after`` that has none: a blob that was there before
        the Event Grid subscription existed, or whose events Event Grid gave up on, is never left unprocessed.
        Idempotent like a delivery (the job is keyed by the upload version)."""
        cutoff = (now or datetime.now(UTC)) - self.settings.upload_sweep_after
        uploads = self.settings.containers.uploads
        found = []
        for blob in self.storage.blobs(uploads):
            if blob.last_modified > cutoff:
                continue  # a delivery may be on its way
            if self.ledger.find_key_anywhere(idempotency_key(uploads, blob.name, blob.etag)) is not None:
                continue
            logger.warning("upload %s/%s had no job long after it arrived: starting it", uploads, blob.name)
            try:
                found.append(self.on_upload(uploads, blob.name, blob.etag))
            except UploadChanged:
                continue  # replaced meanwhile: its new version is swept or delivered in turn
        return found

    def nightly_backup(self, now: datetime | None = None) -> list[Job]:
        """Queue an export of every hub (once per hour slot, so a re-fired timer adds nothing) and prune."""
        now = now or datetime.now(UTC)
        jobs = []
        for hub in self.settings.hubs:
            key = nightly_key(hub, now)
            jobs.append(self.export(hub, include_keys=self.settings.backup_include_keys, key=key))
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


class CannotApprove(Exception):
    """The job is not awaiting approval; the message says what it is."""


class NotABulk(Exception):
    """No generated file under that bulk id; the message says why."""


class CannotMigrate(Exception):
    """The migration cannot start; the message says why."""


class NothingToRun(Exception):
    """A bulk whose file has no line (its query selected no device its action applies to)."""


class CannotRollBack(Exception):
    """The job cannot be rolled back; the message says why and what to do instead."""


@contextlib.contextmanager
def _pass(what: str) -> Iterator[None]:
    """One part of a monitor pass: a passing fault is one warning line, anything else an error with its traceback;
    neither stops the other parts, and the next pass tries again."""
    try:
        yield
    except StorageUnavailable:
        raise  # the whole pass stops: see Services.monitor
    except TRANSIENT as exc:
        logger.warning("%s: %s; the next pass retries", what, exc)
    except Exception:
        logger.exception("%s failed; the next pass retries", what)


def monitor_pass() -> list[Job]:
    """The job monitor timer's work: one pass (``Services.monitor``). Storage down while this instance builds its
    services is one warning line as well, not a failed invocation with a traceback: the next pass retries."""
    try:
        svc = services()
    except StorageUnavailable as exc:
        logger.warning("monitor pass: %s; the next pass retries", exc)
        return []
    return svc.monitor()


@functools.cache
def services() -> Services:
    """The process-wide services, built from the environment on first use (a failure is not cached)."""
    return Services.build(Settings.from_env(os.environ))
