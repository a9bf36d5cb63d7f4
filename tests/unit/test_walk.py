"""Walking sweep globs: no link is followed, every match is under the glob's root, the
walk is bounded, and it agrees with glob.glob on a tree without links."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

from worker.sources.walk import Budget, split_root, walk_glob

UNBOUNDED = (10**9, 1e9)


def walk(pattern: str, max_entries: int = 10**9, max_seconds: float = 1e9) -> list[str]:
    """The regular files found, relative to the glob's root."""
    budget = Budget(max_entries, max_seconds)
    return [m.relative for m in walk_glob(pattern, budget) if not (m.link or m.other)]


def walk_paths(pattern: str) -> list[str]:
    budget = Budget(*UNBOUNDED)
    return [str(m.path) for m in walk_glob(pattern, budget) if not (m.link or m.other)]


def tree(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")


def test_split_root_takes_the_folders_before_the_first_wildcard() -> None:
    assert split_root("/srv/in/**/*.txt") == ("/srv/in", ["**", "*.txt"])
    assert split_root("/srv/in/report.txt") == ("/srv/in", ["report.txt"])
    assert split_root("/*.txt") == ("/", ["*.txt"])
    assert split_root("/srv/a*/b/c.txt") == ("/srv", ["a*", "b", "c.txt"])


def test_the_walk_agrees_with_glob_on_a_tree_without_links(tmp_path: Path) -> None:
    tree(tmp_path, "a.txt", "b.md", "sub/c.txt", "sub/deep/d.txt", "x[1].txt", "y/z/e.txt")
    for pattern in ("*.txt", "**/*.txt", "sub/*.txt", "sub/**/*.txt", "*/*/*.txt", "[ab].*"):
        full = str(tmp_path / pattern)
        expected = sorted(p for p in glob.glob(full, recursive=True) if os.path.isfile(p))
        assert sorted(walk_paths(full)) == expected, pattern


def test_links_below_the_root_are_reported_never_entered(tmp_path: Path) -> None:
    root = tmp_path / "swept"
    outside = tmp_path / "outside"
    tree(outside, "secret.txt", "deep/secret2.txt")
    tree(root, "mine.txt")
    (root / "x").symlink_to(root)  # two links to the folder itself: exponential for glob
    (root / "y").symlink_to(".")
    (root / "escape").symlink_to(outside)
    (root / "secret.txt").symlink_to(outside / "secret.txt")
    budget = Budget(*UNBOUNDED)
    found = list(walk_glob(str(root / "**" / "*.txt"), budget))
    files = [m.relative for m in found if not (m.link or m.other)]
    links = [m.relative for m in found if m.link]
    assert files == ["mine.txt"]
    assert links == ["secret.txt"]
    assert budget.entries < 10
    for match in found:
        if not match.link:
            assert os.path.realpath(match.path).startswith(f"{root}/")


def test_the_root_may_be_reached_through_a_link_of_the_administrator(tmp_path: Path) -> None:
    tree(tmp_path / "real", "a.txt")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert walk(str(tmp_path / "alias" / "*.txt")) == ["a.txt"]


def test_the_walk_stops_at_its_entry_budget_and_says_so(tmp_path: Path) -> None:
    tree(tmp_path, *(f"d{i}/f{j}.txt" for i in range(10) for j in range(10)))
    budget = Budget(25, 1e9)
    found = list(walk_glob(str(tmp_path / "**" / "*.txt"), budget))
    assert budget.truncated and len(found) < 25


def test_the_walk_stops_at_its_time_budget(tmp_path: Path) -> None:
    tree(tmp_path, *(f"f{j}.txt" for j in range(50)))
    budget = Budget(10**9, 0.0)
    time.sleep(0.01)
    assert list(walk_glob(str(tmp_path / "*.txt"), budget)) == []
    assert budget.truncated


def test_a_deep_tree_is_cut_off_not_followed_to_the_end(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d"] * 60)
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("x")
    (tmp_path / "top.txt").write_text("x")
    assert walk(str(tmp_path / "**" / "*.txt")) == ["top.txt"]


def test_names_that_are_not_utf8_are_walked_not_fatal(tmp_path: Path) -> None:
    tree(tmp_path, "a.txt", "z.txt")
    bad = os.fsencode(tmp_path) + b"/b\xff.txt"
    with open(bad, "wb") as handle:
        handle.write(b"x")
    names = walk(str(tmp_path / "*.txt"))
    assert names[0] == "a.txt" and names[-1] == "z.txt" and len(names) == 3
