"""The completion hook's argv (`on_final`): which placeholders exist, what a valid list
looks like, and the argv for one job. Pure; `worker.run.hooks` runs it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

# Each is replaced only as a whole argv item, never inside one.
PLACEHOLDERS = ("{output}", "{source}", "{job_id}", "{pipeline}", "{status}", "{batch_id}")


def check_hook(argv: Sequence[str]) -> str | None:
    """What is wrong with an `on_final` list, or None."""
    if not argv:
        return None
    if len(argv) > 64 or any(len(item) > 4096 for item in argv):
        return "at most 64 items of 4096 characters"
    if "{" in argv[0] or "}" in argv[0]:
        return "the first item must be the program itself, not a placeholder"
    if not os.path.isabs(argv[0]):
        return "the first item must be an absolute path to a program (no shell, no PATH search)"
    known = ", ".join(PLACEHOLDERS)
    for item in argv[1:]:
        if ("{" in item or "}" in item) and item not in PLACEHOLDERS:
            return f"{item!r}: a placeholder must be a whole item, one of {known}"
    return None


def hook_argv(template: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """The argv to run: each item that is exactly a placeholder becomes its value (one
    item, whatever it holds); every other item stays as written."""
    return [values.get(item, "") if item in PLACEHOLDERS else item for item in template]
