"""Transform: a span of staged raw users -> processed + DLQ JSONL appended to the run's files, and the raw
lines' keys for persist. Pure functions in validate.py; the Prefect tasks here."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

from models.schema import RECORD
from tasks.drift import field_types, merge_types
from tasks.parse import LINE, parse_raw
from tasks.staging.batches import RunFiles, Span, TransformedBatch
from tasks.staging.files import PIECE_BYTES, append_frame, append_lines, append_text_lines, file_size, read_pieces
from tasks.staging.runner import timed_work
from tasks.users.dlq import dlq_lines
from tasks.users.fields import DUMMYJSON_FIELDS
from tasks.users.validate import check_frame, parsed_ids, raw_keys, split_checked


def read_departments(path: Path | str) -> pl.DataFrame:
    """The departments table (department, department_code); a broken file names itself."""
    try:
        df = pl.read_csv(path, schema_overrides={"department": pl.String, "department_code": pl.String})
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ValueError(f"DEPARTMENTS_CSV {path}: cannot read: {exc}") from exc
    missing = {"department", "department_code"} - set(df.columns)
    if missing:
        raise ValueError(f"DEPARTMENTS_CSV {path}: missing column(s) {sorted(missing)}")
    return (
        df.select(pl.col("department").str.strip_chars(), pl.col("department_code").str.strip_chars())
        .drop_nulls()
        .unique(subset="department", keep="first")
    )


@task(
    name="load-departments",
    cache_policy=INPUTS + TASK_SOURCE,
    cache_expiration=timedelta(days=1),
    persist_result=True,
)
def load_departments(path: str, checksum: str) -> pl.DataFrame:
    """Cached on the file's path and content hash (and this task's source) for a day."""
    return read_departments(path)


@dataclass
class TransformOutcome:
    """Where one transformed span's outputs are in the run's files, and what the rules found."""

    raw: Span
    processed: Span
    dlq: Span
    raw_keys: Span | None
    valid: int
    invalid: int
    types: dict[str, str]
    reasons: dict[str, int] = field(default_factory=dict)
    ids: pl.Series | None = None  # every id the source's batches had so far (a later copy is a duplicate)

    def batch(self, *, source: str, as_of: str, raw_path: str | None, files: RunFiles) -> TransformedBatch:
        """The batch as persist receives it."""
        return TransformedBatch(
            source=source,
            as_of=as_of,
            raw_path=raw_path,
            files=files,
            raw=self.raw,
            processed=self.processed,
            dlq=self.dlq,
            raw_keys=self.raw_keys,
            valid=self.valid,
            invalid=self.invalid,
        )


@task(name="transform-users-batch", cache_policy=NO_CACHE)
@timed_work
def transform_batch(
    departments: pl.DataFrame,
    *,
    raw_path: str,
    offset: int,
    length: int,
    processed_path: str,
    dlq_path: str,
    keys_path: str | None = None,
    source: str = "dummyjson",
    fields: dict[str, list[str]] | None = None,
    seen_ids: pl.Series | None = None,
    piece_bytes: int = PIECE_BYTES,
) -> TransformOutcome:
    """One span of the staged raw file through the rules; outputs appended to the run's files. `fields` is
    the source's field map (DummyJSON's when None). With `keys_path`, the raw lines' ids and hashes are
    appended there too, so that persist, the stage that ends last, need not work them out again.

    The span is worked through in pieces of about `piece_bytes` (one task run all the same): the stage's
    memory is a piece's, not the batch's, and each output is still one span. An id seen in an earlier piece,
    or in `seen_ids` (the source's earlier batches of the run), is a duplicate: the first copy counts."""
    field_map = {k: tuple(v) for k, v in fields.items()} if fields else None
    id_path = (field_map or DUMMYJSON_FIELDS).get("id_text", ("id",))  # the source's id, for raw_users' keys
    id_json_path = "$." + ".".join(id_path)
    p_start, d_start = file_size(processed_path), file_size(dlq_path)
    keys, types, reasons = [], [], Counter[str]()
    valid = invalid = 0
    seen_ids = pl.Series("id", [], pl.Int64) if seen_ids is None else seen_ids.rename("id")
    like = None  # the fields the pieces so far were found to have
    for data in read_pieces(raw_path, piece_bytes, offset, length):
        raw = parse_raw(data, like)
        del data  # (each piece's bytes and frames are let go as soon as done with, not when the next is read)
        like = raw.drop(LINE, RECORD, strict=False).schema if raw.height else like
        types.append(field_types(raw.schema))
        if not raw.height:
            continue
        piece_keys = raw.select(raw_keys(pl.col(LINE), ids=parsed_ids(raw, id_path), id_path=id_json_path))
        checked = check_frame(
            raw, departments, fields=field_map, raw_hash=piece_keys.get_column("record_hash"), seen_ids=seen_ids
        )
        del raw
        seen_ids = pl.concat([seen_ids, checked.get_column("id").drop_nulls()])
        processed, dlq = split_checked(checked, source=source)
        del checked
        append_lines(processed_path, processed)
        append_text_lines(dlq_path, dlq_lines(dlq))
        keys.append(piece_keys)
        valid, invalid = valid + processed.height, invalid + dlq.height
        if dlq.height:
            counted = dlq.select(pl.col("reasons").explode().value_counts()).unnest("reasons")
            reasons.update(
                dict(zip(counted.get_column("reasons").to_list(), counted.get_column("count").to_list(), strict=True))
            )
        del processed, dlq
    p_end, d_end = file_size(processed_path), file_size(dlq_path)
    k_span = append_frame(keys_path, pl.concat(keys)) if keys_path and keys else None
    return TransformOutcome(
        raw=Span(offset, length),
        processed=Span(p_start, p_end - p_start),
        dlq=Span(d_start, d_end - d_start),
        raw_keys=Span(*k_span) if k_span else None,
        valid=valid,
        invalid=invalid,
        types=merge_types(types),
        reasons=dict(reasons),
        ids=seen_ids,
    )
