"""DLQ replay: open entries of the users pipeline judged again by today's rules and departments table, a page
at a time (tasks/users/replay_judge.py). Records valid now go through persist's upsert (the newest observation
of a user still wins) and their entries resolve with the replaying run (`replayed`); the others stay open with
today's reasons. A second replay finds nothing more to do: resolved entries are no longer open, and reasons
already current are left alone.

An entry's record comes from the raw layer (raw_users, keyed by the same content hash as dlq_users: the hash
of the staged line), unmasked, so that the transform masks it as it masks every record; an entry without one
(a rejected file's) is left as it is. The record's observation is when it was last seen (dlq_users.
last_seen_at): its user's stored row wins when it was observed later (a run that stored the user meanwhile)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine, select
from sqlmodel import col

from models.db import table_of, write_transaction
from models.dlq import dlq_filters
from models.users import RESOLVED_SUPERSEDED, DlqUser, ProcessedUser, RawUser
from tasks.bulk import key_filter, lookup_frame, update_rows
from tasks.retry import db_task
from tasks.staging.runner import timed_work
from tasks.users.persist import upsert_processed
from tasks.users.replay_judge import ENTRY_SCHEMA, FieldMap, Judged, judge_entries
from tasks.users.sync import resolve_entries

RESOLVED_REPLAYED: Final = "replayed"  # dlq_users.resolution of an entry a replay found valid
REPLAY_PAGE = 5_000  # entries judged and stored per transaction: a few MB of raw records
# what storing a page counts (besides `dlq_resolved`): entries resolved as replayed or superseded, entries whose
# reasons changed, and what persist's upsert did to users (inserted / updated / unchanged / current again)
STORE_COUNTS = ("replayed", "superseded", "reasons_changed", "inserted", "updated", "unchanged", "restored")


def open_entries(
    engine: Engine, *, after: int = 0, limit: int = REPLAY_PAGE, reason: str | None = None, run_id: str | None = None
) -> pl.DataFrame:
    """Open entries after the id `after`, in id order, matching GET /dlq's filters (`reason`: one of the
    record's rules; `run_id`: the first or the last run that rejected it), each with its raw record (`raw`)
    where the raw layer has it."""
    raw = table_of(RawUser)
    entry = (DlqUser.id, DlqUser.record_hash, DlqUser.source, DlqUser.error_reason, DlqUser.last_seen_at)
    stmt = (
        select(*map(col, entry), raw.c.data)  # (ENTRY_SCHEMA's columns)
        .select_from(table_of(DlqUser).outerjoin(raw, raw.c.record_hash == col(DlqUser.record_hash)))
        .where(*dlq_filters(status="open", reason=reason, run_id=run_id), col(DlqUser.id) > after)
        .order_by(col(DlqUser.id))
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    # (a naive time, as SQLite hands back, reads as UTC: the pipeline stores UTC)
    return pl.DataFrame([tuple(r) for r in rows], schema=ENTRY_SCHEMA, orient="row")


def store_replay(engine: Engine, judged: Judged, *, run_id: str, now: datetime) -> Counter:
    """One transaction. Entries closed since they were read (a run stored their user meanwhile, or rejected a
    newer record of it) are left alone. Each record valid now becomes its user's row through persist's upsert
    unless the stored row was observed later, its entry resolving as `replayed` (or `superseded`, when the
    stored row won); the still invalid records' entries take today's reasons."""
    counts: Counter = Counter(dict.fromkeys(STORE_COUNTS, 0))
    changed = judged.invalid.filter("changed")
    with write_transaction(engine) as conn:
        dlq = table_of(DlqUser)
        hashes = pl.concat([judged.valid.get_column("raw_hash"), changed.get_column("record_hash")])
        still_open = lookup_frame(conn, dlq, "record_hash", ["resolved_at IS NULL"], hashes, {"_open": pl.Boolean()})
        still_open = still_open.filter("_open").select("record_hash")
        valid = judged.valid.join(still_open, left_on="raw_hash", right_on="record_hash", how="semi")
        if valid.height:
            users = table_of(ProcessedUser)
            ids = valid.get_column("id")
            stored = lookup_frame(conn, users, "id", ["source_updated_at"], ids, {}, time_column="_stored_as_of")
            valid = valid.join(stored, on="id", how="left")
            newest = pl.col("_stored_as_of").is_null() | (pl.col("_as_of") >= pl.col("_stored_as_of"))
            fresh, stale = valid.filter(newest).drop("_stored_as_of"), valid.filter(~newest)
            # resolved first, so that the upsert's own closing of its users' open entries (`valid`) skips them
            for name, rows, resolution in (
                ("replayed", fresh, RESOLVED_REPLAYED),
                ("superseded", stale, RESOLVED_SUPERSEDED),
            ):
                if rows.height:
                    where, params = key_filter(conn, "record_hash", rows.get_column("raw_hash"))
                    counts[name] += resolve_entries(conn, where, params, run_id=run_id, now=now, resolution=resolution)
            counts.update(upsert_processed(conn, fresh, run_id=run_id, now=now))
        changed = changed.join(still_open, on="record_hash", how="semi").select("record_hash", "error_reason")
        if changed.height:
            update_rows(conn, dlq, changed, key="record_hash")
        counts["reasons_changed"] += changed.height
    counts["dlq_resolved"] += counts["replayed"] + counts["superseded"]
    return counts


@dataclass
class ReplayTally:
    """A replay's running totals: entries examined, valid now, skipped (no raw record, or a source no longer
    configured), what storing them did, and the rules the still invalid ones fail."""

    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)

    def add(self, judged: Judged, stored: dict[str, int]) -> None:
        self.counts.update(examined=judged.examined, valid=judged.valid.height, skipped=judged.skipped.height)
        self.counts.update(stored)
        self.reasons.update(judged.reason_counts())

    def run_fields(self) -> dict[str, Any]:
        """The counts as etl_runs holds a run's: `extracted` is the entries examined."""
        c = self.counts
        return {
            "extracted": c["examined"],
            "valid": c["valid"],
            "invalid": c["examined"] - c["valid"],
            **{k: c[k] for k in ("inserted", "updated", "unchanged", "restored", "dlq_resolved")},
        }

    def summary(self) -> dict[str, int]:
        c = self.counts
        return {
            "examined": c["examined"],
            "valid": c["valid"],
            "still_invalid": c["examined"] - c["valid"],
            **{k: c[k] for k in ("skipped", *STORE_COUNTS, "dlq_resolved")},
        }


# ---------------------------------------------------------------- the flow's tasks


@db_task("read-dlq-entries")
@timed_work
def read_entries(
    engine: Engine, *, after: int, limit: int = REPLAY_PAGE, reason: str | None = None, run_id: str | None = None
) -> pl.DataFrame:
    """A page of open entries to replay (a read: retried as the writes are when the database failed for a
    moment)."""
    return open_entries(engine, after=after, limit=limit, reason=reason, run_id=run_id)


@task(name="judge-dlq-entries", cache_policy=NO_CACHE)
@timed_work
def judge_page(entries: pl.DataFrame, departments: pl.DataFrame, fields: dict[str, FieldMap | None]) -> Judged:
    return judge_entries(entries, departments, fields)


@db_task("store-replayed-entries")
@timed_work
def store_page(engine: Engine, judged: Judged, *, run_id: str) -> dict[str, int]:
    return dict(store_replay(engine, judged, run_id=run_id, now=datetime.now(UTC)))
