"""Errors that cross package boundaries: what a job's input did wrong, and what the
model or a generation did. Each names its cause in one line a person can act on."""

from __future__ import annotations


class InputError(Exception):
    """The input cannot be processed as it is; retrying will not help."""


class InputTooCostly(InputError):
    """Parsing the input ran past a limit of the sandbox (CPU time, memory, wall clock, or
    a size bound of a reader), or crashed the parser. The message starts `input too
    costly to parse: ` and names the limit and the step; never retried, never a crash."""

    PREFIX = "input too costly to parse: "

    def __init__(self, reason: str) -> None:
        super().__init__(self.PREFIX + reason)
        self.reason = reason

    def __reduce__(self) -> tuple[type[InputTooCostly], tuple[str]]:
        return (type(self), (self.reason,))


class PromptTooLong(InputError):
    """The rendered prompt does not fit the context window beside max_tokens."""


class GenerationInterrupted(Exception):
    """Generation stopped early because the caller asked (shutdown, lost lease, cancel)."""


class ModelError(Exception):
    """The model is missing, corrupt or cannot be loaded. Start-up stops with this message."""
