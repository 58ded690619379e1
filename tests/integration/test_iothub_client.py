"""shared.iothub.IoTHubClient against the emulator: jobs to completion, typed errors, retries, auth."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import requests

from emulators.azurite import free_port
from emulators.iothub import IoTHubEmulator
from shared.iothub import (
    EntraCredential,
    IoTHubAuthError,
    IoTHubClient,
    IoTHubNotFound,
    IoTHubServerError,
    IoTHubThrottled,
    IoTHubUnavailable,
    JobQuotaExceeded,
    JobStatus,
    JobType,
    RetryPolicy,
)

from .helpers import Storage, control, device_line, wait_for

FAST = RetryPolicy(max_retries=6, backoff_factor=0.01, backoff_max=0.05, total_timeout=30)


def counting_session() -> tuple[requests.Session, list[int]]:
    seen: list[int] = []
    session = requests.Session()
    session.hooks["response"].append(lambda r, *a, **k: seen.append(r.status_code))
    return session, seen


def client(emu: IoTHubEmulator, policy: str = "iothubowner", **kw: Any) -> IoTHubClient:
    return IoTHubClient.from_connection_string(emu.connection_string(policy), retry=FAST, **kw)


def test_import_job_followed_to_completion(iothub: IoTHubEmulator, storage: Storage) -> None:
    src, out = storage.container("in"), storage.container("out")
    storage.upload_lines(src, [device_line(f"c-{i}") for i in range(5)], name="batch.txt")
    hub = client(iothub)
    job = hub.create_import_job(storage.sas_url(src, "rl"), storage.sas_url(out, "rwd"), input_blob_name="batch.txt")
    assert job.type is JobType.IMPORT and job.status is JobStatus.ENQUEUED
    assert job.input_container is not None and "sig=" not in job.input_container  # SAS stripped from the model
    final = wait_for(lambda: hub.get_job(job.job_id))
    assert final.status is JobStatus.COMPLETED and final.progress == 100 and final.end_time is not None
    assert hub.get_registry_statistics().total == 5
    assert job.job_id in {j.job_id for j in hub.list_jobs()}


def test_busy_hub_is_a_typed_quota_error(iothub: IoTHubEmulator, storage: Storage) -> None:
    out = storage.container("out")
    control(iothub, "jobs", {"paused": True})
    hub = client(iothub)
    first = hub.create_export_job(storage.sas_url(out, "rwd"))
    with pytest.raises(JobQuotaExceeded) as busy:
        hub.create_export_job(storage.sas_url(out, "rwd"))
    assert (busy.value.status, busy.value.code, busy.value.code_name) == (403, 403003, "JobQuotaExceeded")
    assert busy.value.request_id
    cancelled = hub.cancel_job(first.job_id)
    assert cancelled is not None and cancelled.status is JobStatus.CANCELLED
    with pytest.raises(IoTHubNotFound):
        hub.get_job("no-such-job")


def test_retries_ride_out_injected_faults(iothub: IoTHubEmulator) -> None:
    control(iothub, "faults", {"rate": 0.4, "statuses": [429, 500, 503], "retryAfter": 0, "seed": 11})
    session, seen = counting_session()
    hub = client(iothub, session=session)
    for _ in range(20):
        assert hub.get_registry_statistics().total == 0
    assert {429, 500, 503} <= set(seen)  # faults happened, and every call still succeeded
    assert seen.count(200) == 20


def test_retries_give_up_with_the_typed_error(iothub: IoTHubEmulator) -> None:
    control(iothub, "faults", {"rate": 1.0, "statuses": [429], "retryAfter": 0})
    session, seen = counting_session()
    with pytest.raises(IoTHubThrottled) as throttled:
        client(iothub, session=session).get_registry_statistics()
    assert throttled.value.code == 429001
    assert len(seen) == FAST.max_retries + 1


def test_job_creation_is_not_retried_after_a_500(iothub: IoTHubEmulator, storage: Storage) -> None:
    out = storage.container("out")
    control(iothub, "faults", {"rate": 1.0, "statuses": [500]})
    session, seen = counting_session()
    with pytest.raises(IoTHubServerError):
        client(iothub, session=session).create_export_job(storage.sas_url(out, "rwd"))
    assert seen == [500]  # the hub may have acted: the caller reconciles instead of blindly resubmitting
    control(iothub, "faults", {"rate": 1.0, "statuses": [503], "retryAfter": 0})
    session, seen = counting_session()
    with pytest.raises(IoTHubServerError):
        client(iothub, session=session).create_export_job(storage.sas_url(out, "rwd"))
    assert len(seen) == FAST.max_retries + 1  # 503: the hub did not act, so retrying is safe


def test_wrong_rights_are_an_auth_error(iothub: IoTHubEmulator, storage: Storage) -> None:
    out = storage.container("out")
    with pytest.raises(IoTHubAuthError) as denied:
        client(iothub, "registryRead").create_export_job(storage.sas_url(out, "rwd"))
    assert denied.value.code_name == "IotHubUnauthorized"
    assert "RegistryWrite" in str(denied.value)


def test_unreachable_hub() -> None:
    hub = IoTHubClient.from_connection_string(
        f"HostName=127.0.0.1:{free_port()};SharedAccessKeyName=x;SharedAccessKey=eA==", retry=FAST
    )
    with pytest.raises(IoTHubUnavailable):
        hub.list_jobs()


class _FakeEntra:
    """An azure-identity-style credential returning an (unsigned) JWT for the hub's audience."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def get_token(self, *scopes: str) -> Any:
        self.calls.append(scopes[0])
        claims = {"aud": "https://iothubs.azure.net", "exp": time.time() + 3600}
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        return type(
            "AccessToken", (), {"token": f"eyJhbGciOiJub25lIn0.{body}.c2ln", "expires_on": int(claims["exp"])}
        )()


def test_entra_credential(iothub: IoTHubEmulator) -> None:
    fake = _FakeEntra()
    hub = IoTHubClient(iothub.url, EntraCredential(fake), retry=FAST)
    hub.get_registry_statistics()
    hub.list_jobs()
    assert fake.calls == ["https://iothubs.azure.net/.default"]  # one token, reused until near expiry
