"""The baseline a user would run instead: llama.cpp's own `llama-server`, built from the
llama.cpp that the pinned llama-cpp-python vendors, fed the same prompts as concurrent
`/completion` requests with `cache_prompt`.

The binaries are built once into ~/.cache/edge-worker/llama-server/<version>/ (never
into the repository) from llama-cpp-python's source distribution, which pip takes from
its cache or the package registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-worker"
TARGETS = ("llama-server", "llama-batched-bench", "llama-bench")


def llama_cpp_version() -> str:
    return version("llama_cpp_python")


def build_dir() -> Path:
    """Where the binaries of this llama-cpp-python version live (CMAKE_ARGS in the name)."""
    flags = os.environ.get("CMAKE_ARGS", "").strip()
    suffix = "" if not flags else "-" + hashlib.sha256(flags.encode()).hexdigest()[:8]
    return CACHE / "llama-server" / f"{llama_cpp_version()}{suffix}"


def server_binary() -> Path:
    """llama-server, built on first use (a few minutes on 2 cores)."""
    return tool_binary("llama-server")


def tool_binary(name: str) -> Path:
    """One of TARGETS, built (all of them at once) on first use (minutes on 2 cores)."""
    if any(not (build_dir() / "bin" / target).is_file() for target in TARGETS):
        build(build_dir())
    return build_dir() / "bin" / name


def build(target: Path) -> None:
    """Download llama-cpp-python's sdist and build llama-server from its vendored llama.cpp."""
    with tempfile.TemporaryDirectory(prefix="ew-llama-src-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={llama_cpp_version()}",
                "-d",
                str(work),
            ],
            check=True,
        )
        (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        (source,) = work.glob("llama_cpp_python-*/vendor/llama.cpp")
        build_tree = work / "build"
        extra = os.environ.get("CMAKE_ARGS", "").split()
        subprocess.run(
            [
                "cmake",
                "-S",
                str(source),
                "-B",
                str(build_tree),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF",
                "-DBUILD_SHARED_LIBS=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_SERVER=ON",
                *extra,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        jobs = str(os.cpu_count() or 2)
        subprocess.run(
            ["cmake", "--build", str(build_tree), "-j", jobs, "--target", *TARGETS],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (target / "bin").mkdir(parents=True, exist_ok=True)
        for name in TARGETS:
            shutil.copy2(build_tree / "bin" / name, target / "bin" / name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class ServerOptions:
    """How the server runs: the daemon's parallel, threads and context per slot."""

    parallel: int
    threads: int
    n_ctx: int  # per slot
    extra: Sequence[str] = ()
    # llama-server's default: repacked weights (extra buffer types). `--no-repack` only
    # where they crash (server_repack_works).
    repack: bool = True


@contextmanager
def running_server(
    model: Path, options: ServerOptions, exits: list[int | None] | None = None
) -> Iterator[tuple[str, int]]:
    """A llama-server on 127.0.0.1; yields (base URL, pid). `exits` gets its exit code
    (negative: the signal that ended it) if it ended before it was stopped."""
    port = free_port()
    command = [
        str(server_binary()),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(options.parallel),
        "-c",
        str(options.parallel * options.n_ctx),
        "-t",
        str(options.threads),
        "-tb",
        str(options.threads),
        *([] if options.repack else ["--no-repack"]),
        "--no-webui",
        *options.extra,
    ]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(base, proc, log)
            yield base, proc.pid
        except BaseException:
            time.sleep(0.5)  # a server that crashed mid-request: let it finish dying
            if exits is not None:
                exits.append(proc.poll())
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            raise RuntimeError("llama-server did not start:\n" + log.read().decode()[-3000:])
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)


@dataclass
class Answered:
    """One request's figures."""

    seconds: float
    prompt_tokens: int
    generated_tokens: int
    text: str


def complete(base: str, body: dict[str, Any]) -> Answered:
    """POST /completion and wait for the whole answer."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/completion", data=data, headers={"Content-Type": "application/json"}
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=3600) as response:
        answer = json.loads(response.read())
    return Answered(
        time.monotonic() - started,
        int(answer.get("tokens_evaluated", 0)),
        int(answer.get("tokens_predicted", 0)),
        str(answer.get("content", "")),
    )


def in_parallel(count: int, workers: int, work: Callable[[int], T]) -> tuple[float, list[T | None]]:
    """`work(i)` for every i < count, by `workers` threads that each take the next i as
    they finish (as clients or slots do); (seconds, results in order)."""
    results: list[T | None] = [None] * count
    lock = threading.Lock()
    next_index = [0]

    def worker() -> None:
        while True:
            with lock:
                index = next_index[0]
                next_index[0] += 1
            if index >= count:
                return
            results[index] = work(index)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started, results


def run_requests(
    base: str, bodies: Sequence[dict[str, Any]], concurrency: int
) -> tuple[float, list[Answered]]:
    """Every body posted by `concurrency` clients at once; (seconds, answers in order)."""
    seconds, answers = in_parallel(len(bodies), concurrency, lambda i: complete(base, bodies[i]))
    done = [a for a in answers if a is not None]
    if len(done) != len(bodies):
        raise RuntimeError(f"{len(bodies) - len(done)} requests got no answer")
    return seconds, done


def server_repack_works(model: Path, options: ServerOptions) -> tuple[bool, str]:
    """Can llama-server run with its defaults here? One start and one short request with
    repacked weights; (False, why) if the server dies or fails (on some AMX machines
    it dies at the first decode: SIGILL, or SIGSEGV from a general protection fault)."""
    exits: list[int | None] = []
    try:
        with running_server(model, replace(options, repack=True), exits) as (base, _pid):
            complete(base, {"prompt": "The quick brown fox " * 20, "n_predict": 8})
    except (RuntimeError, OSError, urllib.error.URLError):
        code = exits[-1] if exits else None
        if code is not None and code < 0:
            why = f"died with {signal.Signals(-code).name}"
        else:
            why = f"failed (exit {code})"
        return False, f"llama-server with repacked weights {why}"
    return True, "llama-server's defaults (repacked weights) work here"
