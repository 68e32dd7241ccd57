"""Schema drift: every field a source added, dropped or retyped, per run."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime
from sqlmodel import Field, SQLModel


class SchemaDriftBase(SQLModel):
    run_id: str = Field(max_length=64, index=True)
    source: str = Field(max_length=128, index=True)
    field: str = Field(max_length=300)
    change: str = Field(max_length=16)  # added | missing | retyped
    old_type: str | None = Field(default=None, max_length=200)
    new_type: str | None = Field(default=None, max_length=200)
    policy: str = Field(max_length=16)  # warn | fail | evolve
    detected_at: datetime = Field(sa_type=DateTime(timezone=True))


class SchemaDrift(SchemaDriftBase, table=True):
    __tablename__ = "schema_drift"
    id: int | None = Field(default=None, primary_key=True)
