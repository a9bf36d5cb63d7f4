"""The scheduling decision across models: claim what is loaded, load what fits, drain
before a swap, a bound on waiting, never unload a model with work in hand or loading."""

from __future__ import annotations

from dataclasses import replace

from worker.llm.memory import Memory
from worker.run.scheduling import ModelDemand, Plan, decide

GB = 1 << 30
BUDGET = Memory(2 * GB)  # fits two of the 1 GB models below, not three
MAX_WAIT = 60.0


def model(name: str, **kwargs: object) -> ModelDemand:
    fields: dict[str, object] = {"memory": Memory(GB), "capacity": 2}
    fields.update(kwargs)
    return ModelDemand(name=name, **fields)  # type: ignore[arg-type]


def test_loaded_models_take_jobs_up_to_their_parallel_longest_waiting_first() -> None:
    plan = decide(
        [
            model("a", loaded=True, queued=5, in_hand=1, waited=3),
            model("b", loaded=True, queued=1, waited=9),
            model("c", queued=4),  # not loaded: no jobs until it is
        ],
        Memory(3 * GB),
        free_slots=8,
        max_wait=MAX_WAIT,
    )
    assert plan.claims == (("b", 1), ("a", 1))
    assert plan.load == "c"  # it fits beside them: loaded at once, nothing unloaded
    assert plan.unload == ()


def test_free_slots_bound_the_claims() -> None:
    plan = decide(
        [model("a", loaded=True, capacity=8, queued=20)], BUDGET, free_slots=3, max_wait=MAX_WAIT
    )
    assert plan.claims == (("a", 3),)


def test_a_drained_model_is_unloaded_for_one_that_waits_least_recently_used_first() -> None:
    plan = decide(
        [
            model("a", loaded=True, last_used=10),  # drained: nothing in hand, nothing queued
            model("b", loaded=True, last_used=5),  # drained, and used longer ago
            model("c", queued=1, waited=1),
        ],
        BUDGET,
        free_slots=2,
        max_wait=MAX_WAIT,
    )
    assert plan == Plan(
        claims=(), load="c", unload=("b",), reason="to load c: drained, least recently used"
    )


def test_a_model_with_work_is_drained_before_a_swap_until_the_wait_bound() -> None:
    busy = [
        model("a", loaded=True, queued=3, in_hand=2),
        model("b", loaded=True, queued=1, in_hand=0),
    ]
    waiting = model("c", queued=2, waited=MAX_WAIT - 1)
    plan = decide([*busy, waiting], BUDGET, free_slots=2, max_wait=MAX_WAIT)
    # Within the bound the loaded models keep their queues: no swap, c waits.
    assert (plan.load, plan.unload, plan.draining) == (None, (), frozenset())
    assert plan.claims == (("b", 1),)  # a has 2 of 2 in hand

    starved = replace(waiting, waited=MAX_WAIT + 1)
    plan = decide([*busy, starved], BUDGET, free_slots=2, max_wait=MAX_WAIT)
    # Past it, the model in the way with the least work (b) takes no new jobs; it has
    # nothing in hand, so it is unloaded now and c loads.
    assert plan.draining == frozenset({"b"})
    assert (plan.load, plan.unload) == ("c", ("b",))
    assert ("b", 1) not in plan.claims
    assert "waited 61 s" in plan.reason


def test_never_unloaded_while_a_job_of_it_is_in_hand() -> None:
    models = [
        model("a", loaded=True, queued=0, in_hand=1),
        model("b", loaded=True, queued=4, in_hand=2),
        model("c", queued=1, waited=MAX_WAIT * 10),
    ]
    plan = decide(models, BUDGET, free_slots=4, max_wait=MAX_WAIT)
    # a (least work) drains: no new jobs for it, and it stays until its job ends.
    assert plan.draining == frozenset({"a"})
    assert plan.unload == () and plan.load is None
    assert [name for name, _ in plan.claims] == []  # b is full (2 of 2), a drains
    done = [replace(models[0], in_hand=0), *models[1:]]
    plan = decide(done, BUDGET, free_slots=4, max_wait=MAX_WAIT)
    assert (plan.load, plan.unload) == ("c", ("a",))


def test_nothing_is_unloaded_or_loaded_while_a_model_loads() -> None:
    plan = decide(
        [
            model("a", loaded=True),  # drained
            model("b", loading=True),
            model("c", queued=3, waited=MAX_WAIT * 10),
        ],
        BUDGET,
        free_slots=2,
        max_wait=MAX_WAIT,
    )
    assert (plan.load, plan.unload, plan.draining) == (None, (), frozenset())


def test_the_wait_restarts_when_a_model_is_evicted_so_two_cannot_thrash() -> None:
    # a was evicted 5 s ago for b; its jobs are old, but it waits a full bound again.
    models = [
        model("b", loaded=True, queued=9, in_hand=2),
        model("x", loaded=True, queued=9, in_hand=2),
        model("a", queued=3, waited=500, since_evicted=5),
    ]
    plan = decide(models, BUDGET, free_slots=2, max_wait=MAX_WAIT)
    assert plan.draining == frozenset() and plan.load is None
    assert models[2].wait == 5
    later = [*models[:2], replace(models[2], since_evicted=MAX_WAIT + 1)]
    assert decide(later, BUDGET, free_slots=2, max_wait=MAX_WAIT).draining


def test_a_smaller_model_that_fits_is_loaded_while_a_bigger_one_waits() -> None:
    plan = decide(
        [
            model("a", loaded=True, queued=2, in_hand=1),
            model("big", memory=Memory(int(1.5 * GB)), queued=1, waited=10),
            model("small", memory=Memory(GB // 2), queued=1, waited=5),
        ],
        BUDGET,
        free_slots=2,
        max_wait=MAX_WAIT,
    )
    assert plan.load == "small"


def test_a_failed_model_is_not_loaded_again_before_its_pause_and_gpu_memory_counts() -> None:
    plan = decide([model("a", queued=1, loadable=False)], BUDGET, 2, MAX_WAIT)
    assert plan.load is None
    on_gpu = [
        model("a", loaded=True, memory=Memory(GB // 4, GB)),
        model("b", memory=Memory(GB // 4, GB), queued=1),
    ]
    plan = decide(on_gpu, Memory(2 * GB, GB), 2, MAX_WAIT)
    assert (plan.load, plan.unload) == ("b", ("a",))  # the host has room, the GPU does not


def test_a_model_loaded_or_used_a_moment_ago_is_not_evicted_as_drained() -> None:
    """Its files may still be arriving one by one: it makes room only once it has been
    idle SETTLE_SECONDS (a reload would cost more than the wait)."""
    from worker.run.scheduling import SETTLE_SECONDS

    models = [
        model("a", loaded=True, queued=3),
        model("b", loaded=True, idle_for=0.05),  # just loaded: nothing queued yet
        model("c", queued=4, waited=1),
    ]
    plan = decide(models, BUDGET, free_slots=8, max_wait=MAX_WAIT)
    assert plan.load is None and plan.unload == ()
    assert plan.claims == (("a", 2),)
    settled = [*models[:1], replace(models[1], idle_for=SETTLE_SECONDS), models[2]]
    plan = decide(settled, BUDGET, free_slots=8, max_wait=MAX_WAIT)
    assert plan.load == "c" and plan.unload == ("b",)
