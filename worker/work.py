"""What running one claimed job means, for every kind of job. The runner records the outcome.

- a table row or a one-document file: the pipeline on its text; a file gets an output;
- a file with records (CSV, JSON Lines, JSON array) or an OpenAI Batch file: expanded
  into child jobs (see worker.store_family); when they are final, the same file job
  runs again and gathers their results into one output;
- a child job: the pipeline on its record, or the OpenAI request of its line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from worker.chat import ChatModel, ChatTemplate, chat_template_for
from worker.config import Settings
from worker.engine import Engine, GenerationInterrupted
from worker.file_jobs import FileRef, content_digest, digest_of_key, output_location
from worker.inference import PipelineRun
from worker.inputs import InputError, decode_text, read_input_bytes
from worker.pipelines import Pipeline
from worker.readers import Records, read_input, reader_for
from worker.sinks import write_atomic
from worker.store import ClaimedJob, JobStore


class JobVanished(Exception):
    """A file job's input was removed, or replaced by a newer version, before it ran."""


@dataclass(frozen=True)
class Done:
    """A job's result: what goes into its row, and the output file written, if any."""

    result: str
    prompt_tokens: int
    completion_tokens: int
    output: Path | None = None


StillLeased = Callable[[], bool]
ShouldStop = Callable[[], bool]


class Work:
    """Runs claimed jobs with one engine; shared by every kind of job."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        engine: Engine,
        pipelines: Mapping[str, Pipeline],
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.pipelines = pipelines
        self._chat: ChatTemplate | None = None

    def chat(self) -> ChatTemplate:
        """The loaded model's chat template (made on first use)."""
        if self._chat is None:
            spec = self.settings.models.get(self.settings.model)
            override = spec.chat_template if spec is not None else None
            if isinstance(self.engine, ChatModel):
                self._chat = chat_template_for(self.engine, override)
            else:  # engines without a vocabulary (test fakes)
                self._chat = chat_template_for(_NoVocabulary(), override)
        return self._chat

    def pipeline_run(self, pipeline: Pipeline) -> PipelineRun:
        return PipelineRun(self.engine, pipeline, self.chat)

    def read_file(self, job: ClaimedJob, path: Path) -> bytes:
        """The bytes of a file job's input, checked against the version that was queued."""
        try:
            data = read_input_bytes(path, self.settings.max_input_bytes)
        except FileNotFoundError:
            raise JobVanished("input file was removed before it was processed") from None
        expected = digest_of_key(job.idempotency_key)
        if expected not in (None, "oversize") and expected != content_digest(data):
            raise JobVanished("input file changed after it was queued; the new version runs")
        return data

    def execute(
        self,
        job: ClaimedJob,
        pipeline: Pipeline,
        should_stop: ShouldStop,
        still_leased: StillLeased,
    ) -> Done | None:
        """Run `job`; None when it fanned out into child jobs (it then waits for them)."""
        from worker import fanout
        from worker.batch import jobs as batch_jobs

        if job.source == "item":
            return fanout.run_record(self, job, pipeline, should_stop)
        if job.source == "batch":
            return batch_jobs.run_line(self, job, pipeline, should_stop)
        if job.source == "sweep" and job.source_path:
            # A swept file is read where it was found, as one document, and left there.
            path = Path(job.source_path)
            document = read_input(self.read_file(job, path), reader_for(path.name, pipeline.reader))
            if isinstance(document, Records):
                raise InputError("swept files are read as one document; put row files in an inbox")
            answer = self.pipeline_run(pipeline).run(document.text, document.variables, should_stop)
            output = output_location(
                self.settings, job.pipeline, job.source, job.source_path, pipeline.output_format
            )
            publish(still_leased, output, answer.text + "\n")
            return Done(answer.text, answer.prompt_tokens, answer.completion_tokens, output)
        if job.source == "file" and job.source_path:
            ref = FileRef.parse(job.source_path)
            if self.store.has_children(job.id):
                if self.store.batch_of_job(job.id) is not None:
                    return batch_jobs.gather(self, job, pipeline, ref, still_leased)
                return fanout.gather(self, job, pipeline, ref, still_leased)
            data = self.read_file(job, ref.inbox_path(self.settings))
            kind = reader_for(ref.name, pipeline.reader)
            if kind == "openai-batch":
                batch_jobs.expand(self, job, pipeline, ref, data)
                return None
            document = read_input(data, kind)
            if isinstance(document, Records):
                fanout.expand(self, job, pipeline, document)
                return None
            answer = self.pipeline_run(pipeline).run(document.text, document.variables, should_stop)
            output = ref.output_path(self.settings, pipeline.output_format)
            publish(still_leased, output, answer.text + "\n")
            return Done(answer.text, answer.prompt_tokens, answer.completion_tokens, output)
        if pipeline.reader == "openai-batch":
            raise InputError(
                f"pipeline {pipeline.name} reads OpenAI Batch files: drop them into "
                f"inbox/{pipeline.name}/ (or use `edge-worker batch submit`)"
            )
        if job.input_text is None:
            raise InputError("input_text is NULL: nothing to process")
        text = decode_text(job.input_text.encode("utf-8", errors="surrogatepass"))
        answer = self.pipeline_run(pipeline).run(text, {}, should_stop)
        return Done(answer.text, answer.prompt_tokens, answer.completion_tokens)


def publish(still_leased: StillLeased, path: Path, text: str) -> None:
    """Write an output atomically, unless this worker's lease is gone."""

    def confirm() -> None:
        # Checked after the slow part (writing and fsyncing the temp file), right before
        # the rename: a worker whose lease is gone must not publish the output again.
        if not still_leased():
            raise GenerationInterrupted("lease lost before publishing")

    write_atomic(path, text.encode("utf-8"), before_replace=confirm)


class _NoVocabulary:
    metadata: Mapping[str, str] = {}
    control_tokens: frozenset[str] = frozenset()
