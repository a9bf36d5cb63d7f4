"""Hostile data on the operator's side: job data is never Rich markup, the new settings
parse, and the submitter role's SQL quotes whatever name it is given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from rich.console import Console

from worker.cli.grants import GrantError, grant_statements, quote_identifier
from worker.config import ConfigError, load_settings
from worker.ops.status import Snapshot, render
from worker.queue.models import Worker
from worker.queue.views import RunningJob, Throughput

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
# Unbalanced closing tags make Rich raise MarkupError; balanced ones would hide text.
HOSTILE = ("[/x]", "notes[draft].txt", "[bold red]loud[/bold red]", "[link=file:///etc]x")


def printed(renderable: object) -> str:
    out = StringIO()
    Console(file=out, width=400, color_system=None).print(renderable)
    return out.getvalue()


def test_status_shows_pipeline_and_daemon_names_as_they_are() -> None:
    beat = NOW - timedelta(seconds=3)
    snapshot = Snapshot(
        now=NOW,
        database="sqlite:///x.db",
        counts={(name, "queued"): 1 for name in HOSTILE},
        throughput=Throughput(60.0, jobs=0, completion_tokens=0),
        running=[RunningJob(7, HOSTILE[0], HOSTILE[1], 1, NOW)],
        workers=[
            Worker(
                id=HOSTILE[2],
                host=HOSTILE[3],
                pid=1,
                model="[/m]",
                slots=1,
                state="running",
                started_at=beat,
                heartbeat_at=beat,
            )
        ],
    )
    text = printed(render(snapshot, lease_seconds=60))
    for name in (*HOSTILE, "[/m]"):
        assert name in text


def test_new_settings_and_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.max_records_per_file == 10_000
    assert settings.job_timeout == 3600.0
    assert settings.output_mode == 0o640
    monkeypatch.setenv("EDGE_WORKER_OUTPUT_MODE", "0644")
    monkeypatch.setenv("EDGE_WORKER_JOB_TIMEOUT", "0")
    settings = load_settings()
    assert settings.output_mode == 0o644 and settings.job_timeout == 0


@pytest.mark.parametrize("value", ["0400", "0999", "1777", "rw-r-----"])
def test_an_output_mode_the_daemon_cannot_use_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("EDGE_WORKER_OUTPUT_MODE", value)
    with pytest.raises(ConfigError, match="EDGE_WORKER_OUTPUT_MODE"):
        load_settings()


def test_role_names_are_quoted_whatever_they_hold() -> None:
    assert quote_identifier("submitter") == '"submitter"'
    assert quote_identifier('x"; DROP TABLE jobs; --') == '"x""; DROP TABLE jobs; --"'
    for bad in ("", "a\x00b", "r" * 64):
        with pytest.raises(GrantError):
            quote_identifier(bad)


def test_grant_statements_revoke_first_and_grant_only_the_submitter_columns() -> None:
    statements = grant_statements("app", "public", "public.jobs_id_seq")
    assert statements[0] == 'REVOKE ALL ON TABLE "public".jobs FROM "app"'
    insert = next(s for s in statements if s.startswith("GRANT INSERT"))
    assert "(pipeline, input_text, priority, idempotency_key)" in insert
    select = next(s for s in statements if s.startswith("GRANT SELECT"))
    assert "source_path" not in select and "input_text" not in select
    assert not any(word in " ".join(statements) for word in ("UPDATE", "DELETE"))
    assert statements[-1] == 'GRANT USAGE ON SEQUENCE public.jobs_id_seq TO "app"'
    # The claim locks of capped pipelines are the daemon's alone: revoked, never granted.
    guarded = grant_statements("app", "public", None, ["pipeline_claim_locks"])
    locks = [s for s in guarded if "pipeline_claim_locks" in s]
    assert locks == ['REVOKE ALL ON TABLE "public"."pipeline_claim_locks" FROM "app"']
    assert all("jobs" in s for s in guarded if s.startswith("GRANT ") and " TABLE " in s)
