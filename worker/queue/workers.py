"""The `workers` table: each daemon's registration, heartbeat, and what it serves; and the
reads the fleet's routing makes of the queue (ready jobs by pipeline and model)."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update

from worker.queue.base import StoreBase
from worker.queue.models import Job, JobStatus, Worker
from worker.queue.outage import translate_outages


@dataclass(frozen=True)
class ReadyGroup:
    """Ready jobs (queued, due) of one pipeline and model that a daemon may claim."""

    pipeline: str
    model: str | None  # the job's own model (batch lines), None: its pipeline's
    count: int
    waited: float  # seconds since the oldest of them became due


def origin_allows(origin: str | None) -> Any:
    """Jobs a daemon of instance `origin` may claim: those of no instance, and its own."""
    return or_(Job.origin.is_(None), Job.origin == origin)


@translate_outages
class WorkerStore(StoreBase):
    """Daemons' rows (mixed into JobStore)."""

    def register_worker(
        self,
        worker_id: str,
        host: str,
        pid: int,
        model: str,
        slots: int,
        instance: str | None = None,
        pipelines: Mapping[str, str] | None = None,
        models: Mapping[str, Any] | None = None,
    ) -> None:
        """Insert this daemon's row, `running`: `pipelines` maps each pipeline it serves to
        its model. Its heartbeat is on the database's clock, as leases are (recovery
        compares it with the database's now), its start on its own."""
        now = self._db_now()
        with self.db.begin() as conn:
            conn.execute(delete(Worker).where(Worker.id == worker_id))
            conn.execute(
                insert(Worker).values(
                    id=worker_id,
                    host=host,
                    pid=pid,
                    model=model,
                    slots=slots,
                    state="running",
                    started_at=self.clock(),
                    heartbeat_at=now,
                    instance=instance,
                    pipelines_json=None if pipelines is None else json.dumps(dict(pipelines)),
                    models_json=None if models is None else json.dumps(dict(models)),
                )
            )

    def worker_heartbeat(self, worker_id: str, state: str = "running") -> None:
        """This daemon is alive (or, with `state`, stopped)."""
        with self.db.begin() as conn:
            conn.execute(
                update(Worker)
                .where(Worker.id == worker_id)
                .values(heartbeat_at=self._db_now(), state=state)
            )

    def update_worker_serving(
        self,
        worker_id: str,
        pipelines: Mapping[str, str] | None = None,
        models: Mapping[str, Any] | None = None,
    ) -> None:
        """What this daemon serves now (after a reload) and its models' states."""
        values: dict[str, Any] = {}
        if pipelines is not None:
            values["pipelines_json"] = json.dumps(dict(pipelines))
        if models is not None:
            values["models_json"] = json.dumps(dict(models))
        if not values:
            return
        with self.db.begin() as conn:
            conn.execute(update(Worker).where(Worker.id == worker_id).values(**values))

    def list_workers(self) -> list[Worker]:
        return self._read(select(Worker).order_by(Worker.heartbeat_at.desc()))

    def ready_groups(
        self, origin: str | None, exclude_pipelines: Collection[str] = ()
    ) -> list[ReadyGroup]:
        """Ready jobs by pipeline and model that a daemon of instance `origin` may claim,
        with how long the oldest of each has been due (one grouped read)."""
        now = self._db_time()
        stmt = (
            select(Job.pipeline, Job.model, func.count(), func.min(Job.run_after))
            .where(Job.status == JobStatus.QUEUED, Job.run_after <= now, origin_allows(origin))
            .group_by(Job.pipeline, Job.model)
        )
        if exclude_pipelines:
            stmt = stmt.where(Job.pipeline.not_in(list(exclude_pipelines)))
        with self.db.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            ReadyGroup(pipeline, model, count, _seconds(now, oldest))
            for pipeline, model, count, oldest in rows
        ]


def _seconds(now: datetime, then: Any) -> float:
    if then is None:
        return 0.0
    if isinstance(then, str):  # SQLite's min() of a datetime column is its text
        then = datetime.fromisoformat(then)
    if then.tzinfo is None:
        then = then.replace(tzinfo=now.tzinfo)
    return max(0.0, float((now - then).total_seconds()))
