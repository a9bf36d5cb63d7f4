"""The `edge-worker` command line: one module per command group (Typer, rich output).

`app` assembles the groups; `common` holds what every command needs (settings, the
job store, error exits). Job data is always printed as text, never as Rich markup."""
