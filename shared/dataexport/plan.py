"""Plan and apply: what to change in an IoT Central app so that its data export matches a declarative file.

The plan compares the file with what the app reads back, field by field, with the read-only fields dropped and
masked secrets never taken for changes (``rules.same_secret``). Its steps run in an order the service accepts:

1. destinations created and updated          (so exports can name them)
2. exports deleted (pruned, or being replaced because their ``source`` changes)
3. exports detached from destinations whose ``type`` changes (a destination in use cannot be deleted)
4. those destinations replaced (deleted and created again)
5. exports created, updated, replaced and re-attached
6. destinations deleted (pruned), once no export uses them

Nothing is deleted unless the file says ``"prune": true``. Applying is idempotent: a second apply plans nothing,
and an apply cut short (a crash, an error) converges when run again, because each plan starts from what the app
holds now.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..iotcentral import DESTINATIONS, EXPORTS, IoTCentralClient, IoTCentralError
from .document import Document, DocumentError, Problem
from .rules import READ_ONLY, same_secret, secret_paths

logger = logging.getLogger(__name__)

Resource = dict[str, Any]


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"
    DETACH = "detach"
    REATTACH = "reattach"


class Outcome(StrEnum):
    DONE = "done"
    FAILED = "failed"
    NOT_ATTEMPTED = "not attempted"


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    kind: str  # DESTINATIONS or EXPORTS
    item_id: str
    changes: tuple[str, ...] = ()
    reason: str = ""
    replaces: bool = False  # one half of an export's replacement (delete, then create)
    body: Resource | None = field(default=None, repr=False, compare=False)  # PUT body or merge patch: may hold secrets

    def public(self) -> dict[str, Any]:
        """The step as plans and reports show it: what and why, never a value."""
        out: dict[str, Any] = {"action": str(self.action), "kind": self.kind[:-1], "id": self.item_id}
        if self.changes:
            out["changes"] = list(self.changes)
        if self.reason:
            out["reason"] = self.reason
        return out

    def __str__(self) -> str:
        what = f"{self.action} {self.kind[:-1]} '{self.item_id}'"
        if self.changes:
            what += f": {', '.join(self.changes)}"
        return f"{what} ({self.reason})" if self.reason else what


@dataclass
class Plan:
    steps: list[Step]
    unmanaged: dict[str, list[str]]  # in the app, not in the file, and kept (no prune)
    prune: bool

    def summary(self) -> dict[str, int]:
        """Changes by kind: a replacement counts once (an export's is two steps), detach/reattach not at all."""
        counts = {"create": 0, "update": 0, "replace": 0, "delete": 0}
        for step in self.steps:
            if step.action is Action.REPLACE or (step.replaces and step.action is Action.CREATE):
                counts["replace"] += 1
            elif str(step.action) in counts and not step.replaces:
                counts[str(step.action)] += 1
        return counts

    def public(self) -> dict[str, Any]:
        return {
            "changes": sum(self.summary().values()),
            "summary": self.summary(),
            "prune": self.prune,
            "steps": [s.public() for s in self.steps],
            "unmanaged": self.unmanaged,
        }


@dataclass(frozen=True, slots=True)
class StepResult:
    step: Step
    outcome: Outcome
    error: str | None = None

    def public(self) -> dict[str, Any]:
        out = self.step.public() | {"outcome": str(self.outcome)}
        return out | ({"error": self.error} if self.error else {})


# --- reading the app ------------------------------------------------------------------------------------


def read_app(client: IoTCentralClient) -> tuple[dict[str, Resource], dict[str, Resource]]:
    """Every destination and export of the app, by id, as read (secrets masked)."""
    return (
        {d["id"]: d for d in client.list(DESTINATIONS)},
        {e["id"]: e for e in client.list(EXPORTS)},
    )


# --- planning -------------------------------------------------------------------------------------------


def make_plan(
    doc: Document,
    resolved: Mapping[str, Resource],
    destinations: Mapping[str, Resource],
    exports: Mapping[str, Resource],
) -> Plan:
    """The ordered steps that make the app (``destinations``, ``exports`` as read) match ``doc``.

    ``resolved`` holds the file's destinations with their secrets filled in (``document.resolve``).

    Raises:
        DocumentError: an export names a destination that would not exist.
    """
    _check_references(doc, destinations)
    create_update: list[Step] = []
    delete_exports: list[Step] = []
    detach: list[Step] = []
    replace_destinations: list[Step] = []
    write_exports: list[Step] = []
    delete_destinations: list[Step] = []

    replaced = {d for d, body in resolved.items() if d in destinations and destinations[d].get("type") != body["type"]}
    for d, body in resolved.items():
        current = destinations.get(d)
        if current is None:
            create_update.append(Step(Action.CREATE, DESTINATIONS, d, reason="not in the app", body=body))
        elif d in replaced:
            reason = f"type {current.get('type')} -> {body['type']} cannot change in place"
            replace_destinations.append(Step(Action.REPLACE, DESTINATIONS, d, ("type",), reason, body=body))
        else:
            patch = merge_diff(_normal(current), _normal(body), secret_paths(body), doc.rotate_secrets)
            if patch:
                create_update.append(
                    Step(Action.UPDATE, DESTINATIONS, d, _leaves(patch, secret_paths(body)), body=patch)
                )

    gone: set[str] = set()
    if doc.prune:
        for e in exports:
            if e not in doc.exports:
                delete_exports.append(Step(Action.DELETE, EXPORTS, e, reason="not in the file, and prune is on"))
                gone.add(e)
    resourced = {e for e, body in doc.exports.items() if e in exports and exports[e].get("source") != body["source"]}
    for e in resourced:
        reason = f"source {exports[e].get('source')} -> {doc.exports[e]['source']} cannot change in place"
        delete_exports.append(Step(Action.DELETE, EXPORTS, e, ("source",), reason, replaces=True))
        gone.add(e)

    detached: dict[str, list[Resource]] = {}
    for e, current in exports.items():
        refs = current.get("destinations") or []
        if e in gone or not any(r.get("id") in replaced for r in refs):
            continue
        keep = [r for r in refs if r.get("id") not in replaced]
        names = ", ".join(sorted({r["id"] for r in refs} & replaced))
        reason = f"destination {names} is replaced, and one in use cannot be deleted"
        detach.append(Step(Action.DETACH, EXPORTS, e, ("destinations",), reason, body={"destinations": keep}))
        detached[e] = refs

    for e, body in doc.exports.items():
        current = exports.get(e)
        if current is None or e in resourced:
            reason = "replaced" if e in resourced else "not in the app"
            write_exports.append(Step(Action.CREATE, EXPORTS, e, reason=reason, replaces=e in resourced, body=body))
            continue
        base = _normal(current)
        if e in detached:
            base["destinations"] = [r for r in detached[e] if r.get("id") not in replaced]
        patch = merge_diff(base, _normal(body), set(), False)
        if patch:
            write_exports.append(Step(Action.UPDATE, EXPORTS, e, _leaves(patch, set()), body=patch))
    for e, refs in detached.items():
        if e not in doc.exports:
            reason = "not in the file: its destinations are put back as they were"
            write_exports.append(
                Step(Action.REATTACH, EXPORTS, e, ("destinations",), reason, body={"destinations": refs})
            )

    if doc.prune:
        for d in destinations:
            if d not in resolved:
                delete_destinations.append(
                    Step(Action.DELETE, DESTINATIONS, d, reason="not in the file, and prune is on")
                )
    unmanaged = {
        DESTINATIONS: [] if doc.prune else [d for d in destinations if d not in resolved],
        EXPORTS: [] if doc.prune else [e for e in exports if e not in doc.exports],
    }
    steps = create_update + delete_exports + detach + replace_destinations + write_exports + delete_destinations
    return Plan(steps, unmanaged, doc.prune)


def _check_references(doc: Document, destinations: Mapping[str, Resource]) -> None:
    problems = []
    for e, body in doc.exports.items():
        for i, ref in enumerate(body["destinations"]):
            d = ref["id"]
            if d in doc.destinations or (d in destinations and not doc.prune):
                continue
            why = (
                "prune is on and it is not in the file"
                if d in destinations
                else "it is neither in the file nor in the app"
            )
            problems.append(Problem(f"exports.{e}.destinations[{i}].id", f"destination '{d}' would not exist: {why}"))
    if problems:
        raise DocumentError(problems)


def _normal(resource: Mapping[str, Any]) -> Resource:
    """For comparison: no read-only fields, no empty values, customizations with ``secret`` explicit, an export's
    destinations in id order (the order carries no meaning)."""
    out: Resource = {}
    for key, value in resource.items():
        if key in READ_ONLY or value is None or value in ({}, ""):
            continue
        if key in ("queryCustomizations", "headerCustomizations") and isinstance(value, dict):
            out[key] = {k: {"secret": False, **v} for k, v in value.items()}
        elif key == "destinations" and isinstance(value, list):
            out[key] = sorted(value, key=lambda r: str(r.get("id")))
        else:
            out[key] = value
    return out


def merge_diff(
    current: Mapping[str, Any],
    desired: Mapping[str, Any],
    secrets: set[tuple[str, ...]],
    rotate: bool,
    path: tuple[str, ...] = (),
) -> Resource:
    """An RFC 7396 merge patch turning ``current`` into ``desired``; empty when they match.

    At a secret path the values are equal when ``same_secret`` says so (unless ``rotate``): a masked secret read
    back is never a change.
    """
    patch: Resource = {key: None for key in current if key not in desired}
    for key, want in desired.items():
        here = (*path, key)
        have = current.get(key)
        if here in secrets:
            if rotate or not same_secret(want, have):
                patch[key] = want
        elif isinstance(want, dict) and isinstance(have, dict):
            sub = merge_diff(have, want, secrets, rotate, here)
            if sub:
                patch[key] = sub
        elif want != have:
            patch[key] = want
    return patch


def _leaves(patch: Mapping[str, Any], secrets: set[tuple[str, ...]], path: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The changed fields of a patch as dotted paths, secrets marked (their values are never shown)."""
    out: list[str] = []
    for key, value in patch.items():
        here = (*path, key)
        if isinstance(value, dict) and value:
            out.extend(_leaves(value, secrets, here))
        else:
            label = ".".join(here)
            out.append(f"{label} (secret)" if here in secrets else label)
    return tuple(out)


# --- applying -------------------------------------------------------------------------------------------


def apply(
    plan: Plan,
    client: IoTCentralClient,
    *,
    secrets: Iterable[str] = (),
    after_step: Callable[[int, StepResult], None] | None = None,
) -> list[StepResult]:
    """Run the steps in order; stop at the first failure (later steps may depend on it) and report the rest as
    not attempted. ``secrets`` (the resolved values) are scrubbed from any error text the service sends back."""
    hidden = [s for s in secrets if s]
    results: list[StepResult] = []
    failed = False
    for i, step in enumerate(plan.steps):
        if failed:
            results.append(StepResult(step, Outcome.NOT_ATTEMPTED))
            continue
        try:
            _run(step, client)
            result = StepResult(step, Outcome.DONE)
        except IoTCentralError as exc:
            failed = True
            result = StepResult(step, Outcome.FAILED, _scrub(str(exc), hidden))
            logger.warning("IoT Central apply: %s failed: %s", step, result.error)
        results.append(result)
        if after_step is not None:
            after_step(i, result)
    return results


def _run(step: Step, client: IoTCentralClient) -> None:
    if step.action is Action.DELETE:
        client.delete(step.kind, step.item_id)
        return
    assert step.body is not None
    if step.action is Action.REPLACE:
        client.delete(step.kind, step.item_id)
        client.put(step.kind, step.item_id, step.body)
    elif step.action is Action.CREATE:
        client.put(step.kind, step.item_id, step.body)
    else:  # update, detach, reattach: a merge patch
        client.patch(step.kind, step.item_id, step.body)


def _scrub(text: str, secrets: list[str]) -> str:
    for value in secrets:
        text = text.replace(value, "*****")
        text = text.replace(json.dumps(value)[1:-1], "*****")
    return text
