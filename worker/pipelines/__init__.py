"""Pipelines: specs from `*.toml` (validated with pydantic), the shipped ones (package
data in `shipped/`), their schedule times, the model each needs, and running one on one
input (prompt, generation, JSON validation, map-reduce for long inputs)."""
