"""Alembic's environment: every Sluice table (SQLModel.metadata), Sluice's own version table, batch mode on
SQLite. The database: a connection handed in (models/migrate.py), else `-x url=...`, else DATABASE_URL."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

import models.drift  # noqa: F401  (register every table)
import models.feeds  # noqa: F401
import models.runs  # noqa: F401
import models.users  # noqa: F401
from models.migrate import VERSION_TABLE, migration_engine
from models.settings import get_settings
from models.users import SEARCH_INDEX

config = context.config


def modelled(name: str | None, type_: str, parent_names: dict) -> bool:
    """Whether `alembic check` compares the object: not the users search index (revision 0004), which no model
    declares (an FTS5 table and its shadow tables on SQLite, a GIN index on PostgreSQL)."""
    return not (name or "").removeprefix("ix_").startswith(SEARCH_INDEX)


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters most things by copying the table
        compare_type=True,
        include_name=modelled,
        transactional_ddl=True,  # one transaction for the whole run, on SQLite too (migration_engine)
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("sluice migrations need the database itself: offline (--sql) mode is not supported")
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    if config.config_file_name is not None:  # the alembic command line
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = context.get_x_argument(as_dictionary=True).get("url") or get_settings().database_url_value
    engine = migration_engine(url)
    try:
        with engine.connect() as conn:
            run_migrations(conn)
    finally:
        engine.dispose()


main()
