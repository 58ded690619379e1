"""Storage that stops answering for a while (Azurite stopped during an import): the HTTP API answers 503
``StorageUnavailable`` with a Retry-After, the monitor logs one warning line per pass and no traceback, and the job
completes once storage is back."""

from __future__ import annotations

import json
import logging

import pytest

from emulators.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, free_port
from emulators.iothub import IoTHubEmulator
from shared import api
from shared.api_schemas import Request
from shared.iothub import JobStatus
from shared.ledger import JobState
from shared.services import monitor_pass, services

from .helpers import devices, services_on, wait_until


def test_storage_down_during_an_import_is_503_and_one_warning_per_pass_then_the_job_completes(
    own_azurite: Azurite, iothub: IoTHubEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    svc = services_on(own_azurite, iothub)
    uploads = svc.settings.containers.uploads
    svc.storage.ensure_container(uploads)
    body = "".join(json.dumps(d) + "\n" for d in devices(5)).encode()
    etag = svc.storage.upload_bytes(uploads, "fleet.jsonl", body)
    job = svc.on_upload(uploads, "fleet.jsonl", etag)
    assert job.state is JobState.RUNNING and job.hub_job_id
    hub = svc.engine.ctx.hubs["devhub"]
    hub_job_id = job.hub_job_id
    wait_until(lambda: hub.get_job(hub_job_id).status is JobStatus.COMPLETED, what="the hub job's completion")

    own_azurite.pause()
    try:
        reply = api.get_job(svc, Request(path={"hub": "devhub", "job_id": job.job_id}))
        assert reply.status == 503 and reply.body["error"]["code"] == "StorageUnavailable", reply.body
        assert int(reply.headers["Retry-After"]) > 0
        listed = api.list_jobs(svc, Request(query={"hub": "devhub"}))
        assert listed.status == 503 and listed.headers["Retry-After"]
        cold = api.list_jobs(lambda: services_on(own_azurite, iothub), Request(query={}))  # an instance starting now
        assert cold.status == 503 and cold.body["error"]["code"] == "StorageUnavailable", cold.body
        for _ in range(2):
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="shared"):
                svc.monitor()
            (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert record.levelno == logging.WARNING and record.exc_info is None
            assert "storage is not answering" in record.getMessage()
    finally:
        own_azurite.resume()

    def after_a_pass() -> JobState:
        svc.monitor()
        return svc.ledger.get("devhub", job_id).state

    job_id = job.job_id
    state = wait_until(after_a_pass, lambda s: s is not JobState.RUNNING, interval=0, what="the job's end")
    job = svc.ledger.get("devhub", job_id)
    assert state is JobState.COMPLETED and job.state is JobState.COMPLETED, job.failure_reason
    assert hub.get_registry_statistics().total == 5


def test_storage_down_while_an_instance_starts_is_one_warning_of_the_monitor(
    iothub: IoTHubEmulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there: storage refuses every connection
    monkeypatch.setenv("IOTHUB_HUBS", "devhub")
    monkeypatch.setenv("IOTHUB_DEVHUB_CONNECTION_STRING", iothub.connection_string())
    monkeypatch.setenv(
        "DEVICE_STORAGE",
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};TableEndpoint=http://127.0.0.1:{port}/{ACCOUNT};",
    )
    services.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="shared"):
            assert monitor_pass() == []
    finally:
        services.cache_clear()
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.exc_info is None and "storage is not answering" in record.getMessage()
