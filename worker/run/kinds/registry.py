"""The handler of each kind of job; building them checks that no kind is left out."""

from __future__ import annotations

from worker.queue.models import JobKind
from worker.run.kinds.base import JobContext, JobHandler
from worker.run.kinds.batch_lines import BatchLine
from worker.run.kinds.document import DocumentFile
from worker.run.kinds.records import RecordItem
from worker.run.kinds.row import TableRow
from worker.run.kinds.sweep import SweptFile

HANDLER_TYPES: tuple[type[JobHandler], ...] = (
    TableRow,
    DocumentFile,
    SweptFile,
    RecordItem,
    BatchLine,
)


def build_handlers(context: JobContext) -> dict[JobKind, JobHandler]:
    """One handler per JobKind; raises if a kind has none or two."""
    handlers: dict[JobKind, JobHandler] = {}
    for handler_type in HANDLER_TYPES:
        handler = handler_type(context)  # type: ignore[call-arg]
        if handler.kind in handlers:
            raise RuntimeError(f"two handlers for job kind {handler.kind}")
        handlers[handler.kind] = handler
    missing = set(JobKind) - set(handlers)
    if missing:
        raise RuntimeError(f"no handler for job kind(s) {sorted(missing)}")
    return handlers
