"""Parsing untrusted JSON text with a bound on nesting depth.

Python's parser recurses once per level: deeply nested input raises RecursionError,
which would read as an internal error (and be retried). Here it is an input error.
"""

from __future__ import annotations

import json
from typing import Any

from worker.errors import InputError

# Deep enough for any real record or request (a JSON Schema in a request body is a
# few dozen levels at most), far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 100


class JSONTooDeep(InputError):
    """The JSON text nests arrays and objects deeper than the limit."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"JSON nesting is deeper than {max_depth} levels")
        self.max_depth = max_depth

    def __reduce__(self) -> tuple[type[JSONTooDeep], tuple[int]]:
        # Raised in the sandbox's children: pickled as its argument, not its message
        # (the default would call __init__ with the message and garble it).
        return (type(self), (self.max_depth,))


def nesting_depth_over(value: Any, max_depth: int) -> bool:
    """Whether `value` nests lists and dicts more than `max_depth` levels deep
    (iterative: it never recurses itself)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def loads(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads(text)`; JSONTooDeep past `max_depth` levels of nesting.

    json.JSONDecodeError as usual for text that is not JSON.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise JSONTooDeep(max_depth) from None
    if nesting_depth_over(value, max_depth):
        raise JSONTooDeep(max_depth)
    return value
