"""Where work comes from: inbox folders (watchdog events, a start-up scan and rescans,
a "finished arriving" check), schedules (a fire only enqueues a sweep of globs), and
PostgreSQL LISTEN. Sources only enqueue; they never run inference."""
