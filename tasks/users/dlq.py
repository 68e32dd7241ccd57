"""The users DLQ's staged lines: each failed record with every reason and its masked original, as JSONL."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import polars_hash  # noqa: F401  (registers the .chash namespace)

from models.schema import OBJECT, RECORD
from tasks.parse import LINE, read_lines
from tasks.redact import mask_unparsed
from tasks.staging.files import append_text_lines


def dlq_records(dlq: pl.DataFrame) -> pl.DataFrame:
    """DLQ rows whose `record` is always JSON that Polars reads back: an object the span's parse read as it is,
    masked (`mask_sensitive` keeps it JSON); any other line, as a JSON string of its masked text
    (`mask_unparsed`, worked out only when some row needs it: each mask is a chain of regular expressions)."""
    other = pl.col(RECORD) != OBJECT
    if not dlq.height or not dlq.select(other.any()).item():
        return dlq
    return dlq.with_columns(pl.when(other).then(mask_unparsed(pl.col(LINE))).otherwise("record").alias("record"))


def dlq_lines(dlq: pl.DataFrame) -> pl.Series:
    """DLQ rows as JSONL text with the record embedded as an object (rule names never need escaping)."""
    return dlq.select(
        pl.concat_str(
            pl.lit('{"error_reason":"'),
            pl.col("error_reason"),
            pl.lit('","reasons":["'),
            pl.col("reasons").list.join('","'),
            pl.lit('"],"record_hash":"'),
            pl.col("record_hash"),
            *(
                [pl.lit('","user_id":'), pl.col("user_id").cast(pl.String).fill_null("null"), pl.lit(',"record":')]
                if "user_id" in dlq.columns
                else [pl.lit('","record":')]
            ),
            pl.col("record"),
            pl.lit("}"),
        ).alias("line")
    ).get_column("line")


def append_failure(dlq_path: Path | str, *, reason: str, record: str) -> tuple[int, int]:
    """A DLQ line for something that never became records (a rejected file); `record` is JSON text."""
    line = pl.DataFrame({"error_reason": [reason], "reasons": [[reason]], "record": [record]}).with_columns(
        pl.col("record").chash.sha2_256().alias("record_hash"),  # type: ignore[attr-defined]  # (polars_hash)
        pl.lit(None, pl.Int64).alias("user_id"),
    )
    return append_text_lines(dlq_path, dlq_lines(line))


def read_dlq_span(data: bytes, *, user_ids: bool = False) -> pl.DataFrame:
    """Staged DLQ lines as rows (error_reason, record_hash, [user_id,] data)."""
    line = pl.col("l")
    return read_lines(data, "l").select(
        line.str.json_path_match("$.error_reason").alias("error_reason"),
        line.str.json_path_match("$.record_hash").alias("record_hash"),
        *([line.str.json_path_match("$.user_id").cast(pl.Int64, strict=False).alias("user_id")] if user_ids else []),
        line.str.json_path_match("$.record").alias("data"),
    )
