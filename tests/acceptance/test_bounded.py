"""Bounded work (issue 18), through one real daemon: a hostile input costs its own job,
within its limit, and the daemon keeps serving everything else.

One module-scoped daemon (`bounded`) serves every case; later cases of the issue reuse
it. The parsing sandbox runs with small limits so that the attacks end in seconds. After
each attack the daemon still runs and a text file dropped then is answered.

Cases (numbers are the issue's): 1 a batch line whose `pattern` backtracks
exponentially in Python's `re` (the grammar makes the model write the string that
does it); 2 an HTML tag bomb and a PDF operator bomb. Cases 3 to 7 (liveness, crash
loops and the start limit, bounded waits on the database, bounded rows, outages that
redo nothing) need daemons of their own settings, below.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.acceptance.bounded_support import (
    NotifySocket,
    RestartPolicy,
    can_make_namespaces,
    cuttable_network,
    longest_silence,
)
from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import EDGE_WORKER, Daemon, daemon_env, db_rows, write_pipelines
from tests.acceptance.poison_daemon import POISON_MARKER, STUCK_MARKER
from tests.files import make_operator_bomb
from worker.io.files import FileRef, content_digest, file_key
from worker.queue.database import make_db_engine

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
    assert error["custom_id"] == "backref" and error["error"] is None  # an HTTP-level 400
    body = error["response"]["body"]["error"]
    assert (error["response"]["status_code"], body["code"]) == (400, "invalid_request")
    assert (
        "cannot be checked in linear time (RE2: invalid escape sequence: \\1)" in (body["message"])
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


# Cases 3 to 7: daemons of their own settings ----------------------------------------
WRAPPER = [sys.executable, str(Path(__file__).with_name("poison_daemon.py"))]
TERSE = """
prompt = "Text: {{ input }}\\nOne-line summary:"
output_format = "text"
[generation]
max_tokens = 6
temperature = 0.0
"""
LONG = """
prompt = "Write a long story about: {{ input }}\\nStory:"
output_format = "text"
[generation]
max_tokens = 80
temperature = 0.0
stop = []
"""
CAPPED = "max_concurrent = 1\n" + TERSE
BRIDGE = "The bridge reopens on Monday after repairs."
# Pings every 2 s; a gap this long means they stopped.
WATCHDOG_USEC = 4_000_000
PING_GAP = 4.0


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.2)


def vm_hwm_kb(pid: int) -> int:
    """Peak resident memory of a process (kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# Case 3 -------------------------------------------------------------------------------
@pytest.mark.timeout(240)
def test_the_watchdog_means_liveness(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    """Idle, or with its slot waiting out a database outage, the daemon keeps pinging; a
    slot stuck in a call that never returns stops the pings."""
    notify = NotifySocket(tmp_path / "notify.sock")
    pipelines = write_pipelines(tmp_path / "pipelines", terse=TERSE)
    env = {
        **env,
        "EDGE_WORKER_PIPELINES_DIR": str(pipelines),
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        # Longer than SQLite's busy timeout (10 s): one bounded wait is not a stall.
        "EDGE_WORKER_STALL_SECONDS": "14",
        "EDGE_WORKER_LEASE_SECONDS": "120",
        "EDGE_WORKER_SHUTDOWN_TIMEOUT": "2",
    }
    try:
        daemon = start_daemon(env, program=WRAPPER)
        idle_from = time.monotonic()
        time.sleep(8)
        assert longest_silence(notify.pings(), idle_from, time.monotonic()) < PING_GAP

        # Another program holds the write lock while a job finishes: its slot waits in
        # the recorder through the outage, for longer than stall_seconds, and is alive.
        db = data_dir / "jobs.db"
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO jobs (pipeline, input_text) VALUES ('terse', ?)", (BRIDGE,))
        daemon.wait_for("job.claimed")
        locker = sqlite3.connect(db, isolation_level=None, timeout=30)
        locker.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        try:
            daemon.wait_for("db.unavailable", timeout=60)
            time.sleep(20)
            assert daemon.proc.poll() is None
            silence = longest_silence(notify.pings(), locked_at, time.monotonic())
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        reported = [e for e in daemon.events() if e["event"] == "watchdog.stalled"]
        assert silence < PING_GAP, f"the pings stopped for {silence:.1f} s: {reported}"
        daemon.wait_for("job.succeeded")
        assert "watchdog.stalled" not in [e["event"] for e in daemon.events()]

        # A slot stuck in a call that never returns (no beat): the pings stop.
        (data_dir / "inbox" / "terse" / "stuck.txt").write_text(f"{STUCK_MARKER} {BRIDGE}")
        stalled = daemon.wait_for("watchdog.stalled", timeout=60)
        assert [name for name in stalled["threads"] if name.startswith("slot-")], stalled
        time.sleep(PING_GAP + 1)
        since = time.monotonic() - PING_GAP
        assert notify.pings(since) == [], "still pinging with a stuck slot"
    finally:
        notify.close()


# Case 4 -------------------------------------------------------------------------------
def _settled(data_dir: Path, count: int) -> bool:
    if not (data_dir / "jobs.db").exists():
        return False
    try:
        rows = db_rows(data_dir, "SELECT status FROM jobs")
    except sqlite3.OperationalError:
        return False
    inbox = data_dir / "inbox" / "terse"
    return (
        len(rows) == count
        and all(s not in ("queued", "running") for (s,) in rows)
        and not list(inbox.iterdir())
    )


@pytest.mark.timeout(420)
def test_three_poison_inputs_never_reach_the_start_limit(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    """Restarted the way the unit restarts it (its own RestartSec, StartLimitBurst and
    StartLimitIntervalSec), a daemon fed three inputs that each kill it comes back by
    itself: each poison input is dead after at most two crashes, every other input
    succeeds exactly once, and the start limit is never reached."""
    policy = RestartPolicy.from_unit()
    pipelines = write_pipelines(tmp_path / "pipelines", terse=TERSE)
    env = {**env, "EDGE_WORKER_PIPELINES_DIR": str(pipelines)}
    inbox = data_dir / "inbox" / "terse"
    inbox.mkdir(parents=True)
    poisons = [f"poison{i}.txt" for i in range(3)]
    goods = [f"good{i}.txt" for i in range(3)]
    for name in poisons:
        (inbox / name).write_text(f"Report {name}. {POISON_MARKER} Sales rose.\n")
    for name in goods:
        (inbox / name).write_text(f"{BRIDGE} ({name})\n")

    exits: list[int] = []
    while True:  # Restart=on-failure, after RestartSec, within the start limit
        policy.start()
        daemon = start_daemon(env, f"life{len(exits)}", program=WRAPPER, ready=False)
        life = daemon
        wait(
            lambda: life.proc.poll() is not None or _settled(data_dir, 6),  # noqa: B023
            120,
            "a crash or the end",
        )
        if daemon.proc.poll() is None:
            break
        exits.append(daemon.proc.returncode)
        daemon.kill()
        assert len(exits) <= 2 * len(poisons), f"still crash-looping after {exits}"
        time.sleep(policy.restart_sec)

    assert daemon.stop() == 0
    assert exits and all(code == -signal.SIGABRT for code in exits), exits
    rows = db_rows(data_dir, "SELECT source_path, status, error, crashes FROM jobs")
    by_name = {Path(path).name: (status, error, crashes) for path, status, error, crashes in rows}
    for name in poisons:
        status, error, crashes = by_name[name]
        assert status == "dead" and crashes <= 2, (name, by_name[name])
        assert error.startswith("crashed the worker while running alone"), error
    for name in goods:
        status, _error, crashes = by_name[name]
        assert status == "succeeded" and crashes <= 1, (name, by_name[name])
    outputs = sorted(p.name for p in (data_dir / "outbox" / "terse").iterdir())
    assert outputs == sorted(f"{name}.txt" for name in goods)
    # A poison input's original is kept in failed/ with the reason, like any failed file.
    failed = data_dir / "failed" / "terse"
    for name in poisons:
        assert (failed / name).exists()
        reason = json.loads((failed / f"{name}.error.json").read_text())["error"]
        assert reason == by_name[name][1]
    assert sorted(p.name for p in (data_dir / "done" / "terse").iterdir()) == sorted(goods)
    succeeded = [
        e["job_id"]
        for d in tmp_path.glob("life*.log")
        for e in Daemon.read_events(d)
        if e.get("event") == "job.succeeded"
    ]
    assert len(succeeded) == len(set(succeeded)) == len(goods)  # each exactly once
    print(f"{len(exits)} crashes, {len(policy.starts)} starts; {policy}")


# Cases 5, 6, 7 ------------------------------------------------------------------------
def _key_for(path: Path, pipeline: str, name: str) -> str:
    info = path.stat()
    digest = content_digest(path.read_bytes())
    return file_key(FileRef(pipeline, name), info.st_size, info.st_mtime_ns, digest)


def _job(url: str, sql: str, **params: Any) -> list[Any]:
    engine = make_db_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.timeout(420)
def test_postgres_waits_are_bounded_and_an_outage_redoes_nothing(
    pg_url: str, data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    why = can_make_namespaces()
    if why is not None:
        pytest.skip(why)
    parsed = make_url(pg_url)
    with cuttable_network(parsed.host or "127.0.0.1", parsed.port or 5432) as network:
        through = parsed.set(host=network.host, port=network.port).render_as_string(
            hide_password=False
        )
        notify = NotifySocket(tmp_path / "notify.sock")
        pipelines = write_pipelines(tmp_path / "pipelines", terse=TERSE, long=LONG, capped=CAPPED)
        env = {
            **env,
            "EDGE_WORKER_PIPELINES_DIR": str(pipelines),
            "EDGE_WORKER_DATABASE_URL": through,
            "NOTIFY_SOCKET": str(notify.path),
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
            "EDGE_WORKER_LEASE_SECONDS": "4",
            "EDGE_WORKER_DB_CONNECT_TIMEOUT": "3",
            "EDGE_WORKER_DB_STATEMENT_TIMEOUT": "10",
            "EDGE_WORKER_DB_LOCK_TIMEOUT": "2",
            "EDGE_WORKER_STALL_SECONDS": "20",
            "EDGE_WORKER_POLL_INTERVAL": "0.5",
        }
        program = [*network.prefix, EDGE_WORKER]
        try:
            daemon = start_daemon(env, program=program)
            inbox = data_dir / "inbox"

            # 5: a silent network cut while idle: the watchdog asks the database nothing.
            cut_at = time.monotonic()
            network.cut()
            time.sleep(12)
            network.mend()
            assert longest_silence(notify.pings(), cut_at, time.monotonic()) < PING_GAP
            (inbox / "terse" / "after-cut.txt").write_text(BRIDGE)
            wait(lambda: (data_dir / "done" / "terse" / "after-cut.txt").exists(), 90, "answer")

            # 7: an outage longer than the lease while a job generates: the job is not
            # run again, its output is written once, and no crash is charged.
            (inbox / "long" / "story.txt").write_text("a lighthouse keeper and a storm")
            daemon.wait_for("job.claimed", count=2)
            cut_at = time.monotonic()
            network.cut()
            time.sleep(14)  # more than three leases
            network.mend()
            assert longest_silence(notify.pings(), cut_at, time.monotonic()) < PING_GAP
            wait(lambda: (data_dir / "done" / "long" / "story.txt").exists(), 120, "story")
            ((status, attempts, crashes),) = _job(
                pg_url,
                "SELECT status, attempts, crashes FROM jobs WHERE source_path = :p",
                p="long/story.txt",
            )
            assert (status, attempts, crashes) == ("succeeded", 1, 0)
            story = [e for e in daemon.events() if e.get("pipeline") == "long"]
            assert [e["event"] for e in story].count("job.succeeded") == 1
            assert [e["event"] for e in story].count("job.claimed") == 1
            assert [p.name for p in (data_dir / "outbox" / "long").iterdir()] == ["story.txt.txt"]

            # 5: an uncommitted insert holds the key the watcher is about to insert; the
            # watcher's insert gives up after lock_timeout and tries again later.
            staged = tmp_path / "held.txt"
            staged.write_text("A held key. " + BRIDGE)
            key = _key_for(staged, "terse", "held.txt")
            engine = make_db_engine(pg_url)
            holder = engine.connect()
            holding = holder.begin()
            holder.execute(  # as the daemon would insert it (a submitter may not: 0007)
                text(
                    "INSERT INTO jobs (pipeline, source, source_path, idempotency_key) "
                    "VALUES ('terse', 'file', 'terse/held.txt', :k)"
                ),
                {"k": key},
            )
            held_at = time.monotonic()
            os.replace(staged, inbox / "terse" / "held.txt")
            time.sleep(10)
            assert daemon.proc.poll() is None
            assert longest_silence(notify.pings(), held_at, time.monotonic()) < PING_GAP
            holding.rollback()
            holder.close()
            wait(lambda: (data_dir / "done" / "terse" / "held.txt").exists(), 90, "held.txt")

            # 5: a claimer holding a capped pipeline's claim lock (its row; only the
            # daemon's role may lock it): capped claims skip it, never wait, the other
            # pipelines run, and the capped job runs once it is free.
            locker = engine.connect()
            locker.execute(
                text(
                    "INSERT INTO pipeline_claim_locks (pipeline) VALUES ('capped') "
                    "ON CONFLICT DO NOTHING"
                )
            )
            locker.commit()
            locker.execute(
                text("SELECT * FROM pipeline_claim_locks WHERE pipeline = 'capped' FOR UPDATE")
            )
            (inbox / "capped" / "capped.txt").write_text(BRIDGE)
            (inbox / "terse" / "free.txt").write_text(BRIDGE)
            wait(lambda: (data_dir / "done" / "terse" / "free.txt").exists(), 90, "free.txt")
            assert not (data_dir / "done" / "capped" / "capped.txt").exists()
            locker.rollback()
            locker.close()
            wait(lambda: (data_dir / "done" / "capped" / "capped.txt").exists(), 90, "capped")

            # 6: rows far over max_input_bytes fail unread; no claim loads them together.
            before = vm_hwm_kb(daemon.proc.pid)
            big = "x" * (40 * 1024 * 1024)
            for _ in range(4):
                _job(pg_url, "INSERT INTO jobs (pipeline, input_text) VALUES ('terse', :t)", t=big)
            wait(
                lambda: (
                    _job(
                        pg_url,
                        "SELECT count(*) FROM jobs WHERE status = 'failed' AND input_text = :t",
                        t=big,
                    )[0][0]
                    == 4
                ),
                90,
                "the big rows fail",
            )
            errors = _job(pg_url, "SELECT DISTINCT error FROM jobs WHERE input_text = :t", t=big)
            assert errors == [
                (
                    f"input_text is {len(big)} bytes; the limit is 1000000 (max_input_bytes): "
                    "split the input",
                )
            ]
            grew = vm_hwm_kb(daemon.proc.pid) - before
            assert grew < 80_000, f"peak memory grew by {grew} kB"
            engine.dispose()

            # 5: at start, a database that cannot be reached is retried within
            # db_start_timeout, then start-up fails with the reason.
            network.cut()
            started = time.monotonic()
            late = start_daemon(
                {**env, "EDGE_WORKER_DB_START_TIMEOUT": "4", "NOTIFY_SOCKET": ""},
                "unreachable",
                program=program,
                ready=False,
            )
            code = late.proc.wait(timeout=90)
            network.mend()
            assert code != 0
            assert "db.upgrade_retry" in [e["event"] for e in late.events()]
            print(f"start-up gave up after {time.monotonic() - started:.1f} s")
            assert daemon.proc.poll() is None
            assert daemon.stop() == 0
        finally:
            notify.close()
