"""Batch ids: `batch_<job id>` for the job of an OpenAI Batch file."""

from __future__ import annotations


def batch_id_for(job_id: int) -> str:
    """The batch id of a batch file's job (`batch_<job id>`)."""
    return f"batch_{job_id}"


def job_id_of(batch_id: str) -> int | None:
    """The job id in a batch id, or None if it is not one."""
    prefix, _, number = batch_id.partition("_")
    return int(number) if prefix == "batch" and number.isdigit() else None
