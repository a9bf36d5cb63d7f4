"""The pipelines in effect in a running daemon, swapped whole on reload (SIGHUP)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from worker.pipelines.spec import Pipeline


class LivePipelines(Mapping[str, Pipeline]):
    """A read-only mapping whose contents `replace` swaps at once.

    Readers (the dispatcher, the runner, the watcher) see either the old set or the new
    one, never a mix: the dict is replaced, never changed in place.
    """

    def __init__(self, initial: Mapping[str, Pipeline]) -> None:
        self._current: dict[str, Pipeline] = dict(initial)

    def replace(self, pipelines: Mapping[str, Pipeline]) -> None:
        """Put `pipelines` in effect."""
        self._current = dict(pipelines)

    def __getitem__(self, name: str) -> Pipeline:
        return self._current[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current.copy())

    def __len__(self) -> int:
        return len(self._current)
