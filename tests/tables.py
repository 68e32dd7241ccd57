"""Reading a test database back: the rows of a query, a table's row count."""

from __future__ import annotations

from sqlalchemy import text

from models.db import engine_for


def rows(url: str, sql: str, **params) -> list:
    with engine_for(url).connect() as conn:
        return conn.execute(text(sql), params).all()


def count(url: str, table: str) -> int:
    return rows(url, f"SELECT count(*) FROM {table}")[0][0]
