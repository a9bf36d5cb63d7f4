"""Errors that cross package boundaries: what a job's input did wrong, and what the
model or a generation did. Each names its cause in one line a person can act on."""

from __future__ import annotations


class InputError(Exception):
    """The input cannot be processed as it is; retrying will not help."""


class PromptTooLong(InputError):
    """The rendered prompt does not fit the context window beside max_tokens."""


class GenerationInterrupted(Exception):
    """Generation stopped early because the caller asked (shutdown, lost lease, cancel)."""


class ModelError(Exception):
    """The model is missing, corrupt or cannot be loaded. Start-up stops with this message."""
