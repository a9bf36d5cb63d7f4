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
from typing import Any, Protocol

from worker.config import Settings
from worker.errors import GenerationInterrupted, ModelError
from worker.io.atomic import write_atomic
from worker.io.files import FileRef, content_digest, digest_of_key
from worker.io.safe_read import InputRead, read_input_file
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
from worker.sandbox import Sandbox
from worker.sandbox.parsing import Parsing

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


class Models(Protocol):
    """The daemon's models (`worker.llm.manager.ModelManager`): engines by model name."""

    @property
    def names(self) -> list[str]: ...

    def engine(self, name: str) -> Any:
        """The loaded engine of `name` (a generation or an embedding engine)."""
        ...


class JobContext:
    """What handlers share: settings, the store, the models' engines, the recorder, the
    chat templates, and the sandbox that parses untrusted input. With `models` (a
    daemon), each pipeline runs on the engine of its model; without (tests, one-off
    tools), every pipeline runs on `engine`, and embedding pipelines on `embedders`."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        engine: Engine | None,
        record: Recorder,
        sandbox: Sandbox,
        models: Models | None = None,
        embedders: Embedders | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.record = record
        self.sandbox = sandbox
        self.models = models
        self.embedders = embedders or Embedders()
        self._chat: dict[str, ChatTemplate] = {}

    def model_for(self, pipeline: Pipeline, model: str | None = None) -> str:
        """The model-table name a job of `pipeline` runs on (`model`: the job's own)."""
        return model or pipeline_model(pipeline, self.settings)

    def serves(self, model: str) -> bool:
        """Whether this daemon serves model `model` (a model-table name)."""
        if self.models is None:
            return model == self.settings.model or model in self.embedders.names()
        return model in self.models.names

    def _engine(self, name: str) -> Any:
        if self.models is None:
            if self.engine is None:
                raise ModelError("no engine")
            return self.engine
        return self.models.engine(name)

    def engine_for(self, pipeline: Pipeline, model: str | None = None) -> Engine:
        """The generation engine of `pipeline`'s model (or of the job's own `model`)."""
        engine: Engine = self._engine(self.model_for(pipeline, model))
        return engine

    def embedder_for(self, pipeline: Pipeline, model: str | None = None) -> Embedder:
        """The embedding engine of `pipeline`'s model (a `kind = "embed"` entry): the model
        manager's in a daemon, else one of `embedders` (`worker.llm.embedding`)."""
        name = self.model_for(pipeline, model)
        if self.models is None:
            return self.embedders.get(name)
        engine: Embedder = self._engine(name)
        return engine

    def chat(self, pipeline: Pipeline | None = None, model: str | None = None) -> ChatTemplate:
        """The chat template of a pipeline's model (default: the `model` setting's), made
        on first use: the model entry's `chat_template`, else the GGUF's, else a plain
        transcript."""
        name = self.model_for(pipeline, model) if pipeline is not None else model
        name = name or self.settings.model
        if name not in self._chat:
            spec = self.settings.models.get(name)
            override = spec.chat_template if spec is not None else None
            self._chat[name] = chat_template_for(self._engine(name), override)
        return self._chat[name]

    def parsing(self, attempt: Attempt) -> Parsing:
        """The parsing steps of `attempt`, in the sandbox, by its deadline; waiting checks
        `should_stop` (which beats the slot's heartbeat) at least once a second."""
        return Parsing(self.sandbox, attempt.deadline, attempt.should_stop)

    def pipeline_run(self, pipeline: Pipeline, parsing: Parsing) -> PipelineRun:
        """`pipeline` on the engine of its model, its JSON results checked by `parsing`."""
        return PipelineRun(
            self.engine_for(pipeline), pipeline, lambda: self.chat(pipeline), parsing.validate
        )


def publish(
    still_leased: StillLeased,
    path: Path,
    text: str,
    mode: int,
    keep: Callable[[Path], bool] | None = None,
) -> bool:
    """Write an output atomically with file `mode`, unless this worker's lease is gone.
    With `keep`, a guarded write (`write_atomic`): False if the file there was kept."""

    def confirm() -> None:
        # Checked after the slow part (writing and fsyncing the temp file), right before
        # the rename: a worker whose lease is gone must not publish the output again.
        if not still_leased():
            raise GenerationInterrupted("lease lost before publishing")

    return write_atomic(path, text.encode("utf-8"), before_replace=confirm, mode=mode, keep=keep)


def read_version(
    path: Path, key: str | None, max_bytes: int, root: Path | None = None
) -> InputRead:
    """The bytes of a file job's input, checked against the version that was queued, and
    the owner of that file (whose folder gets the output with outputs_per_submitter).

    With `root`, no link below it is followed (a swept tree). A read that failed for a
    reason that may pass (EMFILE, EIO...) raises TransientReadError, an OSError: the job
    is retried, not failed for good.
    """
    try:
        read = read_input_file(path, max_bytes, root)
    except FileNotFoundError:
        raise JobVanished("input file was removed before it was processed") from None
    expected = digest_of_key(key)
    if expected not in (None, "oversize") and expected != content_digest(read.data):
        raise JobVanished("input file changed after it was queued; the new version runs")
    return read


def input_owner(context: JobContext, job: ClaimedJob, ref: FileRef) -> int | None:
    """The uid whose folder gets a gathered file's outputs: the owner of the file as it
    was read, recorded when the job expanded (the name may be gone by now, or hold
    another user's file); for a parent expanded before that was recorded, the owner of
    the file in the inbox now."""
    recorded = context.record(lambda: context.store.input_owner(job.id))
    return recorded if recorded is not None else ref.owner(context.settings)


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
