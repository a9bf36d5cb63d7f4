"""Shipped pipelines through the real daemon and the real model: every input format,
JSON-schema output, records files, map-reduce over a long document."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import db_rows, run_cli, wait_until_final
from tests.files import make_pdf
from worker.config import SHIPPED_PIPELINES_DIR

pytestmark = pytest.mark.timeout(900)

LABELS = ("complaint", "question", "praise", "other")


def schema_of(pipeline: str) -> Draft202012Validator:
    from worker.pipelines.spec import load_pipelines

    schema = load_pipelines(SHIPPED_PIPELINES_DIR)[pipeline].json_schema
    assert schema is not None
    return Draft202012Validator(schema)


def wait_for_file(path: Path, timeout: float = 600) -> Path:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.2)
    return path


def test_extract_and_classify_read_every_input_format(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    extract_inbox = data_dir / "inbox" / "extract"
    classify_inbox = data_dir / "inbox" / "classify"
    extract_inbox.mkdir(parents=True)
    classify_inbox.mkdir(parents=True)
    pdf = make_pdf(["Invoice from Harbor Tools to Maria Lopez", "Total: $1,250 due 3 May 2024."])
    (extract_inbox / "invoice.pdf").write_bytes(pdf)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["id", "text"])
    writer.writerow(["7", "My parcel arrived broken and I want a refund."])
    writer.writerow(["8", "Thank you, great service!"])
    (classify_inbox / "messages.csv").write_text(rows.getvalue())
    (classify_inbox / "more.jsonl").write_text('{"text": "Do you deliver on Sundays?"}\n')
    (classify_inbox / "one.json").write_text('{"text": "Where is my order?", "id": 9}')
    (classify_inbox / "page.html").write_text(
        "<html><head><script>alert('x')</script></head><body><p>The app crashes every "
        "time I open it. Fix it!</p></body></html>"
    )

    daemon = start_daemon({**env, "EDGE_WORKER_N_CTX": "1024"}, ready=False)
    rows_final = wait_until_final(data_dir, count=8, timeout=840)  # 5 files, 3 records
    assert {status for _, status in rows_final} == {"succeeded"}, rows_final

    # PDF -> extract: the JSON validates against the pipeline's schema
    value = json.loads((data_dir / "outbox" / "extract" / "invoice.pdf.json").read_text())
    assert not list(schema_of("extract").iter_errors(value)), value
    wait_for_file(data_dir / "done" / "extract" / "invoice.pdf", timeout=30)  # after the row

    classify = schema_of("classify")
    outbox = data_dir / "outbox" / "classify"
    # CSV and JSON Lines -> one output line per record, in input order
    lines = [json.loads(x) for x in (outbox / "messages.csv.jsonl").read_text().splitlines()]
    assert [(x["line"], x["status"], x["record"]["id"]) for x in lines] == [
        (2, "succeeded", "7"),
        (3, "succeeded", "8"),
    ]
    (more,) = [json.loads(x) for x in (outbox / "more.jsonl.jsonl").read_text().splitlines()]
    for result in [x["result"] for x in lines] + [more["result"]]:
        assert not list(classify.iter_errors(result)), result
    # a JSON object and an HTML page are one job each
    for name in ("one.json.json", "page.html.json"):
        value = json.loads((outbox / name).read_text())
        assert value["label"] in LABELS and 0 <= value["confidence"] <= 1
    (prompt_tokens,) = db_rows(
        data_dir, "SELECT prompt_tokens FROM jobs WHERE source_path = 'classify/page.html'"
    )[0]
    assert prompt_tokens < 200  # the script was not part of the prompt
    assert daemon.stop() == 0


def long_document(target_words: int) -> str:
    topics = ["river", "bridge", "market", "school", "harbour", "railway", "library", "farm"]
    paragraphs: list[str] = []
    number = 0
    while sum(len(p.split()) for p in paragraphs) < target_words:
        topic = topics[number % len(topics)]
        paragraphs.append(
            f"Chapter {number + 1}. The town's {topic} was rebuilt in {1900 + number}. "
            f"Workers spent {number + 3} months on the {topic}, and the council paid "
            f"{(number + 1) * 1000} crowns for it. Visitors said the new {topic} was the "
            f"finest in the region, and children played beside it every summer."
        )
        number += 1
    return "\n\n".join(paragraphs)


def test_a_document_five_times_the_context_gets_one_summary_with_chunking(
    data_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    for name in ("summarize", "summarize-long"):
        text = (SHIPPED_PIPELINES_DIR / f"{name}.toml").read_text()
        # Short answers keep the test fast on two cores; the pipeline is otherwise shipped as is.
        (pipelines / f"{name}.toml").write_text(text.replace("max_tokens = 200", "max_tokens = 24"))
    document = long_document(2200)  # about 2,700 tokens; n_ctx is 512
    for name in ("summarize", "summarize-long"):
        inbox = data_dir / "inbox" / name
        inbox.mkdir(parents=True)
        (inbox / "history.txt").write_text(document)
    settings = {"EDGE_WORKER_N_CTX": "512", "EDGE_WORKER_PIPELINES_DIR": str(pipelines)}
    result = run_cli({**env, **settings}, "run", "--once", timeout=840)
    assert result.returncode == 0, result.stderr[-3000:]

    by_pipeline = dict(db_rows(data_dir, "SELECT pipeline, status FROM jobs"))
    assert by_pipeline == {"summarize": "failed", "summarize-long": "succeeded"}
    error = json.loads((data_dir / "failed" / "summarize" / "history.txt.error.json").read_text())[
        "error"
    ]
    assert error.startswith("input is ")
    tokens = int(error.split()[2])
    assert tokens >= 5 * 512, error
    assert "tokens; the context allows 488 (n_ctx 512 minus max_tokens 24)" in error

    summary = (data_dir / "outbox" / "summarize-long" / "history.txt.md").read_text()
    assert summary.startswith("-") and summary.strip()
    ((prompt_tokens, calls_hint),) = db_rows(
        data_dir,
        "SELECT prompt_tokens, completion_tokens FROM jobs WHERE pipeline = 'summarize-long'",
    )
    assert prompt_tokens > tokens  # every chunk was read, plus the reduce prompt
    assert calls_hint > 0


def test_pipelines_validate_and_try_write_nothing(
    data_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli(env, "pipelines", "validate")
    assert result.returncode == 0, result.stderr
    assert "5 pipeline(s)" in result.stdout

    rows = tmp_path / "rows.csv"
    rows.write_text("id,text\n1,Is the shop open on Sunday?\n")
    result = run_cli(
        {**env, "EDGE_WORKER_N_CTX": "1024"}, "pipelines", "try", "classify", str(rows), timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Message: Is the shop open on Sunday?" in result.stderr  # the rendered prompt
    value = json.loads(result.stdout)
    assert value["label"] in LABELS
    assert not data_dir.exists() or not any(data_dir.iterdir())  # no database, no files

    broken = tmp_path / "pipelines"
    shutil.copytree(SHIPPED_PIPELINES_DIR, broken)
    (broken / "extract.toml").write_text(
        (broken / "extract.toml").read_text().replace('"schemas/extract.json"', '"missing.json"')
    )
    result = run_cli({**env, "EDGE_WORKER_PIPELINES_DIR": str(broken)}, "pipelines", "validate")
    assert result.returncode == 2
    assert "extract.toml: field json_schema: cannot read" in " ".join(result.stderr.split())
