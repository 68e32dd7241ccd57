"""User status, the DLQ's open/resolved lifecycle, the runs' new counts, 64-bit user ids, constraint names.

processed_users gains status ('current' for every user already there), status_changed_at, status_run_id and
a 64-bit id; dlq_users gains user_id (the id its record names), last_run_id (the rejecting run, for the entries already there),
resolved_at, resolved_run_id, resolution (every entry already there stays open); etl_runs gains five counts
(0 for the runs already there). Every primary key and unique constraint takes the naming convention's name
(models/naming.py: pk_<table>, uq_<table>_<column>).

To amend before it ships (models changed again): edit the lists below, then check with `alembic check` on a
fresh `upgrade head` and on an upgraded baseline database (tests/test_migrations.py does both, on SQLite and
PostgreSQL). SQLite cannot alter a column or a constraint in place: there every table is copied once
(batch mode), which also names its constraints.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def new_columns() -> dict[str, list[sa.Column]]:
    """table -> columns added (at the end of the table); a NOT NULL one needs a server default for the rows
    already there. New Column objects at each call: a column belongs to one table."""
    return {
        "processed_users": [
            sa.Column("status", sa.String(16), nullable=False, server_default="current"),
            sa.Column("status_changed_at", TZ, nullable=True),
            sa.Column("status_run_id", sa.String(64), nullable=True),
        ],
        "dlq_users": [
            sa.Column("user_id", sa.BigInteger(), nullable=True),
            sa.Column("last_run_id", sa.String(64), nullable=True),
            sa.Column("resolved_at", TZ, nullable=True),
            sa.Column("resolved_run_id", sa.String(64), nullable=True),
            sa.Column("resolution", sa.String(16), nullable=True),
        ],
        "etl_runs": [
            sa.Column(name, sa.Integer(), nullable=False, server_default="0")
            for name in ("invalidated", "deleted", "restored", "dlq_opened", "dlq_resolved")
        ],
    }


# (table, column) indexed as ix_<table>_<column>
NEW_INDEXES = [
    ("processed_users", "status"),
    ("dlq_users", "user_id"),
    ("dlq_users", "last_run_id"),
    ("dlq_users", "resolved_at"),
]
# (table, column, old type, new type)
NEW_TYPES = [("processed_users", "id", sa.Integer(), sa.BigInteger())]
# run after the columns exist: an open DLQ entry was last rejected by the run that (first) rejected it
BACKFILL = ["UPDATE dlq_users SET last_run_id = run_id"]

# every table, and its single-column unique constraints: their names become the convention's
# (models/naming.py: pk_<table>, uq_<table>_<column>)
TABLES = [
    "dlq_feed_items",
    "dlq_users",
    "etl_checkpoints",
    "etl_runs",
    "feed_items",
    "processed_users",
    "raw_feed_items",
    "raw_users",
    "schema_drift",
]
UNIQUE = {
    "dlq_feed_items": "record_hash",
    "dlq_users": "record_hash",
    "raw_feed_items": "record_hash",
    "raw_users": "record_hash",
}
CONVENTION = {"pk": "pk_%(table_name)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s"}


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _upgrade_sqlite()
    else:
        _rename_constraints(lambda table: f"pk_{table}", lambda table, column: f"uq_{table}_{column}")
        for table, columns in new_columns().items():
            for column in columns:
                op.add_column(table, column)
        for table, column, old, new in NEW_TYPES:
            op.alter_column(table, column, type_=new, existing_type=old, existing_nullable=False)
        for table, column in NEW_INDEXES:
            op.create_index(f"ix_{table}_{column}", table, [column])
    for statement in BACKFILL:
        op.execute(statement)
    _backfill_user_ids()


def _backfill_user_ids() -> None:
    """An entry already there speaks for the user its record names (an integer id), so that the user's valid
    arrival resolves it; not a duplicate's entry, whose user is the first copy's."""
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, data FROM dlq_users WHERE error_reason NOT LIKE '%id_duplicate%'")).all()
    updates = []
    for entry_id, data in rows:
        try:
            user_id = json.loads(data).get("id")
        except (ValueError, AttributeError):  # not a JSON object (a rejected file's entry)
            continue
        if type(user_id) is int and -(2**63) <= user_id < 2**63:
            updates.append({"entry": entry_id, "user_id": user_id})
    if updates:
        conn.execute(sa.text("UPDATE dlq_users SET user_id = :user_id WHERE id = :entry"), updates)


def _upgrade_sqlite() -> None:
    # ids stay INTEGER on SQLite: 64-bit there already, and a primary key of that type is the table's rowid
    types: dict = {}
    for table in TABLES:
        # recreate="always": the copy names the primary key and unique constraints (by CONVENTION)
        with op.batch_alter_table(table, recreate="always", naming_convention=CONVENTION) as batch:
            for column in new_columns().get(table, []):
                batch.add_column(column)
            for (t, column), (old, new) in types.items():
                if t == table:
                    batch.alter_column(column, type_=new, existing_type=old, existing_nullable=False)
            for t, column in NEW_INDEXES:
                if t == table:
                    batch.create_index(f"ix_{table}_{column}", [column])


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, columns in new_columns().items():
        with op.batch_alter_table(table) as batch:
            for t, column in NEW_INDEXES:
                if t == table:
                    batch.drop_index(f"ix_{table}_{column}")
            for column in columns:
                batch.drop_column(column.name)
    for table, column, old, new in [] if sqlite else NEW_TYPES:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, type_=old, existing_type=new, existing_nullable=False)
    if not sqlite:  # SQLite keeps the convention's names: no code of the baseline's names a constraint
        _rename_constraints(lambda table: f"{table}_pkey", lambda table, column: f"{table}_{column}_key")


def _rename_constraints(pk_name, unique_name) -> None:
    """PostgreSQL renames a constraint (and its index) in place."""
    inspector = sa.inspect(op.get_bind())
    for table in TABLES:
        renames = [(inspector.get_pk_constraint(table)["name"], pk_name(table))]
        if table in UNIQUE:
            column = UNIQUE[table]
            renames += [
                (uq["name"], unique_name(table, column))
                for uq in inspector.get_unique_constraints(table)
                if uq["column_names"] == [column]
            ]
        for old, new in renames:
            if old != new:
                op.execute(f'ALTER TABLE {table} RENAME CONSTRAINT "{old}" TO "{new}"')
