"""The dispatcher's heartbeat is idle while it waits (for work, for a free slot, for the
database to come back), so a long outage backoff never reads as a stall; busy in a round.
And it notes a slot that outlived the shutdown timeout (the engines are then kept)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from worker import liveness
from worker.config import load_settings
from worker.liveness import Liveness
from worker.queue.outage import DatabaseUnavailable
from worker.run.dispatcher import Dispatcher
from worker.run.stop import StopFlags


class Watched(threading.Event):
    """An event that notes, at each wait, whether the dispatcher's heartbeat is busy, and
    ends the run after a few waits."""

    def __init__(self, registry: Liveness, stop: StopFlags, waits: int = 3) -> None:
        super().__init__()
        self.registry = registry
        self.stop = stop
        self.waits = waits
        self.busy_at_wait: list[bool] = []

    def wait(self, timeout: float | None = None) -> bool:
        (view,) = [v for v in self.registry.views() if v.name == "dispatcher"]
        self.busy_at_wait.append(view.busy)
        if len(self.busy_at_wait) >= self.waits:
            self.stop.soft.set()
        return False


class Store:
    """Claims nothing, or fails every claim as the database is down."""

    def __init__(self, down: bool) -> None:
        self.down = down
        self.beats: list[str | None] = []  # whose heartbeat a store call would beat

    def clock(self) -> datetime:
        return datetime.now(UTC)

    def solo_waiting(self, *_: Any) -> bool:
        return False

    def claim(self, *_: Any, **__: Any) -> list[Any]:
        heartbeat = liveness.current()
        self.beats.append(heartbeat.name if heartbeat is not None else None)
        if self.down:
            raise DatabaseUnavailable("connection refused")
        return []


@pytest.mark.parametrize("down", [False, True], ids=["no-work", "database-down"])
def test_the_heartbeat_is_idle_while_the_dispatcher_waits(down: bool) -> None:
    registry = Liveness()
    stop = StopFlags()
    watched = Watched(registry, stop)
    if down:  # the outage backoff waits on the stop flag
        stop.soft = watched
    store = Store(down)
    dispatcher = Dispatcher(
        load_settings(poll_interval=0.01),
        store,  # type: ignore[arg-type]
        {},
        "w1",
        lambda job: None,
        stop,
        watched if not down else threading.Event(),
        registry=registry,
    )
    dispatcher.run()
    assert watched.busy_at_wait == [False, False, False]
    # A round's store calls beat the dispatcher's heartbeat (bound to its thread), so
    # calls in a row through an outage never add up to a stall; unbound after the run.
    assert store.beats and set(store.beats) == {"dispatcher"}
    assert liveness.current() is None


def test_a_slot_that_outlives_the_shutdown_timeout_keeps_the_engines() -> None:
    class Slots:
        def __init__(self, finished: bool) -> None:
            self.finished = finished

        def close(self, timeout: float | None = None) -> bool:
            return self.finished

    for finished in (True, False):
        dispatcher = Dispatcher(
            load_settings(shutdown_timeout=0),
            None,  # type: ignore[arg-type]
            {},
            "w1",
            lambda job: None,
            StopFlags(),
            threading.Event(),
        )
        dispatcher.slots = Slots(finished)  # type: ignore[assignment]
        dispatcher._close_slots()
        assert dispatcher.slots_finished is finished
