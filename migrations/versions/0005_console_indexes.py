"""Indexes for the web console: the runs newest first, and the open DLQ entries' reasons off an index.

etl_runs gains (started_at, id), the order of every runs list and of the last run /health reads; dlq_users
gains (resolved_at, error_reason), so the console's counts of open entries per rule read the index alone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_etl_runs_started_at_id": ("etl_runs", ["started_at", "id"]),
    "ix_dlq_users_resolved_at_reason": ("dlq_users", ["resolved_at", "error_reason"]),
}


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _columns) in INDEXES.items():
        op.drop_index(name, table_name=table)
