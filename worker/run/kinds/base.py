"""What every job handler shares: the context of the daemon, one attempt at a job, the
result of running it, and the handler interface the runner calls.

The runner is: claim -> `handler.run(attempt)` -> record the outcome ->
`handler.after_final(job, outcome)` once the outcome is final (succeeded, failed,
dead). A handler that fans a file out into child jobs returns `EXPANDED`; the file job
then waits, and runs again to gather when its last child is final.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from worker.config import Settings
from worker.errors import GenerationInterrupted
from worker.io.atomic import write_atomic
from worker.io.files import content_digest, digest_of_key
from worker.io.safe_read import read_regular_file
from worker.llm.chat import ChatTemplate, chat_template_for
from worker.llm.embedders import Embedders
from worker.llm.embedding import Embedder
from worker.llm.engine import Engine
from worker.logs import event
from worker.pipelines.inference import PipelineRun
from worker.pipelines.models import pipeline_model
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import ClaimedJob, JobStore
from worker.queue.models import JobKind
from worker.run.recorder import Recorder

StillLeased = Callable[[], bool]
ShouldStop = Callable[[], bool]


class JobVanished(Exception):
    """A file job's input was removed, or replaced by a newer version, before it ran."""


@dataclass(frozen=True)
class JobResult:
    """A job's result: what goes into its row, and the output file written, if any."""

    result: str
    prompt_tokens: int
    completion_tokens: int
    output: Path | None = None


class Expanded:
    """The job fanned out into child jobs and now waits for them."""


EXPANDED = Expanded()


@dataclass(frozen=True)
class Attempt:
    """One claimed attempt at a job: the job, its pipeline, and the checks to honour."""

    job: ClaimedJob
    pipeline: Pipeline
    # True once the job must stop: shutdown, its lease lost or cancelled, its time up.
    should_stop: ShouldStop
    # Renews the lease now: False if it is gone (checked right before publishing).
    still_leased: StillLeased
    # The row's `input_text`, read for this job alone after its size was checked.
    input_text: str | None = None
    # When the attempt must end (`job_timeout`, time.monotonic()); None: no limit. Every
    # step honours it: parsing in the sandbox, generation, map-reduce.
    deadline: float | None = None


@dataclass(frozen=True)
class FinalOutcome:
    """How a job ended, for `after_final`."""

    succeeded: bool
    error: str | None
    when: datetime


class JobHandler(Protocol):
    """What the runner calls for one kind of job."""

    kind: JobKind

    def run(self, attempt: Attempt) -> JobResult | Expanded:
        """Do the job; raise InputError (not retried), OSError (retried) or
        GenerationInterrupted (released, or abandoned if the lease is lost)."""
        ...

    def after_final(self, job: ClaimedJob, outcome: FinalOutcome) -> None:
        """Follow-up once the outcome is recorded and final (archive, wake the parent)."""
        ...


class JobContext:
    """What handlers share: settings, the store, the engines, the recorder, the chat template."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        engine: Engine,
        record: Recorder,
        embedders: Embedders | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.record = record
        self.embedders = embedders or Embedders()
        self._chat: ChatTemplate | None = None

    def chat(self) -> ChatTemplate:
        """The loaded model's chat template (made on first use)."""
        if self._chat is None:
            spec = self.settings.models.get(self.settings.model)
            override = spec.chat_template if spec is not None else None
            self._chat = chat_template_for(self.engine, override)
        return self._chat

    def engine_for(self, pipeline: Pipeline) -> Engine:
        """The engine that serves `pipeline`'s model."""
        return self.engine

    def embedder_for(self, pipeline: Pipeline, model: str | None = None) -> Embedder:
        """The embedding engine of `pipeline`'s model, or of `model` (a `kind = "embed"`
        entry's name)."""
        return self.embedders.get(model or pipeline_model(pipeline, self.settings))

    def pipeline_run(self, pipeline: Pipeline) -> PipelineRun:
        """`pipeline` on the engine of its model."""
        return PipelineRun(self.engine_for(pipeline), pipeline, self.chat)


def publish(still_leased: StillLeased, path: Path, text: str, mode: int) -> None:
    """Write an output atomically with file `mode`, unless this worker's lease is gone."""

    def confirm() -> None:
        # Checked after the slow part (writing and fsyncing the temp file), right before
        # the rename: a worker whose lease is gone must not publish the output again.
        if not still_leased():
            raise GenerationInterrupted("lease lost before publishing")

    write_atomic(path, text.encode("utf-8"), before_replace=confirm, mode=mode)


def read_version(path: Path, key: str | None, max_bytes: int) -> bytes:
    """The bytes of a file job's input, checked against the version that was queued."""
    try:
        data = read_regular_file(path, max_bytes)
    except FileNotFoundError:
        raise JobVanished("input file was removed before it was processed") from None
    expected = digest_of_key(key)
    if expected not in (None, "oversize") and expected != content_digest(data):
        raise JobVanished("input file changed after it was queued; the new version runs")
    return data


def wake_parent(context: JobContext, job: ClaimedJob) -> None:
    """The last child of a file job to finish queues its parent to gather the results."""
    parent = job.parent_id
    if parent is not None and context.record(lambda: context.store.wake_parent(parent)):
        event("job.gather_queued", job_id=parent)


class ChildOfFile:
    """For the kinds that are children of a file job (records, batch lines)."""

    context: JobContext

    def after_final(self, job: ClaimedJob, outcome: FinalOutcome) -> None:
        """The last child to finish queues its file job to gather."""
        wake_parent(self.context, job)


HandlerMap = Mapping[JobKind, JobHandler]
