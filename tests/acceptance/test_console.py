"""The console of a real daemon, driven in a real headless browser (Debian's chromium and
chromium-driver through Selenium), and the HTTP port under idle and slow clients.

One data folder for the module; a read-only daemon first, then one with actions on (the
token from a file). Screenshots of every view go to the test's output folder; with
EDGE_WORKER_UPDATE_SCREENSHOT=1 the overview is also copied to docs/console.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import TINY_PIPELINE
from tests.acceptance.daemon import Daemon, daemon_env, db_rows, wait_until_final

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        bool(os.environ.get("EDGE_WORKER_TEST_OFFLINE")),
        reason="the loopback port needs an interface; make test runs this",
    ),
]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
TOKEN = "console-test-token-0123456789abcdef"
XSS_NAME = "<script>alert(1)</script>.txt"
XSS_FILE = "<img src=x onerror=alert(2)>.txt"
REPO = Path(__file__).resolve().parents[2]
BATCH_PIPELINE = """
description = "tests: OpenAI Batch files"
reader = "openai-batch"
[generation]
max_tokens = 2
temperature = 0.0
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http(
    port: int, path: str, data: bytes | None = None, **headers: str
) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def metric(port: int, name: str) -> float:
    _, body, _ = http(port, "/metrics")
    match = re.search(rf"^{name} ([0-9.e+]+)$", body, re.MULTILINE)
    assert match, name
    return float(match.group(1))


@dataclass
class World:
    data_dir: Path
    env: dict[str, str]
    out: Path
    port: int
    daemon: Daemon | None = None


def _insert(data_dir: Path, sql: str, *params: Any) -> int:
    with sqlite3.connect(data_dir / "jobs.db", timeout=30) as conn:
        cursor = conn.execute(sql, params)
        return int(cursor.lastrowid or 0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[World]:
    base = tmp_path_factory.mktemp("console")
    pipelines = base / "pipelines"
    pipelines.mkdir()
    (pipelines / "tiny.toml").write_text(TINY_PIPELINE)
    (pipelines / "batch.toml").write_text(BATCH_PIPELINE)
    data_dir = base / "data"
    port = free_port()
    env = daemon_env(
        data_dir,
        gguf.parent,
        pipelines_dir=pipelines,
        metrics_port=port,
        console="true",
        snapshot_interval="0.5",
        unknown_pipeline_grace="0",
        max_attempts="1",
        http_timeout="2",
    )
    found = World(data_dir, env, base / "screenshots", port)
    found.out.mkdir()
    yield found
    if found.daemon is not None:
        found.daemon.kill()


def start(world: World, name: str, **extra: str) -> Daemon:
    if world.daemon is not None:
        assert world.daemon.stop() == 0
    env = {**world.env, **{f"EDGE_WORKER_{k.upper()}": v for k, v in extra.items()}}
    world.daemon = Daemon(env, world.out.parent / f"{name}.log")
    world.daemon.wait_for("daemon.ready")
    return world.daemon


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def visit(driver: Any, world: World, path: str, shot: str | None = None) -> None:
    driver.get(f"http://127.0.0.1:{world.port}{path}")
    # The page reloads itself every few seconds; the test reads it still.
    driver.execute_script("window.localStorage.setItem('edge-worker-autorefresh', 'off')")
    if shot:
        driver.save_screenshot(str(world.out / f"{shot}.png"))


def absent(driver: Any, css: str) -> bool:
    """No element matches `css` (asked without the implicit wait)."""
    from selenium.webdriver.common.by import By

    driver.implicitly_wait(0)
    try:
        return not driver.find_elements(By.CSS_SELECTOR, css)
    finally:
        driver.implicitly_wait(5)


def wait_snapshot(world: World) -> None:
    """Two refreshes from now: what the table holds now is in the snapshot."""
    first = metric(world.port, "edge_worker_snapshot_refreshes")
    deadline = time.monotonic() + 20
    while metric(world.port, "edge_worker_snapshot_refreshes") < first + 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def overview_counts(driver: Any) -> dict[tuple[str, str], int]:
    from selenium.webdriver.common.by import By

    found = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#pipelines tbody tr[data-pipeline]"):
        pipeline = row.get_attribute("data-pipeline")
        for cell in row.find_elements(By.CSS_SELECTOR, "td[data-status]"):
            found[(pipeline, cell.get_attribute("data-status"))] = int(cell.text)
    return found


def test_read_only_console_in_a_browser(world: World, browser: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    daemon = start(world, "read-only")
    data_dir = world.data_dir
    for question in ("Name a colour.", "Is water wet?", "Say hi."):
        _insert(data_dir, "INSERT INTO jobs (pipeline, input_text) VALUES ('tiny', ?)", question)
    null_row = _insert(data_dir, "INSERT INTO jobs (pipeline, input_text) VALUES ('tiny', NULL)")
    _insert(data_dir, "INSERT INTO jobs (pipeline, input_text) VALUES ('nope', 'x')")
    hostile = _insert(
        data_dir,
        "INSERT INTO jobs (pipeline, source, source_path) VALUES ('tiny', 'file', ?)",
        f"tiny/{XSS_NAME}",
    )
    (data_dir / "inbox" / "tiny" / XSS_FILE).write_text("What is two plus two?\n")
    batch = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "gemma-3-270m", "prompt": f"{i} + {i} =", "max_tokens": 2},
        }
        for i in range(3)
    ]
    (data_dir / "inbox" / "batch" / "three.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in batch)
    )
    wait_until_final(data_dir, count=6 + 1 + 1 + 3)
    wait_snapshot(world)

    visit(browser, world, "/", "overview")
    table = {
        (p, s): n
        for p, s, n in db_rows(
            data_dir, "SELECT pipeline, status, count(*) FROM jobs GROUP BY pipeline, status"
        )
    }
    shown = overview_counts(browser)
    assert shown, browser.page_source
    for (pipeline, status), count in shown.items():
        assert count == table.get((pipeline, status), 0), (pipeline, status, table)
    assert shown[("tiny", "failed")] == 2 and shown[("nope", "failed")] == 1
    assert browser.find_elements(By.CSS_SELECTOR, "figure.chart polyline")  # throughput
    # Read-only: no action anywhere, no login.
    for path, shot in (
        ("/running", "running"),
        ("/failures", "failures"),
        ("/batches", "batches"),
        ("/schedules", "schedules"),
        ("/health", "health"),
        (f"/jobs/{null_row}", "job-failed"),
    ):
        visit(browser, world, path, shot)
        assert absent(browser, "form[method=post]"), path
        assert "log in" not in browser.page_source
    visit(browser, world, f"/jobs/{null_row}")
    assert "input_text is NULL" in browser.find_element(By.ID, "job-error").text
    visit(browser, world, "/batches")
    assert "three.jsonl" in browser.find_element(By.ID, "batches").text

    # A hostile name is shown as text, never run as markup.
    visit(browser, world, f"/jobs/{hostile}", "job-hostile")
    assert browser.find_element(By.ID, "input-name").text == f"tiny/{XSS_NAME}"
    scripts = browser.find_elements(By.TAG_NAME, "script")
    assert [s.get_attribute("src").rsplit("/", 1)[-1] for s in scripts] == ["console.js"]
    visit(browser, world, "/failures?pipeline=tiny&status=failed", "failures-filtered")
    assert XSS_NAME in browser.find_element(By.ID, "failures").text
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    file_job = db_rows(data_dir, "SELECT id FROM jobs WHERE source_path = ?", f"tiny/{XSS_FILE}")
    visit(browser, world, f"/jobs/{file_job[0][0]}")
    assert browser.find_element(By.ID, "input-name").text == f"tiny/{XSS_FILE}"
    assert absent(browser, "main img")

    # A forged POST gets 403 and changes nothing.
    origin = f"http://127.0.0.1:{world.port}"
    for path in ("/actions/retry", "/actions/cancel", "/actions/pause", "/login"):
        code, _, _ = http(world.port, path, f"job_id={null_row}".encode(), Origin=origin)
        assert code == 403, path
    assert db_rows(data_dir, "SELECT status FROM jobs WHERE id = ?", null_row) == [("failed",)]
    assert daemon.proc.poll() is None


def test_idle_connections_a_slow_client_and_no_query_per_page_view(world: World) -> None:
    port = world.port
    assert world.daemon is not None and world.daemon.proc.poll() is None
    before = metric(port, "edge_worker_port_db_queries")
    views = ("/", "/running", "/failures", "/batches", "/schedules", "/health", "/jobs/1")
    for _ in range(5):
        for path in views:
            assert http(port, path)[0] == 200, path
    assert metric(port, "edge_worker_port_db_queries") == before == 0

    idle: list[socket.socket] = []
    latencies = []
    try:
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        idle.append(slow)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        for _ in range(5):
            started = time.monotonic()
            code, body, _ = http(port, "/healthz")
            latencies.append(time.monotonic() - started)
            assert code == 200 and json.loads(body)["ready"] is True
            slow.sendall(b"a")  # a trickle of bytes does not extend its deadline
            time.sleep(0.2)
    finally:
        for sock in idle:
            sock.close()
    (world.out / "healthz-latency.json").write_text(json.dumps(latencies))
    assert max(latencies) < 1.0, latencies


def act(browser: Any, button: Any) -> str:
    """Click an action's button; the notice of the page it leads to."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    button.click()
    notice = WebDriverWait(browser, 10).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".notice"))
    )
    return str(notice.text)


def login(browser: Any, world: World) -> None:
    from selenium.webdriver.common.by import By

    visit(browser, world, "/login", "login")
    browser.find_element(By.NAME, "who").send_keys("ann")
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    browser.find_element(By.CSS_SELECTOR, "form[action='/logout']")


def test_actions_with_the_token_in_a_browser(world: World, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    token_file = world.out.parent / "console.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    daemon = start(world, "actions", console_actions="true", console_token_file=str(token_file))
    data_dir = world.data_dir
    failed = db_rows(
        data_dir, "SELECT id, finished_at FROM jobs WHERE input_text IS NULL AND source = 'table'"
    )[0]
    login(browser, world)

    # Retry a failed job from its page.
    visit(browser, world, f"/jobs/{failed[0]}")
    assert "queued again" in act(browser, browser.find_element(By.ID, f"retry-{failed[0]}"))
    retried = daemon.wait_for("console.action")
    assert retried["who"] == "ann" and retried["action"] == "retry"
    deadline = time.monotonic() + 60
    while db_rows(data_dir, "SELECT finished_at FROM jobs WHERE id = ?", failed[0])[0][0] in (
        failed[1],
        None,
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)

    # Pause tiny's intake; a new row stays queued; cancel it; resume.
    wait_snapshot(world)
    visit(browser, world, "/")
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-pipeline=tiny]")
    assert "paused" in act(browser, row.find_element(By.CSS_SELECTOR, "button.action"))
    assert (data_dir / "paused" / "tiny").exists()
    held = _insert(data_dir, "INSERT INTO jobs (pipeline, input_text) VALUES ('tiny', 'Hold.')")
    time.sleep(2)
    assert db_rows(data_dir, "SELECT status FROM jobs WHERE id = ?", held) == [("queued",)]
    wait_snapshot(world)
    visit(browser, world, f"/jobs/{held}", "job-actions")
    assert "cancelled" in act(browser, browser.find_element(By.ID, f"cancel-{held}"))
    assert db_rows(data_dir, "SELECT status FROM jobs WHERE id = ?", held) == [("cancelled",)]
    visit(browser, world, "/")
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-pipeline=tiny]")
    assert "resumed" in act(browser, row.find_element(By.CSS_SELECTOR, "button.action"))
    assert not (data_dir / "paused" / "tiny").exists()

    # Without the CSRF token, or from another origin: 403, nothing changes.
    session = browser.get_cookie("ew_console")["value"]
    csrf = re.search(r'name="csrf" value="([^"]+)"', browser.page_source)
    assert csrf
    cookie = f"ew_console={session}"
    origin = f"http://127.0.0.1:{world.port}"
    target = f"job_id={failed[0]}".encode()
    code, _, _ = http(world.port, "/actions/cancel", target, Cookie=cookie, Origin=origin)
    assert code == 403
    with_csrf = target + f"&csrf={csrf.group(1)}".encode()
    evil = "http://evil.example"
    assert http(world.port, "/actions/cancel", with_csrf, Cookie=cookie, Origin=evil)[0] == 403
    assert http(world.port, "/actions/cancel", with_csrf, Origin=origin)[0] == 403  # no session
    refused = [e for e in daemon.events() if e.get("event") == "console.refused"]
    assert len(refused) >= 3
    visit(browser, world, "/failures", "failures-actions")
    if os.environ.get("EDGE_WORKER_UPDATE_SCREENSHOT"):
        visit(browser, world, "/")
        browser.save_screenshot(str(REPO / "docs" / "console.png"))
    assert daemon.stop() == 0
    world.daemon = None
