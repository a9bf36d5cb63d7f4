"""Keeping the leases of the jobs a daemon holds, keyed by attempt (job id and lease token).

Every `lease_seconds / 3` the keeper renews each held lease. Every second it also asks
the database which held leases are still live, so a job cancelled by an operator (or
recovered by another daemon) stops generating within about a second. A lease counts as
lost only for the attempt that held it: a retry of the same job has another token.
"""

from __future__ import annotations

import logging
import threading
import time

from worker.background import BackgroundLoop
from worker.logs import event
from worker.queue.jobs import ClaimedJob, JobStore
from worker.queue.outage import DatabaseUnavailable, Outage

Attempt = tuple[int, str]  # (job id, lease token)
CHECK_SECONDS = 1.0


class LeaseKeeper(BackgroundLoop):
    """Renews the leases of the jobs in hand; remembers which attempts lost theirs."""

    name = "lease-keeper"
    interval = CHECK_SECONDS
    stall_after = 120.0

    def __init__(self, store: JobStore, worker_id: str, lease_seconds: float) -> None:
        super().__init__()
        self.store = store
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self._held: set[Attempt] = set()
        self._lost: set[Attempt] = set()
        self._lock = threading.Lock()
        self._renewed_at = time.monotonic()
        self.outage = Outage("lease.renew_failed", "lease.renew_recovered")

    def hold(self, job: ClaimedJob) -> None:
        with self._lock:
            self._held.add((job.id, job.lease_token))

    def drop(self, job: ClaimedJob) -> None:
        with self._lock:
            self._held.discard((job.id, job.lease_token))
            self._lost.discard((job.id, job.lease_token))

    def is_lost(self, job: ClaimedJob) -> bool:
        with self._lock:
            return (job.id, job.lease_token) in self._lost

    def _mark_lost(self, attempts: set[Attempt]) -> None:
        with self._lock:
            # Finished meanwhile: its lease was released, not lost.
            fresh = (attempts & self._held) - self._lost
            self._lost |= fresh
        for job_id, _token in sorted(fresh):
            event("job.lease_lost", logging.WARNING, job_id=job_id)

    def confirm(self, job: ClaimedJob) -> bool:
        """Renew one lease now; False (and remembered) if it is lost. DatabaseUnavailable
        propagates: a caller about to publish must not take "cannot tell" for "mine"."""
        kept = self.store.heartbeat(job.id, job.lease_token, self.lease_seconds)
        if not kept:
            self._mark_lost({(job.id, job.lease_token)})
        return kept

    def step(self) -> float | None:
        with self._lock:
            held = self._held - self._lost
        try:
            live = self.store.live_leases([token for _id, token in held]) if held else set()
            self._mark_lost({a for a in held if a[1] not in live})
            if time.monotonic() - self._renewed_at >= self.lease_seconds / 3:
                self._renewed_at = time.monotonic()
                for job_id, token in held - self._lost:
                    if not self.store.heartbeat(job_id, token, self.lease_seconds):
                        self._mark_lost({(job_id, token)})
                self.store.worker_heartbeat(self.worker_id)
        except DatabaseUnavailable as exc:  # keep working: the leases may well still hold
            return self.outage.failed(exc)
        self.outage.ok()
        return None
