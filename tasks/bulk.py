"""Columnar bulk statements for both databases: multi-row INSERTs on SQLite, COPY on PostgreSQL, lookups and
updates by many keys at once, timestamps in the form each database reads back. No ORM, no Python object per
row or key."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from itertools import chain

import polars as pl
from sqlalchemy import Connection, Table

# most rows per multi-row INSERT on SQLite, cut by `statement_sizes`
SQLITE_ROWS_PER_INSERT = 128
SQLITE_MAX_PARAMS = 32_766  # SQLite's limit on parameters in one statement (since 3.32)
COPY_WRITE_BYTES = 1 << 20  # the CSV a COPY to PostgreSQL is written in: slices of about this much of a frame
RESTAMPED_ON_FAILURE = ("run_id", "last_seen_at", "error_reason")  # what a failure seen again updates


SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy's DateTime stores a UTC time on SQLite (naive text)
SQLITE_READ_TIME = "%Y-%m-%d %H:%M:%S%.f"  # the same, as Polars reads it


def time_literal(conn: Connection, when: datetime) -> pl.Expr:
    """A timestamp literal in the form each database's DateTime column reads back."""
    if conn.dialect.name == "sqlite":
        return pl.lit(when.replace(tzinfo=None).strftime(SQLITE_TIME))
    return pl.lit(when.isoformat())


def time_param(conn: Connection, when: datetime) -> datetime | str:
    """A timestamp as a driver parameter, in the form each database's DateTime column reads back."""
    return when.replace(tzinfo=None).strftime(SQLITE_TIME) if conn.dialect.name == "sqlite" else when


def placeholder(conn: Connection) -> str:
    """The driver's parameter mark, for statements run with `exec_driver_sql`."""
    return "%s" if conn.dialect.name == "postgresql" else "?"


def update_verb(conn: Connection) -> str:
    """UPDATE; on SQLite OR FAIL, which spares it copying each page the statement touches to a statement
    journal first (a row it refuses still fails the transaction, as on PostgreSQL)."""
    return "UPDATE" if conn.dialect.name == "postgresql" else "UPDATE OR FAIL"


def statement_sizes(rows: int, most: int) -> list[int]:
    """`rows` cut into statements of at most `most`, every size a power of two: full ones, then the
    rest by its binary digits. However the pieces fall, a handful of statement shapes, where one per row or
    key count would fill Python sqlite3's cache (128 prepared statements per connection, up to a MB each)
    and SQLite's memory would grow with the run."""
    step = 1 << (max(1, most).bit_length() - 1)
    full, rest = divmod(rows, step)
    return [step] * full + [1 << b for b in reversed(range(rest.bit_length())) if rest >> b & 1]


def _sqlite_insert(conn: Connection, table_name: str, df: pl.DataFrame, conflict: str = "") -> None:
    """INSERT ... VALUES (...), (...), ... of up to SQLITE_ROWS_PER_INSERT rows at a time, on the
    transaction's own connection. Not `executemany`: it gives the GIL back and takes it again for every row,
    and while other threads run Python (the other stages) each row would wait for it.

    OR FAIL: a row the database refuses still raises, and the caller's transaction is rolled back whole, as
    before. With the default (ABORT), SQLite had to be able to undo one statement's earlier rows on its own,
    so it copied every page a statement touched to a statement journal first (`make bench` checks that
    persist writes its WAL frames and nothing besides)."""
    head = f"INSERT OR FAIL INTO {table_name} ({', '.join(df.columns)}) VALUES "
    row = "(" + ", ".join("?" * df.width) + ")"
    start = 0
    dbapi = conn.connection.driver_connection
    assert dbapi is not None  # (an open connection's)
    with closing(dbapi.cursor()) as cur:
        for size in statement_sizes(df.height, min(SQLITE_ROWS_PER_INSERT, SQLITE_MAX_PARAMS // df.width)):
            part = df.slice(start, size)
            cur.execute(head + ", ".join([row] * size) + conflict, list(chain.from_iterable(part.iter_rows())))
            start += size


def bulk_insert(conn: Connection, table: Table, df: pl.DataFrame, *, ignore_conflicts: str | None = None) -> None:
    """Columnar bulk load: COPY on PostgreSQL, multi-row INSERTs on SQLite (no ORM, no dicts)."""
    if df.height == 0:
        return
    if conn.dialect.name == "postgresql":
        _copy(conn, table.name, df)
    else:
        _sqlite_insert(
            conn, table.name, df, f" ON CONFLICT ({ignore_conflicts}) DO NOTHING" if ignore_conflicts else ""
        )


def _copy(conn: Connection, table_name: str, df: pl.DataFrame) -> None:
    dbapi = conn.connection.driver_connection
    assert dbapi is not None  # (an open connection's)
    with dbapi.cursor() as cur:
        with cur.copy(f"COPY {table_name} ({', '.join(df.columns)}) FROM STDIN (FORMAT csv, NULL '\\N')") as copy:
            for data in csv_slices(df):
                copy.write(data)


def _staged(conn: Connection, table: Table, df: pl.DataFrame) -> str:
    """`df` in a temporary table with `table`'s columns of the same names (COPY on PostgreSQL, multi-row
    INSERTs on SQLite); returns its name, for an INSERT ... SELECT or UPDATE ... FROM it: many rows upserted
    or updated in one statement, no Python object per value."""
    stage, cols = f"staged_{table.name}", ", ".join(df.columns)
    if conn.dialect.name == "postgresql":  # every column: a later statement of the transaction may stage others
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DROP AS SELECT * FROM {table.name} WITH NO DATA"
        )
        conn.exec_driver_sql(f"TRUNCATE {stage}")
        _copy(conn, stage, df)
    else:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{stage}")
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {stage} AS SELECT {cols} FROM {table.name} WHERE 0")
        _sqlite_insert(conn, stage, df)
    return stage


def csv_slices(df: pl.DataFrame, slice_bytes: int = COPY_WRITE_BYTES) -> Iterator[memoryview]:
    """The frame as CSV for COPY, a slice of about `slice_bytes` of the frame at a time. Polars renders a
    frame's whole CSV in memory and hands it over in one write, so one call for a piece held the piece's CSV
    twice (Polars' and ours); in slices, a slice's. Nulls are an unquoted \\N and every text is quoted, so
    a text that reads \\N stays text (COPY takes only an unquoted \\N for null)."""
    step = max(1, int(df.height * slice_bytes // max(1, df.estimated_size())))
    for start in range(0, df.height, step):
        buf = io.BytesIO()
        df.slice(start, step).write_csv(buf, include_header=False, null_value="\\N", quote_style="non_numeric")
        yield buf.getbuffer()  # (no copy of the slice's CSV)


def key_set(conn: Connection, keys: pl.Series) -> tuple[str, tuple]:
    """A SELECT of `keys`, one row each, and its one parameter, which Polars writes whatever the keys hold: an
    array literal on PostgreSQL, a JSON document on SQLite (read by `json_each`). No Python object per key: a
    batch's 25,000 hashes had been a list of 25,000 strings, made and dropped at every lookup beside the other
    stages' work (docs/benchmarks.md). `keys`: no nulls."""
    if conn.dialect.name == "postgresql":
        quoted = pl.concat_str(
            pl.lit('"'),
            pl.col("k").str.replace_all("\\", "\\\\", literal=True).str.replace_all('"', '\\"', literal=True),
            pl.lit('"'),
        )
        literal = keys.cast(pl.String).to_frame("k").select(quoted.str.join(",")).item()
        return f"SELECT unnest(%s::{_array_type(keys)}[])", ("{" + literal + "}",)
    return "SELECT value FROM json_each(?, '$.k')", (keys.implode().to_frame("k").write_ndjson(),)


def _array_type(keys: pl.Series) -> str:
    return "bigint" if keys.dtype.is_integer() else "text"


def key_filter(conn: Connection, key: str, keys: pl.Series) -> tuple[str, tuple]:
    """A WHERE clause "`key` is among `keys`" and its one parameter (`key_set`); SQLite answers from the key's
    index, PostgreSQL from `= ANY` of the array."""
    select, params = key_set(conn, keys)
    if conn.dialect.name == "postgresql":
        return f"{key} = ANY(%s::{_array_type(keys)}[])", params
    return f"{key} IN ({select})", params


def staged_keys(conn: Connection, name: str, keys: pl.Series, chunk: int) -> str:
    """Integer `keys` (unique, no nulls) in a temporary table `name` keyed by them, `chunk` at a time, for
    statements that test membership of more keys than one parameter should carry (a million ids, and the
    database's working copy of them, had been a 1M run's peak memory). Returns the table's name."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} (id bigint PRIMARY KEY) ON COMMIT DROP")
    else:
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} (id INTEGER PRIMARY KEY)")
    conn.exec_driver_sql(f"DELETE FROM {name}")
    for start in range(0, keys.len(), chunk):
        select, params = key_set(conn, keys.slice(start, chunk))
        conn.exec_driver_sql(f"INSERT INTO {name} (id) {select}", params)
    return name


def lookup(conn: Connection, table: Table | str, key: str, columns: list[str], keys: pl.Series) -> list[tuple]:
    """Rows (key, *columns) whose `key` is among `keys` (each row once; nulls left out)."""
    keys = keys.drop_nulls().unique()
    if keys.is_empty():
        return []
    where, params = key_filter(conn, key, keys)
    name = table if isinstance(table, str) else table.name
    return list(conn.exec_driver_sql(f"SELECT {', '.join([key, *columns])} FROM {name} WHERE {where}", params).all())


def lookup_frame(
    conn: Connection,
    table: Table | str,
    key: str,
    columns: list[str],
    keys: pl.Series,
    schema: dict[str, pl.DataType],
    *,
    time_column: str | None = None,
) -> pl.DataFrame:
    """`lookup`'s rows as a frame: the key (named `key`), `schema`'s columns, and with `time_column` a last column of
    that name read as a UTC timestamp."""
    schema = {key: pl.Int64() if keys.dtype.is_integer() else pl.String(), **schema}
    if conn.dialect.name != "sqlite" or any(dtype.is_float() for dtype in schema.values()):
        rows = lookup(conn, table, key, columns, keys)
        if time_column:
            return frame_with_time(conn, rows, schema, time_column)
        return pl.DataFrame(rows, schema=schema, orient="row", strict=False)
    keys = keys.drop_nulls().unique()
    where, params = key_filter(conn, key, keys) if not keys.is_empty() else ("0", ())
    name = table if isinstance(table, str) else table.name
    if not time_column:
        return _json_rows(conn, name, [key, *columns], where, params, schema)
    df = _json_rows(conn, name, [key, *columns], where, params, {**schema, time_column: pl.String()})
    return df.with_columns(pl.col(time_column).str.to_datetime(SQLITE_READ_TIME, time_zone="UTC", strict=False))


def _json_rows(
    conn: Connection, table_name: str, exprs: list[str], where: str, params: tuple, schema: dict
) -> pl.DataFrame:
    """SQLite: `exprs` of the rows matching `where`, as one JSON document SQLite writes and Polars reads (a Python
    tuple per row held the GIL while the other stages wait for it). `schema`: a dtype per expression, no floats
    (SQLite writes a REAL in JSON with 15 digits)."""
    fields = ", ".join(f"'{i}', {expr}" for i, expr in enumerate(exprs))
    text = conn.exec_driver_sql(
        f"SELECT json_group_array(json_object({fields})) FROM {table_name} WHERE {where}", params
    ).scalar_one()  # (an aggregate: one row, '[]' when nothing matches)
    read = {str(i): pl.Int64() if dtype == pl.Boolean else dtype for i, dtype in enumerate(schema.values())}
    df = pl.read_json(io.BytesIO(text.encode()), schema=read)
    df.columns = list(schema)
    return df.cast(schema)


def stored_hashes(conn: Connection, table: Table, key: str, keys: pl.Series) -> pl.DataFrame:
    """(`_key`, `_stored` record_hash) for the keys already stored."""
    return lookup_frame(conn, table, key, ["record_hash"], keys, {"_stored": pl.String()}).rename({key: "_key"})


def _with_times(
    conn: Connection, rows: pl.DataFrame, now: datetime, time_columns: tuple[str, ...], **constants
) -> pl.DataFrame:
    """Rows with the `time_columns` columns set to `now` and one column per constant."""
    return rows.with_columns(
        **dict.fromkeys(time_columns, time_literal(conn, now)), **{k: pl.lit(v) for k, v in constants.items()}
    )


def insert_versions(conn: Connection, table: Table, rows: pl.DataFrame, *, now: datetime, **constants) -> int:
    """Rows known to be new versions, stamped and inserted (a version stored meanwhile is skipped)."""
    bulk_insert(
        conn, table, _with_times(conn, rows, now, ("inserted_at",), **constants), ignore_conflicts="record_hash"
    )
    return rows.height


def insert_new_versions(conn: Connection, table: Table, rows: pl.DataFrame, *, now: datetime, **constants) -> int:
    """Rows whose content hash is not stored yet: the raw layer keeps each version of a record once."""
    if rows.height == 0:
        return 0
    seen = stored_hashes(conn, table, "record_hash", rows.get_column("record_hash"))
    return insert_versions(
        conn, table, rows.join(seen, left_on="record_hash", right_on="_key", how="anti"), now=now, **constants
    )


def upsert_failures(conn: Connection, table: Table, dlq: pl.DataFrame, *, now: datetime, **constants) -> int:
    """New failures inserted; a failure seen before is re-stamped with this sighting (no second row). Returns
    how many were new."""
    if dlq.height == 0:
        return 0
    dlq = dlq.unique(subset="record_hash", keep="first", maintain_order=True)
    seen = stored_hashes(conn, table, "record_hash", dlq.get_column("record_hash"))
    rows = _with_times(conn, dlq, now, ("inserted_at", "last_seen_at"), **constants)
    conflict = " ON CONFLICT (record_hash) DO UPDATE SET " + ", ".join(
        f"{c} = excluded.{c}" for c in RESTAMPED_ON_FAILURE
    )
    if conn.dialect.name == "sqlite":
        _sqlite_insert(conn, table.name, rows, conflict)
    else:
        cols = ", ".join(rows.columns)
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({cols}) SELECT {cols} FROM {_staged(conn, table, rows)}{conflict}"
        )
    return dlq.height - seen.height


def frame_with_time(conn: Connection, rows: list[tuple], schema: dict, time_column: str) -> pl.DataFrame:
    """Looked-up rows as a frame whose last column is a UTC timestamp (SQLite returns it as text)."""
    raw_type = pl.String if conn.dialect.name == "sqlite" else pl.Datetime("us", "UTC")
    df = pl.DataFrame(rows, schema={**schema, time_column: raw_type}, orient="row")
    if conn.dialect.name == "sqlite":
        df = df.with_columns(pl.col(time_column).str.to_datetime(SQLITE_READ_TIME, time_zone="UTC", strict=False))
    return df


def time_text(conn: Connection, col: str) -> pl.Expr:
    fmt = SQLITE_TIME if conn.dialect.name == "sqlite" else "%Y-%m-%dT%H:%M:%S.%f+00:00"
    return pl.col(col).dt.convert_time_zone("UTC").dt.strftime(fmt)


def update_rows(conn: Connection, table: Table, rows: pl.DataFrame, *, key: str = "id") -> None:
    """Rows of `table` set to `rows`' values, matched on `key`: staged, then one UPDATE ... FROM (on SQLite OR
    FAIL, as the inserts: no statement journal; a row the database refuses still fails the transaction)."""
    stage = _staged(conn, table, rows)
    conn.exec_driver_sql(
        f"{update_verb(conn)} {table.name} SET {', '.join(f'{c} = s.{c}' for c in rows.columns if c != key)} "
        f"FROM {stage} AS s WHERE {table.name}.{key} = s.{key}"
    )
