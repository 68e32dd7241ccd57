"""Feed items after extraction: transform (Polars rules, keys, content hashes), persist (raw layer, upsert by
item, DLQ; one transaction per batch) and the run's artifact.

Staged raw JSONL span in -> processed + DLQ JSONL out -> tables. Every step is a column expression."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import polars as pl
import polars_hash  # noqa: F401  (registers the .chash namespace)
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Connection, Engine, bindparam, update

from models.db import table_of
from models.feeds import FEED_ITEM_COLUMNS, DlqFeedItem, FeedItem, RawFeedItem
from models.schema import feed_item_rules
from tasks.bulk import bulk_insert, insert_new_versions, stored_hashes, time_literal, time_text, upsert_failures
from tasks.feeds_batches import FeedBatch, FeedFiles
from tasks.parse import read_lines
from tasks.redact import mask_sensitive
from tasks.staging.batches import Span
from tasks.staging.files import append_lines, append_text_lines, read_span
from tasks.staging.runner import timed_work
from tasks.users.dlq import dlq_lines, read_dlq_span
from tasks.users.persist import raw_frame as persist_raw_frame

LINE = "_raw"
SEP = "\x1f"
ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"

# what tasks.extract.feeds stages, one JSON object per item
STAGED_SCHEMA: dict[str, pl.DataType] = {
    "feed": pl.String(),
    "guid": pl.String(),
    "link": pl.String(),
    "title": pl.String(),
    "summary": pl.String(),
    "author": pl.String(),
    "categories": pl.List(pl.String()),
    "published_at": pl.String(),
}
PROCESSED_SCHEMA: dict[str, pl.DataType] = {
    **{c: pl.String() for c in FEED_ITEM_COLUMNS},
    "published_at": pl.Datetime("us", "UTC"),
    "record_hash": pl.String(),
}
DLQ_SCHEMA = {"error_reason": pl.String, "reasons": pl.List(pl.String), "record_hash": pl.String, "record": pl.String}


# ---------------------------------------------------------------- transform


def parse_staged(data: bytes) -> pl.DataFrame:
    """Staged JSONL bytes -> one row per item: the fields, plus the line as staged in `_raw`."""
    if not data.strip():
        return pl.DataFrame(schema={**STAGED_SCHEMA, LINE: pl.String()})
    lines = read_lines(data, LINE)
    parsed = pl.read_ndjson(io.BytesIO(data), schema=STAGED_SCHEMA)
    if parsed.height != lines.height:
        raise ValueError(f"staged span holds {lines.height} lines but {parsed.height} JSON records")
    return parsed.with_columns(lines.get_column(LINE))


def _text(col: str) -> pl.Expr:
    """Trimmed; empty as null."""
    value = pl.col(col).str.strip_chars()
    return pl.when(value.str.len_chars() > 0).then(value).alias(col)


def _categories_json() -> pl.Expr:
    terms = (
        pl.col("categories")
        .list.eval(pl.element().str.strip_chars())
        .list.eval(pl.element().filter(pl.element().str.len_chars() > 0))
    )
    return (
        pl.struct(terms.alias("c"))
        .struct.json_encode()
        .str.strip_prefix('{"c":')
        .str.strip_suffix("}")
        .replace("null", "[]")
        .alias("categories")
    )


def content_hash(columns: list[str]) -> pl.Expr:
    """SHA-256 over the columns as text (nulls distinct from empty); datetimes in one fixed format."""
    parts = [
        (pl.col(c).dt.strftime(ISO_UTC) if c == "published_at" else pl.col(c).cast(pl.String)).fill_null("\x00")
        for c in columns
    ]
    return pl.concat_str(parts, separator=SEP).chash.sha2_256()  # type: ignore[attr-defined]


def transform_frame(raw: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(processed, dlq). Processed rows follow PROCESSED_SCHEMA; DLQ rows carry error_reason (every failed
    rule), reasons (list), record_hash (of the staged line) and the staged line, masked, as `record`."""
    if raw.height == 0:
        return pl.DataFrame(schema=PROCESSED_SCHEMA), pl.DataFrame(schema=DLQ_SCHEMA)  # type: ignore[arg-type]
    staged = (
        raw.with_columns(
            *(_text(c) for c in ("guid", "link", "title", "summary", "author")),
            _categories_json(),
            pl.col("published_at").str.to_datetime(ISO_UTC, time_zone="UTC", strict=False),
        )
        .with_columns(pl.coalesce("guid", "link").alias("item_key"))
        .with_columns(
            (pl.col("item_key").is_not_null() & ~pl.col("item_key").is_first_distinct().over("feed")).alias(
                "key_duplicate"
            )
        )
    )
    failed = [pl.when(~r.passes.fill_null(False)).then(pl.lit(r.name)) for r in feed_item_rules()]
    staged = staged.with_columns(pl.concat_list(failed).list.drop_nulls().alias("reasons"))
    ok = pl.col("reasons").list.len() == 0

    processed = (
        staged.filter(ok)
        .with_columns(pl.concat_str(["feed", "item_key"], separator=SEP).chash.sha2_256().alias("item_id"))  # type: ignore[attr-defined]
        .select(FEED_ITEM_COLUMNS)
    )
    processed = processed.with_columns(content_hash(list(FEED_ITEM_COLUMNS[1:])).alias("record_hash")).cast(
        PROCESSED_SCHEMA  # type: ignore[arg-type]
    )
    dlq = staged.filter(~ok).select(
        pl.col("reasons").list.join("; ").alias("error_reason"),
        "reasons",
        pl.col(LINE).chash.sha2_256().alias("record_hash"),  # type: ignore[attr-defined]
        mask_sensitive(pl.col(LINE)).alias("record"),
    )
    return processed, dlq


def reason_counts(dlq: pl.DataFrame) -> dict[str, int]:
    if dlq.height == 0:
        return {}
    counts = dlq.select(pl.col("reasons").explode().value_counts()).unnest("reasons")
    return dict(zip(counts.get_column("reasons").to_list(), counts.get_column("count").to_list(), strict=True))


@task(name="transform-feed-items-batch", cache_policy=NO_CACHE)
@timed_work
def transform_batch(files: FeedFiles, raw: Span) -> FeedBatch:
    """One span of the staged raw file through the rules; outputs appended to the run's files."""
    processed, dlq = transform_frame(parse_staged(read_span(files.raw, *raw)))
    return FeedBatch(
        raw=raw,
        processed=Span(*append_lines(files.processed, processed)),
        dlq=Span(*append_text_lines(files.dlq, dlq_lines(dlq))),
        valid=processed.height,
        invalid=dlq.height,
        reasons=reason_counts(dlq),
    )


# ---------------------------------------------------------------- persist


def read_processed_span(data: bytes) -> pl.DataFrame:
    if not data.strip():
        return pl.DataFrame(schema=PROCESSED_SCHEMA)
    return pl.read_ndjson(io.BytesIO(data), schema=PROCESSED_SCHEMA)


def raw_frame(data: bytes) -> pl.DataFrame:
    """Staged lines as raw rows: feed, content hash, the line (each distinct line once)."""
    return persist_raw_frame(data, id_path="$.feed", id_column="feed")


def upsert_items(conn: Connection, items: pl.DataFrame, *, run_id: str, now: datetime) -> dict[str, int]:
    """Insert new items, update those whose content hash changed, leave the rest alone."""
    if items.height == 0:
        return {"inserted": 0, "updated": 0, "unchanged": 0}
    table = table_of(FeedItem)
    items = items.unique(subset="item_id", keep="first", maintain_order=True)
    stored = stored_hashes(conn, table, "item_id", items.get_column("item_id"))
    joined = items.join(stored, left_on="item_id", right_on="_key", how="left", maintain_order="left")
    new = joined.filter(pl.col("_stored").is_null()).drop("_stored")
    changed = joined.filter(pl.col("_stored").is_not_null() & (pl.col("_stored") != pl.col("record_hash"))).drop(
        "_stored"
    )
    now_lit = time_literal(conn, now)
    bulk_insert(
        conn,
        table,
        new.with_columns(
            time_text(conn, "published_at"), first_seen_at=now_lit, updated_at=now_lit, run_id=pl.lit(run_id)
        ),
    )
    if changed.height:
        cols = [c for c in (*FEED_ITEM_COLUMNS, "record_hash") if c != "item_id"]
        stmt = (
            update(table)
            .where(table.c.item_id == bindparam("b_item_id"))
            .values({c: bindparam(f"b_{c}") for c in cols} | {"updated_at": now, "run_id": run_id})
        )
        conn.execute(stmt, changed.select(pl.all().name.prefix("b_")).to_dicts())
    return {"inserted": new.height, "updated": changed.height, "unchanged": joined.height - new.height - changed.height}


def persist_frames(
    engine: Engine, *, run_id: str, raw: pl.DataFrame, items: pl.DataFrame, dlq: pl.DataFrame
) -> dict[str, int]:
    """One transaction for the batch: raw_feed_items, feed_items and dlq_feed_items take it or none does."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        counts = upsert_items(conn, items, run_id=run_id, now=now)
        counts["raw_inserted"] = insert_new_versions(conn, table_of(RawFeedItem), raw, now=now, run_id=run_id)
        dlq = dlq.with_columns(pl.col("data").str.json_path_match("$.feed").fill_null("").alias("feed"))
        counts["dlq_inserted"] = upsert_failures(conn, table_of(DlqFeedItem), dlq, now=now, run_id=run_id)
    return counts


@task(
    name="persist-feed-items-batch",
    retries=3,
    retry_delay_seconds=[1, 5, 15],
    retry_jitter_factor=0.5,
    cache_policy=NO_CACHE,
)
@timed_work
def persist_batch(engine: Engine, *, run_id: str, files: FeedFiles, batch: FeedBatch) -> dict[str, int]:
    """Read one batch's spans of the staged raw, processed and DLQ files and store them; what it added."""
    return persist_frames(
        engine,
        run_id=run_id,
        raw=raw_frame(read_span(files.raw, *batch.raw)),
        items=read_processed_span(read_span(files.processed, *batch.processed)),
        dlq=read_dlq_span(read_span(files.dlq, *batch.dlq)),
    )


# ---------------------------------------------------------------- report


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def publish_artifacts(summary: dict) -> None:
    """The run's counts, each feed's outcome and the DLQ reasons (never item contents)."""
    c = summary["counts"]
    lines = [
        f"# feeds-etl run `{summary['run_id']}`: {summary['status']}",
        "",
        "| feeds | fetched | not modified (304) | failed | items extracted | valid | invalid | inserted | updated "
        "| unchanged | raw rows added | DLQ rows added |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {c['feeds']} | {c['feeds_fetched']} | {c['feeds_not_modified']} | {c['feeds_failed']} | {c['extracted']} "
        f"| {c['valid']} | {c['invalid']} | {c['inserted']} | {c['updated']} | {c['unchanged']} | {c['raw_inserted']} "
        f"| {c['dlq_inserted']} |",
        "",
        "## Feeds",
        "",
        "| feed | outcome | HTTP | items | error |",
        "|---|---|---:|---:|---|",
    ]
    lines += [
        f"| {_cell(f['url'])} | {f['status']} | {f.get('http_status') or ''} | {f.get('items', 0)} "
        f"| {_cell(f.get('error') or f.get('warning') or '')} |"
        for f in summary["feeds"]
    ]
    lines += ["", "## Dead-letter reasons", ""]
    reasons = summary.get("dlq_reasons") or {}
    if reasons:
        lines += ["| rule | items |", "|---|---:|"] + [f"| `{r}` | {n} |" for r, n in sorted(reasons.items())]
    else:
        lines.append("No invalid items.")
    lines += ["", "## Files", ""] + [f"- {kind}: `{path}`" for kind, path in summary["files"].items()]
    delivered = summary.get("delivered") or []
    lines += ["", "## Delivered", ""] + (
        [f"- `{d['remote_path']}` ({d['bytes']} bytes)" for d in delivered] or ["Nothing delivered."]
    )
    create_markdown_artifact(  # type: ignore[call-arg]
        key="feeds-etl-summary",
        markdown="\n".join(lines),
        description="counts, feed outcomes, DLQ reasons, files",
        _sync=True,  # (Prefect's sync/async dual: its type signature lacks it)
    )
