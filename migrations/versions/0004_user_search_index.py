"""An index for GET /users?search=: case-insensitive substring search without reading the whole table.

SQLite: an FTS5 table of trigrams, processed_users_search, over the four searched columns (first name, last
name, email, username) as lower() writes them, the tokenizer case-sensitive: a phrase of the search's trigrams
matches exactly where `LIKE '%search%'` does (SQLite's LIKE and lower() both fold ASCII letters only). It is
contentless (it stores the trigrams, not the text) and kept in step by triggers on processed_users, whatever
writes there; persist indexes the users it inserts itself, in bulk, while a row of processed_users_search_deferred
(never committed) tells the insert trigger to stand aside (a trigger per row cost persist about half its time
again). PostgreSQL: a GIN index of pg_trgm trigrams on the four columns, which serves their ILIKE.
Existing users are indexed here (SQLite: about 10 s per million users; PostgreSQL: a GIN build).

PostgreSQL needs the pg_trgm extension: created here when missing, which takes the right to CREATE in the
database (pg_trgm is a trusted extension since PostgreSQL 13) or a superuser; otherwise have an administrator
run `CREATE EXTENSION pg_trgm` first. A downgrade drops the index and leaves the extension.

Neither object has a model (they are one dialect's each): migrations/env.py leaves names starting with
SEARCH_INDEX out of `alembic check`. A later revision that copies processed_users on SQLite (batch mode with
recreate) drops the triggers with the old table: it must create them again (`create_sqlite_triggers`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SEARCH_INDEX = "processed_users_search"  # the FTS5 table (SQLite); the GIN index is ix_ + this (PostgreSQL)
# SQLite: a row here, never committed, while a writer (persist) indexes the users it inserts itself, in bulk
DEFERRED = f"{SEARCH_INDEX}_deferred"
COLUMNS = ("first_name", "last_name", "email", "username")
FTS_COLUMNS = ", ".join(COLUMNS)


def _lowered(row: str) -> str:
    return ", ".join(f"lower({row}.{column})" for column in COLUMNS)


def _changed() -> str:
    return " OR ".join(f"old.{column} IS NOT new.{column}" for column in ("id", *COLUMNS))


# a contentless FTS5 table forgets a row by being told the values it indexed: lower() of the old row's
SQLITE_TRIGGERS = {
    f"{SEARCH_INDEX}_insert": f"""
        CREATE TRIGGER {SEARCH_INDEX}_insert AFTER INSERT ON processed_users
        WHEN NOT EXISTS (SELECT 1 FROM {DEFERRED}) BEGIN
            INSERT INTO {SEARCH_INDEX} (rowid, {FTS_COLUMNS}) VALUES (new.id, {_lowered("new")});
        END""",
    f"{SEARCH_INDEX}_delete": f"""
        CREATE TRIGGER {SEARCH_INDEX}_delete AFTER DELETE ON processed_users BEGIN
            INSERT INTO {SEARCH_INDEX} ({SEARCH_INDEX}, rowid, {FTS_COLUMNS})
            VALUES ('delete', old.id, {_lowered("old")});
        END""",
    f"{SEARCH_INDEX}_update": f"""
        CREATE TRIGGER {SEARCH_INDEX}_update AFTER UPDATE OF id, {FTS_COLUMNS} ON processed_users
        WHEN {_changed()} BEGIN
            INSERT INTO {SEARCH_INDEX} ({SEARCH_INDEX}, rowid, {FTS_COLUMNS})
            VALUES ('delete', old.id, {_lowered("old")});
            INSERT INTO {SEARCH_INDEX} (rowid, {FTS_COLUMNS}) VALUES (new.id, {_lowered("new")});
        END""",
}


def create_sqlite_triggers() -> None:
    for statement in SQLITE_TRIGGERS.values():
        op.execute(statement)


def search_index_ddl(dialect: str) -> list[str]:
    """The statements that make the search index and index the users already there (bench/api_load.py
    makes it again after a bulk load with these)."""
    if dialect == "sqlite":
        return [
            f"CREATE VIRTUAL TABLE {SEARCH_INDEX} USING fts5({FTS_COLUMNS}, content='', "
            "tokenize='trigram case_sensitive 1')",
            f"INSERT INTO {SEARCH_INDEX} (rowid, {FTS_COLUMNS}) "
            f"SELECT id, {_lowered('processed_users')} FROM processed_users",
            f"CREATE TABLE {DEFERRED} (writer INTEGER)",
            *SQLITE_TRIGGERS.values(),
        ]
    opclasses = ", ".join(f"{column} gin_trgm_ops" for column in COLUMNS)
    return [
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        f"CREATE INDEX ix_{SEARCH_INDEX} ON processed_users USING gin ({opclasses})",
    ]


def drop_search_index_ddl(dialect: str) -> list[str]:
    """The statements that drop the search index (PostgreSQL's extension stays: other objects may use it)."""
    if dialect == "sqlite":
        return [
            *(f"DROP TRIGGER IF EXISTS {trigger}" for trigger in SQLITE_TRIGGERS),
            f"DROP TABLE IF EXISTS {DEFERRED}",
            f"DROP TABLE IF EXISTS {SEARCH_INDEX}",
        ]
    return [f"DROP INDEX IF EXISTS ix_{SEARCH_INDEX}"]


def upgrade() -> None:
    for statement in search_index_ddl(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    for statement in drop_search_index_ddl(op.get_bind().dialect.name):
        op.execute(statement)
