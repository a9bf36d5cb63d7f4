"""Where work comes from: watch folders (and, later, schedules)."""
