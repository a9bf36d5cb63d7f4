"""Stop requests: set by signal handlers (which do nothing else), read by every loop."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class StopFlags:
    """Set by signal handlers. `soft`: stop claiming, finish within the timeout. `hard`: now."""

    soft: threading.Event = field(default_factory=threading.Event)
    hard: threading.Event = field(default_factory=threading.Event)
    soft_at: float | None = None

    def request(self) -> None:
        """First request stops claiming; a second one stops at once."""
        if self.soft.is_set():
            self.hard.set()
        else:
            self.stop_claiming()

    def stop_claiming(self) -> None:
        """Stop claiming and finish within the timeout (a first request, or a service that
        died); a later signal still stops at once."""
        if not self.soft.is_set():
            self.soft_at = time.monotonic()
            self.soft.set()
