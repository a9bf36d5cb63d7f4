"""`python -m worker` is the `edge-worker` command."""

from worker.cli.launch import main

main()
