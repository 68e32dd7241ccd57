"""Schema migrations (Alembic; the revisions are in migrations/ at the repository root): bring a database to
the code's revision (`make migrate`, `make run`, the compose `migrate` service), and tell whether it is there
(every engine the product opens checks once: models/db.py)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event

# Sluice's own version table: Prefect keeps its `alembic_version` in the database it is given, which may be
# this one
VERSION_TABLE = "sluice_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"


class SchemaOutOfDate(RuntimeError):
    """The database is not at the schema revision this code needs."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration without alembic.ini (whose logging setup would replace the process's own);
    with `connection`, migrations run on it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS_DIR}")
    return head


def current_revision(connection: Connection) -> str | None:
    """The database's revision; None when it has no version table (empty, or made before migrations)."""
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def check_current(engine: Engine) -> None:
    """SchemaOutOfDate, naming `make migrate`, unless the database is at the code's head revision."""
    with engine.connect() as conn:
        current = current_revision(conn)
    head = head_revision()
    if current == head:
        return
    where = engine.url.render_as_string(hide_password=True)
    try:
        known = current is None or ScriptDirectory.from_config(alembic_config()).get_revision(current) is not None
    except Exception:  # noqa: BLE001 (alembic's CommandError or ResolutionError: a revision it does not know)
        known = False
    if not known:
        raise SchemaOutOfDate(
            f"database {where} is at schema revision {current}, which this code does not know "
            f"(it needs {head}): a newer release migrated it; run that release"
        )
    raise SchemaOutOfDate(
        f"database {where} is at schema revision {current or 'none (not migrated)'}, this code "
        f"needs {head}: run `make migrate` (alembic upgrade head) first"
    )


def _transactional(engine: Engine) -> Engine:
    """On SQLite, one transaction per migration run, DDL included (the driver begins one only before INSERT,
    UPDATE or DELETE, so a failed migration would leave half its changes): SQLAlchemy's recipe for pysqlite."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _driver_autocommit)
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
    return engine


def _driver_autocommit(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None


def migration_engine(url: str) -> Engine:
    """An engine for migrating `url`: the product's own settings (a new SQLite file gets its page size and WAL
    mode), no revision check, one transaction per run. The caller disposes of it."""
    from models.db import unchecked_engine

    return _transactional(unchecked_engine(url))


def upgrade(target: str | Engine | Connection, revision: str = "head") -> str | None:
    """`alembic upgrade` on a URL, an engine or a connection; the revision the database was at. A database
    made before migrations (Sluice's tables, no version table) is taken as the baseline revision, then
    upgraded with every row kept."""
    if isinstance(target, Connection):
        before = current_revision(target)
        command.upgrade(alembic_config(target), revision)
        return before
    engine = migration_engine(target) if isinstance(target, str) else target
    try:
        with engine.connect() as conn:
            before = current_revision(conn)
            conn.rollback()  # alembic begins the migration's own transaction
            command.upgrade(alembic_config(conn), revision)
            conn.commit()
        return before
    finally:
        if isinstance(target, str):
            engine.dispose()
