"""The bad-input corpus through the real daemon: each kind gets its own error or is ignored
by rule, and the daemon keeps serving."""

from __future__ import annotations

import codecs
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import db_rows, write_pipelines
from worker.io.naming import error_name, output_name

pytestmark = pytest.mark.timeout(300)

# Short generations: this test is about what happens around the model, not its output.
TERSE = """
prompt = "Text: {{ input }}\\nOne-line summary:"
output_format = "text"
[generation]
max_tokens = 8
temperature = 0.0
"""
# A slower pipeline, to hold the runner busy while a queued file is removed or changed.
SLOW = """
prompt = "Count from one to one hundred in words.\\n{{ input }}\\n"
output_format = "text"
[generation]
max_tokens = 120
temperature = 0.0
"""
SENTENCE = "The library opens in March with forty thousand books and a reading room.\n"
MAX_INPUT_BYTES = 20_000
N_CTX = 512
LONG_ASCII = "a" * 246 + ".txt"  # 250 characters
LONG_BAD = "b" * 246 + ".txt"
LONG_CJK = "東" * 80 + ".txt"  # 244 bytes in UTF-8: the output name is close to NAME_MAX


@pytest.fixture
def pipelines(tmp_path: Path) -> Path:
    return write_pipelines(tmp_path / "pipelines", terse=TERSE, slow=SLOW)


@pytest.fixture
def corpus_env(env: dict[str, str], pipelines: Path) -> dict[str, str]:
    return {
        **env,
        "EDGE_WORKER_PIPELINES_DIR": str(pipelines),
        "EDGE_WORKER_MAX_INPUT_BYTES": str(MAX_INPUT_BYTES),
        "EDGE_WORKER_N_CTX": str(N_CTX),
        # Unknown pipelines fail at once here (by default they wait for a reload first).
        "EDGE_WORKER_UNKNOWN_PIPELINE_GRACE": "0",
    }


# name -> (content, expected error; None means the job must succeed)
FAILING: dict[str, tuple[bytes, str]] = {
    "empty.txt": (b"", "empty input: the file has no text"),
    "blank.txt": (b"  \n\t \r\n", "empty input: the file holds only whitespace"),
    "image.png": (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "binary content: NUL byte at offset 8 (expected UTF-8 or UTF-16 text)",
    ),
    "nul.txt": (
        b"hello\x00world",
        "binary content: NUL byte at offset 5 (expected UTF-8 or UTF-16 text)",
    ),
    "latin1.txt": (
        "café au lait".encode("latin-1"),
        "not valid UTF-8 text: bad byte 0xe9 at offset 3",
    ),
    "huge.txt": (
        b"x" * (MAX_INPUT_BYTES + 1),
        f"input is {MAX_INPUT_BYTES + 1} bytes; max_input_bytes allows {MAX_INPUT_BYTES}",
    ),
    LONG_BAD: (b"   ", "empty input: the file holds only whitespace"),
}
SUCCEEDING: dict[str, bytes] = {
    "utf16.txt": SENTENCE.encode("utf-16"),  # with its BOM
    "utf8-bom.txt": codecs.BOM_UTF8 + SENTENCE.encode(),
    "line\nbreak.txt": SENTENCE.encode(),
    "with  spaces .txt": SENTENCE.encode(),
    "résumé – 東京.txt": SENTENCE.encode(),
    LONG_ASCII: SENTENCE.encode(),
    LONG_CJK: SENTENCE.encode(),
    # Input is data: a template engine would fail on these (undefined name, missing file).
    "template.txt": b"{{ secret_key }} {% include '/etc/passwd' %} {{ 7 * 7 }} {# x #}\n",
    # A .jsonl runs one job per line; its malformed line is a per-line error in the output.
    "batch.jsonl": b'{"custom_id": "1", "body": {}}\n{not json at all\n',
}


def job_for(data_dir: Path, source_path: str) -> tuple[Any, ...] | None:
    rows = db_rows(
        data_dir,
        "SELECT id, status, error, output_path, result_text FROM jobs WHERE source_path = ? "
        "ORDER BY id DESC",
        source_path,
    )
    return rows[0] if rows else None


def wait_final(data_dir: Path, source_paths: list[str], timeout: float = 180) -> dict[str, Any]:
    """Wait until each file has a job in a final state; returns them by source path."""
    deadline = time.monotonic() + timeout
    found: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = {p: job_for(data_dir, p) for p in source_paths}
        if all(
            j is not None and j[1] not in ("queued", "running", "waiting") for j in found.values()
        ):
            return found
        time.sleep(0.3)
    raise AssertionError(f"not final within {timeout}s: {found}")


def test_bad_input_corpus(
    data_dir: Path, corpus_env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    inbox_root = data_dir / "inbox"
    inbox = inbox_root / "terse"
    daemon = start_daemon(corpus_env)

    for name, (content, _) in FAILING.items():
        (inbox / name).write_bytes(content)
    for name, content in SUCCEEDING.items():
        (inbox / name).write_bytes(content)
    # over the context window, under max_input_bytes
    (inbox / "long.txt").write_text("word " * 2000)
    # a file name that is not UTF-8 at all
    bad_name = os.fsdecode(b"caf\xe9-\xff.txt")
    (inbox / bad_name).write_bytes(SENTENCE.encode())
    # ignored by rule: not regular files, hidden and partial files, outside a pipeline folder
    os.mkfifo(inbox / "pipe.txt")
    outside = tmp_path / "outside.txt"
    outside.write_text(SENTENCE)
    (inbox / "link.txt").symlink_to(outside)
    (inbox / "folder.txt").mkdir()
    (inbox / "folder.txt" / "inner.txt").write_text(SENTENCE)
    (inbox / ".hidden.txt").write_text(SENTENCE)
    (inbox / "upload.txt.part").write_text(SENTENCE)
    (inbox_root / "stray.txt").write_text(SENTENCE)
    # a folder for a pipeline that does not exist
    (inbox_root / "nosuch").mkdir()
    (inbox_root / "nosuch" / "x.txt").write_text(SENTENCE)

    paths = [f"terse/{n}" for n in [*FAILING, *SUCCEEDING, "long.txt"]] + ["nosuch/x.txt"]
    jobs = wait_final(data_dir, paths)
    deadline = time.monotonic() + 30  # originals are moved right after the row is final
    while any((inbox_root / p).exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.2)

    failed = data_dir / "failed" / "terse"
    expected_errors = {f"terse/{n}": e for n, (_, e) in FAILING.items()}
    over_context = (
        rf"input is \d+ tokens; the context allows {N_CTX - 8} \(n_ctx {N_CTX} minus max_tokens 8\)"
    )
    for path, error in expected_errors.items():
        _, status, row_error, _, _ = jobs[path]
        assert (status, row_error) == ("failed", error), path
    _, status, long_error, _, _ = jobs["terse/long.txt"]
    assert status == "failed"
    assert re.fullmatch(over_context, long_error), long_error
    expected_errors["terse/long.txt"] = long_error
    for path, error in expected_errors.items():
        name = path.split("/", 1)[1]
        reason = json.loads((failed / error_name(name)).read_text())
        assert reason["error"] == error
        assert reason["input"] == name
        assert (failed / name).exists(), f"original of {name!r} not kept in failed/"
        assert not (inbox / name).exists()

    outbox = data_dir / "outbox" / "terse"
    done = data_dir / "done" / "terse"
    for name in SUCCEEDING:
        _, status, row_error, output_path, result = jobs[f"terse/{name}"]
        assert status == "succeeded", (name, row_error)
        if name.endswith(".jsonl"):  # one result line per input line, gathered in order
            output = outbox / f"{name}.jsonl"
            assert output_path == str(output)
            lines = [json.loads(line) for line in output.read_text().splitlines()]
            assert len(lines) == 2
            assert "not valid JSON" in json.dumps(lines[1])
        else:
            output = outbox / output_name(name, "text")
            assert output_path == str(output)
            assert output.read_text() == result + "\n"
        assert (done / name).exists()
        assert not (inbox / name).exists()

    _, status, row_error, _, _ = jobs["nosuch/x.txt"]
    assert (status, row_error) == ("failed", "unknown pipeline 'nosuch' (known: slow, terse)")
    assert (data_dir / "failed" / "nosuch" / "x.txt").exists()

    # ignored by rule: still where they were, never a job, a warning for the odd ones
    ignored = {e["path"]: e["reason"] for e in daemon.events() if e["event"] == "inbox.ignored"}
    assert ignored[str(inbox / "pipe.txt")] == "not a regular file"
    assert ignored[str(inbox / "link.txt")] == "symlink"
    assert ignored[str(inbox / "folder.txt")] == "not a regular file"
    assert ignored[f"{inbox}/caf\\xe9-\\xff.txt"] == "file name is not valid UTF-8; rename the file"
    assert len(ignored) == 4, ignored
    for name in ("pipe.txt", "link.txt", "folder.txt", ".hidden.txt", "upload.txt.part", bad_name):
        assert os.path.lexists(inbox / name), name
    assert (inbox_root / "stray.txt").exists()
    assert outside.read_text() == SENTENCE  # a symlink's target is never touched
    # one job per file, plus the two line jobs of batch.jsonl
    assert db_rows(data_dir, "SELECT count(*) FROM jobs WHERE parent_id IS NULL") == [(len(paths),)]
    assert db_rows(data_dir, "SELECT count(*) FROM jobs WHERE parent_id IS NOT NULL") == [(2,)]

    # ... and the daemon keeps serving: a good file dropped after the corpus succeeds
    (inbox / "after.txt").write_text(SENTENCE)
    after = wait_final(data_dir, ["terse/after.txt"])["terse/after.txt"]
    assert after[1] == "succeeded"
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
    # no file's problem ever disturbed the watcher
    problems = [e for e in daemon.events() if e["event"] in ("inbox.error", "inbox.file_error")]
    assert problems == []
    assert "Traceback" not in daemon.log_path.read_text()


def test_a_file_removed_or_rewritten_while_queued_is_skipped_and_logged(
    data_dir: Path, corpus_env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    # one slot, so that the other files wait queued while it is busy
    daemon = start_daemon({**corpus_env, "EDGE_WORKER_PARALLEL": "1"})
    (data_dir / "inbox" / "slow" / "busy.txt").write_text("Go.\n")
    daemon.wait_for("job.claimed")  # the runner is busy with a long generation
    inbox = data_dir / "inbox" / "terse"
    (inbox / "gone.txt").write_text(SENTENCE)
    (inbox / "changed.txt").write_text(SENTENCE)
    daemon.wait_for("job.enqueued", count=3)
    (inbox / "gone.txt").unlink()
    (inbox / "changed.txt").write_text("A second version. " + SENTENCE)
    busy = job_for(data_dir, "slow/busy.txt")
    assert busy is not None and busy[1] == "running", "the premise: both still queued"

    wait_final(data_dir, ["slow/busy.txt", "terse/gone.txt"])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        versions = db_rows(
            data_dir,
            "SELECT status, error, result_text FROM jobs WHERE source_path = ? ORDER BY id",
            "terse/changed.txt",
        )
        final = len(versions) == 2 and all(v[0] not in ("queued", "running") for v in versions)
        if final and not (inbox / "changed.txt").exists():
            break
        time.sleep(0.3)
    gone = job_for(data_dir, "terse/gone.txt")
    assert gone is not None
    assert gone[1:3] == ("failed", "input file was removed before it was processed")
    assert [v[:2] for v in versions] == [
        ("failed", "input file changed after it was queued; the new version runs"),
        ("succeeded", None),
    ]
    assert (data_dir / "done" / "terse" / "changed.txt").read_text().startswith("A second")
    output = data_dir / "outbox" / "terse" / "changed.txt.txt"
    assert output.read_text() == versions[1][2] + "\n"
    assert not (data_dir / "failed").exists()  # nothing to keep: the file was gone
    skipped = [e for e in daemon.events() if e["event"] == "job.skipped"]
    assert sorted(e["reason"] for e in skipped) == [
        "input file changed after it was queued; the new version runs",
        "input file was removed before it was processed",
    ]
    assert daemon.stop() == 0
