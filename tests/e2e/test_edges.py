"""Trust at the edges: no name reaches another container, and no upload goes to a hub it does not name.

- An HTTP import or restore of a path with ``.``/``..`` (or empty) segments is a 400 naming the field, and the
  backup it pointed at is untouched.
- An upload whose first folder names no configured hub is rejected (``UnknownHub``, with a did-you-mean) and
  archived, never imported into the default hub; the command line checks the hub, the name and its key with one
  call before it uploads anything.
- An upload whose name the app refuses that arrives anyway (another tool wrote it) is rejected with a finding that
  names the problem and archived under a safe name: recorded, never lost.
- An upload, followed by the command line, runs end to end on identity-based storage (a managed identity's token,
  no account key anywhere), as production runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.identity import ManagedIdentityCredential
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from emulators.azurite import ACCOUNT, REPO, Azurite
from emulators.functions_host import FUNCTION_KEY
from emulators.identity import IdentityEndpoint
from emulators.iothub import IoTHubEmulator
from emulators.tls import ensure_certificates
from tests.integration.helpers import device_line, hub_call, wait_until

from .app import App, Stack, settings

SCRIPT = Path(sys.executable).parent / "iotjobs"


def _cli(stack: Stack, tmp_path: Path, *args: str, key: str = FUNCTION_KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTJOBS_")}
    env.update(IOTJOBS_URL=stack.app.url, IOTJOBS_KEY=key, IOTJOBS_STORAGE=stack.azurite.connection_string)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _rejection(stack: Stack, job: dict[str, Any]) -> dict[str, Any]:
    link = stack.app.job(job["hub"], job["jobId"])["links"]["rejection"]
    doc: dict[str, Any] = requests.get(link, timeout=10).json()
    return doc


def test_traversal_in_an_import_or_restore_is_400_naming_the_field_and_the_backup_is_untouched(stack: Stack) -> None:
    app = stack.app.start()
    stack.drop("seed.jsonl", [device_line("edge-1")])
    app.wait_jobs(1, states={"completed"})
    r = app.call("POST", "exports", json={"hub": "devhub"})
    assert r.status_code == 202, r.text
    app.wait_jobs(2, states={"completed"})
    [devices] = [n for n in stack.names("backups", "devhub/") if n.endswith("/devices.txt")]
    before = stack.read("backups", devices)

    for blob in (
        f"uploads/../backups/{devices}",
        f"uploads/./../backups/{devices}",
        "uploads/devhub\\..\\x.jsonl",
        "uploads/x\x01y.jsonl",
        "uploads/devhub//x.jsonl",
    ):
        r = app.call("POST", "imports", json={"blob": blob})
        assert (r.status_code, r.json()["error"]["field"]) == (400, "blob"), (blob, r.text)
    for backup in ("..", "devhub/..", "devhub/./" + devices.split("/")[1]):
        r = app.call("POST", "restores", json={"backup": backup})
        assert (r.status_code, r.json()["error"]["field"]) == (400, "backup"), (backup, r.text)
    assert stack.read("backups", devices) == before
    assert len(app.jobs()) == 2  # no job was made of any of them


def test_an_upload_under_an_unknown_hub_folder_is_rejected_archived_and_never_imported(stack: Stack) -> None:
    app = stack.app.start()
    stack.drop("devhbu/fleet.jsonl", [device_line("typo-1")])
    [job] = app.wait_jobs(1)
    assert job["state"] == "rejected" and "devhbu/" in job["failureReason"], job
    assert "did you mean 'devhub'?" in job["failureReason"]
    [finding] = _rejection(stack, job)["errors"]
    assert finding["code"] == "UnknownHub" and finding["field"] == "hub"
    wait_until(lambda: stack.names("uploads") == [])  # recorded first, then archived
    assert len(stack.names("archive", f"failed/{job['jobId']}/")) == 1
    r = app.call("GET", "jobs", params={"hub": "devhub", "state": "completed"})
    assert r.json()["jobs"] == []  # nothing was imported into the default hub
    assert hub_call(stack.hub, "GET", "/devices/typo-1").status_code == 404
    # The same file given to the API without a hub is refused up front, with the same hint.
    stack.drop("devhbu/again.jsonl", [device_line("typo-2")])
    r = app.call("POST", "imports", json={"blob": "uploads/devhbu/again.jsonl"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "UnknownHub", r.text
    assert "did you mean 'devhub'?" in r.json()["error"]["message"]


# No backslash here: storage itself turns "\\" into "/" in a blob's name (Azurite as Azure), so such an upload
# arrives as a plain folder name. No control character either: Azurite cannot list such a blob (its listing answers
# 500), so no trigger would ever deliver it here; the unit tests hold the check itself.
@pytest.mark.parametrize(
    ("stack", "name"),
    [
        ("LogsAndContainerScan", "devhub//double.jsonl"),
        ("LogsAndContainerScan", "/lead.jsonl"),
        ("EventGrid", "devhub//double.jsonl"),  # the name from the event's subject/url, as the blob extension reads it
    ],
    indirect=["stack"],
)
def test_an_upload_with_a_refused_name_is_rejected_with_a_finding_and_archived(stack: Stack, name: str) -> None:
    app = stack.app.start()
    stack.drop(name, [device_line("named-1")])
    [job] = app.wait_jobs(1)
    assert job["state"] == "rejected", job
    [finding] = _rejection(stack, job)["errors"]
    assert finding["code"] == "InvalidName" and finding["field"] == "name", finding
    # Recorded first, then archived (a crash in between is finished by the next delivery): wait for the move.
    wait_until(lambda: stack.names("uploads") == [])
    [archived] = stack.names("archive", f"failed/{job['jobId']}/")
    assert "//" not in archived and not archived.startswith("/"), archived


def test_the_cli_checks_hub_name_and_key_before_it_uploads(stack: Stack, tmp_path: Path) -> None:
    stack.app.start()
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(device_line("cli-edge-1")) + "\n")

    typo = _cli(stack, tmp_path, "upload", str(path), "--hub", "devhbu")
    assert typo.returncode == 1, typo.stdout + typo.stderr
    assert "UnknownHub" in typo.stderr and "did you mean 'devhub'?" in typo.stderr
    assert "nothing was uploaded" in typo.stderr

    named = _cli(stack, tmp_path, "upload", str(path), "--name", "a//b.jsonl")
    assert named.returncode == 1 and "empty folder" in named.stderr, named.stderr

    wrong = _cli(stack, tmp_path, "upload", str(path), "--hub", "devhub", key="wrong")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert stack.names("uploads") == []  # none of the three uploaded anything
    assert stack.app.jobs() == []


def test_an_upload_runs_end_to_end_on_identity_based_storage(
    tmp_path: Path, azurite: Azurite, hub: IoTHubEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEVICE_STORAGE as production sets it (``__blobServiceUri``, ``__queueServiceUri``, ``__tableServiceUri``, a
    managed identity): Azurite with ``--oauth basic`` over HTTPS and a local managed identity endpoint. The host's own
    storage stays the plain Azurite, as it may be another account in Azure."""
    tls = ensure_certificates(tmp_path / "tls")
    oauth = ("--oauth", "basic", "--cert", str(tls.cert_path), "--key", str(tls.key_path))
    with Azurite(tmp_path / "azurite-oauth", extra_args=oauth) as store, IdentityEndpoint() as idp:
        bundle = tmp_path / "ca-bundle.pem"  # the hub emulator's CA and Azurite's, as a corporate bundle would hold
        bundle.write_bytes(hub.ca_path.read_bytes() + tls.ca_path.read_bytes())
        for name, value in {**idp.environment, "REQUESTS_CA_BUNDLE": str(bundle)}.items():
            monkeypatch.setenv(name, value)  # the hub emulator (in this process) reads the blobs through SAS links
        base = f"https://{store.host}"
        identity = {
            "DEVICE_STORAGE__blobServiceUri": store.blob_endpoint,
            "DEVICE_STORAGE__queueServiceUri": f"{base}:{store.queue_port}/{ACCOUNT}",
            "DEVICE_STORAGE__tableServiceUri": f"{base}:{store.table_port}/{ACCOUNT}",
            "DEVICE_STORAGE__credential": "managedidentity",
        }
        values = settings(azurite, hub, **identity, **idp.environment, REQUESTS_CA_BUNDLE=str(bundle))
        del values["DEVICE_STORAGE"]
        app = App(tmp_path / "host", values).start()
        try:
            path = tmp_path / "fleet.jsonl"
            path.write_text("".join(json.dumps(device_line(f"id-{i}")) + "\n" for i in range(5)))
            env = {k: v for k, v in os.environ.items() if not k.startswith("IOTJOBS_")}
            # The command line uploads with its own token too (IOTJOBS_STORAGE is the blob endpoint, no key).
            env.update(IOTJOBS_URL=app.url, IOTJOBS_KEY=FUNCTION_KEY, IOTJOBS_STORAGE=store.blob_endpoint)
            env["PYTHONPATH"] = str(REPO)
            done = subprocess.run(
                [str(SCRIPT), "upload", str(path), "--follow"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr + app.log()[-3000:]
            assert "completed (import of uploads/fleet.jsonl)" in done.stdout
            assert hub_call(hub, "GET", "/devices/id-4").status_code == 200
            assert idp.requests > 0  # the app and the command line took their tokens from the identity endpoint
            blobs = BlobServiceClient(store.blob_endpoint, credential=ManagedIdentityCredential())
            assert [b.name for b in blobs.get_container_client("uploads").list_blobs()] == []
            archived = [b.name for b in blobs.get_container_client("archive").list_blobs()]
            assert len(archived) == 1 and archived[0].endswith("/fleet.jsonl")
        finally:
            app.stop()


def test_an_upload_whose_name_climbs_out_of_uploads_is_left_in_place_and_touches_nothing(
    tmp_path: Path, azurite: Azurite, hub: IoTHubEmulator
) -> None:
    """Storage can hold a name with ``..`` (written with ``%2E%2E``), and any request for it reaches another blob:
    here ``uploads/x/../../backups/devhub/S/devices.txt`` is the backup itself. Neither the blob trigger nor the
    monitor's sweep reads, records or moves it; the backup is untouched."""
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    for container in ("uploads", "backups"):
        blobs.create_container(container)
    backup = blobs.get_blob_client("backups", "devhub/20261201T020000Z/devices.txt")
    etag = backup.upload_blob(b'{"id":"kept"}\n')["etag"]
    sas = generate_container_sas(
        ACCOUNT,
        "uploads",
        account_key=blobs.credential.account_key,
        permission=ContainerSasPermissions(write=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    url = f"{azurite.blob_endpoint}/uploads/x/%2E%2E/%2E%2E/backups/devhub/20261201T020000Z/devices.txt?{sas}"
    assert requests.put(url, data=b"{}\n", headers={"x-ms-blob-type": "BlockBlob"}, timeout=10).status_code == 201
    climbing = "x/../../backups/devhub/20261201T020000Z/devices.txt"
    assert [b.name for b in blobs.get_container_client("uploads").list_blobs()] == [climbing]

    # The monitor's sweep looks at uploads older than 0.6 s: it meets the blob on its next pass. (The local host's
    # polling trigger cannot deliver it: its receipt blob's name holds the same "..". tests/unit/test_names.py
    # holds the trigger's own check.)
    app = App(tmp_path / "host", settings(azurite, hub, UPLOAD_SWEEP_MINUTES="0.01")).start()
    try:
        wait_until(lambda: "no request can address it" in app.log())
        assert "had no job long after it arrived" not in app.log()
        assert app.jobs() == []
        assert backup.get_blob_properties().etag == etag and backup.download_blob().readall() == b'{"id":"kept"}\n'
        assert [b.name for b in blobs.get_container_client("uploads").list_blobs()] == [climbing]
        assert [c.name for c in blobs.list_containers(name_starts_with="archive")] == []
    finally:
        app.stop()
