"""Sharded runs: what each shard of a run did.

etl_runs gains `shards`, a JSON list with one object per shard of a sharded run (its range of the page walk,
records, valid and invalid counts, what persist stored, its flow runs and seconds); `[]` for a run of one
shard, which every run before this revision was.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("etl_runs") as batch:
        batch.add_column(sa.Column("shards", sa.Text(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("etl_runs") as batch:
        batch.drop_column("shards")
