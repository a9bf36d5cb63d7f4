"""The job queue in SQL: models, migrations (package data), and the only code that
touches job rows (enqueue, claim with a lease, heartbeat, complete, fail, retry, recover
expired leases, fan-out families, batches, schedule fires, read-only views). Driver
errors that mean "the database is not answering" become `DatabaseUnavailable`."""
