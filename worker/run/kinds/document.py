"""Files dropped into `inbox/<pipeline>/`: one document, or a file of records or OpenAI
Batch lines that expands into child jobs and later gathers their results. When the job
is final, the original moves to done/ or failed/ (beside `<name>.error.json`)."""

from __future__ import annotations

import logging

from worker.errors import InputError
from worker.io.files import FileRef, FileVersion, archive_original
from worker.io.readers import Records, limits_of, reader_for
from worker.logs import event
from worker.pipelines.models import embeds
from worker.queue.jobs import ClaimedJob
from worker.queue.models import JobKind
from worker.run.kinds import batch_lines, embed, records
from worker.run.kinds.base import (
    EXPANDED,
    Attempt,
    Expanded,
    FinalOutcome,
    JobContext,
    JobResult,
    input_owner,
    publish,
    read_version,
)


class DocumentFile:
    """A file job: run, expand or gather, by what the file holds and how far it got."""

    kind = JobKind.FILE

    def __init__(self, context: JobContext) -> None:
        self.context = context

    def run(self, attempt: Attempt) -> JobResult | Expanded:
        context, job, pipeline = self.context, attempt.job, attempt.pipeline
        settings = context.settings
        ref = FileRef.parse(job.source_path or "", job.pipeline)
        # Read through an outage, as outcomes are written: an outage at the start of an
        # attempt must not give the job back to be run again from the beginning.
        if context.record(lambda: context.store.has_children(job.id)):
            if context.record(lambda: context.store.batch_of_job(job.id)) is not None:
                return batch_lines.gather(context, job, pipeline, ref, attempt.still_leased)
            if embeds(settings, pipeline):
                owner = input_owner(context, job, ref)
                return embed.gather(context, job, pipeline, ref, attempt.still_leased, owner)
            return records.gather(context, job, pipeline, ref, attempt.still_leased)
        path = ref.inbox_path(settings)
        read = read_version(path, job.idempotency_key, settings.max_input_bytes)
        data = read.data
        kind = reader_for(ref.name, pipeline.reader)
        parsing = context.parsing(attempt)
        if kind == "openai-batch":
            lines = parsing.check_lines(data, None)
            batch_lines.expand(context, job, pipeline, ref, lines, read.owner)
            return EXPANDED
        document = parsing.read_input(data, kind, limits_of(settings))
        if isinstance(document, Records):
            if embeds(settings, pipeline):
                reused = embed.reuse_records(context, attempt, ref, read.owner)
                if reused is not None:
                    return reused
            records.expand(context, job, pipeline, document, read.owner)
            return EXPANDED
        if embeds(settings, pipeline):
            output = embed.file_output(context, pipeline, ref.name, read.owner)
            return embed.run_document(context, attempt, ref, document.text, output)
        run = context.pipeline_run(pipeline, parsing)
        answer = run.run(document.text, document.variables, attempt.should_stop)
        output = ref.output_path(settings, pipeline.output_format, read.owner)
        publish(attempt.still_leased, output, answer.text + "\n", self.context.settings.output_mode)
        return JobResult(answer.text, answer.prompt_tokens, answer.completion_tokens, output)

    def after_final(self, job: ClaimedJob, outcome: FinalOutcome) -> None:
        """Move the version of the file that ran out of the inbox."""
        context = self.context
        try:
            ref = FileRef.parse(job.source_path or "", job.pipeline)
        except Exception:  # an invalid row: nothing of ours to move
            return
        try:
            archived = archive_original(
                context.settings,
                ref,
                job.id,
                outcome.succeeded,
                outcome.error,
                outcome.when,
                version=FileVersion.from_key(job.idempotency_key),
            )
        except (OSError, InputError) as exc:  # the watcher finishes the move on a rescan
            event("job.archive_failed", logging.WARNING, job_id=job.id, error=str(exc))
            return
        if archived is not None:
            context.record(lambda: context.store.set_archived_path(job.id, str(archived)))
