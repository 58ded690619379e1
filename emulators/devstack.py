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
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from emulators.azurite import REPO, USUAL_PORTS, Azurite, free_port, port_is_free
from emulators.eventgrid import EventGridPublisher, Subscription
from emulators.functions_host import BLOBS_EXTENSION_KEY, FUNCTION_KEY, MASTER_KEY
from emulators.functions_host.process import HostProcess, stack_settings
from emulators.iotcentral import IoTCentralEmulator
from emulators.iothub import IoTHubEmulator
from emulators.serving import wait_until_stopped
from iotjobs.cli import cut, kept_text, listing, modes_text
from iotjobs.client import CENTRAL, TERMINAL, UPLOADS, Api
from iotjobs.config import Config
from shared.iotcentral import DESTINATIONS, EXPORTS, IoTCentralClient
from shared.iothub import IoTHubClient

SAMPLES = REPO / "samples"
USUAL = {
    "IoT Hub emulator": 8443,
    "IoT Central emulator": 8444,
    "IoT Hub emulator (stagehub)": 8445,
    "Functions host": 7071,
}
HUB, STAGE = (
    "devhub",
    "stagehub",
)  # the first is the default hub for uploads; the second, empty, is a migration's target
SHOWN = 10  # findings or refused devices listed per step; the reports hold them all
CHANGES = "fleet-changes.jsonl"  # samples/: deletes, updates and creates some of the demo's devices (steps 9-11)
WATCHED = "demo-camera-01"  # a device CHANGES disables: its status is shown before, after and after the rollback
OSLO = "SELECT * FROM devices WHERE tags.site = 'oslo'"  # the devices step 12 disables


def _say(text: str = "") -> None:
    print(text, flush=True)


def instance_id(state: Path) -> str:
    """This stack's id, made once per state folder (``--fresh`` makes a new one): the host answers it at
    ``/api/health`` and iotjobs, reading it from the settings file, refuses another stack that holds the address."""
    path = state / "instance-id"
    if path.is_file() and (found := path.read_text().strip()):
        return found
    made = f"devstack-{secrets.token_hex(6)}"
    state.mkdir(parents=True, exist_ok=True)
    path.write_text(made + "\n")
    return made


class Ports:
    """The stack's ports: the usual ones where free, so addresses stay the same from run to run; a taken one is
    replaced by a free one and reported loudly (its connection strings change)."""

    def __init__(self) -> None:
        self.moved: list[tuple[str, int, int]] = []  # (what, wanted, got)

    def take(self, what: str) -> int:
        wanted = USUAL[what]
        if port_is_free(wanted):
            return wanted
        got = free_port()
        self.moved.append((what, wanted, got))
        return got

    def warn(self) -> None:
        for what, wanted, got in self.moved:
            _say(f"!! PORT {wanted} ({what}) IS TAKEN (another make run, or another program): using {got} instead.")
        if self.moved:
            _say("!! The addresses differ from the usual ones: use the connection strings printed at the end.")


@dataclass(frozen=True)
class Glance:
    """The registry as the demo shows it: a device count and one device's status, and every device's status and
    tags, compared to tell whether a rollback put it back."""

    devices: int
    disabled: int
    watched: str  # WATCHED's status, or "absent"
    everything: frozenset[tuple[str, str, str]] = field(repr=False)  # (id, status, tags as JSON)

    def __str__(self) -> str:
        return f"{self.devices} devices ({self.disabled} disabled), {WATCHED} {self.watched}"


class Demo:
    """The demo's steps, each following the job it just started: by the ETag of its upload or the id the API
    returned, never by a file name (a second run finds the first run's jobs under the same names)."""

    def __init__(self, app: HostProcess, service: BlobServiceClient, hub: IoTHubClient) -> None:
        self.app = app
        self.service = service
        self.hub = hub  # read directly, as a user would look at the hub, to show what the app's jobs did to it
        self.api = Api(Config(url=app.url, key=FUNCTION_KEY))
        self.started: list[str] = []  # ids of the jobs this run started

    def follow(self, job: dict[str, Any]) -> dict[str, Any]:
        """Print a job's state and progress as they change (and why a queued one waits), until it ends; the job as
        it ended, with its links."""
        self.started.append(job["jobId"])

        def show(j: dict[str, Any]) -> None:
            waiting = f", {cut(j['waitingFor'], 90)}" if j.get("waitingFor") else ""
            _say(f"    job {j['jobId']}: {j['state']} {j['progress']}%{waiting}")

        ended = self.api.follow(job, show, poll=0.3)
        return self.api.job(ended["hub"], ended["jobId"])

    def glance(self) -> Glance:
        twins = list(self.hub.query_devices("SELECT * FROM devices"))
        statuses = {t["deviceId"]: t.get("status", "") for t in twins}
        return Glance(
            len(twins),
            sum(1 for s in statuses.values() if s == "disabled"),
            statuses.get(WATCHED, "absent"),
            frozenset((t["deviceId"], t.get("status", ""), json.dumps(t.get("tags"), sort_keys=True)) for t in twins),
        )

    def drop(self, sample: str) -> dict[str, Any]:
        """Upload a sample into uploads/ and follow the job the blob trigger records for exactly that upload."""
        with contextlib.suppress(ResourceExistsError):
            self.service.create_container(UPLOADS)
        blob = self.service.get_blob_client(UPLOADS, sample)
        etag = blob.upload_blob((SAMPLES / sample).read_bytes(), overwrite=True)["etag"]
        _say(f"    uploaded {UPLOADS}/{sample} (ETag {etag}); waiting for the blob trigger ...")
        partition = CENTRAL if sample.startswith(f"{CENTRAL}/") else None
        return self.follow(self.api.job_of_upload(sample, etag, hub=partition, wait=120, poll=0.3))

    def report(self, job: dict[str, Any], name: str) -> bytes:
        return requests.get(job["links"][name], timeout=10).content


def _listed(lines: Iterable[str], total: int, more: str) -> None:
    for line in listing(lines, total, more):
        _say(f"      {line}")


def demo(d: Demo) -> None:
    _say("\n== 1. Drop samples/devices-good.jsonl into the uploads container")
    job = d.drop("devices-good.jsonl")
    _say(f"    {job['lines']} lines{modes_text(job['modes'])}; the upload now lives in {job['archived']}")
    if "errors" in job["links"]:
        rows = [json.loads(x) for x in d.report(job, "errors").decode().splitlines() if x.strip()]
        _say(
            f"    the file was valid, but the hub refused {job['failedDevices']} device(s) (per-device report "
            f"reports/{job['jobId']}/errors.csv):"
        )
        found = (f"{r['deviceId']:<20} {r['errorName']}: {cut(r['message'], 70)}" for r in rows[:SHOWN])
        _listed(found, job["failedDevices"], "in errors.csv")

    _say("\n== 2. Drop samples/devices-with-mistakes.jsonl: rejected before the hub sees it")
    job = d.drop("devices-with-mistakes.jsonl")
    _say(f"    {job['failureReason']}:")
    report = json.loads(d.report(job, "rejection"))
    errors = report["errors"]
    found = (f"line {e['line']:>3} {e['code']:<22} {cut(e['message'], 80)}" for e in errors[:SHOWN])
    _listed(found, int(report.get("errorCount", len(errors))), "in the report")
    if report.get("warningCount"):
        _say(f"    and {report['warningCount']} warning(s) (fields the hub ignores), also in the report")
    _say(f"    full report: reports/{job['jobId']}/rejection.json; upload kept in {job['archived']}")

    _say("\n== 3. The job ledger (GET /api/jobs, or: iotjobs jobs)")
    jobs = d.api.jobs(limit=200)
    # with the plan jobs that snapshotted this run's imports first
    mine = [j for j in jobs if j["jobId"] in d.started or j.get("planFor") in d.started]
    for j in mine:
        source = j["source"] or f"(the snapshot before {j['planFor']})"
        _say(f"    {j['jobId']}  {j['kind']:<7} {j['state']:<22} {j['lines']:>5} lines  {source}")
    if len(jobs) > len(mine):
        _say(f"    (and {len(jobs) - len(mine)} job(s) of earlier runs: iotjobs jobs lists them all)")

    _say("\n== 4. Back up the registry now (POST /api/exports); the nightly timer does the same at 02:00 UTC")
    queued = d.api.call("POST", "exports", json={"hub": HUB})["jobs"][0]
    job = d.follow(queued)
    manifest = json.loads(d.report(job, "manifest"))
    _say(
        f"    {job['reports']['backup']}: {manifest['devices']} devices, sha256 {manifest['sha256'][:16]}..., "
        f"keys included: {manifest['includesKeys']}"
    )


def central_demo(d: Demo) -> None:
    _say("\n== 5. Back up IoT Central's data export (POST /api/central/backups; also nightly)")
    manifest = d.api.call("POST", "central/backups")
    _say(f"    {manifest['destinations']} destination(s), {manifest['exports']} export(s) from {manifest['app']}")
    _say(f"    written to {manifest['folder']}/dataexport.json (secrets come back masked: *****)")

    sample = (SAMPLES / "central" / "dataexport.json").read_bytes()
    _say("\n== 6. Plan samples/central/dataexport.json (POST /api/central/plan: changes nothing)")
    plan = d.api.call("POST", "central/plan", data=sample)
    _show_steps(plan["steps"])
    counts = ", ".join(f"{n} {what}" for what, n in plan["summary"].items())
    _say(f"    {counts}; kept, not in the file (no prune): {kept_text(plan['unmanaged'])}")

    _say("\n== 7. Apply it: drop it into uploads/central/dataexport.json")
    job = d.drop("central/dataexport.json")
    result = json.loads(d.report(job, "result"))
    _show_steps(result["results"])
    _say(f"    job {job['jobId']}: {job['state']}; report reports/{job['jobId']}/central-apply.json")

    _say("\n== 8. Plan the same file again: nothing left to change")
    plan = d.api.call("POST", "central/plan", data=sample)
    _show_steps(plan["steps"])
    _say(f"    {plan['changes']} change(s)")


def fleet_demo(d: Demo) -> None:
    """Preview, import (snapshotted first), roll back, act on a query: each correct on a registry a first run left
    (step 1 of a second run enables the oslo devices step 12 disabled, and step 11 undid step 10)."""
    sample = (SAMPLES / CHANGES).read_bytes()
    _say(f"\n== 9. Preview samples/{CHANGES} (POST /api/imports/plan, or: iotjobs plan): changes nothing")
    reply = d.api.call(
        "POST",
        "imports/plan",
        params={"hub": HUB, "wait": "60"},
        data=sample,
        headers={"content-type": "application/x-ndjson"},
    )
    job = d.follow(reply)
    plan = reply.get("plan") or json.loads(d.report(job, "plan"))
    _show_plan(plan)
    _say(f"    the whole plan: reports/{job['jobId']}/plan.json")

    _say(f"\n== 10. Import it: drop samples/{CHANGES} into uploads (a plan job snapshots what it touches first)")
    before = d.glance()
    job = d.drop(CHANGES)
    imported = job["jobId"]
    foreseen = plan["totals"]["refused"]
    said = "as the plan said" if job["failedDevices"] == foreseen else f"the plan said {foreseen}"
    _say(f"    {job['state']}: {job['failedDevices']} line(s) refused by the hub ({said})")
    _say(f"    registry before: {before}")
    _say(f"    registry after:  {d.glance()}")

    _say("\n== 11. Roll it back (POST /api/jobs/<hub>/<job>/rollback, or: iotjobs rollback <job> --hub <hub>)")
    _say(f"    iotjobs rollback {imported} --hub devhub")
    job = d.follow(d.api.call("POST", f"jobs/devhub/{imported}/rollback", json={}))
    if job["state"] != "completed":
        _say(f"    the rollback {job['state']}: {job['failureReason']}")
        return
    report = json.loads(d.report(job, "rollback"))
    modes = ", ".join(f"{n} {mode}" for mode, n in sorted(report["inverseModes"].items()))
    _say(f"    the inverse file: {report['inverseLines']} line(s) ({modes}), imported with rollbackOf set:")
    job = d.follow(d.api.job(HUB, report["importJobId"]))
    after = d.glance()
    verdict = "the registry is as before the import" if after == before else "NOT as before the import"
    _say(f"    registry now:    {after}: {verdict}")

    _say("\n== 12. Act on a query: disable the devices at site oslo (POST /api/bulk, then POST /api/bulk/<id>/run)")
    reply = d.api.call("POST", "bulk", json={"hub": HUB, "query": OSLO, "action": "disable"})
    made = reply["bulk"]
    # The reply comes at once; the plan job reads the query (paced under the hub's quota), writes the file, plans it.
    job = d.follow(reply["plan"])
    plan = json.loads(d.report(job, "plan"))
    _say(f"    {OSLO}: {plan['bulk']['devices']} device(s), one line each in {made['file']}; its plan:")
    _show_plan(plan)
    _say(f"    run it: POST {reply['run']}")
    job = d.follow(d.api.call("POST", reply["run"].removeprefix("/api/")))
    _say(f"    {job['state']}: registry now {d.glance()}")
    _say(f"    (undo: iotjobs rollback {job['jobId']} --hub devhub)")


def migration_demo(d: Demo, source: str = HUB, target: str = STAGE) -> None:
    """Migrate the demo hub into the stack's second hub: export, import, verification, each followed. createOrUpdate,
    so a second run (the target holds the first run's copy) puts the source's state over it again."""
    _say(
        f"\n== 13. Migrate {source} to {target} (POST /api/migrations, or: iotjobs migrate --from {source} --to "
        f"{target} --follow)"
    )
    body = {"from": source, "to": target, "mode": "createOrUpdate", "includeKeys": True}
    doc = d.api.call("POST", "migrations", json=body)
    path = f"migrations/{source}/{doc['migrationId']}"
    for step in ("export", "import", "verify"):
        while doc["jobs"][step] is None and doc["state"] not in TERMINAL:
            time.sleep(0.3)
            doc = d.api.call("GET", path)
        if doc["jobs"][step] is None:
            break
        _say(f"    {step}:")
        d.follow(doc["jobs"][step])
        doc = d.api.call("GET", path)
    _say(f"    migration {doc['migrationId']}: {doc['state']}")
    found = doc.get("verification")
    if not found:
        _say(f"    stopped at {doc['stage']}: {doc.get('failureReason')}")
        return
    src, dst = found["counts"]["source"], found["counts"]["target"]
    _say(f"    {source}: {src['devices']} devices, {src['edgeDevices']} Edge, {src['modules']} modules")
    _say(f"    {target}: {dst['devices']} devices, {dst['edgeDevices']} Edge, {dst['modules']} modules")
    _say(f"    {cut(found['verdict'], 150)}")
    for diff in found["differences"][:SHOWN]:
        module = f"/{diff['moduleId']}" if diff.get("moduleId") else ""
        _say(f"      {diff['deviceId']}{module}: {', '.join(diff['fields'])}: {cut(diff['why'], 90)}")
    _say(f"    the whole comparison: reports/{doc['jobs']['verify']['jobId']}/migration.json")


def _show_plan(plan: dict[str, Any]) -> None:
    totals = plan["totals"]
    _say("    would " + ", ".join(f"{k} {n}" for k, n in totals.items()))
    refused = (f"line {r['line']:>3} {r['deviceId']:<20} {r['code']}" for r in plan["refused"][:SHOWN])
    _listed(refused, totals["refused"], "in plan.json")


def _show_steps(steps: list[dict[str, Any]]) -> None:
    if not steps:
        _say("    (no changes: the app already matches the file)")
    for step in steps:
        changes = f" [{', '.join(step['changes'])}]" if step.get("changes") else ""
        outcome = f" -> {step['outcome']}" if "outcome" in step else ""
        _say(f"    {step['action']:<8} {step['kind']:<11} {step['id']:<16}{changes}{outcome}")


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


def _banner(
    app: HostProcess,
    state: Path,
    *,
    azurite: Azurite,
    hub: IoTHubEmulator,
    stage: IoTHubEmulator,
    central: IoTCentralEmulator,
) -> None:
    cli = ".venv/bin/iotjobs"
    settings = app.workdir / "local.settings.json"
    _say("\n== The local stack is up")
    _say(f"    Function app           {app.url}/api  (key: x-functions-key: {FUNCTION_KEY})")
    _say(f"    status page            {app.url}/api/status?code={FUNCTION_KEY}")
    _say(f"    drop a file            {cli} upload my-devices.jsonl --follow   (--hub <hub>; exit code = outcome)")
    _say(f"    list jobs              {cli} jobs   (one job: {cli} job devhub <job id> --follow)")
    _say(f"    back up, restore       {cli} export --follow;  {cli} restore latest --follow")
    _say(f"    plan a data export     {cli} central plan samples/central/dataexport.json")
    _say(f"    preview an import      {cli} plan samples/{CHANGES} --hub {HUB}")
    _say(f"    undo an import         {cli} rollback <job id> --hub {HUB} --follow   (README: Fleet operations)")
    _say(f'    act on a query         {cli} bulk --hub {HUB} --query "{OSLO}" --action enable --run --follow')
    _say(f"    migrate a hub          {cli} migrate --from {HUB} --to {STAGE} --follow")
    if state.resolve() != (REPO / ".devstack").resolve():
        _say(f"    (iotjobs reads {settings}: export IOTJOBS_SETTINGS={settings})")
    else:
        _say(f"    (iotjobs finds this stack in {settings.relative_to(REPO)})")
    _say(
        f"    fire the nightly now   curl -X POST -H 'x-functions-key: {MASTER_KEY}' "
        f"{app.url}/admin/functions/nightly_backup"
    )
    _say(f"    Azurite (storage)      {azurite.connection_string}")
    _say(f"    IoT Hub emulator       {hub.url}  ({HUB}, the default hub for uploads)")
    _say(f"    IoT Hub connection     {hub.connection_string()}")
    _say(f"    second IoT Hub         {stage.url}  ({STAGE}: --hub {STAGE}, or uploads/{STAGE}/...)")
    _say(f"    its connection         {stage.connection_string()}")
    _say(f"    IoT Central emulator   {central.url}  (API token: {central.api_token()})")
    _say(f"    trust their cert       export REQUESTS_CA_BUNDLE={hub.ca_path}  (one CA for all three)")
    _say(f"    host log               {app.log_path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make run", description=__doc__)
    p.add_argument("--fresh", action="store_true", help="forget the state of earlier runs")
    p.add_argument("--demo-only", action="store_true", help="exit after the demo")
    p.add_argument("--state", type=Path, default=REPO / ".devstack")
    p.add_argument(
        "--event-grid",
        action="store_true",
        help="run the upload trigger from Event Grid deliveries, as on the Flex Consumption plan (an Event Grid "
        "emulator subscribed to uploads/, delivering some events twice), instead of polling",
    )
    args = p.parse_args(argv)
    if args.fresh:
        shutil.rmtree(args.state, ignore_errors=True)
    ports = Ports()
    started: list[Any] = []
    try:
        _say("Starting Azurite ...")
        azurite = Azurite(args.state / "azurite", ports=USUAL_PORTS).start()
        started.append(lambda: azurite.stop(remove=False))
        ports.moved += [(f"Azurite {service}", wanted, got) for service, wanted, got in azurite.moved]
        hub_server = IoTHubEmulator(
            args.state / "iothub",
            port=ports.take("IoT Hub emulator"),
            storage_identity=azurite.connection_string,
            control_plane=True,
        )
        hub_server.start()
        started.append(hub_server.stop)
        os.environ["REQUESTS_CA_BUNDLE"] = str(hub_server.ca_path)
        # A second hub (the target of a migration), under the first one's CA: one REQUESTS_CA_BUNDLE trusts both.
        stage_server = IoTHubEmulator(
            args.state / f"iothub-{STAGE}",
            port=ports.take("IoT Hub emulator (stagehub)"),
            hub_name=STAGE,
            storage_identity=azurite.connection_string,
            control_plane=True,
            tls_dir=hub_server.data_dir / "tls",
        )
        stage_server.start()
        started.append(stage_server.stop)
        central = IoTCentralEmulator(
            args.state / "iotcentral", port=ports.take("IoT Central emulator"), tls_dir=hub_server.data_dir / "tls"
        )
        central.start()
        started.append(central.stop)
        port = ports.take("Functions host")
        # The iotjobs command reads the stack's address and key from the settings file the host is given.
        values = {
            # Snapshots on (the e2e tests' stack turns them off to count jobs): the rollback step needs one. "explicit"
            # rather than the app's default "changes": the demo's createOrUpdate-only uploads are then not snapshotted,
            # which keeps the jobs it lists (and tests/e2e/test_make_run.py counts) as they were.
            **stack_settings(azurite, hub_server, central, IMPORT_SNAPSHOTS="explicit"),
            "IOTHUB_HUBS": f"{HUB},{STAGE}",  # the first one stays the default for uploads
            f"IOTHUB_{STAGE.upper()}_CONNECTION_STRING": stage_server.connection_string("iothubowner"),
            "IOTJOBS_URL": f"http://127.0.0.1:{port}",
            "IOTJOBS_KEY": FUNCTION_KEY,
            "IOTJOBS_INSTANCE_ID": instance_id(args.state),
            "UPLOADS_TRIGGER_SOURCE": "EventGrid" if args.event_grid else "LogsAndContainerScan",
        }
        app = HostProcess(args.state / "functions", values, port=port, own_session=True)
        started.append(app.stop)
        ports.warn()
        _seed(hub_server)
        _seed_central(central)
        _say("Starting the function app under the local Functions host ...")
        app.start()
        if args.event_grid:
            webhook = f"{app.url}/runtime/webhooks/blobs?functionName=Host.Functions.import_on_upload"
            subscription = Subscription(f"{webhook}&code={BLOBS_EXTENSION_KEY}", duplicate_rate=0.2, shuffle=True)
            publisher = EventGridPublisher(azurite.connection_string, "uploads", subscription, interval=0.5).start()
            started.append(publisher.stop)
            _say(f"Event Grid emulator subscribed to uploads/: BlobCreated events to {webhook}")
        d = Demo(
            app,
            BlobServiceClient.from_connection_string(azurite.connection_string),
            IoTHubClient.from_connection_string(hub_server.connection_string()),
        )
        demo(d)
        central_demo(d)
        fleet_demo(d)
        migration_demo(d)
        _banner(app, args.state, azurite=azurite, hub=hub_server, stage=stage_server, central=central)
        ports.warn()
        if args.demo_only:
            return 0
        # From here on Ctrl-C is the way to stop, not an interruption: one that comes before the wait begins (the
        # line below is what a user waits for) ends the run the same way.
        with contextlib.suppress(KeyboardInterrupt):
            _say("\nServing until Ctrl-C.")
            wait_until_stopped()
        _say("Stopping ...")
        return 0
    except KeyboardInterrupt:
        _say("\nInterrupted: stopping the stack ...")
        return 130
    finally:
        # A second Ctrl-C while stopping would leave servers behind: finish stopping first.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for stop in reversed(started):
            stop()


if __name__ == "__main__":
    sys.exit(main())
