"""The runs' liveness: where a running run runs and when it was last known alive.

etl_runs gains heartbeat_at (stamped every few seconds by the run's process while it runs), pid and host (the
process and the machine, boot and pid namespace it runs in). All nullable: a run already there has none, and
a run left 'running' without a heartbeat is judged by Prefect as before.

To amend before it ships (models changed again): edit the list below, then check with `alembic check` on a
fresh `upgrade head` and on an upgraded baseline database (tests/test_migrations.py does both, on SQLite and
PostgreSQL). SQLite adds a column in place; batch mode copies a table only where it must.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def new_columns() -> dict[str, list[sa.Column]]:
    """table -> columns added (at the end of the table). New Column objects at each call: a column belongs
    to one table."""
    return {
        "etl_runs": [
            sa.Column("heartbeat_at", TZ, nullable=True),
            sa.Column("pid", sa.Integer(), nullable=True),
            sa.Column("host", sa.String(255), nullable=True),
        ],
    }


def upgrade() -> None:
    for table, columns in new_columns().items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.add_column(column)


def downgrade() -> None:
    for table, columns in new_columns().items():
        with op.batch_alter_table(table) as batch:
            for column in reversed(columns):
                batch.drop_column(column.name)
