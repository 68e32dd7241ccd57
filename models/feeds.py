"""RSS/Atom feed items: the raw layer, the current items, the dead-letter queue, and the item rules.

An item is keyed by its feed URL and its guid (its link when it has no guid); `item_id` is the SHA-256 of
`feed \\x1f key`, so keys of any length index well on both databases."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, Index, Text
from sqlmodel import Field, SQLModel

TZ = DateTime(timezone=True)


class RawFeedItem(SQLModel, table=True):
    """One item as extracted from its feed document, kept once per distinct content."""

    __tablename__ = "raw_feed_items"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    feed: str = Field(sa_column=Column(Text, nullable=False, index=True))
    record_hash: str = Field(max_length=64, unique=True)
    inserted_at: datetime = Field(sa_type=TZ)
    data: str = Field(sa_column=Column(Text, nullable=False))


class FeedItemBase(SQLModel):
    feed: str = Field(sa_column=Column(Text, nullable=False, index=True))
    item_key: str = Field(sa_column=Column(Text, nullable=False))  # guid, or link when there is no guid
    guid: str | None = Field(default=None, sa_column=Column(Text))
    title: str | None = Field(default=None, sa_column=Column(Text))
    link: str | None = Field(default=None, sa_column=Column(Text))
    summary: str | None = Field(default=None, sa_column=Column(Text))
    author: str | None = Field(default=None, sa_column=Column(Text))
    published_at: datetime | None = Field(default=None, sa_type=TZ, index=True)


class FeedItem(FeedItemBase, table=True):
    __tablename__ = "feed_items"
    __table_args__ = (Index("ix_feed_items_updated_at_item_id", "updated_at", "item_id"),)
    item_id: str = Field(primary_key=True, max_length=64)
    categories: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))  # JSON array
    record_hash: str = Field(max_length=64)
    first_seen_at: datetime = Field(sa_type=TZ)
    updated_at: datetime = Field(sa_type=TZ)
    run_id: str = Field(max_length=64, index=True)


class DlqFeedItem(SQLModel, table=True):
    """An item that failed the rules: every failed rule, and the item as extracted."""

    __tablename__ = "dlq_feed_items"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=64, index=True)
    feed: str = Field(sa_column=Column(Text, nullable=False, index=True))
    error_reason: str = Field(sa_column=Column(Text, nullable=False))
    data: str = Field(sa_column=Column(Text, nullable=False))
    record_hash: str = Field(max_length=64, unique=True)
    inserted_at: datetime = Field(sa_type=TZ)
    last_seen_at: datetime = Field(sa_type=TZ)


# Columns of the processed file and of feed_items' content, in order (the contract between transform and
# persist). `record_hash` is computed over these minus `item_id`.
FEED_ITEM_COLUMNS: tuple[str, ...] = (
    "item_id",
    "feed",
    "item_key",
    "guid",
    "title",
    "link",
    "summary",
    "author",
    "categories",
    "published_at",
)
