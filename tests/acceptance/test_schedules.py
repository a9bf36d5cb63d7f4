"""Scheduled pipelines end to end: the real daemon, the real model, real cron fires."""

from __future__ import annotations

import re
import signal
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import Daemon, db_rows, run_cli, wait_path, wait_until_final
from worker.queue.database import make_db_engine

pytestmark = pytest.mark.timeout(240)

PIPELINE = """\
prompt = "Text: {{{{ input }}}}\\nOne word:"
{extra}
[generation]
max_tokens = 4
"""


def write_pipelines(folder: Path, **pipelines: str) -> Path:
    """Pipeline files `<name>.toml` with a tiny generation and the given extra fields."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, extra in pipelines.items():
        (folder / f"{name}.toml").write_text(PIPELINE.format(extra=extra))
    return folder


def fired(daemon: Daemon, pipeline: str, event: str = "schedule.fired") -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == event and e["pipeline"] == pipeline]


def wait_fires(daemon: Daemon, pipeline: str, count: int, timeout: float = 60) -> dict[str, Any]:
    """Wait for the `count`-th fire of `pipeline` that this daemon acted on; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = fired(daemon, pipeline)
        if len(found) >= count:
            return found[count - 1]
        if daemon.proc.poll() is not None:
            raise AssertionError("daemon exited:\n" + daemon.log_path.read_text())
        time.sleep(0.1)
    raise AssertionError(f"no fire {count} of {pipeline}:\n" + daemon.log_path.read_text())


def wait_fire_at(daemon: Daemon, pipeline: str, fire_time: str, timeout: float = 30) -> Any:
    """Wait for `pipeline`'s fire at `fire_time` (two pipelines firing at once log apart)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in fired(daemon, pipeline) if e["fire_time"] == fire_time]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no fire of {pipeline} at {fire_time}:\n" + daemon.log_path.read_text())


def sweep_jobs(data_dir: Path) -> list[tuple[str, str]]:
    """(file name, status) of the sweep jobs, oldest first."""
    rows = db_rows(
        data_dir, "SELECT source_path, status FROM jobs WHERE source = 'sweep' ORDER BY id"
    )
    return [(Path(path).name, status) for path, status in rows]


def test_a_five_second_sweep_takes_new_and_changed_files_once(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "a.txt").write_text("The harvest was good this year.")
    pipelines = write_pipelines(
        tmp_path / "pipelines",
        sweeper=f'schedule = "*/5 * * * * *"\nsweep = ["{folder}/*.txt"]',
        nightly='schedule = "*/5 * * * * *"\ninbox_mode = "scheduled"',
    )
    env = {**env, "EDGE_WORKER_PIPELINES_DIR": str(pipelines)}
    daemon = start_daemon(env, ready=False)

    first = wait_fires(daemon, "sweeper", 1)
    assert first["jobs"] == 1  # a.txt, there before the start
    (folder / "b.txt").write_text("Snow closed the mountain road on Friday.")  # between fires
    inbox = data_dir / "inbox" / "nightly"
    (inbox / "n.txt").write_text("The bakery opens at six.")
    time.sleep(2)  # a continuous inbox would have queued n.txt by now (settle 0.5 s)
    assert db_rows(data_dir, "SELECT count(*) FROM jobs WHERE pipeline = 'nightly'") == [(0,)]

    second = wait_fires(daemon, "sweeper", 2)
    assert second["jobs"] == 1  # b.txt only: a.txt is unchanged
    nightly = wait_fire_at(daemon, "nightly", second["fire_time"])
    assert [e["jobs"] for e in nightly] == [1]
    (folder / "a.txt").write_text("The harvest was poor this year.")  # changed

    third = wait_fires(daemon, "sweeper", 3)
    assert third["jobs"] == 1  # the new a.txt
    fourth = wait_fires(daemon, "sweeper", 4)
    assert fourth["jobs"] == 0  # nothing new, nothing changed

    wait_until_final(data_dir, count=4)
    assert sweep_jobs(data_dir) == [
        ("a.txt", "succeeded"),
        ("b.txt", "succeeded"),
        ("a.txt", "succeeded"),
    ]
    # Each swept job belongs to the fire right after its file appeared or changed.
    links = db_rows(
        data_dir,
        """
        SELECT f.fire_time, j.source_path FROM schedule_fire_jobs l
        JOIN schedule_fires f ON f.id = l.fire_id JOIN jobs j ON j.id = l.job_id
        WHERE f.pipeline = 'sweeper' ORDER BY j.id""",
    )
    assert [Path(p).name for _, p in links] == ["a.txt", "b.txt", "a.txt"]
    fire_times = [datetime.fromisoformat(e["fire_time"]) for e in (first, second, third)]
    assert [datetime.fromisoformat(t).replace(tzinfo=UTC) for t, _ in links] == fire_times

    outbox = data_dir / "outbox"
    assert (outbox / "sweeper" / "a.txt.txt").read_text().strip()
    assert (outbox / "sweeper" / "b.txt.txt").read_text().strip()
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt"]  # never moved
    assert (outbox / "nightly" / "n.txt.txt").exists()
    wait_path(data_dir / "done" / "nightly" / "n.txt")  # moved after the row is final

    listing = run_cli(env, "schedules")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[1]: line for line in listing.stdout.splitlines() if "│ " in line}
    assert "*/5 * * * * * (UTC)" in lines["sweeper"]
    # the last fire took nothing; earlier ones show in their own outcomes
    assert re.search(r"│\s+0\s+│\s+0\s+│\s+0\s+│\s+0\s+│", lines["sweeper"]), listing.stdout
    next_times = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", listing.stdout)
    assert len(next_times) >= 2 * 4  # 3 next fires + the last fire, per pipeline
    assert daemon.stop() == 0


def test_a_daemon_down_across_two_fires_catches_up_once(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    pipelines = write_pipelines(
        tmp_path / "pipelines",
        sweeper=f'schedule = "*/4 * * * * *"\nsweep = ["{folder}/*.txt"]\nmisfire_grace = 60',
    )
    env = {**env, "EDGE_WORKER_PIPELINES_DIR": str(pipelines)}
    first = start_daemon(env, "first", ready=False)
    before = datetime.fromisoformat(wait_fires(first, "sweeper", 1)["fire_time"])
    assert first.stop() == 0
    (folder / "while-down.txt").write_text("The river rose overnight.")
    while datetime.now(UTC) < before + timedelta(seconds=9):  # the fires at +4 s and +8 s pass
        time.sleep(0.2)

    second = start_daemon(env, "second", ready=False)
    catch_up = wait_fires(second, "sweeper", 1)
    assert catch_up["catch_up"] is True
    assert catch_up["jobs"] == 1
    caught = datetime.fromisoformat(catch_up["fire_time"])
    assert caught >= before + timedelta(seconds=8)  # the newest missed fire ...
    assert (caught - before).total_seconds() % 4 == 0
    wait_fires(second, "sweeper", 2)  # ... and then the schedule goes on
    wait_until_final(data_dir, count=1)
    assert second.stop() == 0

    rows = db_rows(data_dir, "SELECT fire_time, catch_up FROM schedule_fires ORDER BY fire_time")
    times = [datetime.fromisoformat(t).replace(tzinfo=UTC) for t, _ in rows]
    assert [bool(c) for _, c in rows].count(True) == 1
    assert times[:2] == [before, caught]  # nothing recorded for the fires in between
    assert all(not c for _, c in rows[2:])
    assert sweep_jobs(data_dir) == [("while-down.txt", "succeeded")]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_daemons_on_one_database_act_on_each_fire_once(
    data_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
    start_daemon: StartDaemon,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    for name in ("one", "two"):
        (folder / f"{name}.txt").write_text(f"Report {name}: sales went up.")
    pipelines = write_pipelines(
        tmp_path / "pipelines",
        sweeper=f'schedule = "*/2 * * * * *"\nsweep = ["{folder}/*.txt"]',
    )
    env = {**env, "EDGE_WORKER_PIPELINES_DIR": str(pipelines)}
    if backend == "postgresql":
        env["EDGE_WORKER_DATABASE_URL"] = request.getfixturevalue("pg_url")
    assert run_cli(env, "db", "upgrade").returncode == 0
    pair = [start_daemon(env, f"daemon{i}", ready=False) for i in range(2)]
    for daemon in pair:
        daemon.wait_for("schedule.started")
    time.sleep(3)
    (folder / "three.txt").write_text("Report three: sales went down.")
    time.sleep(5)
    for daemon in pair:
        assert daemon.stop() == 0

    acted = [e["fire_time"] for d in pair for e in fired(d, "sweeper")]
    taken = [e["fire_time"] for d in pair for e in fired(d, "sweeper", "schedule.fire_taken")]
    assert len(acted) == len(set(acted)) >= 3, acted  # each fire acted on by one daemon
    assert set(taken) <= set(acted)
    assert taken, "both daemons should have tried the same fires"
    engine = make_db_engine(env.get("EDGE_WORKER_DATABASE_URL") or f"sqlite:///{data_dir}/jobs.db")
    with engine.connect() as conn:
        fires = conn.execute(text("SELECT id, jobs_enqueued FROM schedule_fires")).all()
        linked = conn.execute(text("SELECT job_id FROM schedule_fire_jobs")).scalars().all()
        jobs = conn.execute(text("SELECT id FROM jobs")).scalars().all()
    engine.dispose()
    assert len(fires) == len(acted)
    assert sum(n for _, n in fires) == 3  # one set of jobs: one.txt, two.txt, then three.txt
    assert sorted(linked) == sorted(jobs) and len(jobs) == 3


def test_jobs_outside_their_window_wait(
    data_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    now = datetime.now(UTC)

    def window(start: timedelta, end: timedelta) -> str:
        return f'window = "{(now + start):%H:%M}-{(now + end):%H:%M}"'

    pipelines = write_pipelines(
        tmp_path / "pipelines",
        open=window(timedelta(minutes=-30), timedelta(minutes=30)),
        closed=window(timedelta(minutes=60), timedelta(minutes=90)),
    )
    env = {**env, "EDGE_WORKER_PIPELINES_DIR": str(pipelines)}
    assert run_cli(env, "db", "upgrade").returncode == 0
    with sqlite3.connect(data_dir / "jobs.db") as conn:
        for name in ("closed", "open"):
            conn.execute(
                "INSERT INTO jobs (pipeline, input_text) VALUES (?, 'Rain is due.')", (name,)
            )
    result = run_cli(env, "run", "--once", timeout=180)  # exits: nothing it may run is left
    assert result.returncode == 0, result.stderr
    assert db_rows(data_dir, "SELECT pipeline, status, attempts FROM jobs ORDER BY pipeline") == [
        ("closed", "queued", 0),
        ("open", "succeeded", 1),
    ]


def test_a_daemon_with_a_busy_schedule_stops_cleanly(
    env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    pipelines = write_pipelines(
        tmp_path / "pipelines",
        sweeper=f'schedule = "* * * * * *"\nsweep = ["{tmp_path}/none/*.txt"]',
    )
    daemon = start_daemon({**env, "EDGE_WORKER_PIPELINES_DIR": str(pipelines)}, "d", ready=False)
    wait_fires(daemon, "sweeper", 2)
    assert daemon.stop(signal.SIGTERM, timeout=30) == 0


def test_swept_files_of_one_name_in_different_folders_keep_their_own_outputs(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    reports = tmp_path / "reports"
    for month, line in (("2026-11", "Rain all month."), ("2026-12", "Snow all month.")):
        (reports / month).mkdir(parents=True)
        (reports / month / "summary.txt").write_text(line)
    pipelines = write_pipelines(
        tmp_path / "pipelines",
        monthly=f'schedule = "*/3 * * * * *"\nsweep = ["{reports}/**/*.txt"]',
    )
    daemon = start_daemon({**env, "EDGE_WORKER_PIPELINES_DIR": str(pipelines)}, ready=False)
    assert wait_fires(daemon, "monthly", 1)["jobs"] == 2
    wait_until_final(data_dir, count=2)
    outputs = {
        str(row[0])
        for row in db_rows(data_dir, "SELECT output_path FROM jobs WHERE source = 'sweep'")
    }
    outbox = data_dir / "outbox" / "monthly"
    expected = {str(outbox / month / "summary.txt.txt") for month in ("2026-11", "2026-12")}
    assert outputs == expected  # one output each, in the folders the inputs are in
    assert all(Path(path).is_file() for path in expected)
    assert daemon.stop() == 0
