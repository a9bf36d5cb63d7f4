"""Schedule fires in the database: who acted on which fire, and what came of it.

A fire is claimed by inserting (pipeline, fire_time); the unique key makes the
insert fail for every daemon but one, so a fire is acted on once however many
daemons share the database. The jobs a fire enqueued are linked in
`schedule_fire_jobs`; their outcome is read from the jobs (read only: job rows
are changed by the job store alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from worker.queue.jobs import utcnow
from worker.queue.models import Job, JobStatus, ScheduleFire
from worker.queue.models import ScheduleFireJob as FireJob
from worker.queue.outage import translate_outages


@dataclass(frozen=True)
class Fire:
    """One recorded fire."""

    id: int
    pipeline: str
    fire_time: datetime
    catch_up: bool
    worker: str
    recorded_at: datetime
    jobs_enqueued: int


@dataclass(frozen=True)
class FireOutcome:
    """How the jobs of one fire are doing, by job status."""

    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        return self.statuses.get(JobStatus.SUCCEEDED, 0)

    @property
    def failed(self) -> int:
        return self.statuses.get(JobStatus.FAILED, 0) + self.statuses.get(JobStatus.DEAD, 0)

    @property
    def waiting(self) -> int:
        return self.statuses.get(JobStatus.QUEUED, 0) + self.statuses.get(JobStatus.RUNNING, 0)


_FIRE_COLUMNS = (
    ScheduleFire.id,
    ScheduleFire.pipeline,
    ScheduleFire.fire_time,
    ScheduleFire.catch_up,
    ScheduleFire.worker,
    ScheduleFire.recorded_at,
    ScheduleFire.jobs_enqueued,
)


@translate_outages
class FireStore:
    """The `schedule_fires` and `schedule_fire_jobs` tables."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = engine
        self.clock = clock
        self._postgres = engine.dialect.name == "postgresql"

    def record(self, pipeline: str, fire_time: datetime, worker: str, catch_up: bool) -> int | None:
        """Claim a fire: its id, or None if another daemon (or an earlier call) has it."""
        dialect_insert = postgresql.insert if self._postgres else sqlite.insert
        stmt = (
            dialect_insert(ScheduleFire)
            .values(
                pipeline=pipeline,
                fire_time=fire_time,
                worker=worker,
                catch_up=catch_up,
                recorded_at=self.clock(),
            )
            .on_conflict_do_nothing(index_elements=["pipeline", "fire_time"])
            .returning(ScheduleFire.id)
        )
        with self.db.begin() as conn:
            return conn.execute(stmt).scalar_one_or_none()

    def link(self, fire_id: int, job_ids: Sequence[int]) -> None:
        """Remember which jobs a fire enqueued."""
        with self.db.begin() as conn:
            if job_ids:
                conn.execute(insert(FireJob), [{"fire_id": fire_id, "job_id": j} for j in job_ids])
            conn.execute(
                update(ScheduleFire)
                .where(ScheduleFire.id == fire_id)
                .values(jobs_enqueued=len(job_ids))
            )

    def last_fire(self, pipeline: str) -> Fire | None:
        """The newest recorded fire of `pipeline`."""
        fires = self.list_fires(pipeline, limit=1)
        return fires[0] if fires else None

    def list_fires(self, pipeline: str, limit: int = 100) -> list[Fire]:
        """Recorded fires of `pipeline`, newest first."""
        stmt = (
            select(*_FIRE_COLUMNS)
            .where(ScheduleFire.pipeline == pipeline)
            .order_by(ScheduleFire.fire_time.desc())
            .limit(limit)
        )
        with self.db.connect() as conn:
            rows = conn.execute(stmt).all()
        return [Fire(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6]) for r in rows]

    def job_ids(self, fire_id: int) -> list[int]:
        """The jobs a fire enqueued, oldest first."""
        stmt = select(FireJob.job_id).where(FireJob.fire_id == fire_id).order_by(FireJob.job_id)
        with self.db.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def outcome(self, fire_id: int) -> FireOutcome:
        """The jobs of a fire by status (jobs purged since are not counted)."""
        stmt = (
            select(Job.status, func.count())
            .join(FireJob, FireJob.job_id == Job.id)
            .where(FireJob.fire_id == fire_id)
            .group_by(Job.status)
        )
        with self.db.connect() as conn:
            return FireOutcome({status: count for status, count in conn.execute(stmt)})
