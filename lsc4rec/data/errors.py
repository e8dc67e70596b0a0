"""Exceptions raised by the data layer, with messages that point at the exact file, line and value."""

from __future__ import annotations

from os import PathLike

#: Raw ids are stored as signed 64-bit integers (the id maps are int64 arrays); readers refuse any other.
RAW_ID_MIN, RAW_ID_MAX = -(2**63), 2**63 - 1


def id_range_problem(value: int, what: str) -> str | None:
    """Why raw id ``value`` (``what``: e.g. ``item id``) cannot be stored, or None when it fits in 64 bits."""
    if RAW_ID_MIN <= value <= RAW_ID_MAX:
        return None
    return f"{what} {value} does not fit in 64 bits (ids must lie in -2^63 .. 2^63-1)"


class DataFormatError(ValueError):
    """A data file exists but its content is malformed.

    The message names the file, the 1-based line number where relevant, and the offending value, e.g.
    ``Beauty.txt line 17: item id 'abc' is not an integer``.
    """

    def __init__(self, path: str | PathLike[str], message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path} line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class DataFileNotFoundError(FileNotFoundError):
    """A data file or folder is missing; the message names the path and what was expected there."""

    def __init__(self, path: str | PathLike[str], expected: str) -> None:
        self.path = str(path)
        self.expected = expected
        self.message = f"{self.path}: not found (expected {expected})"
        super().__init__(self.message)
        # FileNotFoundError normally carries the path in ``filename``; keep that contract for callers.
        self.filename = self.path

    def __str__(self) -> str:
        # OSError.__str__ would render "[Errno None] None: <path>" once ``filename`` is set.
        return self.message
