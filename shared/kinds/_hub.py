"""What every kind run as an IoT Hub import or export job shares: submitting (the hub's errors told apart),
following, adopting after a crash, cancelling, and the per-job container the hub reads and writes."""

from __future__ import annotations

import contextlib

from ..engine import Busy, Context, Ending, Refused, Throttled, Unanswered
from ..iothub import (
    IoTHubClient,
    IoTHubError,
    IoTHubNotFound,
    IoTHubServerError,
    IoTHubThrottled,
    IoTHubUnavailable,
    JobQuotaExceeded,
)
from ..iothub import Job as HubJob
from ..iothub import JobStatus as HubStatus
from ..ledger import Job, JobState

WORK_DEVICES_BLOB = "devices.txt"  # in a work container: what an import job reads, what an export job writes
ERRORS_BLOB = "importErrors.log"  # what an import job writes to its output container
REGISTRY_BLOB = "registry.txt"  # in a plan's or rollback's work container: the export it reads
CONFIG_ERRORS_BLOB = "importConfigErrors.log"  # ... and, with configurations, its refusals of them (C# SDK sample)


class HubJobKind:
    """Base of the kinds that run as a hub job; a subclass says which job it creates (``create``)."""

    partitioned_by_hub = True

    def create(self, job: Job, client: IoTHubClient, container_url: tuple[str, str], ctx: Context) -> HubJob:
        """Create the hub job; ``container_url`` is (input, output) of the job's work container."""
        raise NotImplementedError

    def submit(self, job: Job, ctx: Context) -> HubJob | Ending:
        ctx.storage.ensure_container(job.work_container)  # an export's is made here; an import's exists already
        try:
            return self.create(job, ctx.hubs[job.hub], _urls(job, ctx), ctx)
        except JobQuotaExceeded as exc:
            raise Busy("the hub is busy with an import/export job the app did not start") from exc
        except IoTHubThrottled as exc:
            # A 429 means the hub did not take the request: nothing to reconcile, just wait longer each time.
            raise Throttled(
                f"the hub throttled the submission ({exc.code_name or exc.status})", retry_after=exc.retry_after
            ) from exc
        except (IoTHubUnavailable, IoTHubServerError) as exc:
            raise Unanswered(f"the hub did not answer the submission ({exc})") from exc
        except IoTHubError as exc:
            raise Refused(f"the hub refused the job: {exc}") from exc

    def follow(self, job: Job, ctx: Context) -> HubJob:
        assert job.hub_job_id is not None
        return ctx.hubs[job.hub].get_job(job.hub_job_id)

    def adopt(self, job: Job, ctx: Context) -> HubJob | None:
        suffix = f"/{job.work_container}"
        mine = [
            h
            for h in ctx.hubs[job.hub].list_jobs()
            if any(c is not None and c.rstrip("/").endswith(suffix) for c in (h.input_container, h.output_container))
        ]
        return mine[-1] if mine else None

    def cancel(self, job: Job, ctx: Context) -> None:
        assert job.hub_job_id is not None
        with contextlib.suppress(IoTHubNotFound):  # the hub forgot it; the monitor will close the job
            ctx.hubs[job.hub].cancel_job(job.hub_job_id)

    def closed(self, job: Job, ctx: Context) -> None:
        """Nothing to drop: the work container goes with every job."""


def _urls(job: Job, ctx: Context) -> tuple[str, str]:
    if ctx.identity_based:
        url = ctx.storage.sas.container_url(job.work_container)
        return url, url
    return (
        ctx.storage.sas.container_sas_url(job.work_container, "rl"),
        ctx.storage.sas.container_sas_url(job.work_container, "rwdl"),
    )


def export_registry(
    job: Job,
    client: IoTHubClient,
    container_url: tuple[str, str],
    ctx: Context,
    *,
    keys: bool = True,
    configurations: bool = False,
) -> HubJob:
    """An export of the whole registry (keys included unless ``keys`` is false; with ``configurations``, the hub's
    configurations beside it) into the job's own work container, as ``REGISTRY_BLOB``: what a plan, a rollback or a
    migration's verification joins with its own side. The container goes with the job; no key reaches a report."""
    return client.create_export_job(
        container_url[1],
        output_blob_name=REGISTRY_BLOB,
        exclude_keys=not keys,
        identity_based=ctx.identity_based,
        include_configurations=configurations,
    )


def export_devices(
    job: Job, client: IoTHubClient, container_url: tuple[str, str], ctx: Context, *, configurations: bool
) -> HubJob:
    """An export of the registry as a backup holds it (``WORK_DEVICES_BLOB``, keys as the job asks; configurations
    beside it when asked), into the job's work container: a backup's, or a migration's source."""
    return client.create_export_job(
        container_url[1],
        exclude_keys=not job.include_keys,
        identity_based=ctx.identity_based,
        include_configurations=configurations,
    )


def export_unfinished(job: Job, hub_job: HubJob, nothing_done: str) -> Ending | None:
    """The ending of a job whose registry export was cancelled or failed (``nothing_done`` says what did not
    happen), or None when the export completed."""
    if hub_job.status is HubStatus.CANCELLED:
        return Ending(job, JobState.CANCELLED, f"cancelled on the hub; {nothing_done}")
    if hub_job.status is HubStatus.FAILED:
        return Ending(job, JobState.FAILED, f"the export failed: {hub_job.failure_reason or 'no reason given'}")
    return None
