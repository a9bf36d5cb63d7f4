"""What one completion is asked for: sampling parameters, stop strings, an optional
JSON Schema. Pipelines and OpenAI Batch lines build these; the engine only reads them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Generation(BaseModel):
    """Sampling parameters for one completion."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0, le=5)
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0, le=1)
    repeat_penalty: float = Field(default=1.1, gt=0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    stop: tuple[str, ...] = ()
    # Set by the runner, not in pipeline files: the engine generates under a grammar built
    # from this JSON Schema, and parses control-token text in the prompt (chat templates).
    json_schema: dict[str, Any] | None = None
    special: bool = False
