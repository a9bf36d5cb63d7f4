"""Records: files with one job per record (CSV rows, JSON Lines, a JSON array). The
file job expands into one child job per record; each child is a `RecordItem`; when the
last is final the file job gathers their results.

The output is `outbox/<pipeline>/<input name>.jsonl`, one line per record in input
order: `{"line", "status", "result", "error", "record"}` (`result` is the parsed JSON
for json pipelines, the text otherwise).
"""

from __future__ import annotations

import json
from typing import Any

from worker.errors import GenerationInterrupted
from worker.io.files import FileRef, output_folder
from worker.io.naming import output_name
from worker.io.readers import Records, template_variables, too_many_records
from worker.pipelines.models import embeds
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import ClaimedJob, NewChild
from worker.queue.models import JobKind, JobStatus
from worker.run.kinds.base import (
    Attempt,
    ChildOfFile,
    JobContext,
    JobResult,
    StillLeased,
    input_owner,
    publish,
)
from worker.run.kinds.embed import embed_text


def expand(
    context: JobContext, job: ClaimedJob, pipeline: Pipeline, records: Records, owner: int
) -> None:
    """Turn the file job into a waiting parent with one child per record (`owner`: the
    uid owning the file that was read, recorded for the gather).

    InputError (nothing queued) if there are more records than max_records_per_file.
    """
    limit = context.settings.max_records_per_file
    if len(records.records) > limit:
        raise too_many_records(limit)
    children = [
        NewChild(
            r.line, json.dumps({"line": r.line, "fields": r.fields}, ensure_ascii=False), r.error
        )
        for r in records.records
    ]
    store = context.store
    if not store.expand(
        job.id, job.lease_token, pipeline.name, JobKind.ITEM, children, owner=owner
    ):
        raise GenerationInterrupted("lease lost before the records were queued")
    context.record(lambda: store.wake_parent(job.id))  # every record was bad: gather at once


class RecordItem(ChildOfFile):
    """One record of a file job: its fields are the template variables."""

    kind = JobKind.ITEM

    def __init__(self, context: JobContext) -> None:
        self.context = context

    def run(self, attempt: Attempt) -> JobResult:
        payload = json.loads(attempt.input_text or "{}")
        input_text, variables = template_variables(payload.get("fields") or {})
        if embeds(self.context.settings, attempt.pipeline):
            return embed_text(self.context, attempt.pipeline, input_text, attempt.should_stop)
        run = self.context.pipeline_run(attempt.pipeline, self.context.parsing(attempt))
        answer = run.run(input_text, variables, attempt.should_stop)
        return JobResult(answer.text, answer.prompt_tokens, answer.completion_tokens)


def gather(
    context: JobContext,
    job: ClaimedJob,
    pipeline: Pipeline,
    ref: FileRef,
    still_leased: StillLeased,
) -> JobResult:
    """Write every record's result, in input order, into one output file."""
    lines: list[str] = []
    succeeded = prompt_tokens = completion_tokens = 0
    for child in context.store.children(job.id):
        fields = json.loads(child.input_text or "{}").get("fields")
        result: Any = None
        if child.status == JobStatus.SUCCEEDED:
            succeeded += 1
            result = child.result_text
            if pipeline.output_format == "json" and child.result_text:
                result = json.loads(child.result_text)
        prompt_tokens += child.prompt_tokens or 0
        completion_tokens += child.completion_tokens or 0
        line = {
            "line": child.item_index,
            "status": child.status,
            "result": result,
            "error": None if child.status == JobStatus.SUCCEEDED else child.error,
            "record": fields,
        }
        lines.append(json.dumps(line, ensure_ascii=False))
    folder = output_folder(context.settings, pipeline.name, input_owner(context, job, ref))
    output = folder / output_name(ref.name, "jsonl")
    publish(
        still_leased, output, "".join(f"{line}\n" for line in lines), context.settings.output_mode
    )
    summary = f"{len(lines)} records: {succeeded} succeeded, {len(lines) - succeeded} failed"
    return JobResult(summary, prompt_tokens, completion_tokens, output)
