"""Swept files: a schedule's sweep found the file by its pipeline's globs. It is read
where it is, as one document, and never moved; the output goes to the outbox."""

from __future__ import annotations

from pathlib import Path

from worker.errors import InputError
from worker.io.files import output_folder
from worker.io.naming import output_name
from worker.io.readers import Records, limits_of, reader_for
from worker.pipelines.models import embeds
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import ClaimedJob
from worker.queue.models import JobKind
from worker.run.kinds import embed
from worker.run.kinds.base import (
    Attempt,
    FinalOutcome,
    JobContext,
    JobResult,
    publish,
    read_version,
)
from worker.sources.sweep import output_subfolder, swept_root


def swept_path(source_path: str | None, pipeline: Pipeline, data_dir: Path) -> tuple[Path, Path]:
    """The file a sweep row names, checked as untrusted input: an absolute, normalized path
    that matches one of its pipeline's sweep globs. Returns (the path, the glob's literal
    root: the read follows no link below it). InputError if not."""
    if not source_path or "\x00" in source_path:
        raise InputError("a sweep job needs the absolute path of its file in source_path")
    path = Path(source_path)
    if not path.is_absolute() or ".." in path.parts or str(path) != source_path:
        raise InputError(f"invalid source_path {source_path!r}: not an absolute, normal path")
    root = swept_root(source_path, pipeline.sweep, data_dir)
    if root is None:
        raise InputError(
            f"invalid source_path {source_path!r}: it matches none of pipeline "
            f"{pipeline.name}'s sweep globs"
        )
    return path, root


def check_output_place(top: Path, output: Path) -> None:
    """Refuse an output below `top` that would go through a symbolic link (the outbox is
    the daemon's own: a link there is planted, and would send an output elsewhere) or
    whose folders or name are taken by something else (a folder `x.txt.txt/` mirrored
    from a swept tree where the output of `x.txt` goes): InputError, which no retry
    cures."""
    current = top
    for part in output.relative_to(top).parts:
        current = current / part
        if current.is_symlink():
            raise InputError(f"{current} is a symbolic link: no output is written through it")
        if current == output:
            if current.is_dir():
                raise InputError(f"the output {current} is taken by a folder of that name")
        elif current.exists() and not current.is_dir():
            raise InputError(f"{current} is a file: the output's folders cannot be made")


class SweptFile:
    """The pipeline on one swept file."""

    kind = JobKind.SWEEP

    def __init__(self, context: JobContext) -> None:
        self.context = context

    def run(self, attempt: Attempt) -> JobResult:
        job, pipeline, settings = attempt.job, attempt.pipeline, self.context.settings
        path, root = swept_path(job.source_path, pipeline, settings.data_dir)
        read = read_version(path, job.idempotency_key, settings.max_input_bytes, root=root)
        parsing = self.context.parsing(attempt)
        reader = reader_for(path.name, pipeline.reader)
        document = parsing.read_input(read.data, reader, limits_of(settings))
        if isinstance(document, Records):
            raise InputError("swept files are read as one document; put row files in an inbox")
        # The owner of the bytes that were read: the name may hold another's file by now
        # (a swept folder has no sticky bit to stop a swap).
        owner = read.owner
        below = output_subfolder(path, root)
        if embeds(settings, pipeline):
            output = embed.file_output(self.context, pipeline, path.name, owner)
            output = output.parent / below / output.name
            check_output_place(output_folder(settings, pipeline.name, owner), output)
            return embed.embed_file(
                self.context,
                pipeline,
                document.text,
                output,
                attempt.should_stop,
                attempt.still_leased,
            )
        run = self.context.pipeline_run(pipeline, parsing)
        answer = run.run(document.text, document.variables, attempt.should_stop)
        name = output_name(path.name, pipeline.output_format)
        folder = output_folder(settings, pipeline.name, owner)
        output = folder / below / name
        check_output_place(folder, output)
        publish(attempt.still_leased, output, answer.text + "\n", self.context.settings.output_mode)
        return JobResult(answer.text, answer.prompt_tokens, answer.completion_tokens, output)

    def after_final(self, job: ClaimedJob, outcome: FinalOutcome) -> None:
        """Nothing: a swept file stays where it is."""
