"""`edge-worker db grant-submitter`: a PostgreSQL role that can only submit jobs.

Rows in the job table are untrusted input; a program that only needs to submit work
should not be able to write `source`, `source_path`, `status` or leases at all. The
role may INSERT `pipeline`, `input_text`, `priority` and `idempotency_key` (every other
column takes its default: a `table` job, queued, `submitted_by` = the role), and SELECT
the columns that say how a job went. It cannot UPDATE or DELETE.

What the database adds (migration 0006), so that a submitter cannot reach its
neighbours: row-level security shows it only the rows it inserted (not other
submitters' jobs, not the inbox's file names and hashes); the daemon's own key prefixes
(`file:`, `sweep:`, `child:`) are refused, so it cannot squat a file's or a child
line's job; a priority above 0 is refused (it may defer its own work, not jump the
queue). NOTIFY cannot be restricted by privileges: the daemon coalesces wake-ups.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import Engine, text

INSERT_COLUMNS = ("pipeline", "input_text", "priority", "idempotency_key")
# What a submitter needs to find its job (INSERT ... RETURNING id, or by its key) and
# read the outcome. Not input_text: other submitters' inputs stay unreadable.
SELECT_COLUMNS = (
    "id",
    "pipeline",
    "status",
    "priority",
    "idempotency_key",
    "attempts",
    "result_text",
    "error",
    "created_at",
    "started_at",
    "finished_at",
)
MAX_ROLE_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


class GrantError(Exception):
    """The grant cannot be made; the message says why."""


def quote_identifier(name: str) -> str:
    """`name` as a PostgreSQL quoted identifier (any characters, `"` doubled)."""
    if not name or "\x00" in name or len(name.encode()) > MAX_ROLE_BYTES:
        raise GrantError(f"invalid role name {name!r}: 1 to {MAX_ROLE_BYTES} bytes, no NUL")
    return '"' + name.replace('"', '""') + '"'


# The daemon's own tables that a submitter must never touch, revoked when present:
# a role that could lock a row of `pipeline_claim_locks` could stop a capped pipeline.
DAEMON_ONLY_TABLES = ("pipeline_claim_locks",)


def grant_statements(
    role: str, schema: str, sequence: str | None, daemon_tables: Collection[str] = ()
) -> list[str]:
    """The SQL that leaves `role` with exactly the submitter privileges on `schema`.jobs.

    `sequence` is the (already quoted, schema-qualified) sequence of jobs.id, if any;
    `daemon_tables` are the tables of `DAEMON_ONLY_TABLES` that exist. REVOKE ALL first,
    so running it again, or on a role that had more, ends the same. Nothing is granted
    on any other table.
    """
    who = quote_identifier(role)
    table = f"{quote_identifier(schema)}.jobs"
    statements = [
        f"REVOKE ALL ON TABLE {table} FROM {who}",
        *(
            f"REVOKE ALL ON TABLE {quote_identifier(schema)}.{quote_identifier(name)} FROM {who}"
            for name in daemon_tables
        ),
        f"GRANT USAGE ON SCHEMA {quote_identifier(schema)} TO {who}",
        f"GRANT INSERT ({', '.join(INSERT_COLUMNS)}) ON TABLE {table} TO {who}",
        f"GRANT SELECT ({', '.join(SELECT_COLUMNS)}) ON TABLE {table} TO {who}",
    ]
    if sequence is not None:  # a serial id: inserting takes its next value
        statements.append(f"GRANT USAGE ON SEQUENCE {sequence} TO {who}")
    return statements


def grant_submitter(engine: Engine, role: str, create: bool) -> tuple[bool, list[str]]:
    """Give `role` the submitter privileges (creating it, NOLOGIN, if `create` and it does
    not exist). Returns (whether it was created, the statements run). GrantError if the
    database is not PostgreSQL, the role is missing, or the jobs table is not there."""
    if engine.dialect.name != "postgresql":
        raise GrantError("grant-submitter needs PostgreSQL (SQLite has no roles)")
    who = quote_identifier(role)
    with engine.begin() as conn:
        schema = conn.execute(
            text(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = to_regclass('jobs')"
            )
        ).scalar()
        if schema is None:
            raise GrantError("no jobs table: run `edge-worker db upgrade` first")
        guarded = conn.execute(
            text("SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass('jobs')")
        ).scalar()
        if not guarded:
            raise GrantError("the jobs table has no row security: run `edge-worker db upgrade`")
        found = conn.execute(
            text(
                "SELECT rolsuper, rolbypassrls, pg_has_role(r.oid, c.relowner, 'USAGE') AS owner "
                "FROM pg_roles r, pg_class c WHERE r.rolname = :r AND c.oid = to_regclass('jobs')"
            ),
            {"r": role},
        ).first()
        created = False
        if found is None:
            if not create:
                raise GrantError(f"role {role!r} does not exist (leave out --no-create)")
            conn.execute(text(f"CREATE ROLE {who} NOLOGIN"))
            created = True
        elif found.rolsuper or found.rolbypassrls or found.owner:
            raise GrantError(
                f"role {role!r} is a superuser, has BYPASSRLS or owns the jobs table: it "
                "would read every job; use a role of its own for submitters"
            )
        sequence = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": f"{schema}.jobs"}
        ).scalar()
        exists = text("SELECT to_regclass(:t) IS NOT NULL")
        daemon_tables = [
            name
            for name in DAEMON_ONLY_TABLES
            if conn.execute(
                exists, {"t": f"{quote_identifier(schema)}.{quote_identifier(name)}"}
            ).scalar()
        ]
        statements = grant_statements(role, schema, sequence, daemon_tables)
        for statement in statements:
            conn.execute(text(statement))
    return created, statements
