"""The plans of a users search on real SQLite and PostgreSQL over 20,000 users: what a search runs reads the
search index of migration 0004 (FTS5 trigrams, pg_trgm), never the whole table, and a kept list's users are
read by id."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import sqlalchemy as sa

from models.db import engine_for

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


def fill_many(url: str, n: int) -> None:
    """n plain users (one in 26 an Ava), and the statistics PostgreSQL's planner goes by."""
    sql = f"""
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
        INSERT INTO processed_users (id, first_name, last_name, email, username, age, gender, department,
            department_code, source, record_hash, first_seen_at, updated_at, run_id, status)
        SELECT i, CASE WHEN i % 26 = 0 THEN 'Ava' ELSE 'F' || (i % 26) END, 'L' || (i % 97), 'u' || i || '@example.test', 'user' || i, 18 + i % 48,
            CASE WHEN i % 2 = 0 THEN 'female' ELSE 'male' END, CASE WHEN i % 12 = 0 THEN 'Engineering' ELSE 'Sales' END,
            'X', 'dummyjson', 'h' || i, :t, :t, 'run-1', 'current'
        FROM n"""
    with engine_for(url).begin() as conn:
        conn.execute(sa.text(sql).bindparams(sa.bindparam("t", T0, type_=sa.DateTime(timezone=True))))
        if conn.dialect.name == "postgresql":  # the index's pending entries into its tree, as VACUUM would
            conn.exec_driver_sql("SELECT gin_clean_pending_list('ix_processed_users_search')")
        conn.exec_driver_sql("ANALYZE")


def explain(conn: sa.Connection, stmt: sa.Select, params: dict) -> str:
    """The database's plan for the statement with these values."""
    compiled = stmt.compile(conn)
    values = compiled.construct_params(params)
    if conn.dialect.name == "sqlite":
        args = tuple(values[name] for name in compiled.positiontup or ())
        return "\n".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", args))
    return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}", values))


def test_a_rare_search_reads_the_index_not_the_table(database_url):
    """What a search of three characters or more that matches nothing runs (the ids of its matches, to keep,
    its total, a page read from the table), alone or with another filter, reads the search index over 20,000
    users, never the whole table; a kept list's users are read (and sorted) by id."""
    from api.users_statements import (
        count_statement,
        filter_params,
        ids_statement,
        page_statement,
        rows_by_id_statement,
        sorted_ids_statement,
    )

    fill_many(database_url, 20_000)
    engine = engine_for(database_url)
    dialect = engine.dialect.name
    whole_table = re.compile(r"SCAN processed_users$|Seq Scan", re.M)
    for filters in ({"search": "zzzz"}, {"search": "zzzz", "department": "Engineering"}):
        shape = {"keys": tuple(sorted(filters)), "status": "current", "dialect": dialect}
        shape["plan"] = "fts" if dialect == "sqlite" else "row"
        params = filter_params(filters=filters, status="current") | {"limit": 21, "offset": 0}
        statements = (
            ids_statement(**shape),
            count_statement(**shape),
            page_statement(**shape, sort="id", order="asc", part=None),
        )
        with engine.connect() as conn:
            for stmt in statements:
                explained = explain(conn, stmt, params)
                assert "processed_users_search" in explained and not whole_table.search(explained), explained
            given = {"ids": "[1, 2, 3]" if dialect == "sqlite" else [1, 2, 3]}
            del shape["plan"]
            for stmt in (sorted_ids_statement(sort="age", dialect=dialect), rows_by_id_statement(**shape, sort="age")):
                explained = explain(conn, stmt, params | given)
                assert re.search(r"INTEGER PRIMARY KEY|pk_processed_users", explained), explained
                assert not whole_table.search(explained), explained
