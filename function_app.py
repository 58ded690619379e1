"""Azure Functions entry point (Python v2 model): triggers only; the work lives in ``shared/``.

- ``import_on_upload``: blob trigger on ``uploads/{name}`` (SDK-type ``BlobClient``: the file is streamed, never
  held in memory) -> validate, stage, record, start. ``uploads/central/...`` is an IoT Central data-export
  file instead -> check, plan, apply. Its source is the app setting ``UPLOADS_TRIGGER_SOURCE``, read when the app
  is indexed: ``EventGrid`` (the only source on the Flex Consumption plan) or ``LogsAndContainerScan`` (polling).
- ``nightly_backup``: timer (``BACKUP_SCHEDULE``, default 02:00 UTC) -> export every hub into ``backups/``, back
  up IoT Central's data export, apply retention.
- ``job_monitor``: timer (``MONITOR_SCHEDULE``, default every 30 s) -> follow jobs, finish them, start the next,
  and give a job to any upload no trigger delivery turned into one.
- HTTP API under ``/api`` (function key), JSON in and out; ``health`` is anonymous; ``status`` is the status page
  (HTML) and ``openapi.json`` describes the API.
"""

from __future__ import annotations

import logging
import os

import azure.functions as func
from azure.core.exceptions import ResourceNotFoundError
from azurefunctions.extensions.bindings import blob

from shared import api, names
from shared.config import BACKUP_SCHEDULE, MONITOR_SCHEDULE, schedule, uploads_trigger_source
from shared.logs import quiet_sdk_logs
from shared.services import monitor_pass, services
from shared.storage import UploadChanged

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
logger = logging.getLogger("function_app")
quiet_sdk_logs()


def _request(req: func.HttpRequest) -> api.Request:
    """The request's parts as plain values, for the checks and handlers in shared/ (route parameters named as
    the route declares them)."""
    return api.Request(
        body=req.get_body(),
        content_type=req.headers.get("content-type", ""),
        query=dict(req.params),
        path=dict(req.route_params),
    )


def _respond(reply: api.Reply) -> func.HttpResponse:
    return func.HttpResponse(
        reply.content(), status_code=reply.status, mimetype=reply.media, headers=dict(reply.headers)
    )


@app.blob_trigger(
    arg_name="client",
    path="uploads/{name}",
    connection="DEVICE_STORAGE",
    source=func.BlobSource(uploads_trigger_source(os.environ)),
)
def import_on_upload(client: blob.BlobClient) -> None:
    if not names.addressable(client.blob_name):
        # Any request for this name would reach another blob (see shared/names.py): left in place, never read.
        logger.warning(
            "upload %s/%s left in place: its name has a . or .. folder", client.container_name, client.blob_name
        )
        return
    try:
        etag = client.get_blob_properties().etag
    except ResourceNotFoundError:
        # Already archived by an earlier delivery of this blob: its job records what happened.
        logger.info("upload %s/%s is gone (already processed)", client.container_name, client.blob_name)
        return
    try:
        services().on_upload(client.container_name, client.blob_name, etag)
    except UploadChanged:
        # Replaced between this delivery and our snapshot: the new version has a delivery of its own.
        logger.info("upload %s/%s was replaced; its new version is handled", client.container_name, client.blob_name)


@app.timer_trigger(arg_name="timer", schedule=schedule(BACKUP_SCHEDULE, os.environ), use_monitor=True)
def nightly_backup(timer: func.TimerRequest) -> None:
    jobs = services().nightly_backup()
    logger.info("nightly backup queued %d export job(s) (past due: %s)", len(jobs), timer.past_due)


@app.timer_trigger(arg_name="timer", schedule=schedule(MONITOR_SCHEDULE, os.environ), use_monitor=False)
def job_monitor(timer: func.TimerRequest) -> None:
    for job in monitor_pass():
        logger.info("job %s on %s is %s (%d%%)", job.job_id, job.hub, job.state, job.progress)


@app.route(route="imports", methods=["POST"])
def start_import(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.start_import(services, _request(req)))


@app.route(route="exports", methods=["POST"])
def start_export(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.start_export(services, _request(req)))


@app.route(route="restores", methods=["POST"])
def start_restore(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.start_restore(services, _request(req)))


@app.route(route="jobs", methods=["GET"])
def list_jobs(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.list_jobs(services, _request(req)))


@app.route(route="jobs/{hub}/{job_id}", methods=["GET"])
def get_job(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.get_job(services, _request(req)))


@app.route(route="jobs/{hub}/{job_id}/cancel", methods=["POST"])
def cancel_job(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.cancel_job(services, _request(req)))


@app.route(route="imports/plan", methods=["POST"])
def plan_import(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.plan_import(services, _request(req)))


@app.route(route="jobs/{hub}/{job_id}/approve", methods=["POST"])
def approve_job(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.approve_job(services, _request(req)))


@app.route(route="jobs/{hub}/{job_id}/rollback", methods=["POST"])
def rollback_job(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.rollback_job(services, _request(req)))


@app.route(route="bulk", methods=["POST"])
def start_bulk(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.start_bulk(services, _request(req)))


@app.route(route="bulk/{id}/run", methods=["POST"])
def run_bulk(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.run_bulk(services, _request(req)))


@app.route(route="migrations", methods=["POST"])
def start_migration(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.start_migration(services, _request(req)))


@app.route(route="migrations/{hub}/{job_id}", methods=["GET"])
def get_migration(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.get_migration(services, _request(req)))


@app.route(route="central/plan", methods=["POST"])
def central_plan(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.central_plan(services, _request(req)))


@app.route(route="central/apply", methods=["POST"])
def central_apply(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.central_apply(services, _request(req)))


@app.route(route="central/backups", methods=["POST"])
def central_backup(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.central_backup(services, _request(req)))


@app.route(route="hubs/{hub}/devices", methods=["GET"])
def list_devices(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.list_devices(services, _request(req)))


@app.route(route="hubs/{hub}/devices/{device_id}", methods=["GET"])
def get_device(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.get_device(services, _request(req)))


@app.route(route="backups", methods=["GET"])
def list_backups(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.list_backups(services, _request(req)))


@app.route(route="backups/{hub}/{stamp}", methods=["GET"])
def get_backup(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.get_backup(services, _request(req)))


@app.route(route="status", methods=["GET"])
def status_page(req: func.HttpRequest) -> func.HttpResponse:
    """The status page (HTML with the essentials rendered in; the key comes as ?code= and the page passes it on to
    status.json)."""
    return _respond(api.status_page(_request(req), services))


@app.route(route="status.json", methods=["GET"])
def status(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.status(services, _request(req)))


@app.route(route="openapi.json", methods=["GET"])
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(api.openapi(_request(req)))


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness probe: answers without touching storage or the hub."""
    return _respond(api.health(_request(req)))
