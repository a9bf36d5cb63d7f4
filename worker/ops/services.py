"""The daemon's services, started in order from one list and stopped in reverse.

`ServiceGroup` stops whatever it started, also when a start fails half-way, so a
daemon that cannot start leaves no thread, port or scheduler behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Protocol

from worker.logs import event

log = logging.getLogger(__name__)


class Service(Protocol):
    """Something the daemon runs beside the dispatcher."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class ServiceDied(Exception):
    """A background service stopped on its own; the daemon stops with a non-zero exit."""


class ServiceGroup:
    """Starts services in order; on exit stops the started ones in reverse order."""

    def __init__(self) -> None:
        self._started: list[Service] = []

    def start_all(self, services: Iterable[Service]) -> None:
        for service in services:
            service.start()
            self._started.append(service)
            event("service.started", service=service.name)

    def stop_all(self) -> None:
        """Stop every started service, newest first; a failing stop does not skip the rest."""
        while self._started:
            service = self._started.pop()
            try:
                service.stop()
            except Exception:
                log.exception("stopping %s failed", service.name)

    def __enter__(self) -> ServiceGroup:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop_all()
