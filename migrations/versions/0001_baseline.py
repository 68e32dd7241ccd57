"""Baseline: the schema as release fca55db's `create_all` made it, before migrations.

Its tables are frozen here in plain SQLAlchemy, on a MetaData of their own without the naming convention, so
each database names their constraints as it did then (PostgreSQL: raw_users_pkey, raw_users_record_hash_key;
SQLite: unnamed); 0002 gives them the convention's names.

A database that release made (Sluice's tables, no version table) is adopted as it is: only tables missing
from it are created, as create_all did, and its rows are kept. Its tables must have every baseline column.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def _c(name: str, type_, nullable: bool = True, **kw) -> sa.Column:
    return sa.Column(name, type_, nullable=nullable, **kw)


def _s(length: int | None = None) -> sa.String:
    return sa.String(length)


def baseline_tables() -> sa.MetaData:
    """The nine tables, columns in create_all's order (a model's base class fields first)."""
    md = sa.MetaData()
    sa.Table(
        "dlq_feed_items",
        md,
        _c("id", sa.Integer, False, primary_key=True),
        _c("run_id", _s(64), False, index=True),
        _c("feed", sa.Text, False, index=True),
        _c("error_reason", sa.Text, False),
        _c("data", sa.Text, False),
        _c("record_hash", _s(64), False, unique=True),
        _c("inserted_at", TZ, False),
        _c("last_seen_at", TZ, False),
    )
    sa.Table(
        "dlq_users",
        md,
        _c("run_id", _s(64), False, index=True),
        _c("source", _s(64), False),
        _c("error_reason", sa.Text, False),
        _c("data", sa.Text, False),
        _c("id", sa.Integer, False, primary_key=True),
        _c("record_hash", _s(64), False, unique=True),
        _c("inserted_at", TZ, False),
        _c("last_seen_at", TZ, False),
    )
    sa.Table(
        "etl_checkpoints",
        md,
        _c("source", _s(128), False, primary_key=True),
        _c("status", _s(16), False),
        _c("run_id", _s(64)),
        _c("cursor", sa.Integer, False),
        _c("total", sa.Integer),
        _c("staged_path", _s()),
        _c("staged_bytes", sa.BigInteger, False),
        _c("staged_records", sa.Integer, False),
        _c("fingerprint", _s(256)),
        _c("last_success_at", TZ),
        _c("last_failure_at", TZ),
        _c("last_error", sa.Text),
        _c("updated_at", TZ),
        _c("state", sa.Text, False),
    )
    sa.Table(
        "etl_runs",
        md,
        _c("flow_name", _s(64), False, index=True),
        _c("status", _s(16), False, index=True),
        _c("started_at", TZ, False),
        _c("finished_at", TZ),
        _c("duration_seconds", sa.Float),
        *(
            _c(name, sa.Integer, False)
            for name in (
                "extracted",
                "valid",
                "invalid",
                "inserted",
                "updated",
                "unchanged",
                "raw_inserted",
                "dlq_inserted",
                "delivered_files",
            )
        ),
        _c("delivered_bytes", sa.BigInteger, False),
        _c("failed_stage", _s(32)),
        _c("error", sa.Text),
        _c("anomalies", sa.Text),
        _c("schema_drift", sa.Text),
        _c("id", _s(64), False, primary_key=True),
        *(
            _c(name, sa.Text, False)
            for name in ("stage_seconds", "delivered", "files", "dlq_reasons", "sources", "observed_schema")
        ),
    )
    sa.Table(
        "feed_items",
        md,
        _c("feed", sa.Text, False, index=True),
        _c("item_key", sa.Text, False),
        *(_c(name, sa.Text) for name in ("guid", "title", "link", "summary", "author")),
        _c("published_at", TZ, index=True),
        _c("item_id", _s(64), False, primary_key=True),
        _c("categories", sa.Text, False),
        _c("record_hash", _s(64), False),
        _c("first_seen_at", TZ, False),
        _c("updated_at", TZ, False),
        _c("run_id", _s(64), False, index=True),
        sa.Index("ix_feed_items_updated_at_item_id", "updated_at", "item_id"),
    )
    sa.Table(
        "processed_users",
        md,
        _c("id", sa.Integer, False, primary_key=True, autoincrement=False),
        _c("first_name", _s(200), False),
        _c("last_name", _s(200), index=True),
        _c("maiden_name", _s()),
        _c("username", _s(200)),
        _c("email", _s(320), False),
        _c("phone", _s()),
        _c("age", sa.Integer, False, index=True),
        _c("gender", _s(32), index=True),
        _c("birth_date", _s()),
        _c("blood_group", _s()),
        _c("height", sa.Float),
        _c("weight", sa.Float),
        *(_c(name, _s()) for name in ("eye_color", "university", "role", "city", "state", "country", "postal_code")),
        _c("latitude", sa.Float),
        _c("longitude", sa.Float),
        _c("department", _s(200), False, index=True),
        _c("department_code", _s(32), False, index=True),
        *(
            _c(name, _s())
            for name in (
                "company_name",
                "company_title",
                "ssn_masked",
                "card_number_masked",
                "card_type",
                "iban_masked",
            )
        ),
        _c("source", _s(64), False, index=True),
        _c("record_hash", _s(64), False),
        _c("source_updated_at", TZ),
        _c("first_seen_at", TZ, False),
        _c("updated_at", TZ, False),
        _c("run_id", _s(64), False, index=True),
        sa.Index("ix_processed_users_updated_at_id", "updated_at", "id"),
    )
    sa.Table(
        "raw_feed_items",
        md,
        _c("id", sa.Integer, False, primary_key=True),
        _c("run_id", _s(64), False, index=True),
        _c("feed", sa.Text, False, index=True),
        _c("record_hash", _s(64), False, unique=True),
        _c("inserted_at", TZ, False),
        _c("data", sa.Text, False),
    )
    sa.Table(
        "raw_users",
        md,
        _c("id", sa.Integer, False, primary_key=True),
        _c("run_id", _s(64), False, index=True),
        _c("source", _s(64), False),
        _c("source_id", _s(128), index=True),
        _c("record_hash", _s(64), False, unique=True),
        _c("inserted_at", TZ, False),
        _c("data", sa.Text, False),
    )
    sa.Table(
        "schema_drift",
        md,
        _c("run_id", _s(64), False, index=True),
        _c("source", _s(128), False, index=True),
        _c("field", _s(300), False),
        _c("change", _s(16), False),
        _c("old_type", _s(200)),
        _c("new_type", _s(200)),
        _c("policy", _s(16), False),
        _c("detected_at", TZ, False),
        _c("id", sa.Integer, False, primary_key=True),
    )
    return md


def upgrade() -> None:
    bind = op.get_bind()
    tables = baseline_tables()
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    if existing & set(tables.tables):
        logging.getLogger("alembic").info("adopting the tables of a database made before migrations")
    for table in tables.sorted_tables:
        if table.name in existing:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            missing = [c.name for c in table.columns if c.name not in have]
            if missing:
                raise RuntimeError(
                    f"table {table.name} lacks columns {', '.join(missing)}: the database was made by "
                    "a release older than the baseline (fca55db), which migrations do not know"
                )
    tables.create_all(bind, checkfirst=True)


def downgrade() -> None:
    baseline_tables().drop_all(op.get_bind())
