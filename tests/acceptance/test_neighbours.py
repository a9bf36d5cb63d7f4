"""Neighbours (issue 20): what a submitter, a shared folder or a re-run installer does
stays within its reach. Each numbered case of the issue, against the real daemon:

1. a submitter role made by `db grant-submitter` (PostgreSQL) forges the daemon's keys
   (child lines, a victim file's key), a priority, reads other rows, floods NOTIFY;
2. swept folders with links (`ln -s . x` twice, a link to a private folder), a hung fire;
3. a tree of folders inside an inbox, an inbox without an inotify watch (ENOSPC);
4. a backlog of waiting files under rescans;
5. names that are not UTF-8, `jobs retry` then retention, `.error.json` collisions;
6. shared folders: the sticky inbox, outputs per submitter, setgid after a reload;
7. the installer in a DESTDIR (a fake root): planted links, links in pipelines, a kit
   with a file more than its SHA256SUMS;
8. SIGHUP during the model load, a reload while the database is locked, a metrics port
   the sandbox forbids, a transient read error.

One daemon serves the SQLite cases and one the PostgreSQL cases (module-scoped), under a
wrapper that makes a few faults certain (neighbours_daemon.py). After every case the
daemon is alive, a fresh file is still processed, and the victim folder beside the data
folder is unchanged at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.daemon import Daemon, daemon_env, db_rows, run_cli, write_pipelines

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
WRAPPER = [sys.executable, str(Path(__file__).with_name("neighbours_daemon.py"))]
SECRET = "NEIGHBOUR-SECRET-7f3a"
IS_ROOT = os.geteuid() == 0
SETPRIV = shutil.which("setpriv")
TINY = """
prompt = "Text: {{ input }}\\nOne word:"
output_format = "text"
[generation]
max_tokens = 4
temperature = 0.0
"""


def closed_window() -> str:
    """A one-minute run window twelve hours from now: its jobs wait, queued."""
    hour = (datetime.now(UTC) + timedelta(hours=12)).hour
    return f"{hour:02d}:00-{hour:02d}:01"


def scheduled(sweep: str | None = None, inbox: bool = False) -> str:
    """A tiny pipeline that fires every two seconds: a sweep and/or its held inbox."""
    lines = ['schedule = "*/2 * * * * *"']
    if sweep is not None:
        lines.append(f"sweep = [{json.dumps(sweep)}]")
    if inbox:
        lines.append('inbox_mode = "scheduled"')
    return "\n".join(lines) + "\n" + TINY  # top-level keys before [generation]


def wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.2)


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every entry under `folder`: mode, mtime and content (None for non-files)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        found[str(path.relative_to(folder))] = (info.st_mode, info.st_mtime_ns, content)
    return found


def place(folder: Path, name: str | bytes, data: bytes, uid: int | None = None) -> Path:
    """Put a file into `folder` the way a careful submitter does: a hidden temp file
    (owned by `uid`), then a rename."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = os.fsencode(folder) + b"/" + (name if isinstance(name, bytes) else name.encode())
    tmp = os.fsencode(folder) + b"/.incoming"
    with open(tmp, "wb") as handle:
        handle.write(data)
    if uid is not None:
        os.chown(tmp, uid, 0)
    os.replace(tmp, raw)
    return Path(os.fsdecode(raw))


@dataclass
class Setup:
    root: Path
    data: Path
    victim: Path
    env: dict[str, str]
    daemon: Daemon
    flows: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def inbox(self, pipeline: str) -> Path:
        return self.data / "inbox" / pipeline

    def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        return db_rows(self.data, sql, *params)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.daemon.events() if e.get("event") == name]

    def job_of(self, source_path: str) -> tuple[Any, ...] | None:
        rows = self.rows(
            "SELECT id, status, error, archived_path FROM jobs WHERE source_path = ? "
            "ORDER BY id DESC",
            source_path,
        )
        return rows[0] if rows else None

    def final(self, source_path: str, timeout: float = 120) -> tuple[Any, ...]:
        def done() -> tuple[Any, ...] | None:
            job = self.job_of(source_path)
            return job if job and job[1] not in ("queued", "running", "waiting") else None

        return wait(done, timeout, f"{source_path} final")  # type: ignore[no-any-return]

    def archived(self, source_path: str, timeout: float = 120) -> tuple[Any, ...]:
        """The newest job of `source_path` once final and its original moved: the daemon
        records the outcome first and moves the file after, so `final` alone can see the
        row in between, its archived_path still empty."""

        def done() -> tuple[Any, ...] | None:
            job = self.job_of(source_path)
            if job is None or job[1] in ("queued", "running", "waiting"):
                return None
            return job if job[3] is not None else None

        return wait(done, timeout, f"{source_path} archived")  # type: ignore[no-any-return]

    def still_serving(self) -> None:
        """The daemon runs, and a file dropped now is processed."""
        assert self.daemon.proc.poll() is None, self.daemon.log_path.read_text()
        self.flows += 1
        name = f"flow-{self.flows}.txt"
        place(self.inbox("tiny"), name, b"The library opens in March.\n")
        assert self.final(f"tiny/{name}")[1] == "succeeded"


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("neighbours")
    data = root / "data"
    victim = root / "victim"
    victim.mkdir()
    (victim / "secret.txt").write_text(SECRET + "\n")
    (victim / "deep").mkdir()
    (victim / "deep" / "also.txt").write_text(SECRET + " deep\n")
    share = root / "share"
    share.mkdir()
    (root / "hangs").mkdir()
    pipelines = write_pipelines(
        root / "pipelines",
        tiny=TINY,
        swept=scheduled(sweep=f"{share}/**/*.txt"),
        hang=scheduled(sweep=f"{root}/hangs/*.txt"),
        nightly=scheduled(inbox=True),
        later=f'window = "{closed_window()}"\n' + TINY,
        nowatch=TINY,
    )
    env = daemon_env(
        data,
        gguf.parent,
        pipelines_dir=pipelines,
        outputs_per_submitter="true",
        retry_base_seconds=0.2,
        sweep_max_seconds=1,
        unknown_pipeline_grace=0,
    )
    env["EW_TEST_DB_DOWN"] = str(root / "db-down")  # see neighbours_daemon.py
    daemon = Daemon(env, root / "daemon.log", program=WRAPPER)
    setup = Setup(root, data, victim, env, daemon)
    try:
        # Case 8: a SIGHUP while the model loads. `run` catches SIGHUP first thing; once
        # it is caught, send one: the daemon must come up and reload, not die.
        status = Path(f"/proc/{daemon.proc.pid}/status")

        def hup_caught() -> bool:
            for line in status.read_text().splitlines():
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & 1)
            return False

        wait(hup_caught, 60, "SIGHUP caught at start")
        daemon.proc.send_signal(signal.SIGHUP)
        setup.notes["hup_before_ready"] = not any(
            e.get("event") == "daemon.ready" for e in daemon.events()
        )
        daemon.wait_for("daemon.ready", timeout=120)
        before = snapshot(victim)
        yield setup
        assert snapshot(victim) == before
        assert setup.daemon.proc.poll() is None, setup.daemon.log_path.read_text()
    finally:
        code = setup.daemon.stop()
    assert code == 0, setup.daemon.log_path.read_text()


# 8 (start) ---------------------------------------------------------------------------


def test_8_a_sighup_during_the_model_load_is_a_reload_not_a_death(neighbours: Setup) -> None:
    assert neighbours.notes["hup_before_ready"]
    neighbours.daemon.wait_for("reload.done", timeout=30)
    neighbours.still_serving()


# 2. Sweeps follow no link ------------------------------------------------------------


def test_2_links_in_a_swept_folder_are_not_followed(neighbours: Setup) -> None:
    share = neighbours.root / "share"
    (share / "x").symlink_to(".")  # glob.glob walked these exponentially
    (share / "y").symlink_to(".")
    (share / "escape").symlink_to(neighbours.victim)  # its files "matched" the glob
    (share / "stolen.txt").symlink_to(neighbours.victim / "secret.txt")
    sub = share / "sub"
    sub.mkdir()
    (sub / "notes.txt").write_text("Minutes of the meeting.\n")
    (share / "agenda.txt").write_text("Agenda for Tuesday.\n")
    for name in ("agenda.txt", "sub/notes.txt"):
        path = str((share / name).resolve())
        assert neighbours.final(path)[1] == "succeeded"
    # Later fires still come; nothing of the victim's is queued or written.
    fired = len(neighbours.events("schedule.fired"))
    wait(lambda: len(neighbours.events("schedule.fired")) > fired + 2, 30, "more fires")
    paths = [p for (p,) in neighbours.rows("SELECT source_path FROM jobs WHERE source='sweep'")]
    assert sorted(Path(p).name for p in paths) == ["agenda.txt", "notes.txt"]
    outbox = neighbours.data / "outbox" / "swept"
    assert all(SECRET not in p.read_text() for p in outbox.rglob("*") if p.is_file())
    ignored = {Path(e["path"]).name for e in neighbours.events("sweep.ignored")}
    assert "stolen.txt" in ignored
    neighbours.still_serving()


def test_2_a_hung_fire_is_noticed_and_holds_up_nothing_else(neighbours: Setup) -> None:
    (neighbours.root / "hangs" / "hang-1.txt").write_text("on a stuck file system\n")
    hung = neighbours.daemon.wait_for("schedule.fire_hung", timeout=30)
    assert hung["pipeline"] == "hang"

    def fires(pipeline: str) -> int:
        return len([e for e in neighbours.events("schedule.fired") if e["pipeline"] == pipeline])

    # Its later fires are skipped (and say why); a reload does not wait for it; the
    # other schedules keep firing.
    hang_fires = fires("hang")
    reloads = len(neighbours.events("reload.done"))
    neighbours.daemon.proc.send_signal(signal.SIGHUP)
    neighbours.daemon.wait_for("reload.done", timeout=15, count=reloads + 1)
    swept = fires("swept")
    wait(lambda: fires("swept") > swept + 1, 30, "the swept pipeline fires on")
    assert fires("hang") == hang_fires
    neighbours.still_serving()


# 3. The inbox is not watched recursively ---------------------------------------------


def inotify_watches(pid: int) -> int:
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as info:
                total += sum(1 for line in info if line.startswith("inotify wd:"))
        except OSError:
            continue
    return total


def test_3_a_tree_of_folders_in_an_inbox_costs_no_watch(neighbours: Setup) -> None:
    pid = neighbours.daemon.proc.pid
    before = inotify_watches(pid)
    # inbox/ and each inbox/<pipeline>/ but `nowatch` (its watch is refused: ENOSPC).
    assert before == 1 + 5
    tree = neighbours.inbox("tiny") / "tree"
    for i in range(200):
        (tree / f"branch-{i}" / "leaf").mkdir(parents=True)
    time.sleep(1)
    assert inotify_watches(pid) == before
    neighbours.still_serving()


def test_3_an_inbox_without_a_watch_is_served_by_rescans(neighbours: Setup) -> None:
    (warning,) = neighbours.events("inbox.watch_unavailable")
    assert warning["folder"].endswith("/nowatch")
    place(neighbours.inbox("nowatch"), "by-rescan.txt", b"Found by a rescan.\n")
    assert neighbours.final("nowatch/by-rescan.txt", timeout=60)[1] == "succeeded"


# 4. Rescans follow the changes, not the backlog --------------------------------------


def io_counters(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    return {key: int(value) for key, value in (line.split(": ") for line in lines)}


def test_4_rescans_do_not_read_a_waiting_backlog_again(neighbours: Setup) -> None:
    files, size = 200, 50_000
    inbox = neighbours.inbox("later")  # its window is closed: the files wait
    for i in range(files):
        place(inbox, f"waiting-{i:03d}.txt", b"x" * (size - 1) + b"\n")
    wait(
        lambda: (
            neighbours.rows("SELECT count(*) FROM jobs WHERE pipeline = 'later'")[0][0] == files
        ),
        120,
        "the backlog queued",
    )
    pid = neighbours.daemon.proc.pid
    time.sleep(2.5)  # the rescan that follows the last enqueue
    before = io_counters(pid)
    time.sleep(7)  # three rescans (rescan_interval 2 s)
    read = io_counters(pid)["rchar"] - before["rchar"]
    # Re-reading the backlog would be 10 MB per rescan; what is left is the database's.
    print(f"bytes read by the daemon over three rescans of {files} waiting files: {read}")
    assert read < files * size / 4, read
    neighbours.still_serving()


# 5. Names, retry and retention -------------------------------------------------------


def test_5_a_name_that_is_not_utf8_costs_only_that_file(neighbours: Setup) -> None:
    share = neighbours.root / "share"
    place(share, b"b\xffad.txt", b"A name that is not UTF-8.\n")
    place(share, "zz-after.txt", b"Sorted after the bad name.\n")
    assert neighbours.final(str((share / "zz-after.txt").resolve()))[1] == "succeeded"
    nightly = neighbours.inbox("nightly")
    for raw in (b"a-first.txt", b"b\xffad.txt", b"c-last.txt"):
        place(nightly, raw, b"Waiting for the fire.\n")
    for name in ("a-first.txt", "c-last.txt"):
        assert neighbours.final(f"nightly/{name}")[1] == "succeeded"
    reasons = [
        e["reason"] for e in neighbours.events("sweep.ignored") + neighbours.events("inbox.ignored")
    ]
    assert sum("not valid UTF-8" in r for r in reasons) >= 2
    neighbours.still_serving()


def test_5_retry_then_retention_never_deletes_another_jobs_original(neighbours: Setup) -> None:
    done = neighbours.data / "done" / "tiny"
    place(neighbours.inbox("tiny"), "again.txt", b"Run me twice.\n")
    first_id, status, _, archived = neighbours.archived("tiny/again.txt")
    assert status == "succeeded" and archived == str(done / "again.txt")
    retried = run_cli(neighbours.env, "jobs", "retry", "--force", str(first_id))
    assert retried.returncode == 0, retried.stderr
    # The original went back as a new version; the first row forgot its path at once.
    assert neighbours.rows("SELECT archived_path FROM jobs WHERE id = ?", first_id) == [(None,)]
    wait(
        lambda: (
            neighbours.rows("SELECT count(*) FROM jobs WHERE source_path = 'tiny/again.txt'")
            == [(2,)]
        ),
        30,
        "the new version queued",
    )
    second_id, status, _, archived = neighbours.archived("tiny/again.txt")
    assert second_id != first_id and status == "succeeded"
    assert archived == str(done / "again.txt")  # the same name, now the second job's
    # Retention takes the first job (finished long ago) and keeps the second's original.
    with sqlite3.connect(neighbours.data / "jobs.db", timeout=30) as conn:
        conn.execute(
            "UPDATE jobs SET finished_at = '2020-01-01 00:00:00' WHERE id = ?", (first_id,)
        )
    purged = run_cli(neighbours.env, "jobs", "purge", "--older-than", "30")
    assert purged.returncode == 0, purged.stderr
    assert neighbours.rows("SELECT id FROM jobs WHERE id = ?", first_id) == []
    assert (done / "again.txt").read_bytes() == b"Run me twice.\n"
    neighbours.still_serving()


def test_5_an_error_file_never_overwrites_an_archived_original(neighbours: Setup) -> None:
    failed = neighbours.data / "failed" / "tiny"
    # An input literally named like the reason file of `minutes.txt`: it fails (empty).
    place(neighbours.inbox("tiny"), "minutes.txt.error.json", b"")
    neighbours.archived("tiny/minutes.txt.error.json")
    original = failed / "minutes.txt.error.json"
    assert original.read_bytes() == b""
    place(neighbours.inbox("tiny"), "minutes.txt", b"")
    _, status, _, archived = neighbours.archived("tiny/minutes.txt")
    assert status == "failed" and archived != str(failed / "minutes.txt")
    assert original.read_bytes() == b""  # the first input is still there, untouched
    reason = json.loads(Path(archived).with_name(Path(archived).name + ".error.json").read_text())
    assert reason["input"] == "minutes.txt"


def test_5_the_sweep_memory_outlives_the_retention_of_its_jobs_and_a_restart(
    neighbours: Setup,
) -> None:
    share = neighbours.root / "share"
    kept = share / "kept.txt"
    kept.write_text("Swept once, then its job is purged.\n")
    job_id = neighbours.final(str(kept.resolve()))[0]
    with sqlite3.connect(neighbours.data / "jobs.db", timeout=30) as conn:
        conn.execute("UPDATE jobs SET finished_at = '2020-01-01 00:00:00' WHERE id = ?", (job_id,))
    assert run_cli(neighbours.env, "jobs", "purge", "--older-than", "30").returncode == 0
    assert neighbours.job_of(str(kept.resolve())) is None
    # A new process: all it knows is the database.
    assert neighbours.daemon.stop() == 0
    neighbours.daemon = Daemon(neighbours.env, neighbours.root / "daemon-2.log", program=WRAPPER)
    neighbours.daemon.wait_for("daemon.ready", timeout=120)
    fires = [e for e in neighbours.events("schedule.fired") if e["pipeline"] == "swept"]
    wait(
        lambda: (
            len([e for e in neighbours.events("schedule.fired") if e["pipeline"] == "swept"])
            > len(fires) + 2
        ),
        30,
        "fires of the restarted daemon",
    )
    assert neighbours.job_of(str(kept.resolve())) is None  # unchanged: not run again
    neighbours.still_serving()


# 6. Shared folders -------------------------------------------------------------------


@pytest.mark.skipif(not (IS_ROOT and SETPRIV), reason="needs root and setpriv for other uids")
def test_6_the_sticky_inbox_keeps_a_pending_file_from_other_submitters(neighbours: Setup) -> None:
    inbox = neighbours.inbox("later")
    assert stat.S_IMODE(inbox.stat().st_mode) == 0o3770
    pending = place(inbox, "alice.txt", b"Alice's pending request.\n", uid=1001)
    assert SETPRIV is not None
    as_bob = [SETPRIV, "--reuid=1002", "--regid=0", "--clear-groups"]
    removed = subprocess.run([*as_bob, "rm", "-f", str(pending)], capture_output=True, text=True)
    assert removed.returncode != 0 and pending.read_bytes() == b"Alice's pending request.\n"
    replaced = subprocess.run(
        [*as_bob, "sh", "-c", f"echo evil > {inbox}/.b && mv -f {inbox}/.b {pending}"],
        capture_output=True,
        text=True,
    )
    assert replaced.returncode != 0 and pending.read_bytes() == b"Alice's pending request.\n"


@pytest.mark.skipif(not IS_ROOT, reason="needs root to make files of other uids")
def test_6_two_submitters_same_name_keep_both_results(neighbours: Setup) -> None:
    outbox = neighbours.data / "outbox" / "tiny"
    place(neighbours.inbox("tiny"), "report.txt", b"Alice writes about apples.\n", uid=1001)
    assert neighbours.archived("tiny/report.txt")[1] == "succeeded"
    place(neighbours.inbox("tiny"), "report.txt", b"Bob writes about boats.\n", uid=1002)
    wait(
        lambda: (outbox / "1002" / "report.txt.txt").exists(),
        120,
        "bob's result",
    )
    assert (outbox / "1001" / "report.txt.txt").is_file()


def test_6_folders_made_after_a_reload_keep_setgid(neighbours: Setup) -> None:
    outbox = neighbours.data / "outbox"
    os.chmod(outbox, 0o2750)  # as install.sh leaves it
    write_pipelines(Path(neighbours.env["EDGE_WORKER_PIPELINES_DIR"]), added=TINY)
    reloads = len(neighbours.events("reload.done"))
    neighbours.daemon.proc.send_signal(signal.SIGHUP)
    neighbours.daemon.wait_for("reload.done", timeout=15, count=reloads + 1)
    place(neighbours.inbox("added"), "new.txt", b"For a pipeline added by a reload.\n")
    assert neighbours.final("added/new.txt")[1] == "succeeded"
    for folder in (outbox / "added", *[p for p in (outbox / "added").iterdir() if p.is_dir()]):
        assert stat.S_IMODE(folder.stat().st_mode) & stat.S_ISGID, folder


# 8. Operations -----------------------------------------------------------------------


def test_8_a_reload_during_a_database_outage_keeps_the_schedules(neighbours: Setup) -> None:
    flag = Path(neighbours.env["EW_TEST_DB_DOWN"])
    reloads = len(neighbours.events("reload.done"))
    flag.touch()  # the fire history cannot be read: what a reload's catch-up needs
    try:
        neighbours.daemon.proc.send_signal(signal.SIGHUP)
        neighbours.daemon.wait_for("reload.done", timeout=15, count=reloads + 1)
        assert not neighbours.events("reload.partial")

        def fired() -> int:
            events = neighbours.events("schedule.fired")
            return len([e for e in events if e["pipeline"] == "swept"])

        before = fired()
        wait(lambda: fired() > before + 1, 30, "schedules fire during the outage")
    finally:
        flag.unlink()
    neighbours.still_serving()


def test_8_a_transient_read_error_is_retried_not_final(neighbours: Setup) -> None:
    place(neighbours.inbox("tiny"), "eio-once.txt", b"Read fails once with EIO.\n")
    job_id, status, _, _ = neighbours.final("tiny/eio-once.txt")
    assert status == "succeeded"
    ((attempts,),) = neighbours.rows("SELECT attempts FROM jobs WHERE id = ?", job_id)
    assert attempts == 2


def test_8_a_metrics_port_the_sandbox_forbids_stops_the_start_with_what_to_do(
    neighbours: Setup, tmp_path: Path
) -> None:
    env = {
        **neighbours.env,
        "EDGE_WORKER_DATA_DIR": str(tmp_path / "data"),
        "EDGE_WORKER_METRICS_PORT": "19464",
        "EW_TEST_NO_INET": "1",
    }
    result = subprocess.run([*WRAPPER, "run"], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2  # RestartPreventExitStatus=2: no restart loop
    assert "systemd/examples/metrics-port.conf" in result.stdout + result.stderr


# 7. The installer, in a DESTDIR as a fake root ---------------------------------------


def install(tmp_path: Path, script: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("WHEELHOUSE", "EXTRAS", "INSTANCES")},
        "DESTDIR": str(tmp_path / "stage"),
        **variables,
    }
    return subprocess.run(
        ["sh", str(script)], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_7_a_planted_link_in_the_data_folder_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "etc-like"
    outside.mkdir(mode=0o700)
    (outside / "passwd").write_text("root:x:0:0\n")
    before = snapshot(outside), stat.S_IMODE(outside.stat().st_mode)
    state = tmp_path / "stage" / "var/lib/edge-worker"
    state.mkdir(parents=True)
    (state / "outbox").symlink_to(outside)  # what the daemon's user could plant
    result = install(tmp_path, REPO / "systemd/install.sh")
    assert result.returncode != 0
    assert "is a symbolic link" in result.stderr
    assert (snapshot(outside), stat.S_IMODE(outside.stat().st_mode)) == before
    # Without the link, the same install goes through.
    (state / "outbox").unlink()
    again = install(tmp_path, REPO / "systemd/install.sh")
    assert again.returncode == 0, again.stderr
    assert stat.S_IMODE((state / "inbox" / "summarize").stat().st_mode) == 0o3770


def kit_copy(tmp_path: Path) -> Path:
    """The installer's part of a kit: systemd/, pipelines/ and docs/ (no wheels)."""
    kit = tmp_path / "kit"
    shutil.copytree(REPO / "systemd", kit / "systemd")
    shutil.copytree(REPO / "pipelines", kit / "pipelines")
    shutil.copytree(REPO / "docs", kit / "docs")
    return kit


def test_7_a_link_among_the_pipelines_is_refused_not_copied(tmp_path: Path) -> None:
    kit = kit_copy(tmp_path)
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    (kit / "pipelines" / "evil.toml").symlink_to(secret)
    result = install(tmp_path, kit / "systemd/install.sh")
    assert result.returncode != 0
    assert "evil.toml" in result.stderr
    copied = tmp_path / "stage/etc/edge-worker/pipelines"
    assert not copied.exists()
    assert not [
        p
        for p in (tmp_path / "stage").rglob("*")
        if p.is_file() and SECRET in p.read_text(errors="replace")
    ]


def test_7_a_kit_with_a_file_more_than_its_sums_is_refused(tmp_path: Path) -> None:
    kit = kit_copy(tmp_path)
    wheels = kit / "wheels"
    wheels.mkdir()
    (wheels / "edge_worker-0.1.0-py3-none-any.whl").write_bytes(b"our wheel")
    (wheels / "pip-26.0-py3-none-any.whl").write_bytes(b"pip")
    files = sorted(p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file())
    sums = subprocess.run(
        ["sha256sum", "--", *files], cwd=kit, capture_output=True, text=True, check=True
    )
    (kit / "SHA256SUMS").write_text(sums.stdout)
    (wheels / "pip-99.0-py3-none-any.whl").write_bytes(b"what pip would run as root")
    result = install(tmp_path, kit / "systemd/install.sh")
    assert result.returncode != 0
    assert "SHA256SUMS does not match" in result.stderr and "pip-99.0" in result.stderr
    assert not (tmp_path / "stage/opt/edge-worker/venvs").exists()


# 1. A submitter role cannot reach its neighbours (PostgreSQL) -------------------------

ROLE = f"ew_neighbour_{os.getpid()}_{int(time.time())}"  # roles are cluster-wide


@dataclass
class PgSetup:
    url: str
    libpq: str
    data: Path
    env: dict[str, str]
    daemon: Daemon

    def as_role(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.libpq, autocommit=True) as conn:
            conn.execute(f'SET ROLE "{ROLE}"')
            cursor = conn.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    def admin(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.libpq, autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    def final(self, source_path: str, timeout: float = 120) -> tuple[Any, ...]:
        def done() -> tuple[Any, ...] | None:
            rows = self.admin(
                "SELECT id, status, error FROM jobs WHERE source_path = %s ORDER BY id DESC",
                (source_path,),
            )
            return rows[0] if rows and rows[0][1] not in ("queued", "running", "waiting") else None

        return wait(done, timeout, f"{source_path} final")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def pg_neighbours(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[PgSetup]:
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    from worker.sources.pg_listen import libpq_conninfo

    base = os.environ.get("EDGE_WORKER_TEST_PG_URL")
    if not base:
        pytest.skip("EDGE_WORKER_TEST_PG_URL is not set (CI sets it; no PostgreSQL here)")
    name = f"ew_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_conninfo(base), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') "
            f'THEN CREATE ROLE "{ROLE}" NOLOGIN; END IF; END $$'
        )
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    root = tmp_path_factory.mktemp("pg-neighbours")
    pipelines = write_pipelines(root / "pipelines", tiny=TINY, lines=TINY)
    env = daemon_env(root / "data", gguf.parent, pipelines_dir=pipelines, database_url=url)
    granted = run_cli(env, "db", "grant-submitter", ROLE)
    assert granted.returncode == 0, granted.stderr
    daemon = Daemon(env, root / "daemon.log")
    setup = PgSetup(url, libpq_conninfo(url), root / "data", env, daemon)
    try:
        daemon.wait_for("daemon.ready", timeout=120)
        yield setup
        assert daemon.proc.poll() is None, daemon.log_path.read_text()
    finally:
        code = daemon.stop()
        with psycopg.connect(libpq_conninfo(base), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{ROLE}"')
    assert code == 0, daemon.log_path.read_text()


def refused(pg: PgSetup, sql: str, params: tuple[Any, ...] = ()) -> str:
    """The error PostgreSQL gives the submitter role for `sql` (which must fail)."""
    import psycopg

    try:
        pg.as_role(sql, params)
    except psycopg.Error as exc:
        return str(exc)
    raise AssertionError(f"the submitter role was allowed: {sql} {params}")


INSERT = (
    "INSERT INTO jobs (pipeline, input_text, priority, idempotency_key) VALUES (%s, %s, %s, %s)"
)


def test_1_a_submitter_cannot_forge_keys_jump_the_queue_or_read_neighbours(
    pg_neighbours: PgSetup,
) -> None:
    pg = pg_neighbours
    inbox = pg.data / "inbox"
    # The victim's next file: its name, size, mtime and sha256 are all an attacker needs.
    from worker.io.files import FileRef, content_digest, file_key

    body = b"Quarterly figures: up by a tenth.\n"
    staged = inbox / "tiny" / ".staged"
    staged.write_bytes(body)
    info = staged.stat()
    victim_key = file_key(
        FileRef("tiny", "report.txt"), info.st_size, info.st_mtime_ns, content_digest(body)
    )
    assert "reserved for the daemon" in refused(pg, INSERT, ("tiny", "mine", 0, victim_key))
    # Child lines of the next file jobs (ids are easy to guess): squatting them would drop
    # the victim's lines, or leave its file expanding into nothing forever.
    ((next_id,),) = pg.admin("SELECT coalesce(max(id), 0) + 1 FROM jobs")
    for parent in range(next_id, next_id + 4):
        for line in (1, 2, 3):
            message = refused(pg, INSERT, ("lines", "forged", 0, f"child:{parent}:{line}"))
            assert "reserved for the daemon" in message
    assert "submitter may set 0 or lower" in refused(pg, INSERT, ("tiny", "me first", 1000, "k"))

    os.replace(staged, inbox / "tiny" / "report.txt")
    (inbox / "lines" / "v.jsonl").write_text(
        "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in (1, 2, 3))
    )
    assert pg.final("tiny/report.txt")[1] == "succeeded"
    assert pg.final("lines/v.jsonl")[1] == "succeeded"
    gathered = (pg.data / "outbox" / "lines" / "v.jsonl.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in gathered] == ["succeeded"] * 3
    archived = pg.data / "done" / "tiny" / "report.txt"
    wait(archived.exists, 30, "report.txt moved to done/")  # after its row is final
    assert archived.read_bytes() == body

    # Its own job works; it sees that one only: no file names, no hashes, no neighbours.
    ((mine,),) = pg.as_role(INSERT + " RETURNING id", ("tiny", "The river is long.", -1, "own-1"))
    wait(
        lambda: pg.as_role("SELECT status FROM jobs WHERE id = %s", (mine,)) == [("succeeded",)],
        120,
        "the submitter's own job",
    )
    assert pg.as_role("SELECT id FROM jobs") == [(mine,)]
    assert pg.as_role("SELECT count(*) FROM jobs WHERE idempotency_key LIKE 'file:%%'") == [(0,)]
    assert len(pg.admin("SELECT id FROM jobs")) > 1


def test_1_a_notify_flood_costs_at_most_one_claim_per_poll_interval(
    pg_neighbours: PgSetup,
) -> None:
    import psycopg

    pg = pg_neighbours
    # Test instrumentation: count UPDATE statements on jobs (a claim is one, even when it
    # takes nothing). The daemon's own idle rhythm is measured first.
    pg.admin(
        "CREATE TABLE IF NOT EXISTS update_statements (n bigint NOT NULL);"
        "INSERT INTO update_statements VALUES (0);"
        "CREATE OR REPLACE FUNCTION count_update() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN UPDATE update_statements SET n = n + 1; RETURN NULL; END $$;"
        "CREATE TRIGGER count_updates AFTER UPDATE ON jobs "
        "FOR EACH STATEMENT EXECUTE FUNCTION count_update()"
    )

    def updates() -> int:
        return int(pg.admin("SELECT n FROM update_statements")[0][0])

    seconds = 3.0
    start = updates()
    time.sleep(seconds)
    idle = updates() - start

    sent = 0
    start = updates()
    with psycopg.connect(pg.libpq, autocommit=True) as conn:
        conn.execute(f'SET ROLE "{ROLE}"')
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            conn.execute("SELECT pg_notify('edge_worker_jobs', %s)", (str(sent),))
            sent += 1
    flood = updates() - start
    print(f"UPDATE statements in {seconds:g} s: idle {idle}, during {sent} NOTIFYs {flood}")
    assert sent > 500
    # At most one extra claim per poll_interval (0.5 s), plus the jitter of the rhythm.
    assert flood <= idle + seconds / 0.5 + 4, (idle, flood, sent)
    pg.admin("DROP TRIGGER count_updates ON jobs")
    ((job_id,),) = pg.as_role(INSERT + " RETURNING id", ("tiny", "After the flood.", 0, "own-2"))
    wait(
        lambda: pg.as_role("SELECT status FROM jobs WHERE id = %s", (job_id,)) == [("succeeded",)],
        120,
        "a job after the flood",
    )
