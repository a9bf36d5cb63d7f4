"""The systemd units in systemd/: commented, valid, tightly sandboxed, installable.

`systemd-analyze verify` and `systemd-analyze security --offline=yes` read unit
files without a running systemd, so these tests work in containers too; they
skip only where systemd-analyze is not installed at all.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from worker.config import load_settings

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
EXAMPLES_DIR = SYSTEMD_DIR / "examples"
UNITS = ("edge-worker.service", "edge-worker@.service")
DROP_INS = ("postgresql.conf", "nvidia-gpu.conf")
# The install location the units name; `verify` insists that it is executable.
INSTALLED_BINARY = "/opt/edge-worker/.venv/bin/edge-worker"
# The exposure score `systemd-analyze security` must not exceed for the units as shipped.
MAX_EXPOSURE = 2.0
# With an example drop-in (network for PostgreSQL, devices and W+X memory for CUDA).
MAX_EXPOSURE_WITH_DROP_IN = 2.5
TIMEOUT = 120

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not on PATH (systemd is not installed)"
)

# Lines `verify` may print on stderr that say nothing about our units. Empty on
# purpose: on Debian 12 (systemd 252) both units, with and without the example
# drop-ins, verify with no output at all. Add a pattern here only with a reason.
HARMLESS_STDERR: tuple[re.Pattern[str], ...] = ()

EXPOSURE_RE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")


def _analyze(args: Iterable[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    env = {**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [ANALYZE, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _stand_in_binary() -> str:
    """An executable that exists here, to put where the units name the installed daemon."""
    found = shutil.which("true")
    assert found is not None, "no `true` executable on PATH"
    return found


def _stage_unit(tmp_path: Path, unit: str, drop_ins: Iterable[str] = ()) -> Path:
    """Copy `unit` (and drop-ins into `<unit>.d/`) into tmp_path with ExecStart runnable."""
    text = (SYSTEMD_DIR / unit).read_text(encoding="utf-8")
    assert INSTALLED_BINARY in text
    staged = tmp_path / unit
    staged.write_text(text.replace(INSTALLED_BINARY, _stand_in_binary()), encoding="utf-8")
    drop_ins = list(drop_ins)
    if drop_ins:
        drop_in_dir = tmp_path / f"{unit}.d"
        drop_in_dir.mkdir()
        for name in drop_ins:
            shutil.copyfile(EXAMPLES_DIR / name, drop_in_dir / name)
    return staged


def _unit_name(unit: str) -> str:
    """The name to analyze: templates are checked as an instance, like systemctl would run."""
    return unit.replace("@.", "@gemma.")


def _verify(tmp_path: Path, unit: str) -> None:
    result = _analyze(["verify", "--man=no", f"./{_unit_name(unit)}"], cwd=tmp_path)
    noise = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not any(p.search(line) for p in HARMLESS_STDERR)
    ]
    assert result.returncode == 0, result.stderr
    assert noise == [], "systemd-analyze verify complained:\n" + "\n".join(noise)


def _exposure(tmp_path: Path, unit: str) -> float:
    result = _analyze(["security", "--offline=yes", f"./{_unit_name(unit)}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    match = EXPOSURE_RE.search(result.stdout)
    assert match is not None, f"no overall exposure line in:\n{result.stdout}\n{result.stderr}"
    assert match.group(1) == _unit_name(unit)
    return float(match.group(2))


def _directives(path: Path) -> list[tuple[int, str, str]]:
    """(line number, key, value) of every directive, in order."""
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";", "[")):
            continue
        key, sep, value = stripped.partition("=")
        assert sep, f"{path.name}:{number}: not a KEY=VALUE line: {line!r}"
        found.append((number, key.strip(), value.strip()))
    return found


def _values(path: Path, key: str) -> list[str]:
    return [value for _, k, value in _directives(path) if k == key]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the example file alone, not from EDGE_WORKER_* in the test environment."""
    for name in list(os.environ):
        if name.startswith("EDGE_WORKER_"):
            monkeypatch.delenv(name)


# Static checks (no systemd needed) -----------------------------------------------


@pytest.mark.parametrize(
    "path",
    [SYSTEMD_DIR / unit for unit in UNITS] + [EXAMPLES_DIR / name for name in DROP_INS],
    ids=lambda p: p.name,
)
def test_every_directive_has_a_comment_above_it(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, key, _ in _directives(path):
        above = lines[number - 2].strip() if number >= 2 else ""
        assert above.startswith("#"), f"{path.name}:{number}: {key}= has no comment above it"


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("unit", UNITS)
def test_unit_contract(unit: str) -> None:
    path = SYSTEMD_DIR / unit
    settings = load_settings(SYSTEMD_DIR / "config.example.toml")
    instance = "/%i" if "@" in unit else ""
    config = "/etc/edge-worker/%i.toml" if "@" in unit else "/etc/edge-worker/config.toml"

    assert _values(path, "Type") == ["notify"]
    assert _values(path, "NotifyAccess") == ["main"]
    assert _values(path, "DynamicUser") == ["yes"]
    assert _values(path, "StateDirectory") == [f"edge-worker{instance}"]
    assert _values(path, "ExecStart") == [f"{INSTALLED_BINARY} run"]
    assert _values(path, "WorkingDirectory") == ["/opt/edge-worker"]
    environment = _values(path, "Environment")
    assert f"EDGE_WORKER_DATA_DIR=/var/lib/edge-worker{instance}" in environment
    assert f"EDGE_WORKER_CONFIG={config}" in environment
    # systemd must not SIGKILL the daemon while it is still finishing jobs.
    (stop_timeout,) = _values(path, "TimeoutStopSec")
    assert float(stop_timeout) > settings.shutdown_timeout
    (watchdog,) = _values(path, "WatchdogSec")
    assert float(watchdog) > 0


@pytest.mark.usefixtures("clean_env")
def test_example_config_is_valid() -> None:
    settings = load_settings(SYSTEMD_DIR / "config.example.toml")
    assert settings.pipelines_dir == Path("/etc/edge-worker/pipelines")
    assert settings.model == "gemma-3-270m"
    assert settings.n_gpu_layers == 0
    assert settings.log_format == "json"


# systemd-analyze -------------------------------------------------------------------


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_cleanly(tmp_path: Path, unit: str) -> None:
    _stage_unit(tmp_path, unit)
    _verify(tmp_path, unit)


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("drop_in", DROP_INS)
def test_unit_with_example_drop_in_verifies_cleanly(
    tmp_path: Path, unit: str, drop_in: str
) -> None:
    _stage_unit(tmp_path, unit, [drop_in])
    _verify(tmp_path, unit)


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_is_low(tmp_path: Path, unit: str) -> None:
    _stage_unit(tmp_path, unit)
    score = _exposure(tmp_path, unit)
    print(f"systemd-analyze security: {_unit_name(unit)}: {score}")
    assert score <= MAX_EXPOSURE


@needs_analyze
@pytest.mark.parametrize("drop_in", DROP_INS)
def test_security_exposure_with_example_drop_in(tmp_path: Path, drop_in: str) -> None:
    unit = "edge-worker.service"
    _stage_unit(tmp_path, unit, [drop_in])
    score = _exposure(tmp_path, unit)
    print(f"systemd-analyze security: {unit} + {drop_in}: {score}")
    assert score <= MAX_EXPOSURE_WITH_DROP_IN


# install.sh --------------------------------------------------------------------------


def _run_install(
    tmp_path: Path, destdir: Path, **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run install.sh with DESTDIR, with a `systemctl` first on PATH that records any call."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir(exist_ok=True)
    marker = tmp_path / "systemctl-called"
    systemctl = fake_bin / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\nexit 1\n', encoding="utf-8")
    systemctl.chmod(systemctl.stat().st_mode | stat.S_IXUSR)
    env = {
        **os.environ,
        **variables,
        "DESTDIR": str(destdir),
        "PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    result = subprocess.run(
        ["sh", str(SYSTEMD_DIR / "install.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert not marker.exists(), "install.sh ran systemctl although DESTDIR was set"
    return result


def test_install_into_destdir(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    result = _run_install(tmp_path, stage)
    assert result.returncode == 0, result.stderr

    units = stage / "etc/systemd/system"
    for unit in UNITS:
        installed = units / unit
        assert installed.read_text(encoding="utf-8") == (SYSTEMD_DIR / unit).read_text(
            encoding="utf-8"
        )
        assert stat.S_IMODE(installed.stat().st_mode) == 0o644

    conf = stage / "etc/edge-worker"
    config = conf / "config.toml"
    assert config.read_bytes() == (SYSTEMD_DIR / "config.example.toml").read_bytes()
    expected_pipelines = sorted(p.name for p in (REPO / "pipelines").glob("*.toml"))
    assert expected_pipelines
    assert sorted(p.name for p in (conf / "pipelines").iterdir()) == expected_pipelines
    # No temporary files left behind.
    assert not [p for p in stage.rglob(".*") if p.name.endswith(".tmp")]

    # A second run keeps what the administrator changed and still succeeds.
    config.write_text('model = "mine"\n', encoding="utf-8")
    (conf / "pipelines" / expected_pipelines[0]).unlink()
    again = _run_install(tmp_path, stage)
    assert again.returncode == 0, again.stderr
    assert config.read_text(encoding="utf-8") == 'model = "mine"\n'
    assert expected_pipelines[0] not in {p.name for p in (conf / "pipelines").iterdir()}


def test_install_with_prefix_rewrites_paths(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    result = _run_install(tmp_path, stage, PREFIX="/srv/edge-worker", SYSCONFDIR="/etc")
    assert result.returncode == 0, result.stderr
    text = (stage / "etc/systemd/system/edge-worker.service").read_text(encoding="utf-8")
    assert "ExecStart=/srv/edge-worker/.venv/bin/edge-worker run" in text
    assert "WorkingDirectory=/srv/edge-worker\n" in text
    assert "/opt/edge-worker" not in text


def test_install_rejects_relative_prefix(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    result = _run_install(tmp_path, stage, PREFIX="opt/edge-worker")
    assert result.returncode != 0
    assert "PREFIX must be an absolute path" in result.stderr
    assert not (stage / "etc/systemd/system/edge-worker.service").exists()
