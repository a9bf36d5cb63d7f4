"""Alembic environment: runs migrations online against the configured URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from worker.queue.database import make_db_engine
from worker.queue.models import Base

target_metadata = Base.metadata

# Serialises concurrent upgrades from several daemons on PostgreSQL.
_PG_MIGRATION_LOCK = 0x6564676577  # "edgew"


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = make_db_engine(url)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                with connection.begin():
                    connection.execute(
                        text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                    )
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_server_default=False,
            )
            with context.begin_transaction():
                context.run_migrations()
            if connection.dialect.name == "postgresql":
                with connection.begin():
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_MIGRATION_LOCK}
                    )
    finally:
        engine.dispose()


run_migrations_online()
