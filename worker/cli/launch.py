"""The `edge-worker` command's entry point. `run` records SIGHUP before anything heavy is
imported (`worker.ops.early_hup`), then the command line is loaded and run."""

from __future__ import annotations

import sys


def main() -> None:
    """Run the `edge-worker` command line."""
    if "run" in sys.argv[1:]:
        from worker.ops import early_hup

        early_hup.install()
    from worker.cli.app import main as app_main

    app_main()
