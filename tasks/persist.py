"""Write a batch to raw_users / processed_users / dlq_users in one transaction.

Idempotent by construction: raw and DLQ rows are keyed by the record's content hash (a retried batch or a
re-run adds nothing twice), processed rows by user id with a hash of their content (new rows inserted,
changed rows updated, unchanged rows left alone)."""

from __future__ import annotations

import io
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from itertools import chain

import polars as pl
import polars_hash  # noqa: F401
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Connection, Engine, Table
from sqlalchemy.exc import DBAPIError, OperationalError

from models.db import write_transaction
from models.users import PROCESSED_COLUMNS, DlqUser, ProcessedUser, RawUser
from tasks.retry import retry_when
from tasks.transform import (
    raw_keys,
    read_dlq_span,
    read_frame,
    read_lines,
    read_pieces,
    read_processed_span,
    read_span,
)

# most rows per multi-row INSERT on SQLite, cut by `statement_sizes`
SQLITE_ROWS_PER_INSERT = 128
SQLITE_MAX_PARAMS = 32_766  # SQLite's limit on parameters in one statement (since 3.32)
COPY_WRITE_BYTES = 1 << 20  # the CSV a COPY to PostgreSQL is written in: slices of about this much of a frame
# persist works through a batch's staged files in pieces of about this many bytes (about 3,000 raw DummyJSON
# users): fewer, larger pieces than transform's, since each costs persist lookups and statements of its own
PERSIST_PIECE_BYTES = 4 << 20
RESTAMPED_ON_FAILURE = ("run_id", "last_seen_at", "error_reason")  # what a failure seen again updates


def _stamp(conn: Connection, when: datetime) -> pl.Expr:
    """A timestamp literal in the form each database's DateTime column reads back."""
    if conn.dialect.name == "sqlite":
        return pl.lit(when.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f"))
    return pl.lit(when.isoformat())


def statement_sizes(rows: int, most: int) -> list[int]:
    """`rows` cut into statements of at most `most`, every size a power of two: full ones, then the
    rest by its binary digits. However the pieces fall, a handful of statement shapes, where one per row or
    key count had filled Python sqlite3's cache (128 prepared statements per connection, up to a MB each):
    SQLite's memory grew with the run, 15 MB at 100k users, 23 MB at 1M."""
    step = 1 << (max(1, most).bit_length() - 1)
    full, rest = divmod(rows, step)
    return [step] * full + [1 << b for b in reversed(range(rest.bit_length())) if rest >> b & 1]


def _sqlite_insert(conn: Connection, table_name: str, df: pl.DataFrame, conflict: str = "") -> None:
    """INSERT ... VALUES (...), (...), ... of up to SQLITE_ROWS_PER_INSERT rows at a time, on the
    transaction's own connection. Not `executemany`: it gives the GIL back and takes it again for every row,
    and while other threads run Python (the other stages) each row waited for it, up to 5 ms.

    OR FAIL: a row the database refuses still raises, and the caller's transaction is rolled back whole, as
    before. With the default (ABORT), SQLite had to be able to undo one statement's earlier rows on its own,
    so it copied every page a statement touched to a statement journal first: 1.5 GB of temporary file
    writes for 100k users, three of every four bytes persist wrote (strace)."""
    head = f"INSERT OR FAIL INTO {table_name} ({', '.join(df.columns)}) VALUES "
    row = "(" + ", ".join("?" * df.width) + ")"
    start = 0
    with closing(conn.connection.driver_connection.cursor()) as cur:
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
        _sqlite_insert(conn, table.name, df, f" ON CONFLICT ({ignore_conflicts}) DO NOTHING" if ignore_conflicts else "")


def _copy(conn: Connection, table_name: str, df: pl.DataFrame) -> None:
    with conn.connection.driver_connection.cursor() as cur:
        with cur.copy(f"COPY {table_name} ({', '.join(df.columns)}) FROM STDIN (FORMAT csv, NULL '\\N')") as copy:
            for data in csv_slices(df):
                copy.write(data)


def _staged(conn: Connection, table: Table, df: pl.DataFrame) -> str:
    """`df` in a temporary table with `table`'s columns of the same names (COPY on PostgreSQL, multi-row
    INSERTs on SQLite); returns its name, for an INSERT ... SELECT or UPDATE ... FROM it: many rows upserted
    or updated in one statement, no Python object per value."""
    stage, cols = f"staged_{table.name}", ", ".join(df.columns)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DROP AS "
                             f"SELECT {cols} FROM {table.name} WITH NO DATA")
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
    step = max(1, df.height * slice_bytes // max(1, df.estimated_size()))
    for start in range(0, df.height, step):
        buf = io.BytesIO()
        df.slice(start, step).write_csv(buf, include_header=False, null_value="\\N", quote_style="non_numeric")
        yield buf.getbuffer()  # (no copy of the slice's CSV)


def lookup(conn: Connection, table: Table, key: str, columns: list[str], keys: pl.Series) -> list[tuple]:
    """Rows (key, *columns) whose `key` is among `keys` (each row once; nulls left out). The keys go as one
    parameter that Polars writes, whatever they hold: an array literal on PostgreSQL, a JSON document on
    SQLite (read by `json_each`; SQLite answers from the key's index). No Python object per key: a batch's
    25,000 hashes had been a list of 25,000 strings and, on PostgreSQL, two more small objects per key in the
    driver's binary array, made and dropped at every lookup beside the other stages' work, and Python's
    allocator kept the space they spread over (README, Benchmarks)."""
    keys = keys.drop_nulls().unique()
    if keys.is_empty():
        return []
    select = f"SELECT {', '.join([key, *columns])} FROM {table.name} WHERE {key}"
    if conn.dialect.name == "postgresql":
        quoted = pl.concat_str(pl.lit('"'), pl.col("k").str.replace_all("\\", "\\\\", literal=True)
                               .str.replace_all('"', '\\"', literal=True), pl.lit('"'))
        literal = keys.cast(pl.String).to_frame("k").select(quoted.str.join(",")).item()
        array_type = "bigint" if keys.dtype.is_integer() else "text"
        return conn.exec_driver_sql(f"{select} = ANY(%s::{array_type}[])", ("{" + literal + "}",)).all()
    document = keys.implode().to_frame("k").write_ndjson()
    return conn.exec_driver_sql(f"{select} IN (SELECT value FROM json_each(?, '$.k'))", (document,)).all()


def stored_hashes(conn: Connection, table: Table, key: str, keys: pl.Series) -> pl.DataFrame:
    """(`_key`, `_stored` record_hash) for the keys already stored."""
    rows = lookup(conn, table, key, ["record_hash"], keys)
    return pl.DataFrame(rows, schema={"_key": pl.String, "_stored": pl.String}, orient="row")


def raw_frame(data: bytes, keys: pl.DataFrame | None = None, *, id_path: str = "$.id",
              id_column: str = "source_id") -> pl.DataFrame:
    """Staged lines as raw rows: the source's id, the content hash, the line (each distinct line once).
    `keys`: the lines' (id, hash) as transform worked them out, else they are worked out here."""
    lines = read_lines(data, "data")
    if keys is not None and keys.height == lines.height:
        rows = keys.hstack(lines)
    else:
        rows = lines.select(*raw_keys(pl.col("data"), id_path=id_path, id_column=id_column), "data")
    return rows.unique(subset="record_hash", keep="first", maintain_order=True)


def _stamped(conn: Connection, rows: pl.DataFrame, now: datetime, stamps: tuple[str, ...], **constants) -> pl.DataFrame:
    """Rows with the `stamps` columns set to `now` and one column per constant."""
    return rows.with_columns(**dict.fromkeys(stamps, _stamp(conn, now)), **{k: pl.lit(v) for k, v in constants.items()})


def insert_versions(conn: Connection, table: Table, rows: pl.DataFrame, *, now: datetime, **constants) -> int:
    """Rows known to be new versions, stamped and inserted (a version stored meanwhile is skipped)."""
    bulk_insert(conn, table, _stamped(conn, rows, now, ("inserted_at",), **constants), ignore_conflicts="record_hash")
    return rows.height


def insert_new_versions(conn: Connection, table: Table, rows: pl.DataFrame, *, now: datetime, **constants) -> int:
    """Rows whose content hash is not stored yet: the raw layer keeps each version of a record once."""
    if rows.height == 0:
        return 0
    seen = stored_hashes(conn, table, "record_hash", rows.get_column("record_hash"))
    return insert_versions(conn, table, rows.join(seen, left_on="record_hash", right_on="_key", how="anti"), now=now,
                           **constants)


def upsert_failures(conn: Connection, table: Table, dlq: pl.DataFrame, *, now: datetime, **constants) -> int:
    """New failures inserted; a failure seen before is re-stamped with this run (no second row)."""
    if dlq.height == 0:
        return 0
    dlq = dlq.unique(subset="record_hash", keep="first", maintain_order=True)
    seen = stored_hashes(conn, table, "record_hash", dlq.get_column("record_hash"))
    rows = _stamped(conn, dlq, now, ("inserted_at", "last_seen_at"), **constants)
    conflict = " ON CONFLICT (record_hash) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in RESTAMPED_ON_FAILURE)
    if conn.dialect.name == "sqlite":
        _sqlite_insert(conn, table.name, rows, conflict)
    else:
        cols = ", ".join(rows.columns)
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({cols}) SELECT {cols} FROM {_staged(conn, table, rows)}{conflict}")
    return dlq.height - seen.height


def _frame(conn: Connection, rows: list[tuple], schema: dict, stamp: str) -> pl.DataFrame:
    """Looked-up rows as a frame whose last column is a UTC timestamp (SQLite returns it as text)."""
    raw_type = pl.String if conn.dialect.name == "sqlite" else pl.Datetime("us", "UTC")
    df = pl.DataFrame(rows, schema={**schema, stamp: raw_type}, orient="row")
    if conn.dialect.name == "sqlite":
        df = df.with_columns(pl.col(stamp).str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_zone="UTC", strict=False))
    return df


def _stamp_col(conn: Connection, col: str) -> pl.Expr:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if conn.dialect.name == "sqlite" else "%Y-%m-%dT%H:%M:%S.%f+00:00"
    return pl.col(col).dt.convert_time_zone("UTC").dt.strftime(fmt)


def upsert_processed(conn: Connection, processed: pl.DataFrame, *, run_id: str, now: datetime) -> dict[str, int]:
    """Insert new users, update those whose content changed, leave the rest alone. When sources disagree the
    newest record wins: a row whose `_as_of` (when its source produced it) is older than the stored row's
    `source_updated_at` does not overwrite it."""
    if processed.height == 0:
        return {"inserted": 0, "updated": 0, "unchanged": 0}
    table = ProcessedUser.__table__
    processed = processed.unique(subset="id", keep="last", maintain_order=True)
    stored = _frame(conn, lookup(conn, table, "id", ["record_hash", "source_updated_at"],
                                 processed.get_column("id")),
                    {"id": pl.Int64, "_stored": pl.String}, "_stored_as_of")
    joined = processed.join(stored, on="id", how="left", maintain_order="left")
    new = joined.filter(pl.col("_stored").is_null())
    changed = joined.filter(
        pl.col("_stored").is_not_null()
        & (pl.col("_stored") != pl.col("record_hash"))
        & (pl.col("_stored_as_of").is_null() | (pl.col("_as_of") >= pl.col("_stored_as_of")))
    )
    stamp = _stamp(conn, now)
    bulk_insert(conn, table, new.select(
        *PROCESSED_COLUMNS, "record_hash", _stamp_col(conn, "_as_of").alias("source_updated_at"),
        first_seen_at=stamp, updated_at=stamp, run_id=pl.lit(run_id)))
    if changed.height:
        _update_rows(conn, table, changed.select(
            *PROCESSED_COLUMNS, "record_hash", _stamp_col(conn, "_as_of").alias("source_updated_at"),
            updated_at=stamp, run_id=pl.lit(run_id)))
    return {"inserted": new.height, "updated": changed.height, "unchanged": joined.height - new.height - changed.height}


def _update_rows(conn: Connection, table: Table, rows: pl.DataFrame) -> None:
    """Rows of `table` set to `rows`' values, matched on `id`: staged, then one UPDATE ... FROM."""
    stage = _staged(conn, table, rows)
    conn.exec_driver_sql(f"UPDATE {table.name} SET {', '.join(f'{c} = s.{c}' for c in rows.columns if c != 'id')} "
                         f"FROM {stage} AS s WHERE {table.name}.id = s.id")


def first_stored(conn: Connection, hashes: pl.Series) -> pl.DataFrame:
    """(`record_hash`, `_first`: when it was first stored) for the raw versions among `hashes` stored already."""
    table = RawUser.__table__
    return _frame(conn, lookup(conn, table, "record_hash", ["inserted_at"], hashes),
                  {"record_hash": pl.String}, "_first")


def content_first_seen(processed: pl.DataFrame, stored: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """Each row's `_as_of`: when its exact source record was first stored (raw layer, `stored` as looked up by
    `first_stored`), else `as_of`, so an unchanged record refetched today does not count as newer than a
    correction made since."""
    return processed.join(stored.rename({"record_hash": "raw_hash"}), on="raw_hash", how="left",
                          maintain_order="left").with_columns(
        pl.coalesce("_first", pl.lit(as_of).dt.convert_time_zone("UTC")).alias("_as_of")).drop("_first")


def _pieces(files: dict[str, str | None], spans: dict[str, list[int]], name: str, piece_bytes: int,
            parse: Callable[[bytes], pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """The batch's span of one staged file, piece by piece, each piece's lines parsed by `parse` (nothing when
    the batch has none). A piece's bytes are let go once parsed, before its rows are written."""
    if files.get(name) and spans.get(name):
        yield from map(parse, read_pieces(files[name], piece_bytes, *spans[name]))  # (nothing keeps the bytes)


def _raw_lines(data: bytes) -> pl.DataFrame:
    return read_lines(data, "data")


def batch_keys(files: dict[str, str | None], spans: dict[str, list[int]], piece_bytes: int = PERSIST_PIECE_BYTES
               ) -> pl.DataFrame:
    """The batch's raw lines' keys (`source_id`, `record_hash`), a row per line in file order: as transform
    staged them, else worked out from the lines a piece at a time."""
    if spans.get("raw_keys"):
        return read_frame(read_span(files["raw_keys"], *spans["raw_keys"]))
    keys = [lines.select(raw_keys(pl.col("data"))) for lines in _pieces(files, spans, "raw", piece_bytes, _raw_lines)]
    return pl.concat(keys) if keys else pl.DataFrame(schema={"source_id": pl.String, "record_hash": pl.String})


def persist_spans(engine: Engine, *, run_id: str, source: str, files: dict[str, str | None],
                  spans: dict[str, list[int]], as_of: datetime | None = None,
                  piece_bytes: int = PERSIST_PIECE_BYTES) -> dict[str, int]:
    """One transaction for the whole batch: either all three tables take it or none does. Each file's span is
    worked through in pieces of about `piece_bytes`, so the stage's memory is a piece's frames, not the
    batch's. One lookup by the batch's raw keys finds the versions stored before it: it gives the processed
    rows their first-seen times (the raw layer as it was before this batch, though processed rows go first)
    and says which raw lines to store (a new version, the first time in the batch)."""
    now = datetime.now(UTC)
    as_of = as_of or now
    counts = Counter(inserted=0, updated=0, unchanged=0, raw_inserted=0, dlq_inserted=0)
    keys = batch_keys(files, spans, piece_bytes)
    with write_transaction(engine) as conn:
        stored = first_stored(conn, keys.get_column("record_hash"))
        # each loop lets go of its piece before the next is read (a loop's name keeps it until then)
        for piece in _pieces(files, spans, "processed", piece_bytes, read_processed_span):
            counts.update(upsert_processed(conn, content_first_seen(piece, stored, as_of), run_id=run_id, now=now))
            del piece
        new = keys.select((pl.col("record_hash").is_first_distinct()
                           & ~pl.col("record_hash").is_in(stored.get_column("record_hash").implode())).alias("new"))
        line = 0
        for lines in _pieces(files, spans, "raw", piece_bytes, _raw_lines):
            if line + lines.height > keys.height:
                raise ValueError(f"{files['raw']}: more staged lines than keys ({keys.height}) in the batch's span")
            rows = pl.concat([keys.slice(line, lines.height), lines, new.slice(line, lines.height)], how="horizontal")
            line += lines.height
            counts["raw_inserted"] += insert_versions(conn, RawUser.__table__, rows.filter("new").drop("new"), now=now,
                                                      run_id=run_id, source=source)
            del lines, rows
        for dlq in _pieces(files, spans, "dlq", piece_bytes, read_dlq_span):
            counts["dlq_inserted"] += upsert_failures(conn, DlqUser.__table__, dlq, now=now,
                                                      run_id=run_id, source=source)
            del dlq
    return dict(counts)


def _db_transient(exc: BaseException) -> bool:
    """A lost connection or a locked database, not a row the database refuses; raised through SQLAlchemy or
    straight from the driver (the bulk inserts and COPY use the driver's own cursor)."""
    if isinstance(exc, DBAPIError):
        return isinstance(exc, OperationalError) or exc.connection_invalidated
    if isinstance(exc, sqlite3.OperationalError):
        return True
    psycopg = sys.modules.get("psycopg")  # loaded by any PostgreSQL connection
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)


@task(name="persist-users-batch", retries=3, retry_delay_seconds=[1, 5, 15],
      retry_jitter_factor=0.5, retry_condition_fn=retry_when(_db_transient),
      cache_policy=NO_CACHE)
def persist_batch(engine: Engine, *, run_id: str, source: str, files: dict[str, str | None], spans: dict[str, list[int]],
                  as_of: str | None = None) -> dict[str, int]:
    """Read one batch's spans of the staged raw, processed and DLQ files (and of the raw lines' keys, when
    transform staged them) and store them. `as_of` is when the source produced the records (fetch time for
    the API, file time for a CSV)."""
    started = time.time()
    counts = persist_spans(engine, run_id=run_id, source=source, files=files, spans=spans,
                           as_of=datetime.fromisoformat(as_of) if as_of else None)
    return counts | {"work_span": [started, time.time()]}
