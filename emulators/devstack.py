"""``make run``: start the local stack (Azurite, the IoT Hub and IoT Central emulators, the function app under the
local Functions host), run a short demo through the app, then serve until Ctrl-C.

State lives in ``.devstack/`` so a second run finds the registry it left; ``--fresh`` starts over.
``--demo-only`` exits after the demo (used by the tests of this command).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from emulators.azurite import REPO, Azurite, free_port
from emulators.functions_host import FUNCTION_KEY, MASTER_KEY
from emulators.functions_host.process import HostProcess, stack_settings
from emulators.iotcentral import IoTCentralEmulator
from emulators.iothub import IoTHubEmulator
from emulators.serving import wait_until_stopped
from shared.iotcentral import DESTINATIONS, EXPORTS, IoTCentralClient
from shared.iothub import IoTHubClient

SAMPLES = REPO / "samples"
TERMINAL = {"completed", "completed_with_errors", "failed", "cancelled", "rejected"}


def _port(preferred: int) -> int:
    """``preferred`` if it is free on loopback, else any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _say(text: str = "") -> None:
    print(text, flush=True)


def _follow(app: HostProcess, hub: str, job_id: str) -> dict[str, Any]:
    """Print a job's state and progress as they change, until it ends."""
    seen = None
    while True:
        job: dict[str, Any] = app.call("GET", f"jobs/{hub}/{job_id}").json()
        now = (job["state"], job["progress"])
        if now != seen:
            _say(f"    job {job_id}: {job['state']} {job['progress']}%")
            seen = now
        if job["state"] in TERMINAL:
            return job
        time.sleep(0.3)


def _drop(service: BlobServiceClient, app: HostProcess, sample: str) -> dict[str, Any]:
    """Upload a sample into uploads/ and wait for the blob trigger to record its job."""
    with contextlib.suppress(ResourceExistsError):
        service.create_container("uploads")
    blob = service.get_blob_client("uploads", sample)
    etag = blob.upload_blob((SAMPLES / sample).read_bytes(), overwrite=True)["etag"]
    _say(f"    uploaded uploads/{sample} (ETag {etag}); waiting for the blob trigger ...")
    while True:
        jobs = [
            j
            for j in app.call("GET", "jobs", params={"limit": "200"}).json()["jobs"]
            if j["source"] == f"uploads/{sample}"
        ]
        if jobs:
            return _follow(app, jobs[0]["hub"], jobs[0]["jobId"])
        time.sleep(0.3)


def demo(app: HostProcess, service: BlobServiceClient) -> None:
    _say("\n== 1. Drop samples/devices-good.jsonl into the uploads container")
    job = _drop(service, app, "devices-good.jsonl")
    _say(f"    {job['lines']} lines, modes {job['modes']}; the upload now lives in archive/processed/{job['jobId']}/")
    if "errors" in job["links"]:
        _say("    the file was valid, but the hub refused some devices (per-device report reports/<job>/errors.csv):")
        for line in requests.get(job["links"]["errors"], timeout=10).text.splitlines():
            row = json.loads(line)
            _say(f"      {row['deviceId']:<20} {row['errorName']}: {row['message'][:80]}")

    _say("\n== 2. Drop samples/devices-with-mistakes.jsonl: rejected before the hub sees it")
    job = _drop(service, app, "devices-with-mistakes.jsonl")
    _say(f"    {job['failureReason']}")
    report = json.loads(requests.get(job["links"]["rejection"], timeout=10).content)
    for err in report["errors"][:6]:
        _say(f"    line {err['line']:>3} {err['code']:<22} {err['message'][:100]}")
    _say(f"    full report: reports/{job['jobId']}/rejection.json; upload kept in archive/failed/{job['jobId']}/")

    _say("\n== 3. The job ledger (GET /api/jobs)")
    for j in app.call("GET", "jobs").json()["jobs"]:
        _say(f"    {j['jobId']}  {j['kind']:<7} {j['state']:<22} {j['lines']:>5} lines  {j['source']}")

    _say("\n== 4. Back up the registry now (POST /api/exports); the nightly timer does the same at 02:00 UTC")
    queued = app.call("POST", "exports", json={"hub": "devhub"}).json()["jobs"][0]
    job = _follow(app, "devhub", queued["jobId"])
    manifest = json.loads(requests.get(job["links"]["manifest"], timeout=10).content)
    _say(
        f"    {job['reports']['backup']}: {manifest['devices']} devices, sha256 {manifest['sha256'][:16]}..., "
        f"keys included: {manifest['includesKeys']}"
    )


def central_demo(app: HostProcess, service: BlobServiceClient) -> None:
    _say("\n== 5. Back up IoT Central's data export (POST /api/central/backups; also nightly)")
    manifest = app.call("POST", "central/backups").json()
    _say(f"    {manifest['destinations']} destination(s), {manifest['exports']} export(s) from {manifest['app']}")
    folders = sorted({n.rsplit("/", 1)[0] for n in _names(service, "backups", "central/")})
    _say(f"    written to backups/{folders[-1]}/dataexport.json (secrets come back masked: *****)")

    sample = (SAMPLES / "central" / "dataexport.json").read_bytes()
    _say("\n== 6. Plan samples/central/dataexport.json (POST /api/central/plan: changes nothing)")
    plan = app.call("POST", "central/plan", data=sample).json()
    _show_steps(plan["steps"])
    _say(f"    summary {plan['summary']}; kept, not in the file (no prune): {plan['unmanaged']}")

    _say("\n== 7. Apply it: drop it into uploads/central/dataexport.json")
    job = _drop(service, app, "central/dataexport.json")
    result = json.loads(requests.get(job["links"]["result"], timeout=10).content)
    _show_steps(result["results"])
    _say(f"    job {job['jobId']}: {job['state']}; report reports/{job['jobId']}/central-apply.json")

    _say("\n== 8. Plan the same file again: nothing left to change")
    plan = app.call("POST", "central/plan", data=sample).json()
    _say(f"    {plan['changes']} change(s)")


def _show_steps(steps: list[dict[str, Any]]) -> None:
    if not steps:
        _say("    (no changes: the app already matches the file)")
    for step in steps:
        changes = f" [{', '.join(step['changes'])}]" if step.get("changes") else ""
        outcome = f" -> {step['outcome']}" if "outcome" in step else ""
        _say(f"    {step['action']:<8} {step['kind']:<11} {step['id']:<16}{changes}{outcome}")


def _names(service: BlobServiceClient, container: str, prefix: str) -> list[str]:
    return [b.name for b in service.get_container_client(container).list_blobs(name_starts_with=prefix)]


def _seed_central(central: IoTCentralEmulator) -> None:
    """A destination and an export made by hand before the app manages the others: the backup has them, and the
    plan keeps them (no prune)."""
    client = IoTCentralClient.from_api_token(central.url, central.api_token())
    if client.find(DESTINATIONS, "legacy-webhook") is None:
        client.put(
            DESTINATIONS,
            "legacy-webhook",
            {"displayName": "Legacy", "type": "webhook@v1", "url": "https://legacy.example.com"},
        )
        client.put(
            EXPORTS,
            "legacy-export",
            {
                "displayName": "Legacy",
                "enabled": False,
                "source": "properties",
                "destinations": [{"id": "legacy-webhook"}],
            },
        )


def _seed(hub_server: IoTHubEmulator) -> None:
    """A few devices in a new hub, so the first export has something from before the demo."""
    client = IoTHubClient.from_connection_string(hub_server.connection_string())
    if client.get_registry_statistics().total == 0:
        client.bulk_update(
            [{"id": f"demo-seed-{i:02d}", "importMode": "create", "status": "enabled"} for i in range(5)]
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make run", description=__doc__)
    p.add_argument("--fresh", action="store_true", help="forget the state of earlier runs")
    p.add_argument("--demo-only", action="store_true", help="exit after the demo")
    p.add_argument("--state", type=Path, default=REPO / ".devstack")
    args = p.parse_args(argv)
    if args.fresh:
        shutil.rmtree(args.state, ignore_errors=True)
    _say("Starting Azurite ...")
    azurite = Azurite(args.state / "azurite").start()
    hub_server = IoTHubEmulator(
        args.state / "iothub", port=_port(8443), storage_identity=azurite.connection_string, control_plane=True
    )
    hub_server.start()
    os.environ["REQUESTS_CA_BUNDLE"] = str(hub_server.ca_path)
    central = IoTCentralEmulator(args.state / "iotcentral", port=_port(8444), tls_dir=hub_server.data_dir / "tls")
    central.start()
    app = HostProcess(args.state / "functions", stack_settings(azurite, hub_server, central), port=_port(7071))
    try:
        _seed(hub_server)
        _seed_central(central)
        _say("Starting the function app under the local Functions host ...")
        app.start()
        service = BlobServiceClient.from_connection_string(azurite.connection_string)
        demo(app, service)
        central_demo(app, service)
        _say("\n== The local stack is up")
        _say(f"    Function app           {app.url}/api  (key: x-functions-key: {FUNCTION_KEY})")
        _say(f"    list jobs              curl -H 'x-functions-key: {FUNCTION_KEY}' {app.url}/api/jobs")
        _say(
            f"    fire the nightly now   curl -X POST -H 'x-functions-key: {MASTER_KEY}' "
            f"{app.url}/admin/functions/nightly_backup"
        )
        _say(f"    Azurite (storage)      {azurite.connection_string}")
        _say(
            "    drop a file            az storage blob upload -c uploads -f my-devices.jsonl -n my-devices.jsonl "
            '--connection-string "<the Azurite connection string>"'
        )
        _say(f"    IoT Hub emulator       {hub_server.url}")
        _say(f"    IoT Hub connection     {hub_server.connection_string()}")
        _say(f"    IoT Central emulator   {central.url}  (API token: {central.api_token()})")
        _say(f"    trust their cert       export REQUESTS_CA_BUNDLE={hub_server.ca_path}")
        _say(
            f"    plan a file            curl -H 'x-functions-key: {FUNCTION_KEY}' --data-binary "
            f"@samples/central/dataexport.json {app.url}/api/central/plan"
        )
        _say(f"    host log               {app.log_path}")
        if args.demo_only:
            return 0
        _say("\nServing until Ctrl-C.")
        wait_until_stopped()
        return 0
    finally:
        app.stop()
        central.stop()
        hub_server.stop()
        azurite.stop(remove=False)


if __name__ == "__main__":
    sys.exit(main())
