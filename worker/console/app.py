"""The console's routes: pages rendered from the cached snapshot, static files, and (only
with `console_actions`) the login and the action POSTs.

Every page reads `snapshot.current()`; none queries the database. In read-only mode no
action is rendered and every request other than GET/HEAD answers 403.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from worker.console import views
from worker.console.actions import ActionError, Actions
from worker.console.files import input_path, output_path, preview
from worker.console.security import (
    HEADERS,
    Session,
    Sessions,
    csrf_ok,
    same_origin,
    session_cookie,
)
from worker.ops.health import Health
from worker.ops.httpd import Request, Response
from worker.ops.snapshot import Snapshot
from worker.pipelines.schedule_time import cron_trigger, fire_after
from worker.pipelines.spec import Pipeline

HTML = "text/html; charset=utf-8"
STATIC = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
PAGES = (
    ("/", "Overview"),
    ("/running", "Running"),
    ("/failures", "Failures"),
    ("/batches", "Batches"),
    ("/schedules", "Schedules"),
    ("/health", "Health"),
)
JOB_PATH = re.compile(r"^/jobs/([0-9]{1,12})$")


@dataclass(frozen=True)
class ConsoleSources:
    """What the console reads, all in memory: the snapshot, health, the pipelines in
    effect, the paused set, and per-job progress (tokens so far) where known."""

    snapshot: Callable[[], Snapshot]
    want_job: Callable[[int], None]
    health: Callable[[], Health]
    pipelines: Callable[[], Mapping[str, Pipeline]]
    paused: Callable[[], Collection[str]]
    progress: Callable[[], Mapping[int, int]] = dict


class Console:
    """A request handler for the HTTP port."""

    def __init__(
        self,
        sources: ConsoleSources,
        data_dir: Path,
        max_input_bytes: int,
        actions: Actions | None = None,
        sessions: Sessions | None = None,
        retry_limit: int = 100,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sources = sources
        self.data_dir = data_dir
        self.max_input_bytes = max_input_bytes
        self.actions = actions if sessions is not None else None
        self.sessions = sessions if actions is not None else None
        self.retry_limit = retry_limit
        self.clock = clock
        self.env = Environment(
            loader=PackageLoader("worker.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["age"] = views.age_text
        self.env.filters["size"] = views.size_text
        self.env.filters["when"] = _when
        self.env.globals["input_label"] = views.input_label
        self._static = {
            name: (files("worker.console") / "static" / name).read_bytes() for name in STATIC
        }

    # Routing ------------------------------------------------------------------------
    def __call__(self, request: Request) -> Response:
        if request.path.startswith("/static/"):
            return self._static_file(request)
        if request.method not in ("GET", "HEAD"):
            return self._post(request)
        session = self.sessions.of(request) if self.sessions else None
        path = request.path
        pages: dict[str, Callable[[Request, Session | None], Response]] = {
            "/": self.overview,
            "/running": self.running,
            "/failures": self.failures,
            "/batches": self.batches,
            "/schedules": self.schedules,
            "/health": self.health,
        }
        if path in pages:
            return pages[path](request, session)
        match = JOB_PATH.match(path)
        if match:
            return self.job(request, session, int(match.group(1)))
        if path == "/login" and self.sessions is not None:
            return self._render("login.html", request, session, error=None)
        return self._page(404, "not_found.html", request, session)

    def _static_file(self, request: Request) -> Response:
        name = request.path.removeprefix("/static/")
        if name not in STATIC or request.method not in ("GET", "HEAD"):
            return Response(404, b"not found\n")
        headers = [h for h in HEADERS if h[0] != "Cache-Control"]
        headers.append(("Cache-Control", "max-age=300"))
        return Response(200, self._static[name], STATIC[name], headers)

    # Pages ------------------------------------------------------------------------
    def overview(self, request: Request, session: Session | None) -> Response:
        snap = self.sources.snapshot()
        now = self.clock()
        rows = views.pipeline_rows(
            snap.table, list(self.sources.pipelines()), set(self.sources.paused()), now
        )
        chart = views.throughput_chart(snap.table.per_minute if snap.table else ())
        return self._render(
            "overview.html",
            request,
            session,
            rows=rows,
            totals=views.totals(rows),
            statuses=views.OVERVIEW_STATUSES,
            chart=chart,
            models=snap.models,
        )

    def running(self, request: Request, session: Session | None) -> Response:
        snap = self.sources.snapshot()
        now = self.clock()
        rows = snap.table.running if snap.table else ()
        progress = self.sources.progress()
        items = [
            (
                job,
                (now - job.started_at).total_seconds() if job.started_at else None,
                progress.get(job.id),
            )
            for job in rows
        ]
        return self._render("running.html", request, session, items=items)

    def failures(self, request: Request, session: Session | None) -> Response:
        snap = self.sources.snapshot()
        pipeline = request.arg("pipeline")
        status = request.arg("status")
        if status not in ("", *views.FAILURE_FILTERS):
            status = ""
        rows = views.failures(snap.table, pipeline, status)
        names = sorted({j.pipeline for j in (snap.table.failures if snap.table else ())})
        return self._render(
            "failures.html",
            request,
            session,
            rows=rows,
            pipeline=pipeline,
            status=status,
            pipelines=names,
            statuses=views.FAILURE_FILTERS,
            retry_limit=self.retry_limit,
        )

    def job(self, request: Request, session: Session | None, job_id: int) -> Response:
        snap = self.sources.snapshot()
        job = views.find_job(snap.table, job_id)
        if job is None or job_id not in (snap.table.details if snap.table else {}):
            self.sources.want_job(job_id)  # read with its texts at the next refresh
        if job is None:
            return self._page(404, "job_missing.html", request, session, job_id=job_id)
        in_file = preview(
            input_path(self.data_dir, job), job.archived_path or None, self.max_input_bytes
        )
        out_file = preview(
            output_path(self.data_dir, job), job.output_path or None, self.max_input_bytes
        )
        return self._render(
            "job.html",
            request,
            session,
            job=job,
            steps=views.timeline(job),
            input_file=in_file,
            output_file=out_file,
            has_texts=job.input_preview is not None or job.result_preview is not None,
        )

    def batches(self, request: Request, session: Session | None) -> Response:
        snap = self.sources.snapshot()
        items = views.batch_views(snap.table.batches if snap.table else ())
        return self._render("batches.html", request, session, items=items)

    def schedules(self, request: Request, session: Session | None) -> Response:
        snap = self.sources.snapshot()
        now = self.clock()
        fires = snap.table.last_fires if snap.table else {}
        items = []
        for name, pipeline in sorted(self.sources.pipelines().items()):
            if pipeline.schedule is None:
                continue
            try:
                upcoming = fire_after(cron_trigger(pipeline.schedule, pipeline.timezone), now)
            except ValueError:
                upcoming = None
            items.append((pipeline, upcoming, fires.get(name)))
        return self._render("schedules.html", request, session, items=items)

    def health(self, request: Request, session: Session | None) -> Response:
        snap = self.sources.snapshot()
        try:
            state: Health | None = self.sources.health()
        except Exception:
            state = None
        return self._render(
            "health.html",
            request,
            session,
            state=state,
            snapshot_age=snap.age(self.clock()),
            workers=snap.table.workers if snap.table else (),
        )

    # Actions ----------------------------------------------------------------------
    def _post(self, request: Request) -> Response:
        if self.actions is None or self.sessions is None:
            return self._forbidden(request, "the console is read-only (console_actions = false)")
        if not same_origin(request):
            return self._forbidden(request, "cross-origin request refused")
        form = request.form()
        if request.path == "/login":
            return self._login(request, form)
        session = self.sessions.of(request)
        if session is None:
            return self._forbidden(request, "log in first")
        if not csrf_ok(session, form.get("csrf", "")):
            return self._forbidden(request, "missing or wrong CSRF token")
        if request.path == "/logout":
            self.sessions.close(session.id)
            return _redirect("/", session_cookie(None))
        try:
            message = self.actions.run(request.path, form, session.who, request.peer)
        except ActionError as exc:
            return self._page(exc.status, "message.html", request, session, message=str(exc))
        return _redirect(_safe_next(form.get("next", "/"), message))

    def _login(self, request: Request, form: dict[str, str]) -> Response:
        assert self.sessions is not None
        assert self.actions is not None
        who = re.sub(r"[^\w .@-]", "", form.get("who", ""))[:64].strip() or "operator"
        if not self.sessions.check_token(form.get("token", "")):
            self.actions.log_refused("login", who, request.peer, "wrong token")
            return self._page(403, "login.html", request, None, error="wrong token")
        session = self.sessions.open(who)
        self.actions.log_login(who, request.peer)
        return _redirect("/", session_cookie(session))

    def _forbidden(self, request: Request, why: str) -> Response:
        if self.actions is not None:
            self.actions.log_refused(request.path, "", request.peer, why)
        return self._page(403, "message.html", request, None, message=f"Forbidden: {why}")

    # Rendering --------------------------------------------------------------------
    def _page(
        self, status: int, template: str, request: Request, session: Session | None, **data: Any
    ) -> Response:
        response = self._render(template, request, session, **data)
        response.status = status
        return response

    def _render(
        self, template: str, request: Request, session: Session | None, **data: Any
    ) -> Response:
        snap = self.sources.snapshot()
        now = self.clock()
        context = {
            "pages": PAGES,
            "path": request.path,
            "target": request.target if request.target.startswith("/") else "/",
            "actions": self.actions is not None,
            "session": session,
            "csrf": session.csrf if session else "",
            "now": now,
            "snapshot": snap,
            "snapshot_age": snap.age(now),
            "refresh": max(2, round(snap.refresh_seconds)),
            "notice": request.arg("done")[:200],
            **data,
        }
        body = self.env.get_template(template).render(**context).encode("utf-8")
        return Response(200, body, HTML, list(HEADERS))


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _safe_next(target: str, message: str) -> str:
    """Back to a page of this console (never `//elsewhere`), with a notice."""
    from urllib.parse import urlencode, urlsplit

    parts = urlsplit(target)
    path = parts.path if parts.path.startswith("/") and not parts.path.startswith("//") else "/"
    if parts.scheme or parts.netloc:
        path = "/"
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("done="))
    notice = urlencode({"done": message})
    return f"{path}?{query + '&' if query else ''}{notice}"


def _redirect(location: str, set_cookie: str | None = None) -> Response:
    headers = [*HEADERS, ("Location", location)]
    if set_cookie is not None:
        headers.append(("Set-Cookie", set_cookie))
    return Response(303, b"", HTML, headers)
