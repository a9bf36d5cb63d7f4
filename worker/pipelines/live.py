"""The pipelines in effect in a running daemon, swapped whole on reload (SIGHUP)."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any

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

    def snapshot(self) -> dict[str, Pipeline]:
        """The set in effect now, as one dict that a reload does not change."""
        return self._current

    def items(self) -> ItemsView[str, Pipeline]:
        return self._current.items()

    def values(self) -> ValuesView[Pipeline]:
        return self._current.values()

    def keys(self) -> KeysView[str]:
        return self._current.keys()

    def get(self, name: str, default: Any = None) -> Any:
        return self._current.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._current

    def __getitem__(self, name: str) -> Pipeline:
        return self._current[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current.copy())

    def __len__(self) -> int:
        return len(self._current)
