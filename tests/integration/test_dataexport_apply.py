"""Plan and apply against the IoT Central emulator: idempotent, ordered, replace on immutable changes, prune only
when asked, masked secrets never a change, bad files change nothing, and a cut-short apply converges."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from emulators.iotcentral import IoTCentralEmulator
from shared.dataexport import Action, DocumentError, Outcome, Plan, apply, make_plan, parse, read_app, resolve
from shared.iotcentral import DESTINATIONS, EXPORTS, IoTCentralClient

from .helpers import request_log, writes

SAMPLE = json.loads((Path(__file__).resolve().parents[2] / "samples/central/dataexport.json").read_text())
ENV = {
    "CENTRAL_ARCHIVE_STORAGE": (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5LW9uZQ==;EndpointSuffix=core.windows.net"
    ),
    "CENTRAL_ALERTS_API_KEY": "alerts-key-one",
}


def plan_for(central: IoTCentralClient, document: dict[str, Any], env: dict[str, str] = ENV) -> Plan:
    doc = parse(json.dumps(document).encode())
    resolved = resolve(doc, env)
    return make_plan(doc, resolved, *read_app(central))


def run(central: IoTCentralClient, document: dict[str, Any], env: dict[str, str] = ENV) -> Plan:
    plan = plan_for(central, document, env)
    results = apply(plan, central, secrets=env.values())
    assert all(r.outcome is Outcome.DONE for r in results), [r.public() for r in results]
    return plan


def state(central: IoTCentralClient) -> tuple[dict[str, Any], dict[str, Any]]:
    destinations, exports = read_app(central)
    return destinations, exports


def test_apply_creates_in_order_then_plans_nothing(central: IoTCentralClient, iotcentral: IoTCentralEmulator) -> None:
    plan = run(central, SAMPLE)
    assert plan.summary() == {"create": 7, "update": 0, "replace": 0, "delete": 0}
    order = writes(request_log(iotcentral))
    kinds = [path.split("/")[3] for _, path in order]
    assert kinds == ["destinations"] * 3 + ["exports"] * 4, "destinations must be created before exports"
    destinations, exports = state(central)
    assert set(destinations) == set(SAMPLE["destinations"]) and set(exports) == set(SAMPLE["exports"])
    assert exports["hot-alerts"]["destinations"] == SAMPLE["exports"]["hot-alerts"]["destinations"]
    # The secrets reached the app (the emulator holds them; reads show them masked).
    sent = json.dumps([e["body"] for e in request_log(iotcentral)])
    assert "alerts-key-one" in sent and "a2V5LW9uZQ==" in sent
    assert destinations["alerts-webhook"]["headerCustomizations"]["x-api-key"]["value"] == "*****"
    # Idempotent: the same file again plans nothing and sends nothing.
    before = len(request_log(iotcentral))
    again = run(central, SAMPLE)
    assert again.steps == [] and again.summary() == {"create": 0, "update": 0, "replace": 0, "delete": 0}
    assert writes(request_log(iotcentral)[before:]) == []


def test_masked_secrets_are_never_a_change_but_visible_parts_are(central: IoTCentralClient) -> None:
    run(central, SAMPLE)
    rotated = {
        "CENTRAL_ARCHIVE_STORAGE": ENV["CENTRAL_ARCHIVE_STORAGE"].replace("a2V5LW9uZQ==", "a2V5LXR3bw=="),
        "CENTRAL_ALERTS_API_KEY": "alerts-key-two",
    }
    assert plan_for(central, SAMPLE, rotated).steps == [], "a masked secret cannot be compared: no change"
    forced = plan_for(central, {**SAMPLE, "rotateSecrets": True}, rotated)
    assert [(s.action, s.item_id) for s in forced.steps] == [
        (Action.UPDATE, "archive-blob"),
        (Action.UPDATE, "alerts-webhook"),
    ]
    assert forced.steps[0].changes == ("authorization.connectionString (secret)",)
    assert "alerts-key-two" not in json.dumps(forced.public())
    moved = {**ENV, "CENTRAL_ARCHIVE_STORAGE": ENV["CENTRAL_ARCHIVE_STORAGE"].replace("acct", "other")}
    visible = plan_for(central, SAMPLE, moved)
    assert [(s.action, s.item_id, s.changes) for s in visible.steps] == [
        (Action.UPDATE, "archive-blob", ("authorization.connectionString (secret)",))
    ]


def test_updates_patch_only_what_changed(central: IoTCentralClient, iotcentral: IoTCentralEmulator) -> None:
    run(central, SAMPLE)
    changed = copy.deepcopy(SAMPLE)
    changed["destinations"]["alerts-webhook"]["displayName"] = "Alerts v2"
    del changed["destinations"]["alerts-webhook"]["headerCustomizations"]["x-region"]
    changed["exports"]["hot-alerts"]["enabled"] = False
    del changed["exports"]["all-telemetry"]["enrichments"]
    before = len(request_log(iotcentral))
    plan = run(central, changed)
    assert [(s.action, s.item_id, s.changes) for s in plan.steps] == [
        (Action.UPDATE, "alerts-webhook", ("displayName", "headerCustomizations.x-region")),
        (Action.UPDATE, "all-telemetry", ("enrichments",)),
        (Action.UPDATE, "hot-alerts", ("enabled",)),
    ]
    patches = [e["body"] for e in request_log(iotcentral)[before:] if e["method"] == "PATCH"]
    assert patches[0] == {"headerCustomizations": {"x-region": None}, "displayName": "Alerts v2"}
    assert "alerts-key-one" not in json.dumps(patches), "an unchanged secret is not sent again"
    destinations, exports = state(central)
    assert set(destinations["alerts-webhook"]["headerCustomizations"]) == {"x-api-key"}
    assert "enrichments" not in exports["all-telemetry"] and exports["hot-alerts"]["enabled"] is False
    assert plan_for(central, changed).steps == []


def test_type_change_replaces_the_destination_around_its_exports(
    central: IoTCentralClient, iotcentral: IoTCentralEmulator
) -> None:
    run(central, SAMPLE)
    changed = copy.deepcopy(SAMPLE)
    changed["destinations"]["archive-blob"] = {
        "displayName": "Archive via webhook",
        "type": "webhook@v1",
        "url": "https://archive.example.com/in",
    }
    before = len(request_log(iotcentral))
    plan = run(central, changed)
    assert [(s.action, s.item_id) for s in plan.steps] == [
        (Action.DETACH, "all-telemetry"),
        (Action.DETACH, "audit-log"),
        (Action.REPLACE, "archive-blob"),
        (Action.UPDATE, "all-telemetry"),
        (Action.UPDATE, "audit-log"),
    ]
    assert plan.summary() == {"create": 0, "update": 2, "replace": 1, "delete": 0}
    sent = writes(request_log(iotcentral)[before:])
    assert sent.index(("DELETE", "/api/dataExport/destinations/archive-blob")) > sent.index(
        ("PATCH", "/api/dataExport/exports/audit-log")
    )
    destinations, exports = state(central)
    assert destinations["archive-blob"]["type"] == "webhook@v1"
    assert exports["all-telemetry"]["destinations"] == [{"id": "archive-blob"}]
    assert plan_for(central, changed).steps == []


def test_source_change_replaces_the_export(central: IoTCentralClient) -> None:
    run(central, SAMPLE)
    changed = copy.deepcopy(SAMPLE)
    changed["exports"]["lifecycle"]["source"] = "deviceConnectivity"
    plan = run(central, changed)
    assert [(s.action, s.item_id, s.replaces) for s in plan.steps] == [
        (Action.DELETE, "lifecycle", True),
        (Action.CREATE, "lifecycle", True),
    ]
    assert plan.summary()["replace"] == 1
    assert state(central)[1]["lifecycle"]["source"] == "deviceConnectivity"


def test_prune_only_when_asked_and_exports_go_first(central: IoTCentralClient, iotcentral: IoTCentralEmulator) -> None:
    central.put(DESTINATIONS, "handmade", {"displayName": "h", "type": "webhook@v1", "url": "https://example.com/h"})
    central.put(
        EXPORTS,
        "handmade-export",
        {"displayName": "h", "enabled": True, "source": "telemetry", "destinations": [{"id": "handmade"}]},
    )
    plan = run(central, SAMPLE)
    assert plan.unmanaged == {"destinations": ["handmade"], "exports": ["handmade-export"]}
    assert not any(s.action is Action.DELETE for s in plan.steps)
    assert "handmade" in state(central)[0]
    before = len(request_log(iotcentral))
    pruned = run(central, {**SAMPLE, "prune": True})
    assert [(s.action, s.kind, s.item_id) for s in pruned.steps] == [
        (Action.DELETE, EXPORTS, "handmade-export"),
        (Action.DELETE, DESTINATIONS, "handmade"),
    ]
    assert writes(request_log(iotcentral)[before:]) == [
        ("DELETE", "/api/dataExport/exports/handmade-export"),
        ("DELETE", "/api/dataExport/destinations/handmade"),
    ]
    destinations, exports = state(central)
    assert set(destinations) == set(SAMPLE["destinations"]) and set(exports) == set(SAMPLE["exports"])


def test_a_bad_file_changes_nothing(central: IoTCentralClient, iotcentral: IoTCentralEmulator) -> None:
    bad = copy.deepcopy(SAMPLE)
    bad["destinations"]["archive-blob"]["authorization"]["connectionString"] = (
        "DefaultEndpointsProtocol=https;AccountKey=abc"
    )
    bad["exports"]["lifecycle"]["destinations"] = [{"id": "nowhere"}]
    with pytest.raises(DocumentError) as literal:
        plan_for(central, bad)
    assert [p.where for p in literal.value.problems] == ["destinations.archive-blob.authorization.connectionString"]
    assert "abc" not in str(literal.value.problems[0])
    fixed = copy.deepcopy(bad)
    fixed["destinations"]["archive-blob"] = SAMPLE["destinations"]["archive-blob"]
    with pytest.raises(DocumentError) as reference:
        plan_for(central, fixed)
    assert str(reference.value.problems[0]) == (
        "exports.lifecycle.destinations[0].id: destination 'nowhere' would not exist: "
        "it is neither in the file nor in the app"
    )
    with pytest.raises(DocumentError, match="problem"):
        plan_for(central, SAMPLE, {"CENTRAL_ARCHIVE_STORAGE": ENV["CENTRAL_ARCHIVE_STORAGE"]})
    assert writes(request_log(iotcentral)) == []


def test_a_failed_step_stops_the_apply_and_a_new_apply_converges(
    central: IoTCentralClient, iotcentral: IoTCentralEmulator
) -> None:
    central.put(DESTINATIONS, "shared", {"displayName": "s", "type": "webhook@v1", "url": "https://example.com/s"})
    document = copy.deepcopy(SAMPLE)
    extra = {"displayName": "x", "enabled": True, "source": "properties", "destinations": [{"id": "shared"}]}
    document["exports"] = {"extra": extra, **SAMPLE["exports"]}  # first, so that later steps depend on its fate
    plan = plan_for(central, document)
    central.delete(DESTINATIONS, "shared")  # someone removes it by hand between plan and apply
    results = apply(plan, central, secrets=ENV.values())
    outcomes = [(r.step.item_id, r.outcome) for r in results]
    failed = [r for r in results if r.outcome is Outcome.FAILED]
    assert len(failed) == 1 and failed[0].step.item_id == "extra" and "DestinationNotFound" in str(failed[0].error)
    assert outcomes[-1] == ("audit-log", Outcome.NOT_ATTEMPTED)
    central.put(DESTINATIONS, "shared", {"displayName": "s", "type": "webhook@v1", "url": "https://example.com/s"})
    second = run(central, document)
    assert [(s.action, s.item_id) for s in second.steps] == [(Action.CREATE, e) for e in document["exports"]]
    assert plan_for(central, document).steps == []


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_an_apply_cut_short_converges_when_run_again(central: IoTCentralClient, cut: int) -> None:
    run(central, SAMPLE)
    changed = copy.deepcopy(SAMPLE)
    changed["destinations"]["archive-blob"] = {"displayName": "a", "type": "webhook@v1", "url": "https://example.com/a"}
    changed["exports"]["lifecycle"]["source"] = "deviceConnectivity"
    full = plan_for(central, changed)
    apply(Plan(full.steps[:cut], full.unmanaged, full.prune), central)  # the process dies after `cut` steps
    run(central, changed)
    assert plan_for(central, changed).steps == []
    destinations, exports = state(central)
    assert (
        destinations["archive-blob"]["type"] == "webhook@v1" and exports["lifecycle"]["source"] == "deviceConnectivity"
    )
    assert exports["all-telemetry"]["destinations"] == [{"id": "archive-blob"}]
