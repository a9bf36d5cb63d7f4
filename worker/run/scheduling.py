"""Which models to claim jobs for now, and whether to swap one model for another: a pure
decision over what the router knows, unit-tested without I/O.

The rules (README, "Several models"):

- A loaded model takes jobs while it has ready ones, up to its `parallel` in hand.
- A model with ready jobs that is not loaded is loaded when it fits the budget beside
  the loaded ones. To make room, models with nothing in hand and nothing queued (their
  queue drained) are unloaded, least recently used first, once they have been idle
  `SETTLE_SECONDS` (a folder's files are queued one by one: a model whose first files
  are still arriving is not drained, and evicting it would cost a reload).
- Models that still have work are not unloaded for another, until the other's oldest
  ready job has waited `max_wait` seconds (counted from its own model's last eviction,
  so two models cannot evict each other in a loop faster than that). Then the models
  in its way are drained: they take no new jobs, and are unloaded once their jobs in
  hand are done. One model at a time gets this.
- Nothing is unloaded while a job of it is in hand (a sequence may be running) or
  while it is loading, and one model loads at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from worker.llm.memory import Memory

# A drained model loaded or used this recently is kept: its jobs may be arriving still.
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class ModelDemand:
    """One served model as the router sees it this round."""

    name: str
    memory: Memory
    capacity: int  # jobs it runs at once (its parallel)
    loaded: bool = False
    loading: bool = False
    loadable: bool = True  # False while a failed load waits to be tried again
    in_hand: int = 0  # jobs claimed for it and not finished
    queued: int = 0  # ready jobs of it this daemon may claim
    waited: float = 0.0  # seconds its oldest ready job has waited
    since_evicted: float | None = None  # seconds since it was last unloaded for another
    last_used: float = 0.0  # when a job of it last started or ended (monotonic)
    idle_for: float = float("inf")  # seconds since it was loaded or last used

    @property
    def wait(self) -> float:
        """How long it has waited for memory: since its oldest ready job became ready, or
        since it was last evicted if that is later."""
        if self.since_evicted is None:
            return self.waited
        return min(self.waited, self.since_evicted)

    @property
    def drained(self) -> bool:
        return self.in_hand == 0 and self.queued == 0


@dataclass(frozen=True)
class Plan:
    """What to do this round."""

    claims: tuple[tuple[str, int], ...] = ()  # (model, at most this many jobs), in order
    load: str | None = None
    unload: tuple[str, ...] = ()
    draining: frozenset[str] = field(default_factory=frozenset)
    reason: str = ""  # why a model is unloaded or drained, for the log


def _room(loaded: Iterable[ModelDemand], budget: Memory) -> Memory:
    used = Memory()
    for model in loaded:
        used = used + model.memory
    return budget - used


def _free_for(
    want: ModelDemand, room: Memory, candidates: Sequence[ModelDemand]
) -> list[ModelDemand] | None:
    """The first of `candidates` whose unloading makes `want` fit; None if all do not."""
    if want.memory.fits(room):
        return []
    chosen: list[ModelDemand] = []
    for model in candidates:
        chosen.append(model)
        room = room + model.memory
        if want.memory.fits(room):
            return chosen
    return None


def _claims(
    models: Sequence[ModelDemand], blocked: frozenset[str], free_slots: int
) -> tuple[tuple[str, int], ...]:
    """Jobs to claim for the loaded models that may take them: longest waiting first."""
    claims = []
    for model in sorted(models, key=lambda m: -m.waited):
        if free_slots <= 0:
            break
        if not model.loaded or model.name in blocked or model.queued == 0:
            continue
        take = min(model.capacity - model.in_hand, model.queued, free_slots)
        if take > 0:
            claims.append((model.name, take))
            free_slots -= take
    return tuple(claims)


def decide(models: Sequence[ModelDemand], budget: Memory, free_slots: int, max_wait: float) -> Plan:
    """This round's plan: jobs to claim per model, a model to load, models to unload or
    drain first (see the module's rules)."""
    loaded = [m for m in models if m.loaded]
    loading = [m for m in models if m.loading]
    plan = Plan(claims=_claims(models, frozenset(), free_slots))
    if loading:  # one load at a time; nothing is unloaded while one runs
        return plan
    room = _room([*loaded, *loading], budget)
    wanting = [m for m in models if not m.loaded and m.queued > 0 and m.loadable]
    idle = sorted(
        (m for m in loaded if m.drained and m.idle_for >= SETTLE_SECONDS),
        key=lambda m: m.last_used,
    )
    for want in sorted(wanting, key=lambda m: -m.wait):
        freed = _free_for(want, room, idle)
        if freed is not None:
            names = tuple(m.name for m in freed)
            reason = f"to load {want.name}: drained, least recently used" if names else ""
            return Plan(plan.claims, load=want.name, unload=names, reason=reason)
        if want.wait < max_wait:
            continue  # the loaded models' work goes first, for now
        # Starved: drain the models in its way (least work first), then swap.
        in_way = sorted(loaded, key=lambda m: (not m.drained, m.in_hand + m.queued, m.last_used))
        victims = _free_for(want, room, in_way)
        if victims is None:
            continue  # cannot fit even alone beside what is loading: checked at start-up
        draining = frozenset(m.name for m in victims)
        reason = f"{want.name} waited {want.wait:.0f} s (model_max_wait {max_wait:g} s)"
        claims = _claims(models, draining, free_slots)
        if all(m.in_hand == 0 for m in victims):
            names = tuple(m.name for m in victims)
            return Plan(claims, load=want.name, unload=names, draining=draining, reason=reason)
        return Plan(claims, draining=draining, reason=reason)
    return plan
