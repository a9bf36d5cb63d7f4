"""The `workers` table: each daemon's registration and heartbeat."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update

from worker.queue.base import StoreBase
from worker.queue.models import Worker
from worker.queue.outage import translate_outages


@translate_outages
class WorkerStore(StoreBase):
    """Daemons' rows (mixed into JobStore)."""

    def register_worker(self, worker_id: str, host: str, pid: int, model: str, slots: int) -> None:
        """This daemon's row, `running`; its heartbeat is on the database's clock, as
        leases are (recovery compares it with the database's now), its start on its own."""
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

    def list_workers(self) -> list[Worker]:
        return self._read(select(Worker).order_by(Worker.heartbeat_at.desc()))
