"""Sync semantics beyond inserting and updating (README, "Sync semantics"): users whose newest observation is
invalid stop being current, DLQ entries close when their user arrives valid, is seen with other content or is
gone, and users absent from a complete extraction are marked deleted (guarded against a source answering with
partial data). Set-based statements: the keys go as one parameter (`key_filter`), never a row per key."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl
from sqlalchemy import Connection, Engine

from models.db import table_of, write_transaction
from models.users import (
    DELETED,
    INVALID,
    RESOLVED_GONE,
    RESOLVED_SUPERSEDED,
    RESOLVED_VALID,
    DlqUser,
    ProcessedUser,
)
from tasks.bulk import (
    bulk_insert,
    key_filter,
    lookup_frame,
    placeholder,
    staged_keys,
    time_literal,
    time_param,
    update_rows,
    update_verb,
)
from tasks.retry import db_task
from tasks.staging.files import read_frame, read_span

USERS, DLQ = ProcessedUser.__tablename__, DlqUser.__tablename__
REOPENED_NULLS = ("resolved_at", "resolved_run_id", "resolution")  # an entry seen again is open
SEEN, SEEN_CHUNK = "seen_user_ids", 50_000  # a complete walk's ids, staged this many at a time


def resolve_entries(conn: Connection, where: str, params: tuple, *, run_id: str, now: datetime, resolution: str) -> int:
    """Open DLQ entries matching `where` closed by this run; how many."""
    p = placeholder(conn)
    return conn.exec_driver_sql(
        f"{update_verb(conn)} {DLQ} SET resolved_at = {p}, resolved_run_id = {p}, resolution = {p} "
        f"WHERE resolved_at IS NULL AND {where}",
        (time_param(conn, now), run_id, resolution, *params),
    ).rowcount


def resolve_valid(conn: Connection, user_ids: pl.Series, *, run_id: str, now: datetime) -> int:
    """Open entries of users whose valid record just became their current one."""
    if user_ids.is_empty():
        return 0
    where, params = key_filter(conn, "user_id", user_ids)
    return resolve_entries(conn, where, params, run_id=run_id, now=now, resolution=RESOLVED_VALID)


def store_failures(
    conn: Connection, dlq: pl.DataFrame, *, run_id: str, source: str, as_of: datetime, now: datetime
) -> Counter:
    """A piece of rejected records: entries opened (new, or seen again after they closed) and re-stamped; each
    record's user, when its observation is the newest, stops being current; the user's other open entries close
    as superseded; an entry older than its user's newest observation closes at once."""
    counts: Counter = Counter()
    if dlq.height == 0:
        return counts
    dlq = dlq.unique(subset="record_hash", keep="first", maintain_order=True)
    hashes = dlq.get_column("record_hash")
    before = lookup_frame(conn, DLQ, "record_hash", ["resolved_at IS NULL"], hashes, {"_open": pl.Boolean()})
    counts["dlq_inserted"] = dlq.height - before.height
    counts["dlq_opened"] = dlq.height - before.filter("_open").height
    # new entries inserted, those seen before re-stamped (and reopened): no upsert, whose conflict handling
    # made SQLite journal every page each statement touched
    table, now_lit, run = table_of(DlqUser), time_literal(conn, now), pl.lit(run_id)
    reopened = {"last_run_id": run, "last_seen_at": now_lit, **dict.fromkeys(REOPENED_NULLS, pl.lit(None))}
    seen = dlq.join(before, on="record_hash", how="semi")
    bulk_insert(
        conn,
        table,
        dlq.join(before, on="record_hash", how="anti").with_columns(
            inserted_at=now_lit, run_id=run, source=pl.lit(source), **reopened
        ),
    )
    if seen.height:
        update_rows(conn, table, seen.select("record_hash", "error_reason", "user_id", **reopened), key="record_hash")

    spoken = dlq.drop_nulls("user_id")
    if spoken.is_empty():
        return counts
    users = lookup_frame(
        conn, USERS, "id", ["source_updated_at"], spoken.get_column("user_id"), {}, time_column="_as_of"
    )
    spoken = spoken.join(users, left_on="user_id", right_on="id", how="left")
    newest = pl.col("_as_of").is_null() | (pl.col("_as_of") <= as_of)
    stale = spoken.filter(~newest)
    if stale.height:  # the user was observed later (another source): this record is history already
        where, params = key_filter(conn, "record_hash", stale.get_column("record_hash"))
        counts["dlq_resolved"] += resolve_entries(
            conn, where, params, run_id=run_id, now=now, resolution=RESOLVED_SUPERSEDED
        )
    current = spoken.filter(newest)
    if current.is_empty():
        return counts
    ids, p = current.get_column("user_id"), placeholder(conn)
    in_ids, id_params = key_filter(conn, "id", ids)
    counts["invalidated"] += conn.exec_driver_sql(
        f"{update_verb(conn)} {USERS} SET status = {p}, status_changed_at = {p}, updated_at = {p}, status_run_id = {p}, "
        f"source_updated_at = {p} WHERE {in_ids} AND status <> {p}",
        (INVALID, time_param(conn, now), time_param(conn, now), run_id, time_param(conn, as_of), *id_params, INVALID),
    ).rowcount
    in_users, user_params = key_filter(conn, "user_id", ids)
    in_hashes, hash_params = key_filter(conn, "record_hash", current.get_column("record_hash"))
    counts["dlq_resolved"] += resolve_entries(
        conn,
        f"{in_users} AND NOT ({in_hashes})",
        (*user_params, *hash_params),
        run_id=run_id,
        now=now,
        resolution=RESOLVED_SUPERSEDED,
    )
    return counts


@dataclass(frozen=True)
class Absence:
    """What a complete extraction found missing: users marked deleted and DLQ entries closed, or, when more
    than the allowed share would go, nothing done and the reason."""

    deleted: int = 0
    dlq_resolved: int = 0
    withheld: str | None = None


def mark_absent(
    engine: Engine, *, source: str, seen_ids: pl.Series, run_id: str, now: datetime, max_share: float
) -> Absence:
    """After a complete extraction of `source`: its users whose ids it did not see are deleted and its open DLQ
    entries it did not see again close, unless more than `max_share` of its known users would go at once."""
    with write_transaction(engine) as conn:
        p = placeholder(conn)
        of_source = f"source = {p} AND status <> {p}"
        known = conn.exec_driver_sql(f"SELECT count(*) FROM {USERS} WHERE {of_source}", (source, DELETED)).scalar()
        seen_ids = seen_ids.drop_nulls().unique()
        gone_where, gone_params = of_source, (source, DELETED)
        if not seen_ids.is_empty():
            seen = staged_keys(conn, SEEN, seen_ids, SEEN_CHUNK)
            gone_where += f" AND NOT EXISTS (SELECT 1 FROM {seen} AS s WHERE s.id = {USERS}.id)"
        gone = conn.exec_driver_sql(f"SELECT count(*) FROM {USERS} WHERE {gone_where}", gone_params).scalar()
        if known and gone > max_share * known:
            return Absence(
                withheld=f"{gone} of {known} known {source} users ({gone / known:.0%}) were absent from "
                f"the extraction, over the {max_share:.0%} allowed: none marked deleted "
                f"(USERS_DELETE_MAX_SHARE)"
            )
        deleted = (
            conn.exec_driver_sql(
                f"{update_verb(conn)} {USERS} SET status = {p}, status_changed_at = {p}, updated_at = {p}, status_run_id = {p} "
                f"WHERE {gone_where}",
                (DELETED, time_param(conn, now), time_param(conn, now), run_id, *gone_params),
            ).rowcount
            if gone
            else 0
        )
        closed = resolve_entries(
            conn,
            f"source = {p} AND (last_run_id IS NULL OR last_run_id <> {p})",
            (source, run_id),
            run_id=run_id,
            now=now,
            resolution=RESOLVED_GONE,
        )
    return Absence(deleted=deleted, dlq_resolved=closed)


def staged_ids(key_spans: list[tuple[str, list[int]]]) -> pl.Series:
    """The user ids among the raw lines' keys that transform staged (spans of its keys file)."""
    ids = [
        read_frame(read_span(path, *span)).select(pl.col("source_id").cast(pl.Int64, strict=False)).to_series()
        for path, span in key_spans
    ]
    return pl.concat(ids).drop_nulls().unique() if ids else pl.Series("source_id", [], pl.Int64)


@db_task("mark-absent-users")
def mark_absent_task(engine: Engine, *, source: str, seen_ids: pl.Series, run_id: str, max_share: float) -> Absence:
    return mark_absent(
        engine, source=source, seen_ids=seen_ids, run_id=run_id, now=datetime.now(UTC), max_share=max_share
    )
