"""Users: the raw layer, the processed (flattened, masked) table, and the dead-letter queue."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, Text
from sqlmodel import Field, SQLModel

TZ = DateTime(timezone=True)
# 64-bit ids; on SQLite INTEGER, which is 64-bit there too and, as a primary key, the table's rowid (a BIGINT
# key is a second index, and the keyset pages stop reading their index in order)
ID = BigInteger().with_variant(Integer(), "sqlite")

# processed_users.status: what the source's newest observation of the user says (README, "Sync semantics")
CURRENT: Final = "current"
INVALID: Final = "invalid"
DELETED: Final = "deleted"
# the index that serves a users search of these columns (migration 0004): an FTS5 table of this name on
# SQLite, the GIN index ix_<name> on PostgreSQL; no model declares either (each is one dialect's). On SQLite a
# row of <name>_deferred, never committed, stands the insert trigger aside while persist indexes in bulk.
SEARCHED: Final = ("first_name", "last_name", "email", "username")
SEARCH_INDEX: Final = "processed_users_search"
SEARCH_DEFERRED: Final = f"{SEARCH_INDEX}_deferred"
# dlq_users.resolution: why an entry closed
RESOLVED_VALID, RESOLVED_SUPERSEDED, RESOLVED_GONE = "valid", "superseded", "gone"


class RawUser(SQLModel, table=True):
    """One source record as received (password removed), kept once per distinct content."""

    __tablename__ = "raw_users"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    source: str = Field(default="dummyjson", max_length=64)
    source_id: str | None = Field(default=None, index=True, max_length=128)
    record_hash: str = Field(max_length=64, unique=True)
    inserted_at: datetime = Field(sa_type=TZ)
    data: str = Field(sa_column=Column(Text, nullable=False))


class UserBase(SQLModel):
    id: int = Field(primary_key=True, sa_type=ID)
    first_name: str = Field(max_length=200)
    last_name: str | None = Field(default=None, max_length=200, index=True)
    maiden_name: str | None = None
    username: str | None = Field(default=None, max_length=200)
    email: str = Field(max_length=320)
    phone: str | None = None
    age: int = Field(index=True)
    gender: str | None = Field(default=None, max_length=32, index=True)
    birth_date: str | None = None
    blood_group: str | None = None
    height: float | None = None
    weight: float | None = None
    eye_color: str | None = None
    university: str | None = None
    role: str | None = None
    city: str | None = None
    state: str | None = None
    country: str | None = None
    postal_code: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    department: str = Field(max_length=200, index=True)
    department_code: str = Field(max_length=32, index=True)
    company_name: str | None = None
    company_title: str | None = None
    ssn_masked: str | None = None
    card_number_masked: str | None = None
    card_type: str | None = None
    iban_masked: str | None = None
    source: str = Field(default="dummyjson", max_length=64, index=True)


class ProcessedUser(UserBase, table=True):
    __tablename__ = "processed_users"
    __table_args__ = (Index("ix_processed_users_updated_at_id", "updated_at", "id"),)
    id: int = Field(primary_key=True, sa_type=ID, sa_column_kwargs={"autoincrement": False})
    record_hash: str = Field(max_length=64)
    source_updated_at: datetime | None = Field(default=None, sa_type=TZ)  # when the newest observation was made
    first_seen_at: datetime = Field(sa_type=TZ)
    updated_at: datetime = Field(sa_type=TZ)
    run_id: str = Field(max_length=64, index=True)
    # current | invalid (its newest observation failed validation) | deleted (absent from a complete extraction)
    status: str = Field(default=CURRENT, max_length=16, index=True, sa_column_kwargs={"server_default": CURRENT})
    status_changed_at: datetime | None = Field(default=None, sa_type=TZ)
    status_run_id: str | None = Field(default=None, max_length=64)  # the run that set the status


class UserPublic(UserBase):
    first_seen_at: datetime
    updated_at: datetime
    run_id: str
    status: str = CURRENT
    status_changed_at: datetime | None = None  # when the status last changed
    status_run_id: str | None = None  # the run that set it


class DlqBase(SQLModel):
    run_id: str = Field(max_length=64, index=True)  # the first run that rejected the record
    source: str = Field(default="dummyjson", max_length=64)
    error_reason: str = Field(sa_column=Column(Text, nullable=False))
    data: str = Field(sa_column=Column(Text, nullable=False))


class DlqUser(DlqBase, table=True):
    """A record that failed validation: every failed rule, and the record (sensitive fields masked). Open
    until the record's user arrives valid, is seen with other content, or is gone from its source."""

    __tablename__ = "dlq_users"
    # the open entries' reasons read off the index alone (the console's counts per rule)
    __table_args__ = (Index("ix_dlq_users_resolved_at_reason", "resolved_at", "error_reason"),)
    id: int | None = Field(default=None, primary_key=True)
    record_hash: str = Field(max_length=64, unique=True)
    inserted_at: datetime = Field(sa_type=TZ)
    last_seen_at: datetime = Field(sa_type=TZ)
    # the record's user id, when it has a usable one (null for an id that is not an integer, and for a second
    # copy of an id within one extraction: neither says anything about the user's own state)
    user_id: int | None = Field(default=None, sa_type=BigInteger, index=True)
    last_run_id: str | None = Field(default=None, max_length=64, index=True)  # the last run that rejected it
    resolved_at: datetime | None = Field(default=None, sa_type=TZ, index=True)  # null while open
    resolved_run_id: str | None = Field(default=None, max_length=64)
    resolution: str | None = Field(default=None, max_length=16)  # valid | superseded | gone | replayed


class DlqPublic(SQLModel):
    id: int
    run_id: str = Field(description="the first run that rejected the record")
    last_run_id: str | None = Field(description="the last run that rejected the record")
    source: str
    user_id: int | None
    error_reason: str
    reasons: list[str]
    data: dict
    inserted_at: datetime
    last_seen_at: datetime
    status: str = Field(description='"open" or "resolved"')
    resolved_at: datetime | None = None
    resolved_run_id: str | None = None
    resolution: str | None = Field(default=None, description="valid | superseded | gone | replayed, once resolved")


# Flattened processed columns, in file/table order (the contract between transform and persist).
PROCESSED_COLUMNS: tuple[str, ...] = tuple(UserBase.model_fields)


# ---------------------------------------------------------------- API variants (responses only, no tables)


class PageMeta(SQLModel):
    request_id: str
    api_latency_ms: float
    filters_applied: dict[str, str | int] = {}


class UsersPublic(SQLModel):
    """A page of processed users: offset (`page`) or keyset (`next_cursor`) pagination."""

    data: list[UserPublic]
    total: int
    page: int | None = Field(description="null when the page was asked for by cursor")
    page_size: int
    has_more: bool
    next_cursor: str | None = Field(description="pass as `cursor` for the next page (same filters and sort)")
    meta: PageMeta


class DlqListPublic(SQLModel):
    data: list[DlqPublic]
    total: int
    page: int
    page_size: int
    has_more: bool
    meta: PageMeta
