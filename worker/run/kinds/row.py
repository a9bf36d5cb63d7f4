"""Table rows: another program inserted the row; `input_text` is the input, the result
(text, or for an embedding pipeline the vector as JSON) goes back into the same row."""

from __future__ import annotations

from worker.errors import InputError
from worker.io.decode import decode_text
from worker.pipelines.models import embeds
from worker.queue.jobs import ClaimedJob
from worker.queue.models import JobKind
from worker.run.kinds.base import Attempt, FinalOutcome, JobContext, JobResult
from worker.run.kinds.embed import embed_text


class TableRow:
    """The pipeline on the row's text."""

    kind = JobKind.TABLE

    def __init__(self, context: JobContext) -> None:
        self.context = context

    def run(self, attempt: Attempt) -> JobResult:
        pipeline = attempt.pipeline
        if pipeline.reader == "openai-batch":
            raise InputError(
                f"pipeline {pipeline.name} reads OpenAI Batch files: drop them into "
                f"inbox/{pipeline.name}/ (or use `edge-worker batch submit`)"
            )
        if attempt.input_text is None:
            raise InputError("input_text is NULL: nothing to process")
        text = decode_text(attempt.input_text.encode("utf-8", errors="surrogatepass"))
        if embeds(self.context.settings, pipeline):
            return embed_text(self.context, pipeline, text, attempt.should_stop)
        run = self.context.pipeline_run(pipeline, self.context.parsing(attempt))
        answer = run.run(text, {}, attempt.should_stop)
        return JobResult(answer.text, answer.prompt_tokens, answer.completion_tokens)

    def after_final(self, job: ClaimedJob, outcome: FinalOutcome) -> None:
        """Nothing: the row itself holds the outcome."""
