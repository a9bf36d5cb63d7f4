"""Files with one job per record (CSV rows, JSON Lines, a JSON array): expand and gather.

The output is `outbox/<pipeline>/<input name>.jsonl`, one line per record in input
order: `{"line", "status", "result", "error", "record"}` (`result` is the parsed JSON
for json pipelines, the text otherwise).
"""

from __future__ import annotations

import json
from typing import Any

from worker.db.models import SUCCEEDED
from worker.engine import GenerationInterrupted
from worker.file_jobs import FileRef
from worker.naming import output_name
from worker.pipelines import Pipeline
from worker.readers import Records, template_variables
from worker.store import ClaimedJob, NewChild
from worker.work import Done, ShouldStop, StillLeased, Work, publish


def expand(work: Work, job: ClaimedJob, pipeline: Pipeline, records: Records) -> None:
    """Turn the file job into a waiting parent with one child per record."""
    children = [
        NewChild(
            r.line, json.dumps({"line": r.line, "fields": r.fields}, ensure_ascii=False), r.error
        )
        for r in records.records
    ]
    if not work.store.expand(job.id, job.lease_token, pipeline.name, "item", children):
        raise GenerationInterrupted("lease lost before the records were queued")
    work.store.wake_parent(job.id)  # every record was bad: gather at once


def run_record(work: Work, job: ClaimedJob, pipeline: Pipeline, should_stop: ShouldStop) -> Done:
    """One record: its fields are the template variables."""
    payload = json.loads(job.input_text or "{}")
    input_text, variables = template_variables(payload.get("fields") or {})
    answer = work.pipeline_run(pipeline).run(input_text, variables, should_stop)
    return Done(answer.text, answer.prompt_tokens, answer.completion_tokens)


def gather(
    work: Work, job: ClaimedJob, pipeline: Pipeline, ref: FileRef, still_leased: StillLeased
) -> Done:
    """Write every record's result, in input order, into one output file."""
    lines: list[str] = []
    succeeded = prompt_tokens = completion_tokens = 0
    for child in work.store.children(job.id):
        fields = json.loads(child.input_text or "{}").get("fields")
        result: Any = None
        if child.status == SUCCEEDED:
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
            "error": None if child.status == SUCCEEDED else child.error,
            "record": fields,
        }
        lines.append(json.dumps(line, ensure_ascii=False))
    output = work.settings.folder("outbox", pipeline.name) / output_name(ref.name, "jsonl")
    publish(still_leased, output, "".join(f"{line}\n" for line in lines))
    summary = f"{len(lines)} records: {succeeded} succeeded, {len(lines) - succeeded} failed"
    return Done(summary, prompt_tokens, completion_tokens, output)
