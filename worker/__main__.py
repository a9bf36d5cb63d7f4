"""`python -m worker` is the `edge-worker` command."""

from worker.cli.app import main

main()
