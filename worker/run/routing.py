"""What the dispatcher claims, for a daemon that serves several models in a fleet.

Each round the router reads the ready jobs by pipeline and model (those this daemon may
claim: its own instance's files, or no instance's), asks `scheduling.decide` what to
claim and whether to swap, has the model manager load and unload, and claims model by
model: the jobs of a model only while it is loaded, at most its `parallel` in hand. A
claimed job holds its model loaded until it is finished.

Jobs of pipelines that no daemon of the fleet serves (none registered in `workers`,
running or not, from any other instance) are claimed too, so that the runner defers
them within `unknown_pipeline_grace` and then fails them with the known names, as
before. Jobs of pipelines that another instance's daemon serves are never claimed
here: they wait for it, however long it is down.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from worker.config import Settings
from worker.llm.manager import ModelManager, ModelState, ModelView
from worker.llm.memory import Memory, gpu_figure
from worker.logs import event
from worker.pipelines.models import pipeline_models
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import ClaimedJob, JobStore, Routing
from worker.queue.outage import DatabaseUnavailable
from worker.queue.workers import ReadyGroup
from worker.run.scheduling import ModelDemand, Plan, decide

# The model states in `workers.models_json` are rewritten at most this often.
PUBLISH_SECONDS = 1.0


@dataclass(frozen=True)
class ClaimArgs:
    """What the dispatcher passes to every claim of a round."""

    owner: str
    lease_seconds: float
    exclude_pipelines: Collection[str]
    limits: Mapping[str, int] | None
    max_crashes: int | None


def models_json(views: list[ModelView], budget: Memory) -> dict[str, Any]:
    """The models' states as `workers.models_json` holds them (read by status, model list)."""
    return {
        "budget": budget.host,
        "budget_gpu": gpu_figure(budget.gpu),
        "models": [
            {
                "name": v.name,
                "kind": v.kind,
                "state": v.state.value,
                "estimate": v.estimate.host,
                "measured": None if v.measured is None else v.measured.host,
                "counted": v.memory.host,
                "gpu": v.memory.gpu,
                "loads": v.loads,
                "evictions": v.evictions,
                "in_hand": v.in_hand,
                "parallel": v.parallel,
                "threads": v.threads,
                "error": v.error,
            }
            for v in views
        ],
    }


class ModelRouter:
    """Claims for the dispatcher: model by model, within the memory budget."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        pipelines: Mapping[str, Pipeline],
        manager: ModelManager,
        budget: Memory,
        instance: str,
        worker_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.pipelines = pipelines
        self.manager = manager
        self.budget = budget
        self.instance = instance
        self.worker_id = worker_id
        self.clock = clock
        self._lock = threading.Lock()
        self._job_models: dict[tuple[int, str], str] = {}
        self._ready: list[ReadyGroup] = []
        self._ready_at = float("-inf")
        self._orphans: list[str] = []
        self._unserved: list[str] = []
        self._fleet_at = float("-inf")
        self._fleet: set[str] = set()
        self._draining: frozenset[str] = frozenset()
        self._published: tuple[Any, ...] | None = None
        self._published_at = float("-inf")
        self._serving: dict[str, str] | None = None

    # What this daemon serves ---------------------------------------------------------
    def serving(self) -> dict[str, str]:
        """Each pipeline this daemon claims jobs of, and its model (reloads change it)."""
        served = set(self.manager.names)
        return {
            p: m for p, m in pipeline_models(self.pipelines, self.settings).items() if m in served
        }

    @property
    def slots(self) -> int:
        """Slots for the dispatcher: the `parallel` of the models that can be loaded at
        once, added up (the largest first)."""
        views = sorted(self.manager.views(), key=lambda v: -v.parallel)
        total, used = 0, Memory()
        for view in views:
            if not (used + view.memory).fits(self.budget) and total:
                continue
            used = used + view.memory
            total += view.parallel
        return max(1, total)

    def _routing(self, model: str | None, serving: Mapping[str, str]) -> Routing:
        if model is None:
            return Routing(origin=self.instance)
        pipelines = tuple(sorted(p for p, m in serving.items() if m == model))
        return Routing(origin=self.instance, model=model, model_pipelines=pipelines)

    # The dispatcher's calls ------------------------------------------------------------
    def claim(self, free: int, args: ClaimArgs, solo: bool) -> list[ClaimedJob]:
        """Claim up to `free` jobs this daemon can run now (see the module doc)."""
        serving = self.serving()
        single = self._single()
        # One model: no decision to make, and the ready jobs are read only to find
        # pipelines nobody serves (every sweep_interval): no extra query per claim.
        every = self.settings.sweep_interval if single is not None else 0.0
        self._refresh(serving, args.exclude_pipelines, every)
        if solo:
            return self._claim_solo(args, serving)
        plan = self._plan(serving, free) if single is None else self._plan_one(single, free)
        if plan.unload:
            # An eviction costs a reload if the model's jobs arrive meanwhile (files being
            # queued while this round ran): read the queue again and decide on that.
            self._ready = self.store.ready_groups(self.instance, args.exclude_pipelines)
            self._ready_at = self.clock()
            plan = self._plan(serving, free)
        self._act(plan)
        jobs: list[ClaimedJob] = []
        try:
            for model, count in plan.claims:
                claimed = self.store.claim(
                    args.owner,
                    count,
                    args.lease_seconds,
                    pipelines=sorted(serving),
                    exclude_pipelines=args.exclude_pipelines,
                    limits=args.limits,
                    max_crashes=args.max_crashes,
                    routing=self._routing(model, serving),
                )
                self._hold(claimed, model)
                jobs += claimed
            left = free - len(jobs)
            if self._orphans and left > 0:
                jobs += self.store.claim(
                    args.owner,
                    left,
                    args.lease_seconds,
                    pipelines=self._orphans,
                    exclude_pipelines=args.exclude_pipelines,
                    max_crashes=args.max_crashes,
                    routing=self._routing(None, serving),
                )
        except DatabaseUnavailable:
            # Jobs leased earlier in this round are ours now: hand them out (their
            # leases are renewed from here on), or they would be held by nobody.
            if not jobs:
                raise
            event("routing.claim_cut_short", logging.WARNING, claimed=len(jobs))
        if jobs and single is None:
            self._ready_at = float("-inf")  # the counts changed: read them again next round
        self.publish()
        return jobs

    def _claim_solo(self, args: ClaimArgs, serving: Mapping[str, str]) -> list[ClaimedJob]:
        # A suspect runs alone: never beside a load in progress, and only on a model
        # that is loaded now (a job naming its own model waits for that model's turn).
        if self.manager.loading():
            return []
        loaded = sorted({v.name for v in self.manager.views() if v.loaded})
        rounds: list[str | None] = [*loaded, *([None] if self._orphans else [])]
        for model in rounds:
            jobs = self.store.claim(
                args.owner,
                1,
                args.lease_seconds,
                pipelines=sorted(serving) if model is not None else self._orphans,
                exclude_pipelines=args.exclude_pipelines,
                max_crashes=args.max_crashes,
                solo=True,
                routing=self._routing(model, serving),
            )
            if jobs:
                if model is not None:
                    self._hold(jobs, model)
                return jobs
        return []

    def solo_waiting(self, max_crashes: int, exclude_pipelines: Collection[str]) -> bool:
        """Whether a job that must run alone waits that this daemon can run now: exactly
        the jobs `_claim_solo` takes (a suspect of a model not loaded is not waiting
        here; the plan loads its model first), or the dispatcher would wait for a job it
        never claims."""
        serving = self.serving()
        loaded = sorted({v.name for v in self.manager.views() if v.loaded})
        for model in loaded:
            if self.store.solo_waiting(
                max_crashes, exclude_pipelines, sorted(serving), self._routing(model, serving)
            ):
                return True
        return bool(self._orphans) and self.store.solo_waiting(
            max_crashes, exclude_pipelines, self._orphans, self._routing(None, serving)
        )

    def has_ready(self, exclude_pipelines: Collection[str]) -> bool:
        """Whether a job this daemon could ever run is ready (`--once` waits for them)."""
        pipelines = [*self.serving(), *self._orphans]
        return bool(pipelines) and self.store.has_ready(
            exclude_pipelines, pipelines, self._routing(None, {})
        )

    def wrap(self, run_one: Callable[[ClaimedJob], None]) -> Callable[[ClaimedJob], None]:
        """`run_one` that lets the job's model go when the job is done."""

        def run(job: ClaimedJob) -> None:
            try:
                run_one(job)
            finally:
                with self._lock:
                    model = self._job_models.pop((job.id, job.lease_token), None)
                if model is not None:
                    self.manager.release(model)

        return run

    # Internals ---------------------------------------------------------------------------
    def _hold(self, jobs: list[ClaimedJob], model: str) -> None:
        for job in jobs:
            self.manager.hold(model)
            with self._lock:
                self._job_models[(job.id, job.lease_token)] = model

    def _single(self) -> ModelView | None:
        """The one served model, if there is just one and it is loaded."""
        views = self.manager.views()
        return views[0] if len(views) == 1 and views[0].loaded else None

    def _plan_one(self, model: ModelView, free: int) -> Plan:
        room = min(free, model.parallel - model.in_hand)
        return Plan(claims=((model.name, room),) if room > 0 else ())

    def _refresh(self, serving: Mapping[str, str], exclude: Collection[str], every: float) -> None:
        now = self.clock()
        if self._serving != serving:
            self._serving = dict(serving)
            self.store.update_worker_serving(self.worker_id, pipelines=serving)
            self._fleet_at = float("-inf")
        if now - self._ready_at >= every:
            self._ready = self.store.ready_groups(self.instance, exclude)
            self._ready_at = now
        if now - self._fleet_at >= self.settings.sweep_interval:
            self._fleet = self._fleet_pipelines()
            self._fleet_at = now
        # A pipeline this daemon has, naming a model it does not serve (a reload brought
        # it), waits: it is not an unknown pipeline, and no engine here can run it.
        unserved = sorted(set(self.pipelines) - set(serving))
        if unserved != self._unserved and unserved:
            event(
                "routing.model_not_served",
                logging.WARNING,
                pipelines=unserved,
                hint="their model was not in the table this daemon started with: restart it",
            )
        self._unserved = unserved
        orphans = sorted({g.pipeline for g in self._ready} - set(self.pipelines) - self._fleet)
        if orphans != self._orphans and orphans:
            event("routing.unknown_pipelines", pipelines=orphans)
        self._orphans = orphans

    def _fleet_pipelines(self) -> set[str]:
        """Pipelines any daemon of another instance registered (running or not)."""
        known: set[str] = set()
        for worker in self.store.list_workers():
            if worker.instance == self.instance or not worker.pipelines_json:
                continue
            try:
                known |= set(json.loads(worker.pipelines_json))
            except (ValueError, TypeError):
                continue
        return known

    def _plan(self, serving: Mapping[str, str], free: int) -> Plan:
        now = self.clock()
        queued: dict[str, int] = {}
        waited: dict[str, float] = {}
        for group in self._ready:
            if group.pipeline not in serving:
                continue
            model = group.model or serving[group.pipeline]
            queued[model] = queued.get(model, 0) + group.count
            waited[model] = max(waited.get(model, 0.0), group.waited)
        demands = [
            ModelDemand(
                name=v.name,
                memory=v.memory,
                capacity=v.parallel,
                loaded=v.loaded,
                loading=v.state == ModelState.LOADING,
                loadable=v.state != ModelState.FAILED or v.retry_at <= now,
                in_hand=v.in_hand,
                queued=queued.get(v.name, 0),
                waited=waited.get(v.name, 0.0),
                since_evicted=None if v.evicted_at is None else now - v.evicted_at,
                last_used=v.last_used,
                idle_for=now - v.last_used,
            )
            for v in self.manager.views()
        ]
        return decide(demands, self.budget, free, self.settings.model_max_wait)

    def _act(self, plan: Plan) -> None:
        if plan.draining != self._draining:
            if plan.draining:
                event("model.draining", models=sorted(plan.draining), reason=plan.reason)
            self._draining = plan.draining
        unloaded = []
        for name in plan.unload:
            if not self.manager.unload(name):  # something of it is in hand after all
                return
            unloaded.append(name)
        if plan.load is None:
            return
        started = self.manager.start_loading(plan.load)
        if started and unloaded:
            event("model.swap", unloaded=unloaded, load=plan.load, reason=plan.reason)

    def publish(self, force: bool = False) -> None:
        """Rewrite this daemon's model states in `workers` when they changed (throttled)."""
        views = self.manager.views()
        key = tuple((v.name, v.state, v.loads, v.measured, v.in_hand) for v in views)
        since = self.clock() - self._published_at
        if not force and (key == self._published or since < PUBLISH_SECONDS):
            return
        try:
            self.store.update_worker_serving(self.worker_id, models=models_json(views, self.budget))
        except DatabaseUnavailable:
            return  # the next round tries again
        self._published, self._published_at = key, self.clock()
