"""Write a batch to raw_users / processed_users / dlq_users in one transaction.

Idempotent by construction: raw and DLQ rows are keyed by the record's content hash (a retried batch or a
re-run adds nothing twice), processed rows by user id with a hash of their content (new rows inserted,
changed rows updated, unchanged rows left alone)."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import polars as pl
import polars_hash  # noqa: F401
from sqlalchemy import Connection, Engine

from models.db import table_of, write_transaction
from models.users import (
    CURRENT,
    PROCESSED_COLUMNS,
    SEARCH_DEFERRED,
    SEARCH_INDEX,
    SEARCHED,
    ProcessedUser,
    RawUser,
)
from tasks.bulk import (
    bulk_insert,
    insert_versions,
    key_filter,
    lookup_frame,
    stored_hashes,
    time_literal,
    time_text,
    update_rows,
)
from tasks.parse import read_lines
from tasks.retry import db_task
from tasks.staging.batches import Span, TransformedBatch
from tasks.staging.files import read_frame, read_pieces, read_span
from tasks.staging.runner import timed_work
from tasks.users.dlq import read_dlq_span
from tasks.users.fields import PROCESSED_SCHEMA
from tasks.users.sync import resolve_valid, store_failures
from tasks.users.validate import raw_keys

# persist works through a batch's staged files in pieces of about this many bytes (about 3,000 raw DummyJSON
# users): fewer, larger pieces than transform's, since each costs persist lookups and statements of its own
PERSIST_PIECE_BYTES = 4 << 20
PERSIST_CACHE_KIB = 16 * 1024  # SQLite's page cache while a batch is written (the connection's default: 2 MB)
# what a batch counts: users inserted / updated / unchanged / current again / no longer valid, raw versions and
# DLQ entries added, DLQ entries opened (new or again) and closed
BATCH_COUNTS = (
    "inserted",
    "updated",
    "unchanged",
    "restored",
    "invalidated",
    "raw_inserted",
    "dlq_inserted",
    "dlq_opened",
    "dlq_resolved",
)


def raw_frame(
    data: bytes, keys: pl.DataFrame | None = None, *, id_path: str = "$.id", id_column: str = "source_id"
) -> pl.DataFrame:
    """Staged lines as raw rows: the source's id, the content hash, the line (each distinct line once).
    `keys`: the lines' (id, hash) as transform worked them out, else they are worked out here."""
    lines = read_lines(data, "data")
    if keys is not None and keys.height == lines.height:
        rows = keys.hstack(lines)
    else:
        rows = lines.select(*raw_keys(pl.col("data"), id_path=id_path, id_column=id_column), "data")
    return rows.unique(subset="record_hash", keep="first", maintain_order=True)


def upsert_processed(conn: Connection, processed: pl.DataFrame, *, run_id: str, now: datetime) -> Counter:
    """Insert new users, update those whose content changed, make current again those that were not (invalid
    or deleted), leave the rest alone. Newest observation wins: a row whose `_as_of` (when it was observed) is
    older than the stored row's `source_updated_at` changes nothing. The DLQ entries of users made current
    (new, or current again) close."""
    if processed.height == 0:
        return Counter()
    table = table_of(ProcessedUser)
    processed = processed.unique(subset="id", keep="last", maintain_order=True)
    stored = lookup_frame(
        conn,
        table,
        "id",
        ["record_hash", "status", "source_updated_at"],
        processed.get_column("id"),
        {"_stored": pl.String(), "_status": pl.String()},
        time_column="_stored_as_of",
    )
    newer = pl.col("_stored_as_of").is_null() | (pl.col("_as_of") >= pl.col("_stored_as_of"))
    joined = processed.join(stored, on="id", how="left", maintain_order="left").with_columns(
        pl.when(pl.col("_stored").is_null())
        .then(pl.lit("inserted"))
        .when(newer & (pl.col("_status") != CURRENT))
        .then(pl.lit("restored"))
        .when(newer & (pl.col("_stored") != pl.col("record_hash")))
        .then(pl.lit("updated"))
        .otherwise(pl.lit("unchanged"))
        .alias("_kind")
    )
    now_lit, run = time_literal(conn, now), pl.lit(run_id)
    values = [*PROCESSED_COLUMNS, "record_hash", time_text(conn, "_as_of").alias("source_updated_at")]
    kind = pl.col("_kind")
    inserted = joined.filter(kind == "inserted")
    with indexed_in_bulk(conn, inserted.get_column("id")):
        bulk_insert(
            conn,
            table,
            inserted.select(*values, first_seen_at=now_lit, updated_at=now_lit, run_id=run, status=pl.lit(CURRENT)),
        )
    for update in ("updated", "restored"):
        rows = joined.filter(kind == update)
        if rows.height:
            status = {"status": pl.lit(CURRENT), "status_changed_at": now_lit, "status_run_id": run}
            update_rows(
                conn,
                table,
                rows.select(*values, updated_at=now_lit, run_id=run, **(status if update == "restored" else {})),
            )
    counts = Counter(dict(joined.get_column("_kind").value_counts().iter_rows()))
    made_current = joined.filter(kind.is_in(["inserted", "restored"])).get_column("id")
    counts["dlq_resolved"] += resolve_valid(conn, made_current, run_id=run_id, now=now)
    return counts


@contextmanager
def _bulk_pragmas(conn: Connection) -> Iterator[None]:
    """SQLite, for a batch's transaction: statement journals in memory (the users search index's triggers write
    to an FTS5 table, so each INSERT and UPDATE of processed_users keeps one; not a temporary file as big as the
    writes), and a page cache of PERSIST_CACHE_KIB, so that the pages of the indexes a batch writes all over stay
    in memory until its commit; the connection's own cache size again at the end (dirty pages stay until the
    commit writes them)."""
    if conn.dialect.name != "sqlite":
        yield
        return
    conn.exec_driver_sql("PRAGMA temp_store = MEMORY")
    before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql(f"PRAGMA cache_size = -{PERSIST_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size = {before}")


@contextmanager
def indexed_in_bulk(conn: Connection, ids: pl.Series) -> Iterator[None]:
    """Users inserted inside the block (`ids`) go into SQLite's search index (migration 0004) in one statement
    at its end, their insert trigger stood aside meanwhile (by a row no other connection sees: SQLite has one
    writer, and the row goes before the transaction ends); a trigger per row cost persist half its time
    again. PostgreSQL's index keeps itself."""
    if conn.dialect.name != "sqlite" or ids.is_empty():
        yield
        return
    conn.exec_driver_sql(f"INSERT INTO {SEARCH_DEFERRED} DEFAULT VALUES")
    try:
        yield
        where, params = key_filter(conn, "id", ids)
        lowered = ", ".join(f"lower({column})" for column in SEARCHED)
        conn.exec_driver_sql(
            f"INSERT INTO {SEARCH_INDEX} (rowid, {', '.join(SEARCHED)}) SELECT id, {lowered} "
            f"FROM {ProcessedUser.__tablename__} WHERE {where}",
            params,
        )
    finally:
        conn.exec_driver_sql(f"DELETE FROM {SEARCH_DEFERRED}")


def _pieces(
    path: str | None, span: Span | None, piece_bytes: int, parse: Callable[[bytes], pl.DataFrame]
) -> Iterator[pl.DataFrame]:
    """The batch's span of one staged file, piece by piece, each piece's lines parsed by `parse` (nothing when
    the batch has none). A piece's bytes are let go once parsed, before its rows are written."""
    if path and span:
        yield from map(parse, read_pieces(path, piece_bytes, *span))  # (nothing keeps the bytes)


def _raw_lines(data: bytes) -> pl.DataFrame:
    return read_lines(data, "data")


def batch_keys(batch: TransformedBatch, piece_bytes: int = PERSIST_PIECE_BYTES) -> pl.DataFrame:
    """The batch's raw lines' keys (`source_id`, `record_hash`), a row per line in file order: as transform
    staged them, else worked out from the lines a piece at a time."""
    if batch.raw_keys:
        return read_frame(read_span(batch.files.raw_keys, *batch.raw_keys))
    pieces = _pieces(batch.raw_path, batch.raw, piece_bytes, _raw_lines)
    keys = [lines.select(raw_keys(pl.col("data"))) for lines in pieces]
    return pl.concat(keys) if keys else pl.DataFrame(schema={"source_id": pl.String, "record_hash": pl.String})


def persist_spans(
    engine: Engine, batch: TransformedBatch, *, run_id: str, piece_bytes: int = PERSIST_PIECE_BYTES
) -> dict[str, int]:
    """One transaction for the whole batch: either all three tables take it or none does. Each file's span is
    worked through in pieces of about `piece_bytes`, so the stage's memory is a piece's frames, not the
    batch's. The batch's `as_of` is when the source was observed (the newest observation of a user wins).
    One lookup by the batch's raw keys says which raw lines to store (a new version, the first time in it)."""
    now = datetime.now(UTC)
    as_of, source = datetime.fromisoformat(batch.as_of), batch.source
    counts = Counter(dict.fromkeys(BATCH_COUNTS, 0))
    keys = batch_keys(batch, piece_bytes)
    with write_transaction(engine) as conn, _bulk_pragmas(conn):
        stored = stored_hashes(conn, table_of(RawUser), "record_hash", keys.get_column("record_hash"))
        # each loop lets go of its piece before the next is read (a loop's name keeps it until then)
        for piece in _pieces(batch.files.processed, batch.processed, piece_bytes, read_processed_span):
            counts.update(
                upsert_processed(
                    conn, piece.with_columns(_as_of=pl.lit(as_of).dt.convert_time_zone("UTC")), run_id=run_id, now=now
                )
            )
            del piece
        new = keys.select(
            (
                pl.col("record_hash").is_first_distinct()
                & ~pl.col("record_hash").is_in(stored.get_column("_key").implode())
            ).alias("new")
        )
        line = 0
        # a re-run of unchanged data has every version stored: its raw lines are not even read
        raw = batch.raw if new.get_column("new").any() else None
        for lines in _pieces(batch.raw_path, raw, piece_bytes, _raw_lines):
            if line + lines.height > keys.height:
                raise ValueError(f"{batch.raw_path}: more staged lines than keys ({keys.height}) in the batch's span")
            rows = pl.concat([keys.slice(line, lines.height), lines, new.slice(line, lines.height)], how="horizontal")
            line += lines.height
            counts["raw_inserted"] += insert_versions(
                conn, table_of(RawUser), rows.filter("new").drop("new"), now=now, run_id=run_id, source=source
            )
            del lines, rows
        for dlq in _pieces(batch.files.dlq, batch.dlq, piece_bytes, _user_failures):
            counts.update(store_failures(conn, dlq, run_id=run_id, source=source, as_of=as_of, now=now))
            del dlq
    return dict(counts)


def _user_failures(data: bytes) -> pl.DataFrame:
    return read_dlq_span(data, user_ids=True)


@db_task("persist-users-batch")
@timed_work
def persist_batch(engine: Engine, batch: TransformedBatch, *, run_id: str) -> dict[str, int]:
    """Read one batch's spans of the staged raw, processed and DLQ files (and of the raw lines' keys, when
    transform staged them) and store them."""
    return persist_spans(engine, batch, run_id=run_id)


def read_processed_span(data: bytes) -> pl.DataFrame:
    if not data:
        return pl.DataFrame(schema=PROCESSED_SCHEMA)
    return pl.read_ndjson(io.BytesIO(data), schema=PROCESSED_SCHEMA)
