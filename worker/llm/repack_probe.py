"""Can this machine run llama.cpp's repacked weights? Asked once, in a child process.

llama.cpp's extra buffer types (weights repacked for wider kernels, AMX tiles) are what
its own tools use by default, and they are faster on many CPUs. Some virtual machines
report AMX and then fault on the first AMX instruction (SIGILL), which kills the whole
process. So before the engine loads a model with them, a short-lived child loads the same
model with them and decodes a few tokens; if it dies of a signal, or fails in any other
way, the engine loads the model without them. The answer is kept per model file for the
life of the process, and on disk beside the model (`.<name>.repack-probe.json`), keyed
by the file's size and mtime and by the CPU features and version of llama.cpp, so a
restart (or a crash loop) does not load the model twice again. Only a clean answer is
kept on disk: the child decoded (yes), or died of SIGILL, SIGSEGV or SIGBUS (no). A
timeout, a SIGKILL or SIGTERM, an error exit may be load, the OOM killer or an operator,
not the CPU: the next start probes again. Set `repack_weights` to skip the probe (worth
it for a model too large to load twice).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from worker.logs import event

# Model load plus a few tokens: seconds on 2 cores for small models; a child that takes
# longer than this is stuck, and its answer is no.
PROBE_TIMEOUT_SECONDS = 180.0
PROBE_PROMPT = "The quick brown fox jumps over the lazy dog. " * 4
# The deaths that say repacked weights do not work here: an instruction the CPU does not
# run (AMX on some virtual machines), or a fault in the repacked kernels.
_CPU_FAULTS = frozenset({signal.SIGILL, signal.SIGSEGV, signal.SIGBUS})


@dataclass(frozen=True)
class ProbeResult:
    """The probe's verdict and, when it is no, why. `clean`: the answer is the CPU's (a
    decode, or a fault), worth remembering on disk; else it may be load or a kill."""

    repack: bool
    reason: str
    clean: bool = False


def verdict(returncode: int | None, stderr: str) -> ProbeResult:
    """Read the child's exit: 0 is yes; a signal (SIGILL above all), an error or a
    timeout (None) is no, with a one-line reason. Clean (remembered on disk): 0, and a
    death by SIGILL, SIGSEGV or SIGBUS."""
    if returncode == 0:
        return ProbeResult(True, "the probe decoded with repacked weights", clean=True)
    if returncode is None:
        return ProbeResult(False, f"the probe did not finish in {PROBE_TIMEOUT_SECONDS:.0f} s")
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        clean = -returncode in _CPU_FAULTS
        return ProbeResult(False, f"the probe died with {name} using repacked weights", clean)
    last = stderr.strip().splitlines()[-1:] or ["no message"]
    return ProbeResult(False, f"the probe failed (exit {returncode}): {last[0][:200]}")


@lru_cache(maxsize=8)
def probe_repack(model_path: Path, n_threads: int | None = None) -> ProbeResult:
    """Load `model_path` with repacked weights in a child and decode a few tokens."""
    command = [sys.executable, "-m", "worker.llm.repack_probe", str(model_path)]
    if n_threads:
        command.append(str(n_threads))
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS, check=False
        )
        result = verdict(done.returncode, done.stderr)
    except subprocess.TimeoutExpired:
        result = verdict(None, "")
    event("engine.repack_probe", repack=result.repack, reason=result.reason, model=str(model_path))
    return result


def _probe_key(model_path: Path) -> dict[str, object]:
    """What the probe's answer depends on: the file, the CPU features llama.cpp sees, its
    version."""
    import llama_cpp

    info = model_path.stat()
    system = llama_cpp.llama_print_system_info()
    features = system.decode(errors="replace") if isinstance(system, bytes) else str(system)
    return {
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "llama_cpp": getattr(llama_cpp, "__version__", "?"),
        "system": features,
    }


def _cache_path(model_path: Path) -> Path:
    return model_path.with_name(f".{model_path.name}.repack-probe.json")


def remembered_probe(model_path: Path) -> ProbeResult:
    """The probe's answer for `model_path`: from the file beside the model when its key
    still matches, else probed now and, when the answer is clean, written there (where
    the folder is writable)."""
    key = _probe_key(model_path)
    cache = _cache_path(model_path)
    try:
        stored = json.loads(cache.read_text())
        # Without `clean`: written by a version that kept any answer (a timeout too).
        if stored.get("key") == key and stored.get("clean") is True:
            reason = str(stored["reason"]) + " (remembered)"
            return ProbeResult(bool(stored["repack"]), reason, clean=True)
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    result = probe_repack(model_path)
    if not result.clean:  # a timeout or a kill may be load or an operator: ask again next start
        return result
    record = {"key": key, "repack": result.repack, "reason": result.reason, "clean": True}
    temp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):  # a read-only models folder: probe again next time
        temp.write_text(json.dumps(record))
        os.replace(temp, cache)  # a cache: a torn write is read as no answer, and redone
    return result


def decide_repack(setting: bool | None, model_path: Path, batch_invariant: bool = False) -> bool:
    """Whether the engine loads `model_path` with repacked weights: the setting when it
    says so, never in batch-invariant mode (it turns them off), else the probe's answer."""
    if setting is not None:
        return setting
    if batch_invariant:
        return False
    return remembered_probe(Path(model_path)).repack


def _child(model_path: str, n_threads: int) -> None:
    """In the child: load with extra buffer types, decode a prompt and a few tokens."""
    import llama_cpp as ll

    quiet = ll.llama_log_callback(lambda *_: None)  # kept alive while llama.cpp may log
    ll.llama_log_set(quiet, None)
    ll.llama_backend_init()
    mparams = ll.llama_model_default_params()
    mparams.use_extra_bufts = True
    model = ll.llama_model_load_from_file(model_path.encode(), mparams)
    if not model:
        raise SystemExit("cannot load the model")
    cparams = ll.llama_context_default_params()
    cparams.n_ctx = 256
    cparams.n_batch = 64
    cparams.n_ubatch = 64
    cparams.n_threads = cparams.n_threads_batch = n_threads
    ctx = ll.llama_init_from_model(model, cparams)
    if not ctx:
        raise SystemExit("cannot create a context")
    vocab = ll.llama_model_get_vocab(model)
    data = PROBE_PROMPT.encode()
    buf = (ll.llama_token * (len(data) + 16))()
    n = ll.llama_tokenize(vocab, data, len(data), buf, len(data) + 16, True, False)
    batch = ll.llama_batch_init(64, 0, 1)
    # A prompt chunk (matrix kernels of many rows), then single tokens (vector kernels).
    for step, tokens in enumerate([list(buf[:n])] + [[buf[0]]] * 3):
        pos0 = n + step - 1 if step else 0
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos0 + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == len(tokens) - 1
        if ll.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")
    ll.llama_batch_free(batch)
    ll.llama_free(ctx)
    ll.llama_model_free(model)


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
