"""The console's guards: security headers, the action token, sessions with a CSRF token
each, and the same-origin check of every POST.

A session is a random id in an `HttpOnly; SameSite=Strict` cookie, made by logging in
with the token read from `console_token_file` (under systemd, `LoadCredential=`). Each
session has its own CSRF token, put in every action form and compared in constant
time. A POST must also carry an `Origin` (or, failing that, a `Referer`) naming this
very host: a page elsewhere cannot post here even with the cookie.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from worker.ops.httpd import Request

COOKIE = "ew_console"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 64
MAX_TOKEN_BYTES = 4096
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    # same-origin: a form post still carries our Origin; other sites learn nothing.
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
    ("Cache-Control", "no-store"),
)


class TokenError(Exception):
    """The token file is missing, unreadable or empty."""


def read_token(path: Path) -> str:
    """The action token: the file's first line, stripped. TokenError if unusable."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise TokenError(f"cannot read console_token_file {path}: {exc.strerror}") from None
    if len(data) > MAX_TOKEN_BYTES:
        raise TokenError(f"console_token_file {path} is over {MAX_TOKEN_BYTES} bytes")
    lines = data.decode("utf-8", errors="replace").strip().splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < 16:
        raise TokenError(f"console_token_file {path}: the token must have 16 characters at least")
    return token


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    who: str
    created: float


class Sessions:
    """Logged-in operators, in memory (a restart logs everyone out), bounded in number."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._clock = time.monotonic

    def check_token(self, offered: str) -> bool:
        return hmac.compare_digest(offered.strip().encode(), self._token)

    def open(self, who: str) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), who, now)
        with self._lock:
            self._expire(now)
            while len(self._sessions) >= MAX_SESSIONS:  # the oldest goes first
                oldest = min(self._sessions.values(), key=lambda s: s.created)
                del self._sessions[oldest.id]
            self._sessions[session.id] = session
        return session

    def close(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def of(self, request: Request) -> Session | None:
        session_id = cookie(request, COOKIE)
        if not session_id:
            return None
        with self._lock:
            self._expire(self._clock())
            return self._sessions.get(session_id)

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if now - s.created > SESSION_SECONDS]:
            del self._sessions[key]


def cookie(request: Request, name: str) -> str | None:
    """A cookie's value from the request's `Cookie` header."""
    for part in request.headers.get("cookie", "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


def session_cookie(session: Session | None) -> str:
    if session is None:
        return f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    return f"{COOKIE}={session.id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}"


def same_origin(request: Request) -> bool:
    """Whether a POST comes from a page of this very host (Origin, else Referer)."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if not referer:
            return False  # browsers send one of them on a POST; a forged request may not
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    parts = urlsplit(origin)
    return bool(host) and parts.scheme == "http" and parts.netloc == host


def csrf_ok(session: Session, offered: str) -> bool:
    return bool(offered) and hmac.compare_digest(offered.encode(), session.csrf.encode())
