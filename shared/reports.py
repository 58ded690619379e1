"""Reports people can read: the hub's ``importErrors.log`` per device with code names, and rejections.

Everything streams: an error log with a million lines is read chunk by chunk and written as it is read, to
JSON lines and CSV writers (any object with ``write(bytes)``, such as a ``StagedBlob``).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .devices import ValidationReport, iter_batches
from .iothub import error_name

CSV_COLUMNS = ("deviceId", "moduleId", "errorCode", "errorName", "message")


class Writer(Protocol):
    def write(self, data: bytes) -> Any: ...


@dataclass
class ErrorSummary:
    """Counts of an import's per-device errors."""

    failed: int = 0
    by_code: Counter[str] = field(default_factory=Counter)
    unreadable_lines: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> devices not acted on (not errors)

    def as_dict(self) -> dict[str, Any]:
        return {"failedDevices": self.failed, "byCode": dict(self.by_code), "unreadableLines": self.unreadable_lines}


# A bulk's run (POST /api/bulk/{id}/run): its lines are conditional on each device as the bulk's query saw it, so the
# hub refusing a line for its precondition means the device was not acted on because it changed since the plan.
# Those are skipped devices, with the reason, not device errors. The hub's code for a failed ETag condition is
# 412001 PreconditionFailed (the error code list of the IoT Hub docs; the import docs say only "an error is written
# to the log file"); a device deleted since is 404001 DeviceNotFound.
BULK_SKIPS: Mapping[int, str] = {
    412001: "changed since the plan (its identity or twin, e.g. tags that no longer match the query): not acted on",
    404001: "deleted since the plan: not acted on",
}


# What a person can do about each common code; shown next to the count.
ADVICE: dict[str, str] = {
    "DeviceNotFound": "the device does not exist: use createOrUpdate, or remove the line",
    "DeviceAlreadyExists": "the device exists: use createOrUpdate or update instead of create",
    "PreconditionFailed": (
        "the device changed since its ETag was read (by an export, or by the query of POST /api/bulk): read it again "
        "(export again, or make the bulk again), or drop IfMatchETag"
    ),
    "DeserializationError": "the line is not in the import format: validate the file and fix the field named",
    "ArgumentInvalid": "a value breaks a rule (id, key length, thumbprint, twin size): fix the value",
    "IotHubQuotaExceeded": "the hub's device quota is reached: add units or remove devices, then re-run those devices",
}


def harvest_import_errors(
    chunks: Iterable[bytes],
    jsonl: Writer,
    csv_out: Writer,
    *,
    skips: Mapping[int, str] | None = None,
    skipped_out: Writer | None = None,
) -> ErrorSummary:
    """Turn the hub's ``importErrors.log`` (JSON lines ``deviceId``, ``errorCode``, ``errorStatus``) into reports.
    ``skips``: codes that mean "skipped, for this reason" rather than an error; those rows go to ``skipped_out``
    (JSON lines ``deviceId``, ``reason``, ``errorCode``) and are counted in ``skipped``, not ``failed``."""
    summary = ErrorSummary()
    skips = skips or {}
    header = io.StringIO()
    csv.writer(header).writerow(CSV_COLUMNS)
    csv_out.write(header.getvalue().encode())
    for _, batch in iter_batches(chunks):
        json_rows: list[bytes] = []
        text = io.StringIO()
        rows = csv.writer(text)
        for raw in batch:
            if raw is None or not raw.strip():
                continue
            try:
                entry = json.loads(raw)
                code = int(entry["errorCode"])
            except (ValueError, KeyError, TypeError):
                summary.unreadable_lines += 1
                continue
            if code in skips and skipped_out is not None:
                summary.skipped[skips[code]] += 1
                skipped = {"deviceId": entry.get("deviceId"), "reason": skips[code], "errorCode": code}
                skipped_out.write(json.dumps(skipped).encode() + b"\n")
                continue
            name = error_name(code)
            row = {
                "deviceId": entry.get("deviceId"),
                "moduleId": entry.get("moduleId"),
                "errorCode": code,
                "errorName": name,
                "message": str(entry.get("errorStatus") or ""),
            }
            summary.failed += 1
            summary.by_code[name] += 1
            json_rows.append(json.dumps(row).encode())
            rows.writerow([row[c] if row[c] is not None else "" for c in CSV_COLUMNS])
        if json_rows:
            jsonl.write(b"\n".join(json_rows) + b"\n")
        csv_out.write(text.getvalue().encode())
    return summary


def error_summary(errors: ErrorSummary) -> dict[str, Any]:
    """An import's per-device errors for its summary: counts per code, with advice."""
    return {"errors": errors.as_dict(), "advice": {name: ADVICE[name] for name in errors.by_code if name in ADVICE}}


def summary_document(job: Mapping[str, Any], details: Mapping[str, Any]) -> dict[str, Any]:
    """The ``summary.json`` of an ended job: the job as the API shows it, then what its kind adds (error counts)."""
    return {"job": dict(job), **details}


def rejection_document(source: str, report: ValidationReport) -> dict[str, Any]:
    """The rejection report of a file that never reached the hub: where each problem is and what to change."""
    return {
        "source": source,
        "verdict": "rejected: nothing was imported; fix the lines below and upload the file again",
        **report.summary(),
    }
