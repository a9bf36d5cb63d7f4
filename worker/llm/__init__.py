"""The llama.cpp engine and what surrounds it: model files (sha256), the batched
engine (continuous batching, prefix reuse), sampler chains, JSON-Schema grammars, chat
templates and chunking. No job, pipeline or file logic here: the engine takes a prompt
and a `Generation` and returns a `Completion`."""
