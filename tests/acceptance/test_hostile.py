"""Hostile and unlucky input, the file and record side, through one real daemon.

The promise: a bad input costs one failed job with a reason, never the daemon, never
another job, never a file outside the daemon's folders. One daemon serves every case
(the machine has 2 cores); after each attack the victim folder beside the data dir is
unchanged, the daemon still runs, and a file dropped afterwards is processed.

Cases (numbers are the issue's): 2 rows naming paths outside their folder, 3 a FIFO
swapped in for an inbox file, 4 one file flooding the queue, 5 a PDF that expands,
7 cancel then retry, 8 names, batches, nesting, CSV quotes, markup, file modes. Then,
with daemons of their own: 1 a JSON Schema too big for a grammar fails its own line
only, a job that kills the worker is the only one that ends dead (it ran alone the last
time), and 6 a host whose clock runs ahead takes no other host's live jobs (PostgreSQL).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.daemon import (
    Daemon,
    daemon_env,
    db_rows,
    run_cli,
    wait_path,
    write_pipelines,
)
from tests.acceptance.poison_daemon import POISON_MARKER
from tests.conftest import run_sql
from tests.files import make_expanding_pdf, make_pdf

pytestmark = pytest.mark.timeout(600)

WRAPPER = [sys.executable, str(Path(__file__).with_name("hostile_daemon.py"))]
TINY = """
prompt = "Text: {{ input }}\\nOne-line summary:"
output_format = "text"
[generation]
max_tokens = 8
temperature = 0.0
"""
SLOW = """
prompt = "Count from one to two hundred in words, one per line.\\n{{ input }}\\none\\ntwo\\n"
output_format = "text"
[generation]
max_tokens = 300
temperature = 0.0
"""
BATCH = """
reader = "openai-batch"
[generation]
max_tokens = 8
temperature = 0.0
"""
MAX_INPUT_BYTES = 100_000
MAX_RECORDS = 40
SECRET = "TOP-SECRET-5d1c0e"
SENTENCE = "The library opens in March with forty thousand books.\n"
LIVE = ("queued", "running", "waiting")


@dataclass
class Setup:
    root: Path
    data: Path
    victim: Path
    env: dict[str, str]
    daemon: Daemon
    drops: int = 0

    def inbox(self, pipeline: str = "tiny") -> Path:
        return self.data / "inbox" / pipeline


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every entry under `folder`: mode, mtime and content (None for non-files)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        found[str(path.relative_to(folder))] = (info.st_mode, info.st_mtime_ns, content)
    return found


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    victim = root / "victim"
    victim.mkdir()
    (victim / "secret.txt").write_text(SECRET + "\n")
    (victim / "sweepme.txt").write_text(SECRET + " swept\n")
    pipelines = write_pipelines(root / "pipelines", tiny=TINY, slow=SLOW, batch=BATCH)
    env = daemon_env(
        data,
        gguf.parent,
        pipelines_dir=pipelines,
        max_input_bytes=MAX_INPUT_BYTES,
        max_records_per_file=MAX_RECORDS,
        max_attempts=3,
        retry_base_seconds=0.2,
        unknown_pipeline_grace=0,  # the markup case names a pipeline that does not exist
    )
    old_umask = os.umask(0)  # outputs must not follow the umask
    try:
        daemon = Daemon(env, root / "daemon.log", program=WRAPPER)
    finally:
        os.umask(old_umask)
    setup = Setup(root, data, victim, env, daemon)
    try:
        daemon.wait_for("daemon.ready", timeout=120)
        before = snapshot(victim)
        yield setup
        assert snapshot(victim) == before
    finally:
        daemon.kill()


# Helpers --------------------------------------------------------------------------------


def insert(data: Path, **columns: Any) -> int:
    """INSERT a row as another program would; returns its id."""
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    rows = db_rows(
        data, f"INSERT INTO jobs ({names}) VALUES ({marks}) RETURNING id", *columns.values()
    )
    return int(rows[0][0])


JOB_COLUMNS = (
    "id",
    "status",
    "error",
    "attempts",
    "output_path",
    "result_text",
    "started_at",
    "finished_at",
    "created_at",
    "parent_id",
    "source_path",
)


def job(data: Path, job_id: int) -> dict[str, Any]:
    """One job's row, by column name."""
    columns = ", ".join(JOB_COLUMNS)
    (row,) = db_rows(data, f"SELECT {columns} FROM jobs WHERE id = ?", job_id)
    return dict(zip(JOB_COLUMNS, row, strict=True))


def wait_ids(data: Path, ids: list[int], timeout: float = 120) -> list[dict[str, Any]]:
    """Wait until every job in `ids` is final (not queued, running or waiting)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = [job(data, i) for i in ids]
        if all(j["status"] not in LIVE for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError(f"not final within {timeout}s: {jobs}")
        time.sleep(0.2)


def file_job_id(data: Path, source_path: str, timeout: float = 60) -> int:
    """The newest job of an inbox file, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = db_rows(
            data, "SELECT id FROM jobs WHERE source_path = ? ORDER BY id DESC", source_path
        )
        if rows:
            return int(rows[0][0])
        time.sleep(0.2)
    raise AssertionError(f"no job for {source_path} within {timeout}s")


def wait_file(data: Path, source_path: str, timeout: float = 120) -> dict[str, Any]:
    return wait_ids(data, [file_job_id(data, source_path)], timeout)[0]


def still_serving(h: Setup) -> None:
    """The daemon runs, a file dropped now succeeds, and the victim holds no output."""
    assert h.daemon.proc.poll() is None, "the daemon exited"
    h.drops += 1
    name = f"after-{h.drops}.txt"
    (h.inbox() / name).write_text(SENTENCE)
    after = wait_file(h.data, f"tiny/{name}")
    assert after["status"] == "succeeded", after
    wait_path(h.data / "done" / "tiny" / name)  # moved after the row: not under the scan below
    # Nothing the daemon wrote holds the secret, and nothing was written beside the victim.
    assert sorted(p.name for p in h.victim.iterdir()) == ["secret.txt", "sweepme.txt"]
    assert sorted(p.name for p in h.root.iterdir() if p.name != "daemon.log") == [
        "data",
        "pipelines",
        "victim",
    ]
    for path in h.data.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != "jobs.db":
            assert SECRET.encode() not in path.read_bytes(), path
    leaked = db_rows(
        h.data,
        "SELECT id FROM jobs WHERE result_text LIKE ? OR input_text LIKE ?",
        f"%{SECRET}%",
        f"%{SECRET}%",
    )
    assert leaked == []


# 2: rows that name files outside their folder ---------------------------------------------


@pytest.mark.timeout(240)
def test_2_rows_cannot_read_write_or_move_files_outside_their_folders(hostile: Setup) -> None:
    h, data = hostile, hostile.data
    secret = h.victim / "secret.txt"
    (h.inbox() / "link.txt").symlink_to(secret)  # the watcher ignores it; a row names it
    done = data / "done" / "tiny"
    done.mkdir(parents=True, exist_ok=True)
    (done / "evil.txt").symlink_to(secret)
    traversal = "tiny/../../../victim/secret.txt"
    assert (h.inbox() / ".." / ".." / ".." / "victim" / "secret.txt").resolve() == secret
    expected = {
        insert(data, pipeline="tiny", source="file", source_path=traversal): "invalid source_path",
        insert(data, pipeline="tiny", source="file", source_path=traversal): "invalid source_path",
        insert(data, pipeline="tiny", source="file", source_path="slow/x.txt"): (
            "must start with the job's pipeline folder"
        ),
        insert(data, pipeline="tiny", source="sweep", source_path=str(secret)): (
            "matches none of pipeline tiny's sweep globs"
        ),
        insert(data, pipeline="tiny", source="file", source_path="tiny/link.txt"): (
            "cannot open input: a symbolic link"
        ),
    }
    # `jobs retry` moves an archived original back only from done/ or failed/ of the job's
    # own pipeline, and never through a symlink.
    retried = [
        insert(
            data,
            pipeline="tiny",
            source="file",
            source_path=f"tiny/gone-{n}.txt",
            status="failed",
            idempotency_key=f"planted-{n}",
            archived_path=str(path),
        )
        for n, path in enumerate([secret, done / "evil.txt"])
    ]
    for job_id in retried:
        result = run_cli(h.env, "jobs", "retry", str(job_id))
        assert result.returncode == 0, result.stderr
        assert "queued again" in result.stdout
        expected[job_id] = "input file was removed before it was processed"

    for row in wait_ids(data, list(expected)):
        assert row["status"] == "failed", row
        assert expected[row["id"]] in row["error"], row
        assert "\n" not in row["error"] and "internal error" not in row["error"]
    assert secret.read_text() == SECRET + "\n"
    assert (done / "evil.txt").is_symlink()
    assert not (data / "done" / "tiny" / "secret.txt").exists()
    assert not list((data / "outbox").rglob("secret*"))
    still_serving(h)


# 3: a FIFO renamed over an inbox file ------------------------------------------------------


@pytest.mark.timeout(240)
def test_3_a_fifo_swapped_in_for_an_inbox_file_does_not_stop_intake(hostile: Setup) -> None:
    h, data = hostile, hostile.data
    inbox = h.inbox()
    # Made certain by the wrapper: between the watcher's lstat and its read ...
    (inbox / "swap-watcher.txt").write_text(SENTENCE)
    # ... and between queueing and the runner's read.
    (inbox / "swaprun-runner.txt").write_text(SENTENCE)
    # And the plain race, as an attacker would run it, a few times at different moments.
    for n in range(6):
        path = inbox / f"race-{n}.txt"
        path.write_text(SENTENCE)
        time.sleep(0.15 * n)
        fifo = inbox / f".race-{n}.fifo"
        os.mkfifo(fifo)
        os.replace(fifo, path)

    runner_job = wait_file(data, "tiny/swaprun-runner.txt")
    assert (runner_job["status"], runner_job["error"]) == ("failed", "not a regular file")
    h.daemon.wait_for("inbox.unreadable")
    unreadable = [e for e in h.daemon.events() if e["event"] == "inbox.unreadable"]
    assert {e["path"]: e["error"] for e in unreadable}[str(inbox / "swap-watcher.txt")] == (
        "not a regular file"
    )
    assert db_rows(data, "SELECT id FROM jobs WHERE source_path = 'tiny/swap-watcher.txt'") == []
    assert stat.S_ISFIFO((inbox / "swap-watcher.txt").lstat().st_mode)  # left alone
    still_serving(h)  # intake goes on
    races = db_rows(
        data, "SELECT source_path, status, error FROM jobs WHERE source_path LIKE 'tiny/race-%'"
    )
    for path, status, error in races:  # run before the swap, or failed with the reason
        assert (status, error) in (("succeeded", None), ("failed", "not a regular file")), path


# 4: one file flooding the queue ----------------------------------------------------------


def jsonl(count: int, word: str) -> str:
    return "".join(json.dumps({"text": f"{word} {n}"}) + "\n" for n in range(1, count + 1))


@pytest.mark.timeout(300)
def test_4_one_file_can_neither_flood_the_queue_nor_starve_later_jobs(hostile: Setup) -> None:
    h, data = hostile, hostile.data
    inbox = h.inbox()
    (inbox / "flood.jsonl").write_text("1\n" * (MAX_RECORDS + 1))
    flood = wait_file(data, "tiny/flood.jsonl")
    assert flood["status"] == "failed"
    assert flood["error"] == (
        f"the file has more than {MAX_RECORDS} records (max_records_per_file); split it"
    )
    assert db_rows(data, "SELECT count(*) FROM jobs WHERE parent_id = ?", flood["id"]) == [(0,)]
    wait_path(data / "failed" / "tiny" / "flood.jsonl")

    (inbox / "a.jsonl").write_text(jsonl(MAX_RECORDS, "apple"))
    (inbox / "b.jsonl").write_text(jsonl(MAX_RECORDS, "banana"))
    parents = [file_job_id(data, "tiny/a.jsonl"), file_job_id(data, "tiny/b.jsonl")]
    deadline = time.monotonic() + 60
    while db_rows(data, "SELECT count(*) FROM jobs WHERE parent_id IN (?, ?)", *parents) != [
        (2 * MAX_RECORDS,)
    ]:
        assert time.monotonic() < deadline, "the two files were not expanded"
        time.sleep(0.1)
    (inbox / "late.txt").write_text(SENTENCE)
    late = wait_file(data, "tiny/late.txt", timeout=240)
    a, b = wait_ids(data, parents, timeout=240)
    assert (a["status"], b["status"], late["status"]) == ("succeeded",) * 3

    children = dict(
        db_rows(data, "SELECT id, parent_id FROM jobs WHERE parent_id IN (?, ?)", *parents)
    )
    assert db_rows(
        data, "SELECT DISTINCT status FROM jobs WHERE parent_id IN (?, ?)", *parents
    ) == [("succeeded",)]
    # In the order the daemon logged them: which child was claimed when.
    events = h.daemon.events()
    claimed = [e["job_id"] for e in events if e["event"] == "job.claimed"]
    child_claims = [children[j] for j in claimed if j in children]
    # Fair across files: the first claims take lines of both files, in step.
    assert set(child_claims[:6]) == set(parents), child_claims[:6]
    # A job that arrives after a big fan-out waits for a slot, not for the fan-out.
    arrived = next(
        i
        for i, e in enumerate(events)
        if e["event"] == "job.enqueued" and e.get("job_id") == late["id"]
    )
    started = next(
        i
        for i, e in enumerate(events)
        if e["event"] == "job.claimed" and e.get("job_id") == late["id"]
    )
    claimed_between = [e for e in events[arrived:started] if e["event"] == "job.claimed"]
    after_arrival = [
        e for e in events[arrived:] if e["event"] == "job.claimed" and e["job_id"] in children
    ]
    assert len(after_arrival) > 10, "the premise: many lines still queued when it came"
    assert len(claimed_between) <= 2, claimed_between
    for name, parent in (("a.jsonl", parents[0]), ("b.jsonl", parents[1])):
        lines = (data / "outbox" / "tiny" / f"{name}.jsonl").read_text().splitlines()
        assert [json.loads(x)["line"] for x in lines] == list(range(1, MAX_RECORDS + 1)), parent
    still_serving(h)


# 5: a small PDF that becomes a lot of text -------------------------------------------------


@pytest.mark.timeout(180)
def test_5_a_pdf_that_expands_past_max_input_bytes_fails_clearly(hostile: Setup) -> None:
    h, data = hostile, hostile.data
    bomb = make_expanding_pdf(pages=4, chars_per_page=500_000)  # 2 million characters
    assert len(bomb) < MAX_INPUT_BYTES // 4
    (h.inbox() / "bomb.pdf").write_bytes(bomb)
    (h.inbox() / "fine.pdf").write_bytes(make_pdf([SENTENCE.strip()]))
    bombed = wait_file(data, "tiny/bomb.pdf")
    assert (bombed["status"], bombed["attempts"]) == ("failed", 1)
    assert bombed["error"] == (
        f"extracted text is over max_input_bytes: more than {MAX_INPUT_BYTES} characters; "
        "split the document"
    )
    reason = json.loads(wait_path(data / "failed" / "tiny" / "bomb.pdf.error.json").read_text())
    assert reason["error"] == bombed["error"]
    assert wait_file(data, "tiny/fine.pdf")["status"] == "succeeded"
    still_serving(h)


# 7: cancel, then retry ---------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_7_cancel_stops_a_running_job_and_retry_runs_it_once_more(hostile: Setup) -> None:
    h, data = hostile, hostile.data
    job_id = insert(data, pipeline="slow", input_text="Start.")
    deadline = time.monotonic() + 30
    while claims(h, job_id) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.0)  # generating
    cancelled_at = time.monotonic()
    result = run_cli(h.env, "jobs", "cancel", str(job_id))
    assert result.returncode == 0, result.stderr
    while not stopped(h, job_id):
        assert time.monotonic() - cancelled_at < 5, "a cancelled job kept generating"
        time.sleep(0.1)
    row = job(data, job_id)
    assert (row["status"], row["error"]) == ("cancelled", "cancelled by operator")

    result = run_cli(h.env, "jobs", "retry", str(job_id))
    assert result.returncode == 0, result.stderr
    (row,) = wait_ids(data, [job_id], timeout=180)
    assert row["status"] == "succeeded", row
    time.sleep(3)  # long enough for a stray third run to be claimed
    assert claims(h, job_id) == 2
    still_serving(h)


def claims(h: Setup, job_id: int) -> int:
    return sum(
        1 for e in h.daemon.events() if e["event"] == "job.claimed" and e["job_id"] == job_id
    )


def stopped(h: Setup, job_id: int) -> bool:
    """The runner let go of the job (it noticed the cancel)."""
    return any(
        e["event"] in ("job.abandoned", "job.released") and e.get("job_id") == job_id
        for e in h.daemon.events()
    )


# 8: names, batches, nesting, CSV, markup, modes --------------------------------------------


def batch_line(custom_id: str) -> str:
    body = {
        "model": "gemma-3-270m",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4,
    }
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def batch_of(h: Setup, name: str) -> dict[str, Any]:
    row = wait_file(h.data, f"batch/{name}", timeout=180)
    assert row["status"] == "succeeded", row
    shown = run_cli(h.env, "batch", "show", f"batch_{row['id']}")
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def custom_ids(path: Path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in path.read_text().splitlines()]


@pytest.mark.timeout(300)
def test_8_names_batches_nesting_csv_markup_and_modes(hostile: Setup) -> None:
    h, data = hostile, hostile.data
    batch_inbox, outbox = h.inbox("batch"), data / "outbox" / "batch"
    # c.json and c.jsonl, and one name used twice: every batch keeps its own result files.
    (batch_inbox / "c.json").write_text(batch_line("from-json") + "\n")
    (batch_inbox / "c.jsonl").write_text(batch_line("from-jsonl") + "\n")
    long_name = "b" * 243 + ".jsonl"  # 249 characters
    (batch_inbox / long_name).write_text(batch_line("long") + "\n")
    first_json, first_jsonl = batch_of(h, "c.json"), batch_of(h, "c.jsonl")
    # Archived first (it moves after its row is final): the next version is a new file.
    wait_path(data / "done" / "batch" / "c.jsonl")
    (batch_inbox / "c.jsonl").write_text(batch_line("again") + "\n")
    deadline = time.monotonic() + 60
    while len(db_rows(data, "SELECT id FROM jobs WHERE source_path = 'batch/c.jsonl'")) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    second_jsonl = batch_of(h, "c.jsonl")
    long_batch = batch_of(h, long_name)
    outputs = [b["output_file_id"] for b in (first_json, first_jsonl, second_jsonl, long_batch)]
    assert len(set(outputs)) == 4
    assert custom_ids(outbox / first_json["output_file_id"]) == ["from-json"]
    assert custom_ids(outbox / first_jsonl["output_file_id"]) == ["from-jsonl"]
    assert custom_ids(outbox / second_jsonl["output_file_id"]) == ["again"]
    assert custom_ids(outbox / long_batch["output_file_id"]) == ["long"]
    for name in outputs:
        assert len(name.encode()) <= 255

    inbox = h.inbox()
    # Deep nesting is an error for its line; a stray quote fails its row, not the rest.
    deep = "[" * 20_000 + "]" * 20_000
    (inbox / "deep.jsonl").write_text('{"text": "one"}\n' + deep + '\n{"text": "three"}\n')
    (inbox / "quote.csv").write_text('id,text\n1,first\n2,"never closed\n3,third\n')
    # A 255-byte name, twice: the second original's archive name still fits.
    long_txt = "n" * 251 + ".txt"
    (inbox / long_txt).write_text(SENTENCE)
    # Names and pipelines that look like Rich markup.
    markup_names = ["notes[draft].txt", "[bold]loud.txt", "[-x].txt"]
    for name in markup_names:
        (inbox / name).write_text(SENTENCE)
    markup_row = insert(data, pipeline="[/x]", input_text="hi")
    (inbox / "empty.txt").write_bytes(b"")  # fails: its error file's mode is checked below

    deep_job = wait_file(data, "tiny/deep.jsonl")
    assert deep_job["status"] == "succeeded"
    lines = [json.loads(x) for x in Path(deep_job["output_path"]).read_text().splitlines()]
    assert [line["status"] for line in lines] == ["succeeded", "failed", "succeeded"]
    assert lines[1]["error"] == "line 2: JSON nesting is deeper than 100 levels"
    quote_job = wait_file(data, "tiny/quote.csv")
    rows = [json.loads(x) for x in Path(quote_job["output_path"]).read_text().splitlines()]
    assert [(r["line"], r["status"]) for r in rows] == [
        (2, "succeeded"),
        (3, "failed"),
        (4, "succeeded"),
    ]
    assert rows[1]["error"].startswith("line 3: not valid CSV")
    assert wait_file(data, f"tiny/{long_txt}")["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while (inbox / long_txt).exists():  # archived first: the next version is a new file
        assert time.monotonic() < deadline, "the original was not archived"
        time.sleep(0.2)
    (inbox / long_txt).write_text("A second version. " + SENTENCE)
    deadline = time.monotonic() + 120
    while len(db_rows(data, "SELECT id FROM jobs WHERE source_path = ?", f"tiny/{long_txt}")) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    second = wait_file(data, f"tiny/{long_txt}")
    assert second["status"] == "succeeded", second
    deadline = time.monotonic() + 30
    while (inbox / long_txt).exists():
        assert time.monotonic() < deadline, "the second original was not archived"
        time.sleep(0.2)
    archived = [p.name for p in (data / "done" / "tiny").iterdir() if p.name.startswith("nnnn")]
    assert len(archived) == 2 and all(len(n.encode()) <= 255 for n in archived)

    ids = [file_job_id(data, f"tiny/{name}") for name in markup_names]
    markup_jobs = wait_ids(data, [*ids, markup_row])
    assert [j["status"] for j in markup_jobs] == ["succeeded"] * 3 + ["failed"]
    listed = run_cli(h.env, "jobs", "list", "-n", "500")
    assert listed.returncode == 0, listed.stderr
    for name in markup_names:
        assert f"tiny/{name}" in listed.stdout
    for job_id, name in zip(ids, markup_names, strict=True):
        shown = run_cli(h.env, "jobs", "show", str(job_id))
        assert shown.returncode == 0 and f"tiny/{name}" in shown.stdout, shown.stderr
    status = run_cli(h.env, "status")
    assert status.returncode == 0, status.stderr
    assert "[/x]" in status.stdout

    # Outputs and the folders made for them do not follow the daemon's umask (0 here).
    output = data / "outbox" / "tiny" / "notes[draft].txt.txt"
    assert stat.S_IMODE(output.stat().st_mode) == 0o640
    assert stat.S_IMODE(output.parent.stat().st_mode) == 0o750
    assert wait_file(data, "tiny/empty.txt")["status"] == "failed"
    error_file = wait_path(data / "failed" / "tiny" / "empty.txt.error.json")
    assert stat.S_IMODE((data / "failed" / "tiny").stat().st_mode) == 0o750
    assert stat.S_IMODE(error_file.stat().st_mode) == 0o640
    for path in (data / "outbox" / "batch").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    still_serving(h)


def test_the_daemon_survived_everything(hostile: Setup) -> None:
    h = hostile
    assert h.daemon.proc.poll() is None
    errors = db_rows(h.data, "SELECT id, error FROM jobs WHERE error LIKE '%internal error%'")
    assert errors == []
    # No input error was taken for a temporary one (a parent runs twice: expand, gather).
    retried = db_rows(
        h.data,
        "SELECT id, attempts FROM jobs WHERE attempts > 1 AND id NOT IN "
        "(SELECT parent_id FROM jobs WHERE parent_id IS NOT NULL)",
    )
    assert retried == []
    assert [e for e in h.daemon.events() if e["event"] == "job.retrying"] == []
    assert "Traceback" not in h.daemon.log_path.read_text()
    still_serving(h)
    assert h.daemon.stop() == 0


# Cases 1 and 6, and a crash charged only to its cause: daemons of their own.

ALIASES = '{"gpt-4o-mini": "gemma-3-270m"}'
TERSE = """
prompt = "Text: {{ input }}\\nOne-line summary:"
output_format = "text"
[generation]
max_tokens = 4
temperature = 0.0
"""


def request(custom_id: str, question: str, **body: Any) -> str:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 4,
        **body,
    }
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def schema_format(max_length: int) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {"summary": {"type": "string", "maxLength": max_length}},
        "required": ["summary"],
    }
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def submit_and_wait(env: dict[str, str], path: Path) -> dict[str, Any]:
    """`edge-worker batch submit FILE --wait`: the final batch object."""
    result = run_cli(env, "batch", "submit", str(path), "--wait", timeout=400)
    assert result.returncode == 0, result.stderr
    final: dict[str, Any] = json.loads(result.stdout[result.stdout.index("{") :])
    return final


def test_a_batch_line_whose_schema_is_too_big_fails_alone_and_the_daemon_keeps_serving(
    data_dir: Path, env: dict[str, str], tmp_path: Path, daemons: list[Daemon]
) -> None:
    env = {**env, "EDGE_WORKER_MODEL_ALIASES": ALIASES, "EDGE_WORKER_N_CTX": "512"}
    daemon = Daemon(env, tmp_path / "daemon.log")
    daemons.append(daemon)
    daemon.wait_for("daemon.ready")

    attack = tmp_path / "attack.jsonl"
    lines = [
        request("before", "What is 1 plus 1?"),
        request("huge", "Summarize: rain.", max_tokens=100, response_format=schema_format(3000)),
        # Within the hard cap, but more than 4 tokens can ever produce.
        request("greedy", "Summarize: sun.", max_tokens=4, response_format=schema_format(500)),
        request("fits", "Reply in JSON.", max_tokens=24, response_format=schema_format(8)),
        request("after", "What is 2 plus 2?"),
    ]
    attack.write_text("\n".join(lines) + "\n")
    final = submit_and_wait(env, attack)
    assert final["status"] == "completed"
    assert final["request_counts"] == {"total": 5, "completed": 3, "failed": 2}
    assert daemon.proc.poll() is None, "the daemon died"

    outbox = data_dir / "outbox" / "batch"
    batch_id = final["id"]
    output_file = outbox / f"attack.jsonl.{batch_id}.output.jsonl"
    outputs = [json.loads(x) for x in output_file.read_text().splitlines()]
    assert sorted(o["custom_id"] for o in outputs) == ["after", "before", "fits"]
    errors = {
        e["custom_id"]: e["response"]["body"]["error"]
        for e in map(
            json.loads, (outbox / f"attack.jsonl.{batch_id}.errors.jsonl").read_text().splitlines()
        )
    }
    assert set(errors) == {"huge", "greedy"}
    assert errors["huge"]["code"] == "invalid_request"
    assert "maxLength 3000" in errors["huge"]["message"]
    assert "limit is 1000" in errors["huge"]["message"]
    assert "max_tokens 4" in errors["greedy"]["message"]
    assert all("\n" not in e["message"] for e in errors.values())

    # A file dropped after the attack is served by the same process.
    later = tmp_path / "later.jsonl"
    later.write_text(request("next", "What is 3 plus 3?") + "\n")
    assert submit_and_wait(env, later)["request_counts"] == {
        "total": 1,
        "completed": 1,
        "failed": 0,
    }
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_pipelines_validate_refuses_a_schema_too_big_for_a_grammar(
    env: dict[str, str], tmp_path: Path
) -> None:
    huge = (
        'prompt = "{{ input }}"\noutput_format = "json"\n'
        '[json_schema]\ntype = "object"\n'
        '[json_schema.properties.summary]\ntype = "string"\nmaxLength = 4000\n'
    )
    pipelines = write_pipelines(tmp_path / "pipelines", terse=TERSE, huge=huge)
    result = run_cli({**env, "EDGE_WORKER_PIPELINES_DIR": str(pipelines)}, "pipelines", "validate")
    assert result.returncode == 2, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert "huge.toml" in said and "json_schema" in said
    assert "maxLength 4000" in said and "limit is 1000" in said


POISON_WRAPPER = [sys.executable, str(Path(__file__).with_name("poison_daemon.py"))]


def test_only_the_job_that_kills_the_worker_ends_dead_its_neighbour_succeeds(
    data_dir: Path, env: dict[str, str], tmp_path: Path, daemons: list[Daemon]
) -> None:
    pipelines = write_pipelines(tmp_path / "pipelines", terse=TERSE)
    env = {
        **env,
        "EDGE_WORKER_PIPELINES_DIR": str(pipelines),
        "EDGE_WORKER_N_CTX": "512",
        "EDGE_WORKER_LEASE_SECONDS": "3",
        "EDGE_WORKER_SWEEP_INTERVAL": "0.5",
    }
    assert run_cli(env, "db", "upgrade").returncode == 0
    # One transaction: the daemon claims both at once (two slots), so both are in flight
    # whenever the poison kills it.
    with sqlite3.connect(data_dir / "jobs.db") as conn:
        conn.executemany(
            "INSERT INTO jobs (pipeline, input_text) VALUES ('terse', ?)",
            [(f"Report. {POISON_MARKER} Sales rose.",), ("The bridge reopens on Monday.",)],
        )

    exits: list[int] = []
    for life in range(4):  # restarted after each crash, as systemd would
        daemon = Daemon(env, tmp_path / f"daemon{life}.log", program=POISON_WRAPPER)
        daemons.append(daemon)
        deadline = time.monotonic() + 120
        while daemon.proc.poll() is None:
            rows = db_rows(data_dir, "SELECT status FROM jobs")
            if all(s in ("succeeded", "failed", "dead") for (s,) in rows):
                break
            assert time.monotonic() < deadline, f"neither a crash nor the end: {rows}"
            time.sleep(0.2)
        if daemon.proc.poll() is None:
            break
        exits.append(daemon.proc.returncode)
        daemon.kill()
    else:
        raise AssertionError(f"still crash-looping after {exits}")

    assert daemon.stop() == 0
    # Once beside its neighbour, then once alone.
    assert exits == [-signal.SIGABRT] * 2
    poison, innocent = db_rows(data_dir, "SELECT status, error, crashes FROM jobs ORDER BY id")
    assert poison == (
        "dead",
        "crashed the worker while running alone (crash 2): this input is the cause",
        2,
    )
    # It was in flight at the crash beside the poison; run alone, it succeeded.
    assert innocent[0] == "succeeded" and innocent[2] == 1


AHEAD = 90


@pytest.mark.postgres
def test_a_daemon_whose_clock_runs_ahead_takes_no_live_job_of_another(
    pg_url: str, gguf: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    pipelines = write_pipelines(tmp_path / "pipelines", terse=TERSE)

    def pg_env(name: str, **settings: object) -> dict[str, str]:
        return daemon_env(
            tmp_path / name,
            gguf.parent,
            database_url=pg_url,
            pipelines_dir=pipelines,
            lease_seconds=20,
            sweep_interval=0.5,
            **settings,
        )

    honest_env = pg_env("honest")
    assert run_cli(honest_env, "db", "upgrade").returncode == 0
    honest = Daemon(honest_env, tmp_path / "honest.log")
    ahead = Daemon(pg_env("ahead", clock_offset_seconds=AHEAD), tmp_path / "ahead.log")
    daemons += [honest, ahead]
    ids = {d.wait_for("daemon.ready")["worker"]: d for d in (honest, ahead)}
    ahead_id = next(w for w, d in ids.items() if d is ahead)
    (skew,) = run_sql(
        pg_url,
        "SELECT extract(epoch FROM started_at - now()) FROM workers WHERE id = :id",
        id=ahead_id,
    )
    assert skew[0] > AHEAD - 30, (
        "clock_offset_seconds is not applied to the daemon's store "
        "(ops/daemon.py: JobStore(..., clock=offset_clock(settings.clock_offset_seconds)))"
    )

    jobs = 16
    run_sql(
        pg_url,
        "INSERT INTO jobs (pipeline, input_text) "
        "SELECT 'terse', 'Shipment ' || g || ' arrived late at the depot.' "
        "FROM generate_series(1, :n) g",
        n=jobs,
    )
    deadline = time.monotonic() + 400
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = run_sql(pg_url, "SELECT status, count(*) FROM jobs GROUP BY status")
        if dict(rows).get("succeeded", 0) == jobs:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"jobs not done: {rows}")
    # Longer than a lease, so the ahead daemon's recovery sweep looked many times.
    time.sleep(2)
    assert honest.stop() == 0 and ahead.stop() == 0

    owners = run_sql(
        pg_url, "SELECT lease_owner, attempts, crashes FROM jobs WHERE status = 'succeeded'"
    )
    assert {(attempts, crashes) for _owner, attempts, crashes in owners} == {(1, 0)}
    by = {owner for owner, _attempts, _crashes in owners}
    assert by == set(ids), f"both daemons should have run jobs: {by}"
    for daemon in (honest, ahead):
        names = [e.get("event") for e in daemon.events()]
        assert "job.recovered" not in names and "job.lease_lost" not in names
