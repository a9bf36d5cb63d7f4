"""`python -m worker` is the `edge-worker` command."""

from worker.cli import main

main()
