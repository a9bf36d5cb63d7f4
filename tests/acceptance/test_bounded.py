"""Bounded work (issue 18), through one real daemon: a hostile input costs its own job,
within its limit, and the daemon keeps serving everything else.

One module-scoped daemon (`bounded`) serves every case; later cases of the issue reuse
it. The parsing sandbox runs with small limits so that the attacks end in seconds. After
each attack the daemon still runs and a text file dropped then is answered.

Cases (numbers are the issue's): 1 a batch line whose `pattern` backtracks
exponentially in Python's `re` (the grammar makes the model write the string that
does it); 2 an HTML tag bomb and a PDF operator bomb.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.daemon import Daemon, daemon_env, db_rows, write_pipelines
from tests.files import make_operator_bomb

pytestmark = pytest.mark.timeout(300)

TINY = """
prompt = "Text: {{ input }}\\nOne-line summary:"
output_format = "text"
[generation]
max_tokens = 6
temperature = 0.0
"""
BATCH = """
reader = "openai-batch"
[generation]
max_tokens = 8
temperature = 0.0
"""
# Small limits: an attack ends in a fraction of a second of CPU. A normal input costs
# the child milliseconds. The linear HTML reader needs about 0.3 s of CPU for the 1 MB
# tag bomb (the old one, minutes): with the default 30 s it would fail as "no visible
# text", so this limit is below that, to take the limit's path end to end.
PARSE_CPU_SECONDS = 0.1
PARSE_TIMEOUT = 10
MAX_INPUT_BYTES = 1_100_000
SENTENCE = "The library opens in March with forty thousand books.\n"
LIVE = ("queued", "running", "waiting")
# Three choices per repetition ("a", "aa", "a" then nothing), twenty repetitions: about
# 3^20 steps for Python's `re` to give up on the 40 a's the grammar makes the model
# write (measured: the greedy answer is 40 a's), since `\\n` in the pattern is a
# backslash and an n, and the JSON string holds a newline. RE2: microseconds.
CATASTROPHIC = "^(a|aa?){20}\\\\n$"


@dataclass
class Bounded:
    root: Path
    data: Path
    env: dict[str, str]
    daemon: Daemon
    drops: int = 0

    def inbox(self, pipeline: str = "tiny") -> Path:
        return self.data / "inbox" / pipeline


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[Bounded]:
    """One daemon for every case of this file (the machine has 2 cores)."""
    root = tmp_path_factory.mktemp("bounded")
    data = root / "data"
    pipelines = write_pipelines(root / "pipelines", tiny=TINY, batch=BATCH)
    env = daemon_env(
        data,
        gguf.parent,
        pipelines_dir=pipelines,
        max_input_bytes=MAX_INPUT_BYTES,
        parse_cpu_seconds=PARSE_CPU_SECONDS,
        parse_timeout=PARSE_TIMEOUT,
        parse_memory_bytes=768 << 20,
        sandbox_processes=2,
        max_attempts=3,
        retry_base_seconds=0.2,
    )
    daemon = Daemon(env, root / "daemon.log")
    try:
        daemon.wait_for("daemon.ready", timeout=120)
        yield Bounded(root, data, env, daemon)
    finally:
        daemon.kill()


# Helpers --------------------------------------------------------------------------------

COLUMNS = ("id", "status", "error", "attempts", "crashes", "result_text", "source_path")


def job(data: Path, job_id: int) -> dict[str, Any]:
    (row,) = db_rows(data, f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", job_id)
    return dict(zip(COLUMNS, row, strict=True))


def file_job_id(data: Path, source_path: str, timeout: float = 60) -> int:
    """The newest job of an inbox file, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = db_rows(
            data, "SELECT id FROM jobs WHERE source_path = ? ORDER BY id DESC", source_path
        )
        if rows:
            return int(rows[0][0])
        time.sleep(0.1)
    raise AssertionError(f"no job for {source_path} within {timeout}s")


def wait_final(data: Path, ids: list[int], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [job(data, i) for i in ids]
        if all(r["status"] not in LIVE for r in rows):
            return rows
        assert time.monotonic() < deadline, f"not final within {timeout}s: {rows}"
        time.sleep(0.1)


def drop_and_wait(
    h: Bounded, name: str, data: bytes, timeout: float
) -> tuple[dict[str, Any], float]:
    """Drop a file into inbox/tiny/; its final row and the seconds from drop to final."""
    dropped = time.monotonic()
    (h.inbox() / name).write_bytes(data)
    (row,) = wait_final(h.data, [file_job_id(h.data, f"tiny/{name}")], timeout)
    return row, time.monotonic() - dropped


def still_serving(h: Bounded) -> None:
    """The daemon runs, and a text file dropped now is answered."""
    assert h.daemon.proc.poll() is None, "the daemon exited"
    h.drops += 1
    row, _ = drop_and_wait(h, f"after-{h.drops}.txt", SENTENCE.encode(), timeout=120)
    assert row["status"] == "succeeded", row


def batch_line(custom_id: str, content: str, **body: Any) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "gemma-3-270m", "prompt": content, "max_tokens": 4, **body},
        }
    )


# 1: a pattern that backtracks exponentially in Python's `re` -------------------------------


@pytest.mark.timeout(240)
def test_1_a_catastrophic_pattern_fails_its_own_line_and_nothing_else(bounded: Bounded) -> None:
    h = bounded
    schema = {
        "type": "object",
        "properties": {"s": {"type": "string", "pattern": CATASTROPHIC}},
        "required": ["s"],
    }
    hostile = batch_line(
        "hostile",
        "Write the letter a many times.\n",
        max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    lines = [batch_line("before", "Say hi."), hostile, batch_line("after", "Say bye.")]
    (h.inbox("batch") / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    parent = file_job_id(h.data, "batch/mixed.jsonl")
    # Meanwhile, a text file: answered while the hostile line is checked (a daemon frozen
    # in `re` answered nothing for minutes).
    time.sleep(2)
    text, _ = drop_and_wait(h, "during-batch.txt", SENTENCE.encode(), timeout=90)
    assert text["status"] == "succeeded", text
    (final,) = wait_final(h.data, [parent], timeout=180)
    assert final["status"] == "succeeded", final

    children = db_rows(
        h.data,
        "SELECT input_text, status, error, attempts, crashes FROM jobs WHERE parent_id = ?",
        parent,
    )
    by_id = {json.loads(row[0])["custom_id"]: row[1:] for row in children}
    assert set(by_id) == {"before", "hostile", "after"}
    for innocent in ("before", "after"):
        status, error, attempts, crashes = by_id[innocent]
        assert (status, error, attempts, crashes) == ("succeeded", None, 1, 0), innocent
    status, error, attempts, crashes = by_id["hostile"]
    assert (status, attempts, crashes) == ("failed", 1, 0)
    assert error.startswith("invalid_response: result does not match the JSON Schema at s")
    assert "retried once" in error and "\n" not in error

    outbox = h.data / "outbox" / "batch"
    (status_file,) = outbox.glob("mixed.jsonl.batch_*.batch.json")
    batch = json.loads(status_file.read_text())
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    outputs = (outbox / batch["output_file_id"]).read_text().splitlines()
    assert sorted(json.loads(x)["custom_id"] for x in outputs) == ["after", "before"]
    still_serving(h)


def test_1_a_pattern_re2_cannot_check_is_refused_where_the_schema_enters(
    bounded: Bounded,
) -> None:
    h = bounded
    schema = {"type": "string", "pattern": "^(a+)\\1$"}  # a back-reference: not linear
    line = batch_line(
        "backref",
        "Say a.",
        response_format={"type": "json_schema", "json_schema": {"name": "b", "schema": schema}},
    )
    (h.inbox("batch") / "backref.jsonl").write_text(line + "\n" + batch_line("ok", "Hi.") + "\n")
    parent = file_job_id(h.data, "batch/backref.jsonl")
    (final,) = wait_final(h.data, [parent], timeout=120)
    assert final["status"] == "succeeded", final
    (errors_file,) = (h.data / "outbox" / "batch").glob("backref.jsonl.batch_*.errors.jsonl")
    (error,) = [json.loads(x) for x in errors_file.read_text().splitlines()]
    assert error["custom_id"] == "backref"
    assert error["error"]["code"] == "invalid_request"
    assert (
        "cannot be checked in linear time (RE2: invalid escape sequence: \\1)"
        in (error["error"]["message"])
    )


# 2: parsing bombs -------------------------------------------------------------------------


def tag_bomb(size: int) -> bytes:
    """Unclosed hidden tags and unmatched end tags: quadratic for the old HTML reader
    (about 9 minutes of CPU for 1 MB)."""
    unit = b"<svg></i>"
    return unit * (size // len(unit))


@pytest.mark.timeout(120)
def test_2_an_html_tag_bomb_fails_within_the_cpu_limit(bounded: Bounded) -> None:
    h = bounded
    row, seconds = drop_and_wait(h, "bomb.html", tag_bomb(1_000_000), timeout=60)
    assert (row["status"], row["attempts"], row["crashes"]) == ("failed", 1, 0), row
    assert row["error"] == (
        f"input too costly to parse: over the {PARSE_CPU_SECONDS:g} s CPU limit while reading HTML"
    )
    assert seconds < PARSE_TIMEOUT + 10, seconds
    reason = h.data / "failed" / "tiny" / "bomb.html.error.json"
    deadline = time.monotonic() + 30
    while not reason.exists():
        assert time.monotonic() < deadline, "no error file in failed/"
        time.sleep(0.1)
    assert json.loads(reason.read_text())["error"] == row["error"]
    still_serving(h)


@pytest.mark.timeout(120)
def test_2_a_pdf_operator_bomb_fails_within_the_cpu_limit(bounded: Bounded) -> None:
    h = bounded
    bomb = make_operator_bomb(8_000_000, pages=20)  # 48 MB of operators per page, 20 pages
    assert len(bomb) < 100_000
    row, seconds = drop_and_wait(h, "bomb.pdf", bomb, timeout=60)
    assert (row["status"], row["attempts"], row["crashes"]) == ("failed", 1, 0), row
    assert row["error"] == (
        f"input too costly to parse: over the {PARSE_CPU_SECONDS:g} s CPU limit while reading PDF"
    )
    assert seconds < PARSE_TIMEOUT + 10, seconds
    still_serving(h)
