"""The completion hook (`on_final`): argv checks, placeholders as whole items, the
timeout, the bounded queue, and a real run through the runner."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.fakes import FakeEngine
from tests.harness import Runner
from worker.config import Settings
from worker.pipelines.hook_args import check_hook, hook_argv
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import JobStore, NewJob
from worker.run.hooks import HookCall, HookRunner, final_hook, run_hook
from worker.run.stop import StopFlags

pytestmark = pytest.mark.timeout(60)


def recorder(tmp_path: Path) -> Path:
    """A program that writes its argv as JSON to `argv.json` beside it."""
    script = tmp_path / "record-argv"
    out = tmp_path / "argv.json"
    script.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\nprint('indexed')\n"
    )
    script.chmod(0o755)
    return script


def test_the_argv_is_checked_and_placeholders_are_whole_items() -> None:
    assert check_hook([]) is None
    assert check_hook(["/usr/local/bin/index", "{output}", "--fixed"]) is None
    assert "absolute path" in (check_hook(["index-results", "{output}"]) or "")
    assert "whole item" in (check_hook(["/bin/x", "--out={output}"]) or "")
    assert "whole item" in (check_hook(["/bin/x", "{nope}"]) or "")
    assert "program itself" in (check_hook(["{output}"]) or "")
    with pytest.raises(ValueError, match="on_final"):
        Pipeline(name="p", on_final=("sh", "-c", "echo {output}"))
    hostile = "x; rm -rf / $(reboot) `id` --force"
    argv = hook_argv(["/bin/x", "{output}", "{source}", "-v"], {"{source}": hostile})
    assert argv == ["/bin/x", "", hostile, "-v"]  # one item each, data never split


def test_a_hook_runs_times_out_and_fails_without_raising(tmp_path: Path) -> None:
    script = recorder(tmp_path)
    call = HookCall(1, "p", (str(script), "a b", "$(id)"), timeout=10)
    assert run_hook(call) == 0
    assert json.loads((tmp_path / "argv.json").read_text()) == ["a b", "$(id)"]
    started = time.monotonic()
    assert run_hook(HookCall(2, "p", ("/bin/sleep", "30"), timeout=0.5)) is None
    assert time.monotonic() - started < 5
    assert run_hook(HookCall(3, "p", ("/bin/false",), timeout=5)) == 1
    assert run_hook(HookCall(4, "p", (str(tmp_path / "missing"),), timeout=5)) is None


def test_the_queue_is_bounded_and_never_blocks() -> None:
    hooks = HookRunner(max_queue=2)  # not started: nothing takes from the queue
    call = HookCall(1, "p", ("/bin/true",), 1)
    assert hooks.submit(call) and hooks.submit(call)
    started = time.monotonic()
    assert not hooks.submit(call)
    assert time.monotonic() - started < 0.1 and hooks.dropped == 1


def test_the_hook_of_a_finished_job_runs_after_it_with_its_values(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    script = recorder(tmp_path)
    pipeline = Pipeline(
        name="p",
        on_final=(str(script), "{job_id}", "{status}", "{pipeline}", "{source}", "{output}"),
    )
    runner = Runner(
        settings, store, FakeEngine(), {"p": pipeline}, "w", StopFlags(), threading.Event()
    )
    hooks = HookRunner()
    runner.jobs.on_final = final_hook({"p": pipeline}, hooks)
    job_id = store.enqueue(NewJob("p", "Hello; $(id)"))
    hooks.start()
    try:
        runner.run(once=True)
        deadline = time.monotonic() + 20
        while not (tmp_path / "argv.json").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        hooks.stop()
    assert json.loads((tmp_path / "argv.json").read_text()) == [
        str(job_id),
        "succeeded",
        "p",
        "",
        "",
    ]
    job = store.get(job_id or 0)
    assert job is not None and job.status == "succeeded"
