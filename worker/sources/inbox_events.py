"""inotify events for the inbox watcher, through watchdog: folders watched one by one,
never recursively, and a watcher that carries on without them.

Only `inbox/` and each `inbox/<pipeline>/` are watched: folders a submitter creates
inside an inbox cost no inotify watch (a tree of `max_user_watches` folders used to make
the next start fail with ENOSPC). A watch that cannot be added because inotify ran out
(ENOSPC, EMFILE) is logged once (`inbox.watch_unavailable`); the watcher's rescans
every `rescan_interval` then find what events would have reported.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_EVENTS_LOST,
    EVENT_TYPE_OPENED,
)

from worker.logs import event

# inotify errors that mean "no watch left": rescans carry on alone.
WATCH_EXHAUSTED = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENOMEM})
# Events that say a file was read, not changed. Reading a file (the watcher's own read
# for its digest, the runner's read of its input) raises them: a watcher that looked
# again at every one re-read and re-queried every waiting file five times a second,
# for as long as it waited, on the cores the model needs (docs/performance.md).
READ_ONLY_EVENTS = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE})


class FolderEvents:
    """watchdog's observer on single folders: `touch(path, closed)` for each change of an
    entry, `lost()` when inotify's queue overflowed."""

    def __init__(
        self,
        touch: Callable[[Path, bool], None],
        lost: Callable[[], None],
        fallback: str,
    ) -> None:
        self.touch = touch
        self.lost = lost
        self.fallback = fallback
        self.failed = False  # a watch could not be added: rescans only, for that folder
        self._observer: Any = None
        self._handler: Any = None
        self._watches: dict[Path, Any] = {}

    def start(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        events = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type == EVENT_TYPE_EVENTS_LOST:  # inotify's queue overflowed
                    events.lost()
                    return
                if event.event_type in READ_ONLY_EVENTS:
                    return
                closed = event.event_type == EVENT_TYPE_CLOSED
                for raw in (event.src_path, getattr(event, "dest_path", "")):
                    if raw:
                        events.touch(Path(os.fsdecode(raw)), closed)

        self._handler = Handler()
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
            self._watches.clear()

    @property
    def watched(self) -> list[Path]:
        """The folders watched now."""
        return sorted(self._watches)

    def watch(self, folder: Path) -> None:
        """Watch `folder` itself, not below (one inotify watch); without a watch left, warn
        once and rely on rescans."""
        if self._observer is None or folder in self._watches:
            return
        try:
            self._watches[folder] = self._observer.schedule(
                self._handler, str(folder), recursive=False
            )
        except OSError as exc:
            if exc.errno not in WATCH_EXHAUSTED:
                raise
            if not self.failed:
                event(
                    "inbox.watch_unavailable",
                    logging.WARNING,
                    folder=str(folder),
                    error=str(exc),
                    fallback=self.fallback,
                    hint="raise fs.inotify.max_user_watches",
                )
            self.failed = True
