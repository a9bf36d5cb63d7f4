"""The operator's web console, served by the daemon on its HTTP port (`console = true`):
server-rendered pages (Jinja2, autoescaped; CSS and a little JavaScript served by the
daemon, nothing from elsewhere) built from the port's one cached snapshot, never a
query per page view. Read-only unless `console_actions = true`; then retry, cancel,
retry-all-matching and pause/resume of a pipeline's intake need a login with the token
from `console_token_file`, a per-session CSRF token and a same-origin `Origin`."""
