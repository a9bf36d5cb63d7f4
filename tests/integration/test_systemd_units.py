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
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from worker.config import load_settings

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
EXAMPLES_DIR = SYSTEMD_DIR / "examples"
# Every shipped unit and example drop-in, so that a new one is checked without a change here.
UNITS = tuple(sorted(p.name for p in SYSTEMD_DIR.glob("*.service")))
DROP_INS = tuple(sorted(p.name for p in EXAMPLES_DIR.glob("*.conf")))
# The install location the units name; `verify` insists that it is executable.
INSTALLED_BINARY = "/opt/edge-worker/.venv/bin/edge-worker"
# The exposure score `systemd-analyze security` must not exceed for every unit as shipped,
# and with each example drop-in (network for PostgreSQL, devices and W+X memory for CUDA).
MAX_EXPOSURE = 1.0
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
    # A static user (install.sh creates it) and the submitters' group for the watch folders.
    assert _values(path, "DynamicUser") == []
    assert _values(path, "User") == ["edge-worker"]
    assert _values(path, "Group") == ["edge-worker"]
    assert _values(path, "SupplementaryGroups") == ["edge-worker-submit"]
    assert _values(path, "StateDirectory") == [f"edge-worker{instance}"]
    # Submitters pass through the data folder to inbox/ and outbox/; they cannot list it.
    assert _values(path, "StateDirectoryMode") == ["0711"]
    assert _values(path, "ExecStart") == [f"{INSTALLED_BINARY} run"]
    # `systemctl reload` (documented) needs it: SIGHUP reloads the pipelines.
    assert _values(path, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
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
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("drop_in", DROP_INS)
def test_security_exposure_with_example_drop_in(tmp_path: Path, unit: str, drop_in: str) -> None:
    _stage_unit(tmp_path, unit, [drop_in])
    score = _exposure(tmp_path, unit)
    print(f"systemd-analyze security: {_unit_name(unit)} + {drop_in}: {score}")
    assert score <= MAX_EXPOSURE


def test_every_shipped_unit_and_drop_in_is_checked() -> None:
    assert set(UNITS) == {"edge-worker.service", "edge-worker@.service"}
    assert {"postgresql.conf", "nvidia-gpu.conf", "metrics-port.conf"} <= set(DROP_INS)


def test_the_metrics_port_drop_in_opens_loopback_ipv4_only() -> None:
    path = EXAMPLES_DIR / "metrics-port.conf"
    assert _values(path, "PrivateNetwork") == ["no"]  # the host's loopback, reachable
    assert _values(path, "RestrictAddressFamilies") == ["AF_UNIX AF_INET"]
    assert _values(path, "IPAddressDeny") == ["any"]
    assert _values(path, "IPAddressAllow") == ["localhost"]
    assert _values(path, "Environment") == ["EDGE_WORKER_METRICS_PORT=9464"]


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_the_metrics_port_and_postgresql_drop_ins_verify_together(
    tmp_path: Path, unit: str
) -> None:
    _stage_unit(tmp_path, unit, ["metrics-port.conf", "postgresql.conf"])
    _verify(tmp_path, unit)
    assert _exposure(tmp_path, unit) <= MAX_EXPOSURE


# install.sh --------------------------------------------------------------------------

# Commands install.sh must never run under DESTDIR: each fake records its call and fails.
GUARDED = ("systemctl", "systemd-sysusers", "useradd", "groupadd", "usermod", "chown")


def _run_install(
    tmp_path: Path, destdir: Path, **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run the checkout's install.sh with DESTDIR (see `_run_kit_install`)."""
    return _run_kit_install(SYSTEMD_DIR / "install.sh", tmp_path, destdir, variables)


def _run_kit_install(
    script: Path, tmp_path: Path, destdir: Path, variables: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run the install.sh `script` with DESTDIR, with fakes first on PATH that record
    system changes."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir(exist_ok=True)
    marker = tmp_path / "system-changed"
    for name in GUARDED:
        fake = fake_bin / name
        fake.write_text(f'#!/bin/sh\necho "{name} $@" >> "{marker}"\nexit 1\n', encoding="utf-8")
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("WHEELHOUSE", "EXTRAS", "INSTANCES")},
        **variables,
        "DESTDIR": str(destdir),
        "PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    result = subprocess.run(
        ["sh", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    changed = marker.read_text() if marker.exists() else ""
    assert changed == "", f"install.sh changed the system although DESTDIR was set:\n{changed}"
    return result


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_into_destdir(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    result = _run_install(tmp_path, stage)
    assert result.returncode == 0, result.stderr
    # No wheelhouse beside a checkout: everything but the code, and a warning saying so.
    assert "no wheelhouse" in result.stderr
    assert not (stage / "opt/edge-worker/.venv").exists()

    units = stage / "etc/systemd/system"
    for unit in UNITS:
        installed = units / unit
        assert installed.read_text(encoding="utf-8") == (SYSTEMD_DIR / unit).read_text(
            encoding="utf-8"
        )
        assert _mode(installed) == 0o644
    sysusers = stage / "etc/sysusers.d/edge-worker.conf"
    assert sysusers.read_bytes() == (SYSTEMD_DIR / "edge-worker.sysusers").read_bytes()
    flat = " ".join(result.stdout.split())
    assert (
        "would create the system group edge-worker-submit and the system user edge-worker" in flat
    )

    conf = stage / "etc/edge-worker"
    config = conf / "config.toml"
    assert config.read_bytes() == (SYSTEMD_DIR / "config.example.toml").read_bytes()
    shipped = REPO / "pipelines"
    expected_pipelines = sorted(p.name for p in shipped.glob("*.toml"))
    assert expected_pipelines
    assert sorted(p.name for p in (conf / "pipelines").glob("*.toml")) == expected_pipelines
    # A pipeline's json_schema file comes along: without it the service exits 2.
    schemas = sorted(p.name for p in (shipped / "schemas").iterdir())
    assert schemas
    assert sorted(p.name for p in (conf / "pipelines/schemas").iterdir()) == schemas
    assert _mode(conf / "pipelines/schemas") == 0o755
    assert _mode(conf / "pipelines/schemas" / schemas[0]) == 0o644
    # No temporary files left behind.
    assert not [p for p in stage.rglob(".*") if p.name.endswith(".tmp")]

    # The data folders: the submitters' group writes inboxes and reads results.
    data = stage / "var/lib/edge-worker"
    assert _mode(data) == 0o711
    assert _mode(data / "models") == 0o750
    for kind in ("inbox", "outbox", "done", "failed"):
        assert _mode(data / kind) == 0o2750
        for name in expected_pipelines:
            want = 0o3770 if kind == "inbox" else 0o2750
            assert _mode(data / kind / name.removesuffix(".toml")) == want, (kind, name)
    assert "would chown edge-worker:edge-worker-submit /var/lib/edge-worker/inbox/summarize" in flat
    assert "would chown edge-worker:edge-worker /var/lib/edge-worker/models" in flat

    # A second run keeps what the administrator changed and still succeeds, and makes the
    # folders of a pipeline added since.
    config.write_text('model = "mine"\n', encoding="utf-8")
    (conf / "pipelines" / expected_pipelines[0]).unlink()
    shutil.copyfile(conf / "pipelines/summarize.toml", conf / "pipelines/digest.toml")
    again = _run_install(tmp_path, stage)
    assert again.returncode == 0, again.stderr
    assert config.read_text(encoding="utf-8") == 'model = "mine"\n'
    assert expected_pipelines[0] not in {p.name for p in (conf / "pipelines").iterdir()}
    assert _mode(data / "inbox/digest") == 0o3770


def test_install_instances_get_their_own_data_folders(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    result = _run_install(tmp_path, stage, INSTANCES="gemma big")
    assert result.returncode == 0, result.stderr
    for name in ("gemma", "big"):
        data = stage / "var/lib/edge-worker" / name
        assert _mode(data) == 0o711
        assert _mode(data / "inbox/summarize") == 0o3770
    assert not (stage / "var/lib/edge-worker/inbox").exists()


def test_install_with_prefix_rewrites_paths(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    result = _run_install(tmp_path, stage, PREFIX="/srv/edge-worker", SYSCONFDIR="/etc")
    assert result.returncode == 0, result.stderr
    text = (stage / "etc/systemd/system/edge-worker.service").read_text(encoding="utf-8")
    assert "ExecStart=/srv/edge-worker/.venv/bin/edge-worker run" in text
    assert "WorkingDirectory=/srv/edge-worker\n" in text
    assert "/opt/edge-worker" not in text
    assert (stage / "srv/edge-worker/docs/systemd.md").is_file()


def _wheel(path: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A minimal pure-Python wheel at `path` (its RECORD right) holding `files`."""
    import base64
    import hashlib
    import zipfile

    info = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for member, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{member},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def test_install_uses_only_its_checked_copy_of_the_kit(tmp_path: Path) -> None:
    """A kit its unpacker can still write: a pip wheel and a unit swapped after the
    SHA256SUMS check (at install.sh's first Python call) are never used; what was
    checked is what gets installed."""
    import ensurepip

    bundled = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    if not bundled:
        pytest.skip("this Python has no bundled pip wheel")
    kit = tmp_path / "kit"
    shutil.copytree(SYSTEMD_DIR, kit / "systemd")
    shutil.copytree(REPO / "pipelines", kit / "pipelines")
    wheels = kit / "wheels"
    wheels.mkdir()
    (pip_wheel,) = [shutil.copy(bundled[-1], wheels)]
    main = "def main():\n    print('edge-worker stand-in')\n"
    entry = "[console_scripts]\nedge-worker = edge_worker_stub:main\n"
    _wheel(
        wheels / "edge_worker-0.1.0-py3-none-any.whl",
        "edge-worker",
        "0.1.0",
        {"edge_worker_stub.py": main, "edge_worker-0.1.0.dist-info/entry_points.txt": entry},
    )
    files = sorted(p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file())
    sums = subprocess.run(
        ["sha256sum", "--", *files], cwd=kit, capture_output=True, text=True, check=True
    )
    (kit / "SHA256SUMS").write_text(sums.stdout)

    # The swap: a pip that runs code (as root, in production) and a unit that starts a
    # shell, put in place once the kit was checked, just before its wheels are used.
    ran = tmp_path / "evil-pip-ran"
    evil = tmp_path / "evil-pip.whl"
    code = f"open({str(ran)!r}, 'w').close()\n"
    _wheel(evil, "pip", "99.0", {"pip/__init__.py": "", "pip/__main__.py": code})
    unit = kit / "systemd/edge-worker.service"
    shipped_unit = unit.read_text(encoding="utf-8")
    swapped = tmp_path / "swapped"
    python = tmp_path / "python-that-swaps"
    python.write_text(
        "#!/bin/sh\n"
        f'if [ ! -e "{swapped}" ]; then\n'
        f'    : >"{swapped}"\n'
        f'    cp "{evil}" "{pip_wheel}"\n'
        f"    printf '[Service]\\nExecStart=/bin/sh\\n' >\"{unit}\"\n"
        "fi\n"
        f'exec "{sys.executable}" "$@"\n',
        encoding="utf-8",
    )
    python.chmod(0o755)

    stage = tmp_path / "stage"
    script = kit / "systemd/install.sh"
    result = _run_kit_install(script, tmp_path, stage, {"PYTHON": str(python)})
    assert swapped.exists(), "the swap never happened: the test tests nothing"
    assert not ran.exists(), "install.sh ran a pip wheel swapped after the check"
    assert result.returncode == 0, result.stderr
    installed = stage / "etc/systemd/system/edge-worker.service"
    assert installed.read_text(encoding="utf-8") == shipped_unit
    venv = stage / "opt/edge-worker/.venv"
    assert "edge-worker==0.1.0 --hash=sha256:" in (venv / ".requirements.txt").read_text()
    assert "checked" in result.stdout and "private copy" in result.stdout


def test_install_refuses_a_link_in_the_kit_it_copied(tmp_path: Path) -> None:
    """The copy keeps a link as a link, and the check of the copy refuses it."""
    kit = tmp_path / "kit"
    shutil.copytree(SYSTEMD_DIR, kit / "systemd")
    shutil.copytree(REPO / "pipelines", kit / "pipelines")
    (kit / "systemd/edge-worker.sysusers").unlink()
    (kit / "systemd/edge-worker.sysusers").symlink_to("/etc/passwd")
    stage = tmp_path / "stage"
    result = _run_kit_install(kit / "systemd/install.sh", tmp_path, stage, {})
    assert result.returncode != 0
    assert f"{kit}/systemd/edge-worker.sysusers is a symbolic link" in result.stderr
    assert not (stage / "etc/sysusers.d").exists()


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"PREFIX": "opt/edge-worker"}, "PREFIX must be an absolute path"),
        ({"STATEDIR": "/var/lib/edge worker"}, "STATEDIR may only contain"),
        ({"INSTANCES": "../etc"}, "instance names may only contain"),
        ({"EXTRAS": "postgres]; rm"}, "EXTRAS is a comma-separated list"),
    ],
)
def test_install_rejects_bad_variables(
    tmp_path: Path, variables: dict[str, str], message: str
) -> None:
    stage = tmp_path / "stage"
    result = _run_install(tmp_path, stage, **variables)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (stage / "etc/systemd/system/edge-worker.service").exists()


# The parsing sandbox under the system call filter -----------------------------------


def _syscalls(item: str, seen: set[str] | None = None) -> set[str]:
    """The system calls `item` names: itself, or every call of a `@group` (nested groups
    expanded), as this systemd's `syscall-filter` lists them."""
    if not item.startswith("@"):
        return {item}
    seen = set() if seen is None else seen
    if item in seen:
        return set()
    seen.add(item)
    result = _analyze(["syscall-filter", item], cwd=REPO)
    assert result.returncode == 0, result.stderr
    calls: set[str] = set()
    for line in result.stdout.splitlines()[1:]:
        name = line.strip()
        if name and not name.startswith("#"):
            calls |= _syscalls(name, seen)
    return calls


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_the_parsing_sandbox_may_lower_its_own_limits(unit: str) -> None:
    # worker/sandbox/child.py sets RLIMIT_AS and RLIMIT_CPU with resource.setrlimit, which
    # glibc makes with prlimit64 (`strace -e prlimit64` shows it). The unit's filter must
    # let that call through, and a denied call must fail with EPERM rather than kill the
    # child, so that the parent's own checks (CPU time and address space from /proc)
    # take over where a filter denies it.
    filters = _values(SYSTEMD_DIR / unit, "SystemCallFilter")
    assert filters and not filters[0].startswith("~"), "the first filter is an allow-list"
    allowed: set[str] = set()
    for number, value in enumerate(filters):
        denied = value.startswith("~")
        items: set[str] = set()
        for item in value.removeprefix("~").split():
            items |= _syscalls(item)
        if number == 0:
            allowed = items
        elif denied:
            allowed -= items
        else:
            allowed |= items
    assert "prlimit64" in allowed
    assert "setrlimit" not in allowed  # the premise: @resources is denied
    assert _values(SYSTEMD_DIR / unit, "SystemCallErrorNumber") == ["EPERM"]
