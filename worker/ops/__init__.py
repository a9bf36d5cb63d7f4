"""Running the daemon: assembly of its services (started in order, stopped in reverse),
metrics and the health endpoint, systemd notification and watchdog, logs, status."""
