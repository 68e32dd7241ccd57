"""tasks/bulk.py against real SQLite / PostgreSQL: multi-row INSERTs and COPY store every row as it is, and
lookups find exactly the stored keys, in a few statement shapes."""

from __future__ import annotations

import io
import sqlite3

import polars as pl
import pytest

from models.db import engine_for
from tests.conftest import migrated
from tests.tables import count


def test_sqlite_statements_come_in_a_few_shapes_whatever_the_batch_sizes(settings_env, tmp_path):
    """Python's sqlite3 keeps up to 128 prepared statements per connection, and a multi-row INSERT or a long
    IN list holds hundreds of KB to a MB prepared. One statement per row count (each piece's remainder, each
    batch's number of keys) filled that cache as a run went on: SQLite's memory grew from 15 MB at 100k users
    to 23 MB at 1M. Inserts and lookups of every size must store every row and find every key (no more)
    with a handful of statement shapes: inserts in a few sizes, each lookup one statement whatever the keys."""
    from sqlalchemy import Column, Integer, MetaData, String, Table

    from tasks.bulk import bulk_insert, lookup

    settings_env()
    engine = engine_for(migrated(f"sqlite:///{tmp_path / 'shapes.db'}"))
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("a", String), Column("b", String))
    table.create(engine)
    sizes: dict[str, set[int]] = {"insert": set(), "in": set()}
    shapes: set[str] = set()

    def note(sql: str) -> None:  # the statements as SQLite runs them, values bound in
        if sql.startswith("INSERT OR FAIL INTO t "):
            sizes["insert"].add(sql.count("), (") + 1)
        elif "json_each(" in sql:
            shapes.add(sql.split("json_each(", 1)[0])
        elif " IN (" in sql:
            sizes["in"].add(sql.split(" IN (", 1)[1].count(",") + 1)

    heights, start = range(1, 700, 7), 0
    with engine.begin() as conn:
        conn.connection.driver_connection.set_trace_callback(note)
        for h in heights:
            ids = range(start, start + h)
            bulk_insert(
                conn, table, pl.DataFrame({"id": ids, "a": [f"a{i}" for i in ids], "b": [f"b {i}" for i in ids]})
            )
            wanted = list(range(start - h, start + h))  # h stored before this batch (fewer at first), h just stored
            stored = [i for i in wanted if i >= 0]
            assert sorted(lookup(conn, table, "id", ["b"], pl.Series(wanted))) == [(i, f"b {i}") for i in stored]
            plain = pl.Series([f"a{i}" for i in wanted])
            assert sorted(lookup(conn, table, "a", ["id"], plain)) == sorted((f"a{i}", i) for i in stored)
            spaced = pl.Series([f"b {i}" for i in wanted])
            assert sorted(lookup(conn, table, "b", ["id"], spaced)) == sorted((f"b {i}", i) for i in stored)
            start += h
        conn.connection.driver_connection.set_trace_callback(None)
    assert count(f"sqlite:///{tmp_path / 'shapes.db'}", "t") == sum(heights)
    assert sizes["insert"] <= {1 << b for b in range(8)}, sorted(sizes["insert"])  # 1 ... 128 rows
    assert len(sizes["in"]) <= 12 and all(n & (n - 1) == 0 for n in sizes["in"]), sorted(sizes["in"])
    assert not sizes["in"], sorted(sizes["in"])  # no lookup expands into an IN list
    assert len(shapes) == 3, shapes  # one for each of the three lookups


AWKWARD_TEXTS = ["\\N", "", None, "a,b", 'say "hi"', "back\\slash", "ü €", '{"k": "v, \\"w\\""}', " padded "]


def test_bulk_insert_stores_awkward_text_as_it_is(database_url):
    """COPY's CSV on PostgreSQL (multi-row INSERTs on SQLite): a text that reads \\N is text, not a null;
    quotes, commas, backslashes, blanks and non-ASCII text come back as they went in; a null stays null."""
    from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table

    from tasks.bulk import bulk_insert

    engine = engine_for(database_url)
    table = Table(
        "awkward", MetaData(), Column("id", Integer, primary_key=True), Column("a", String), Column("ok", Boolean)
    )
    table.drop(engine, checkfirst=True)
    table.create(engine)
    try:
        df = pl.DataFrame(
            {"id": range(len(AWKWARD_TEXTS)), "a": AWKWARD_TEXTS, "ok": [i % 2 == 0 for i in range(len(AWKWARD_TEXTS))]}
        )
        with engine.begin() as conn:
            bulk_insert(conn, table, df)
            stored = conn.exec_driver_sql("SELECT id, a, ok FROM awkward ORDER BY id").all()
        assert [tuple(r) for r in stored] == list(df.iter_rows())
    finally:
        table.drop(engine)


def test_lookup_finds_every_stored_key_and_no_other(database_url):
    """Keys go to the database as one parameter Polars writes: ids, hashes and texts an array literal or JSON
    must quote or escape each find exactly the stored keys among those asked for, nulls and repeats included,
    on both databases."""
    from sqlalchemy import BigInteger, Column, MetaData, String, Table

    from tasks.bulk import bulk_insert, lookup

    engine = engine_for(database_url)
    table = Table(
        "lookups",
        MetaData(),
        Column("id", BigInteger, primary_key=True),
        Column("h", String, unique=True),
        Column("t", String, unique=True),
    )
    table.drop(engine, checkfirst=True)
    table.create(engine)
    odd = [t for t in AWKWARD_TEXTS if t] + [
        "{a,b}",
        "NULL",
        "x y",
        "tab\there",
        "new\nline",
    ]  # texts an array literal or JSON must quote
    try:
        n = 5_000
        stored = pl.DataFrame(
            {
                "id": range(0, 2 * n, 2),
                "h": [f"{i:064x}" for i in range(0, 2 * n, 2)],
                "t": [odd[i % len(odd)] * (1 + i // len(odd)) for i in range(n)],
            }
        )
        with engine.begin() as conn:
            bulk_insert(conn, table, stored)
            asked_ids = pl.Series([*range(2 * n), None, 4, 4, 2**40])
            assert sorted(lookup(conn, table, "id", ["h"], asked_ids)) == sorted(stored.select("id", "h").iter_rows())
            asked_hashes = pl.Series([f"{i:064x}" for i in range(2 * n)] + [None, "ab-c.d:e_f"])
            assert sorted(lookup(conn, table, "h", ["id"], asked_hashes)) == sorted(
                stored.select("h", "id").iter_rows()
            )
            asked_texts = pl.concat([stored.get_column("t"), pl.Series(["not stored", None, "", "\\N"])])
            assert sorted(lookup(conn, table, "t", ["id"], asked_texts)) == sorted(stored.select("t", "id").iter_rows())
            assert lookup(conn, table, "id", ["h"], pl.Series([], dtype=pl.Int64)) == []
            assert lookup(conn, table, "h", ["id"], pl.Series([None], dtype=pl.String)) == []
    finally:
        table.drop(engine)


def test_copy_csv_comes_in_slices_that_add_up_to_the_frame():
    """The CSV for a COPY is rendered a slice of the frame at a time (a piece's whole CSV was held twice at
    once); the slices joined are the frame's CSV, every row once, in order."""
    from tasks.bulk import csv_slices

    n = 3_000
    df = pl.DataFrame(
        {"id": range(n), "line": [f'{{"id": {i}, "text": "{"x" * 1_000}", "q": "a,\\"b\\""}}' for i in range(n)]}
    )
    slices = [bytes(s) for s in csv_slices(df, slice_bytes=1 << 20)]
    assert len(slices) >= 3 and max(map(len, slices)) <= 2 << 20, [len(s) for s in slices]
    whole = df.write_csv(include_header=False, null_value="\\N", quote_style="non_numeric").encode()
    assert b"".join(slices) == whole
    back = pl.read_csv(io.BytesIO(b"".join(slices)), has_header=False, new_columns=["id", "line"])
    assert back.equals(df)


def test_a_row_the_database_refuses_halfway_through_a_statement_leaves_nothing_of_the_batch(settings_env, tmp_path):
    """The multi-row INSERTs stop at a refused row with the database's error, and the batch's transaction,
    rows before it in the same statement included, is rolled back whole."""
    from sqlalchemy import Column, Integer, MetaData, String, Table

    from tasks.bulk import bulk_insert

    settings_env()
    url = migrated(f"sqlite:///{tmp_path / 'refuse.db'}")
    engine = engine_for(url)
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("a", String, nullable=False))
    table.create(engine)
    names = [f"user {i}" for i in range(300)]
    names[200] = None  # in the second statement of 128 rows, after 72 rows of it
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"), engine.begin() as conn:
        bulk_insert(conn, table, pl.DataFrame({"id": range(300), "a": names}))
    assert count(url, "t") == 0
    with engine.begin() as conn:  # the same rows, fixed, go in
        bulk_insert(conn, table, pl.DataFrame({"id": range(300), "a": [n or "user 200" for n in names]}))
    assert count(url, "t") == 300
