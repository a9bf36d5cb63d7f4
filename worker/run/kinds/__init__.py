"""One handler per kind of job (document file, table row, record, OpenAI Batch line,
swept file), registered by `JobKind` in `registry`. Nothing else looks at `source`."""
