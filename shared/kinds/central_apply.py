"""Applying a data-export file to IoT Central: a job that runs in the app, one at a time (the ``central``
partition has its slot like a hub), keyed like an import by the upload's version.

Preparing reads, checks and plans the file: a bad file is ``rejected`` with every problem and nothing is sent.
Submitting plans again from what the app holds now and applies the steps, recording progress after each one (so a
live apply never looks stale). If the process dies mid-apply the job stays ``submitting``; after the grace period
the monitor queues it again and it runs once more, which is safe: its plan starts from what the app holds then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace

from ..central import Central
from ..dataexport import DocumentError, Outcome, StepResult, apply
from ..dataexport.document import MAX_BYTES
from ..engine import CannotCancel, Context, Ending, checkpoint
from ..iothub import Job as HubJob
from ..ledger import Job, JobKind, JobState
from ..storage import BlobRef


class CentralApplyKind:
    name = JobKind.CENTRAL_APPLY
    partitioned_by_hub = False

    def __init__(self, central: Central) -> None:
        self.central = central

    def prepare(self, job: Job, ctx: Context) -> Job:
        raw = _read(ctx, ctx.source(job))
        job = replace(job, source_sha256=hashlib.sha256(raw).hexdigest())
        try:
            _, _, plan = self.central.plan(raw)
        except DocumentError as exc:
            doc = {"file": job.source, "problems": [p.public() for p in exc.problems], "applied": "nothing"}
            report = ctx.write_report(job, "central-rejection.json", doc)
            n = len(exc.problems)
            reason = f"{n:,} problem{'' if n == 1 else 's'} in the file; nothing was changed"
            return replace(
                job, validation_errors=len(exc.problems), failure_reason=reason, reports={"rejection": report}
            )
        return replace(job, steps=plan.summary())

    def submit(self, job: Job, ctx: Context) -> Ending:
        try:
            doc, _, plan = self.central.plan(_read(ctx, ctx.source(job)))
        except DocumentError as exc:  # e.g. an app setting removed since the file was accepted
            return self._ended(job, ctx, JobState.FAILED, str(exc), {"problems": [p.public() for p in exc.problems]})
        secrets = [self.central.env.get(name, "") for name in doc.settings()]

        def progress(i: int, result: StepResult) -> None:
            nonlocal job
            job = ctx.save_progress(replace(job, progress=int(100 * (i + 1) / max(len(plan.steps), 1))))
            checkpoint("central_step")

        results = apply(plan, self.central.client, secrets=secrets, after_step=progress)
        report = {"plan": plan.public(), "results": [r.public() for r in results]}
        failed = [r for r in results if r.outcome is Outcome.FAILED]
        if failed:
            done = sum(r.outcome is Outcome.DONE for r in results)
            reason = (
                f"{done} of {len(results)} step(s) applied; {failed[0].step} failed: {failed[0].error}. "
                "Fix the cause and apply the file again: the new plan starts from what the app holds."
            )
            return self._ended(job, ctx, JobState.FAILED, reason, report)
        return self._ended(job, ctx, JobState.COMPLETED, None, report)

    def _ended(
        self, job: Job, ctx: Context, state: JobState, reason: str | None, report: Mapping[str, object]
    ) -> Ending:
        doc = {"file": job.source, "state": str(state), "reason": reason, **report}
        path = ctx.write_report(job, "central-apply.json", doc)
        return Ending(replace(job, progress=100, reports={**job.reports, "result": path}), state, reason)

    def follow(self, job: Job, ctx: Context) -> HubJob:
        raise AssertionError("an apply runs in the app; there is no hub job to follow")

    def end(self, job: Job, hub_job: HubJob, ctx: Context) -> Ending:
        raise AssertionError("an apply runs in the app; there is no hub job to end")

    def adopt(self, job: Job, ctx: Context) -> HubJob | None:
        return None  # nothing outside the app to adopt: an interrupted apply runs again

    def cancel(self, job: Job, ctx: Context) -> None:
        raise CannotCancel("an IoT Central apply runs to its end once started; it cannot be cancelled")

    def closed(self, job: Job, ctx: Context) -> None:
        """Nothing to drop: the upload is archived by the engine."""


def _read(ctx: Context, ref: BlobRef) -> bytes:
    chunks, size = [], 0
    for chunk in ctx.storage.open_read(ref):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BYTES:
            break  # parse() says the file is too big; no need to read the rest
    return b"".join(chunks)
