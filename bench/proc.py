"""Memory figures of a process, from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path


def status_mb(pid: int | str, field: str) -> float:
    """A kB field of /proc/PID/status in MB: `VmRSS` (resident now), `VmHWM` (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} for pid {pid}")
