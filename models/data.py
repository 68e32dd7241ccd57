"""The unified view over every source: one normalised shape for users (API, CSV) and feed items."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import SQLModel

from models.users import PageMeta


class DataItemPublic(SQLModel):
    source: str  # dummyjson | csv | feed
    source_id: str
    title: str | None
    description: str | None
    category: str | None  # users: department; feed items: the feed
    value: float | None  # users: age; feed items: none
    timestamp: datetime | None  # users: updated_at; feed items: published (else updated) time


class DataListPublic(SQLModel):
    data: list[DataItemPublic]
    total: int
    page: int
    page_size: int
    has_more: bool
    meta: PageMeta
