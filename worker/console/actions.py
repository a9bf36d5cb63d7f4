"""What an operator may do from the console (only with `console_actions = true`): retry
or cancel a job, retry every failed job matching a filter (at most `retry_limit`), and
pause or resume a pipeline's intake. Each action is logged with who asked, from where,
and what came of it; so is every refused attempt."""

from __future__ import annotations

import logging
from collections.abc import Callable

from worker.logs import event
from worker.pipelines.pauses import Pauses
from worker.queue.jobs import JobStore
from worker.queue.outage import DatabaseUnavailable

RETRYABLE = ("failed", "dead", "cancelled")


class ActionError(Exception):
    """An action that cannot be done; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _job_id(form: dict[str, str]) -> int:
    value = form.get("job_id", "")
    if not value.isdigit() or len(value) > 12:
        raise ActionError(400, "job_id must be a job number")
    return int(value)


class Actions:
    """The console's actions on the store and the pause flags."""

    def __init__(
        self,
        store: JobStore,
        pauses: Pauses,
        retry_limit: int,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.pauses = pauses
        self.retry_limit = retry_limit
        self.changed = changed  # refresh the snapshot, wake the dispatcher

    def run(self, path: str, form: dict[str, str], who: str, peer: str) -> str:
        """Do the action at `path`; returns what happened, in words. Raises ActionError."""
        handlers: dict[str, Callable[[dict[str, str]], tuple[str, str]]] = {
            "/actions/retry": self._retry,
            "/actions/cancel": self._cancel,
            "/actions/retry-matching": self._retry_matching,
            "/actions/pause": self._pause,
            "/actions/resume": self._resume,
        }
        handler = handlers.get(path)
        if handler is None:
            raise ActionError(404, "no such action")
        action = path.removeprefix("/actions/")
        try:
            target, result = handler(form)
        except ActionError as exc:
            event(
                "console.action",
                logging.WARNING,
                action=action,
                who=who,
                peer=peer,
                target=None,
                result=f"refused: {exc}",
            )
            raise
        except DatabaseUnavailable as exc:
            event(
                "console.action",
                logging.WARNING,
                action=action,
                who=who,
                peer=peer,
                target=None,
                result=f"database unavailable: {exc}",
            )
            raise ActionError(503, "the database is not answering; try again") from None
        event("console.action", action=action, who=who, peer=peer, target=target, result=result)
        self.changed()
        return result

    def _retry(self, form: dict[str, str]) -> tuple[str, str]:
        job_id = _job_id(form)
        if not self.store.retry(job_id):
            raise ActionError(409, f"job {job_id} is not failed, dead or cancelled")
        return f"job {job_id}", f"job {job_id} queued again"

    def _cancel(self, form: dict[str, str]) -> tuple[str, str]:
        job_id = _job_id(form)
        if not self.store.cancel(job_id):
            raise ActionError(409, f"job {job_id} is not queued, running or waiting")
        return f"job {job_id}", f"job {job_id} cancelled"

    def _retry_matching(self, form: dict[str, str]) -> tuple[str, str]:
        status = form.get("status", "")
        if status not in RETRYABLE:
            raise ActionError(400, "status must be failed, dead or cancelled")
        pipeline = form.get("pipeline", "") or None
        wanted = form.get("limit", str(self.retry_limit))
        limit = min(int(wanted), self.retry_limit) if wanted.isdigit() else self.retry_limit
        if limit < 1:
            raise ActionError(400, "limit must be at least 1")
        jobs = self.store.list_jobs(status=status, pipeline=pipeline, limit=limit)
        queued = self.store.retry_many([job.id for job in jobs])
        target = f"status={status} pipeline={pipeline or '*'} limit={limit}"
        return target, f"{len(queued)} job(s) queued again"

    def _pause(self, form: dict[str, str]) -> tuple[str, str]:
        pipeline = form.get("pipeline", "")
        try:
            changed = self.pauses.pause(pipeline, "console")
        except ValueError as exc:
            raise ActionError(400, str(exc)) from None
        state = "paused" if changed else "was already paused"
        return f"pipeline {pipeline}", f"pipeline {pipeline} {state}"

    def _resume(self, form: dict[str, str]) -> tuple[str, str]:
        pipeline = form.get("pipeline", "")
        try:
            changed = self.pauses.resume(pipeline)
        except ValueError as exc:
            raise ActionError(400, str(exc)) from None
        state = "resumed" if changed else "was not paused"
        return f"pipeline {pipeline}", f"pipeline {pipeline} {state}"

    def log_login(self, who: str, peer: str) -> None:
        event("console.login", who=who, peer=peer)

    def log_refused(self, path: str, who: str, peer: str, why: str) -> None:
        event("console.refused", logging.WARNING, path=path, who=who, peer=peer, reason=why)
