"""Walking a sweep glob without following links, within a budget of entries and time.

`glob.glob(recursive=True)` follows symbolic links: two `ln -s . x` links make its walk
exponential, and a link to any folder makes that folder's files "match". Here a glob
is split into its literal root (the folders before the first wildcard: the
administrator's, links allowed) and the rest, which is walked with `os.scandir` one
folder at a time, each opened from its parent with `O_NOFOLLOW`: a link below the root
is reported, never entered, and a folder swapped for a link mid-walk is refused. Every
match is therefore really under the root. The walk stops (`truncated`) after
`max_entries` entries or `max_seconds`, whichever comes first, and never goes deeper
than `MAX_DEPTH` folders.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = re.compile(r"[*?\[]")
# Folders below a glob's root that a walk enters at most (a deeper tree is cut off, and
# open descriptors stay bounded: one per level).
MAX_DEPTH = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def glob_pattern(pattern: str) -> re.Pattern[str]:
    """A regex that matches a path exactly when `glob.glob(pattern, recursive=True)` would
    find it: `*` and `?` stay within one folder, `**/` spans any number of folders."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
            continue
        char = pattern[i]
        closing = pattern.find("]", i + 2) if char == "[" else -1
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif closing > 0:
            members = pattern[i + 1 : closing]
            negate = members.startswith("!")
            body = re.escape(members[1:] if negate else members).replace("\\-", "-")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = closing + 1
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


def absolute_pattern(pattern: str, data_dir: Path) -> str:
    """A sweep glob as an absolute pattern (relative globs are under data_dir)."""
    return pattern if os.path.isabs(pattern) else str(data_dir.resolve() / pattern)


def split_root(pattern: str) -> tuple[str, list[str]]:
    """An absolute glob's literal root folder and the components after it.

    `/srv/in/**/*.txt` gives (`/srv/in`, [`**`, `*.txt`]); a glob without wildcards
    gives its folder and its last component.
    """
    parts = pattern.split("/")
    magic = [i for i, part in enumerate(parts) if MAGIC.search(part)]
    index = max(magic[0] if magic else len(parts) - 1, 1)
    root = "/".join(parts[:index]) or "/"
    return root, [p for p in parts[index:] if p]


@dataclass
class Budget:
    """How much one fire may walk; `truncated` once it ran out."""

    max_entries: int
    max_seconds: float
    entries: int = 0
    truncated: bool = False
    # A folder (or the glob's root) that could not be opened or listed: the walk saw
    # less than is there, so what it did not see is not gone (an unmounted share).
    incomplete: bool = False
    started: float = field(default_factory=time.monotonic)

    def spend(self) -> bool:
        """Count one entry; False (and truncated) once the entries or the time ran out."""
        self.entries += 1
        if self.entries > self.max_entries or time.monotonic() - self.started > self.max_seconds:
            self.truncated = True
        return not self.truncated

    def exhausted(self) -> bool:
        """Whether the entries or the time ran out, without spending (truncated if so)."""
        if self.entries >= self.max_entries or time.monotonic() - self.started > self.max_seconds:
            self.truncated = True
        return self.truncated


@dataclass(frozen=True)
class Found:
    """A path below a glob's root that matches the glob: a regular file, or (`link`) a
    symbolic link or another non-file that is reported and never read."""

    root: Path
    relative: str
    link: bool = False
    other: bool = False

    @property
    def path(self) -> Path:
        return self.root / self.relative


def walk_glob(pattern: str, budget: Budget) -> Iterator[Found]:
    """The entries matching an absolute glob, walked without following links below its
    root, in name order per folder, until the budget runs out."""
    root, rest = split_root(pattern)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        budget.incomplete = True
        return
    try:
        yield from _Walk(Path(root), pattern, rest, budget).folder(fd, "", 0)
    finally:
        os.close(fd)


class _Walk:
    """One walk of one glob below its root."""

    def __init__(self, root: Path, pattern: str, rest: list[str], budget: Budget) -> None:
        self.root = root
        self.base = str(root).rstrip("/")
        self.whole = glob_pattern(pattern)
        self.rest = rest
        self.levels = [glob_pattern(part) for part in rest]
        self.recursive = any("**" in part for part in rest)
        self.budget = budget

    def folder(self, fd: int, prefix: str, depth: int) -> Iterator[Found]:
        """The matches in the folder open as `fd` (at `prefix` below the root) and below."""
        entries: list[os.DirEntry[str]] = []
        try:
            with os.scandir(fd) as listing:
                # The listing itself is spent from the budget: a folder of millions of
                # files is cut off, not read whole before the first check.
                for entry in listing:
                    if not self.budget.spend():
                        break
                    entries.append(entry)
        except OSError:
            self.budget.incomplete = True
            return
        entries.sort(key=lambda e: e.name)
        for entry in entries:
            relative = f"{prefix}{entry.name}"
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                if self._descend(entry.name, depth):
                    yield from self._enter(fd, entry.name, relative, depth)
            elif self.whole.match(f"{self.base}/{relative}"):
                link = stat.S_ISLNK(mode)
                regular = stat.S_ISREG(mode)
                yield Found(self.root, relative, link=link, other=not (link or regular))
            if self.budget.truncated:
                return

    def _descend(self, name: str, depth: int) -> bool:
        """Whether a folder at `depth` can hold a match (hidden folders only by name)."""
        if depth + 1 >= MAX_DEPTH:
            return False
        if self.recursive:
            return not name.startswith(".")
        if depth >= len(self.levels) - 1:
            return False
        if name.startswith(".") and not self.rest[depth].startswith("."):
            return False
        return self.levels[depth].match(name) is not None

    def _enter(self, fd: int, name: str, relative: str, depth: int) -> Iterator[Found]:
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:  # removed since the listing
            return
        except OSError:  # swapped for a link, or unreadable: not entered
            self.budget.incomplete = True
            return
        try:
            yield from self.folder(child, f"{relative}/", depth + 1)
        finally:
            os.close(child)
