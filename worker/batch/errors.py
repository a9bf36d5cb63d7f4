"""The error of one batch request line, with the code the errors file reports."""

from __future__ import annotations

from worker.errors import InputError


class LineError(InputError):
    """A request that cannot be run; `code` is what the errors file reports."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.param = param

    def __reduce__(self) -> tuple[type[LineError], tuple[str, str, str | None]]:
        # Pickled as its fields: lines checked in the sandbox come back with their errors.
        return (type(self), (self.code, self.message, self.param))
