"""Reload on SIGHUP (`systemctl reload edge-worker`): validate, then swap in the
pipelines folder and the settings that can change while running.

A broken file keeps the old set in effect and logs why; new inboxes are watched at
once. Settings that need a restart (database, model, slots...) are left as they are,
and the log names them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from worker.background import BackgroundLoop
from worker.config import ConfigError, Settings
from worker.logs import event, set_level
from worker.pipelines.live import LivePipelines
from worker.pipelines.models import startup_model_errors
from worker.pipelines.spec import Pipeline, PipelineError, load_pipelines
from worker.sources.inbox import InboxWatcher
from worker.sources.schedules import Scheduler

# Settings a reload applies; a change to any other one is reported as needing a restart.
LIVE_SETTINGS = ("pipelines_dir", "log_level")


def checked_pipelines(settings: Settings) -> dict[str, Pipeline]:
    """The pipelines of `settings`, with every model they name known. Raises PipelineError."""
    pipelines = load_pipelines(settings.pipelines_dir)
    model_errors = startup_model_errors(pipelines, settings)
    if model_errors:
        raise PipelineError("\n".join(model_errors))
    return pipelines


def held_inboxes(pipelines: LivePipelines | dict[str, Pipeline]) -> list[str]:
    """Inboxes taken only at schedule fires (inbox_mode "scheduled")."""
    return [n for n, p in pipelines.items() if p.schedule and p.inbox_mode == "scheduled"]


class Reloader(BackgroundLoop):
    """Acts on a reload request (set by the SIGHUP handler) in its own thread."""

    name = "reload"
    interval = 0.5

    def __init__(
        self,
        settings: Settings,
        load_settings: Callable[[], Settings],
        pipelines: LivePipelines,
        watcher: InboxWatcher,
        scheduler: Scheduler | None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.load_settings = load_settings
        self.pipelines = pipelines
        self.watcher = watcher
        self.scheduler = scheduler
        self.requested = threading.Event()

    def step(self) -> float | None:
        if self.requested.is_set():
            self.requested.clear()
            self.reload()
        return None

    def reload(self) -> bool:
        """Validate and apply the configuration now; False (old set kept) if it is broken."""
        try:
            fresh = self.load_settings()
            pipelines = checked_pipelines(fresh)
        except (ConfigError, PipelineError, OSError) as exc:
            event("reload.failed", logging.ERROR, error=str(exc), kept=sorted(self.pipelines))
            return False
        restart = [
            name
            for name in type(fresh).model_fields
            if name not in LIVE_SETTINGS and getattr(fresh, name) != getattr(self.settings, name)
        ]
        self.pipelines.replace(pipelines)
        set_level(fresh.log_level)
        try:
            self.watcher.watch(pipelines, held_inboxes(pipelines))
            if self.scheduler is not None:
                self.scheduler.reload(pipelines)
        except Exception as exc:  # a folder or the database: the next SIGHUP tries again
            event(
                "reload.partial",
                logging.ERROR,
                error=f"{type(exc).__name__}: {exc}",
                pipelines=sorted(pipelines),
            )
            return False
        event("reload.done", pipelines=sorted(pipelines), needs_restart=restart or None)
        return True
