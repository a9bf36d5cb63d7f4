"""Why a queued job waits, and the models in `status`, from `workers` rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from worker.ops.fleet import Daemon, daemon_of, pipeline_reason
from worker.ops.status import Snapshot, models_of, render, to_json, waiting_of
from worker.queue.models import Worker
from worker.queue.views import Throughput

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def worker(
    wid: str, state: str, instance: str, pipelines: dict[str, str], models: list[dict[str, object]]
) -> Worker:
    return Worker(
        id=wid,
        host="h",
        pid=1,
        model=",".join(pipelines.values()),
        slots=2,
        state=state,
        started_at=NOW,
        heartbeat_at=NOW - timedelta(seconds=5),
        instance=instance,
        pipelines_json=json.dumps(pipelines),
        models_json=json.dumps({"budget": 1 << 30, "models": models}),
    )


def test_the_reason_names_what_is_missing() -> None:
    up = daemon_of(
        worker("a", "running", "i1", {"p": "m1"}, [{"name": "m1", "state": "evicted"}]),
        NOW,
        60,
    )
    down = daemon_of(worker("b", "stopped", "i2", {"q": "m2"}, []), NOW, 60)
    daemons = [up, down]
    assert pipeline_reason("q", None, None, daemons, 600) == (
        "waiting for a daemon serving pipeline q (model m2): none is running (served by b "
        "(stopped))"
    )
    assert pipeline_reason("p", "i2", None, daemons, 600) == (
        "waiting for a daemon serving pipeline p (model m1) on instance i2: the file is in "
        "that daemon's data folder"
    )
    assert pipeline_reason("p", None, None, daemons, 600) == (
        "waiting for model m1 to be loaded (evicted); it loads when memory allows"
    )
    typo = pipeline_reason("zz", None, None, daemons, 600)
    assert typo is not None and "no daemon serves it" in typo and "(600 s)" in typo
    loaded = Daemon("c", "h", "i1", "running", {"p": "m1"}, [{"name": "m1", "state": "idle"}])
    assert pipeline_reason("p", "i1", None, [loaded], 600) is None  # it only needs a slot


def test_status_lists_models_with_their_queues_and_the_waiting_pipelines() -> None:
    rows = [
        worker(
            "a",
            "running",
            "i1",
            {"p": "m1", "r": "m1"},
            [{"name": "m1", "state": "resident", "estimate": 100, "measured": 120, "loads": 2}],
        )
    ]
    counts = {("p", "queued"): 2, ("r", "queued"): 1, ("gone", "queued"): 4}
    daemons = [daemon_of(w, NOW, 60) for w in rows]
    (model,) = models_of(daemons, counts)
    assert (model["name"], model["queued"], model["pipelines"]) == ("m1", 3, ["p", "r"])
    assert set(waiting_of(daemons, counts, 600)) == {"gone"}
    snapshot = Snapshot(NOW, "sqlite://", counts, Throughput(60.0, 0, 0), [], rows)
    data = to_json(snapshot, 60)
    assert data["workers"][0]["pipelines"] == {"p": "m1", "r": "m1"}
    assert data["workers"][0]["memory_budget"] == 1 << 30
    assert len(render(snapshot, 60).renderables) == 6  # + models, + waiting
