"""The parsing steps of one job (or one CLI run), typed, each a task in the sandbox.

`Parsing` carries what every step of an attempt shares: the sandbox, the job's
deadline, and the checks to make while it waits (`should_stop`: the runner's, which
also beats the slot's heartbeat; a stop kills the child and interrupts the job).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from worker.errors import GenerationInterrupted
from worker.sandbox.pool import Sandbox

if TYPE_CHECKING:
    from worker.batch.lines import BatchLine
    from worker.io.readers import Document, ReaderName, ReadLimits, Records


class Parsing:
    """Run parsing tasks for one attempt in `sandbox`, by `deadline`."""

    def __init__(
        self,
        sandbox: Sandbox,
        deadline: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.deadline = deadline
        self._should_stop = should_stop

    def _beat(self) -> None:
        if self._should_stop is not None and self._should_stop():
            raise GenerationInterrupted("stopped while parsing")

    def call(self, task: str, *args: Any) -> Any:
        """Any task of worker.sandbox.tasks."""
        return self.sandbox.call(task, *args, deadline=self.deadline, beat=self._beat)

    def read_input(self, data: bytes, reader: ReaderName, limits: ReadLimits) -> Document | Records:
        """`worker.io.readers.read_input` in the sandbox."""
        result: Document | Records = self.call("read_input", data, reader, limits)
        return result

    def check_lines(self, data: bytes, max_lines: int | None) -> list[BatchLine]:
        """`worker.batch.lines.check_lines` in the sandbox."""
        result: list[BatchLine] = self.call("check_batch_lines", data, max_lines)
        return result

    def validate(self, text: str, schema: dict[str, Any]) -> Any:
        """`worker.llm.grammar.parse_and_validate` in the sandbox."""
        return self.call("parse_and_validate", text, schema)

    def grammar(self, schema: dict[str, Any], max_tokens: int | None) -> str:
        """The grammar of an untrusted schema, made in the sandbox and remembered here, so
        that the daemon never runs the converter on it (UnsupportedSchema names why not)."""
        from worker.llm.grammar import remember_grammar

        grammar = str(self.call("compile_grammar", schema, max_tokens))
        remember_grammar(schema, grammar)
        return grammar
