"""edge-worker: an offline batch-inference daemon for GGUF models through llama.cpp."""

__version__ = "0.1.0"
