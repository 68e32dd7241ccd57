"""Validate, enrich and mask users with Polars: raw JSONL span in, processed + DLQ JSONL out.

Pure functions underneath (`parse_raw`, `flatten`, `transform_frame`), Prefect tasks on top. Every step is
a column expression: no per-record Python in the hot path."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

import polars as pl
import polars_hash  # noqa: F401  (registers the .chash namespace)
from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

from models.schema import OBJECT, RECORD, Rule, integer_value, max_lengths, user_rules
from models.users import PROCESSED_COLUMNS, RawUser
from tasks.drift import field_types, merge_types
from tasks.parse import LINE, parse_like, parse_raw, read_lines  # noqa: F401  (transform's parsing, re-exported)
from tasks.redact import CARD, IBAN, SSN, mask_sensitive, mask_unparsed, mask_value

FAILED = "_failed"  # the rules a row fails, as bits
RAW_ID_CHARS = max_lengths(RawUser)  # raw_users' column lengths: a longer source id is no id there
# transform works through a batch in pieces of about this many bytes of staged JSONL (about 1,500 DummyJSON
# users): the stage's memory is a piece's
PIECE_BYTES = 2 << 20

# flattened column -> path in the DummyJSON record
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "id_text": ("id",),
    "first_name": ("firstName",),
    "last_name": ("lastName",),
    "maiden_name": ("maidenName",),
    "username": ("username",),
    "email": ("email",),
    "phone": ("phone",),
    "age_text": ("age",),
    "gender": ("gender",),
    "birth_date": ("birthDate",),
    "blood_group": ("bloodGroup",),
    "eye_color": ("eyeColor",),
    "university": ("university",),
    "role": ("role",),
    "city": ("address", "city"),
    "state": ("address", "state"),
    "country": ("address", "country"),
    "postal_code": ("address", "postalCode"),
    "department": ("company", "department"),
    "company_name": ("company", "name"),
    "company_title": ("company", "title"),
    "ssn": ("ssn",),
    "card_number": ("bank", "cardNumber"),
    "card_type": ("bank", "cardType"),
    "iban": ("bank", "iban"),
}
FLOAT_FIELDS: dict[str, tuple[str, ...]] = {
    "height": ("height",),
    "weight": ("weight",),
    "latitude": ("address", "coordinates", "lat"),
    "longitude": ("address", "coordinates", "lng"),
}

DUMMYJSON_FIELDS = {**TEXT_FIELDS, **FLOAT_FIELDS}

PROCESSED_SCHEMA: dict[str, pl.DataType] = {
    **{c: pl.String() for c in PROCESSED_COLUMNS},
    "id": pl.Int64(),
    "age": pl.Int64(),
    "height": pl.Float64(),
    "weight": pl.Float64(),
    "latitude": pl.Float64(),
    "longitude": pl.Float64(),
    "record_hash": pl.String(),
    "raw_hash": pl.String(),  # the source record's hash: links a processed row to its raw version
}


# ---------------------------------------------------------------- files


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


def file_sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_spans(
    path: Path | str, target_bytes: int, offset: int = 0, length: int | None = None
) -> list[tuple[int, int]]:
    """Cut a JSONL file (or its span from `offset`, `length` bytes) into (offset, length) spans of about
    `target_bytes`, each ending on a newline."""
    size = Path(path).stat().st_size if length is None else offset + length
    spans, start = [], offset
    with open(path, "rb") as fh:
        while start < size:
            fh.seek(min(start + target_bytes, size))
            fh.readline()
            end = min(fh.tell(), size)
            spans.append((start, end - start))
            start = end
    return spans


def read_span(path: Path | str, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def read_pieces(path: Path | str, piece_bytes: int, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
    """A JSONL file's span (`split_spans`' arguments) read a piece of about `piece_bytes` at a time, each
    piece whole lines: a stage working piece by piece holds one piece's bytes and frames at a time."""
    for piece_offset, piece_length in split_spans(path, piece_bytes, offset, length):
        yield read_span(path, piece_offset, piece_length)


def _append(path: Path | str, write: Callable[[BinaryIO], object] | None) -> tuple[int, int]:
    """Append what `write` writes to the file (nothing when None); returns the (offset, length) it occupies."""
    with open(path, "ab") as fh:
        start = fh.tell()
        if write is not None:
            write(fh)
        return start, fh.tell() - start


def file_size(path: Path | str) -> int:
    """Where an appended output would start: the file's size, 0 while it does not exist."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def append_lines(path: Path | str, df: pl.DataFrame) -> tuple[int, int]:
    """Append a frame as JSONL."""
    return _append(path, df.write_ndjson if df.height else None)


def append_frame(path: Path | str, df: pl.DataFrame) -> tuple[int, int]:
    """Append a frame as one Arrow IPC stream (`read_frame` reads its span back)."""
    return _append(path, df.write_ipc_stream)


def read_frame(data: bytes) -> pl.DataFrame:
    return pl.read_ipc_stream(io.BytesIO(data))


def raw_keys(
    lines: pl.Expr, *, ids: pl.Expr | None = None, id_path: str = "$.id", id_column: str = "source_id"
) -> list[pl.Expr]:
    """A raw line's keys in the raw layer: the source's id as text (`ids`, else read from the line at
    `id_path`; none when longer than raw_users' column of that name holds) and the line's content hash."""
    ids = lines.str.json_path_match(id_path) if ids is None else ids
    limit = RAW_ID_CHARS.get(id_column)
    return [
        (ids if limit is None else pl.when(ids.str.len_chars() <= limit).then(ids)).alias(id_column),
        lines.chash.sha2_256().alias("record_hash"),
    ]


def parsed_ids(raw: pl.DataFrame) -> pl.Expr | None:
    """The parsed records' top-level `id` as the text JSON has for it, when the parsed column is whole
    numbers or text (a column is parsed once; reading the id back out of each line is 40x slower)."""
    dtype = raw.schema.get("id")
    return pl.col("id").cast(pl.String) if dtype is not None and (dtype.is_integer() or dtype == pl.String) else None


def append_text_lines(path: Path | str, lines: pl.Series) -> tuple[int, int]:
    """Append text lines as they are (no quoting)."""
    if not lines.len():
        return _append(path, None)
    frame = pl.DataFrame({"l": lines})
    return _append(
        path, functools.partial(frame.write_csv, include_header=False, quote_style="never", separator="\x1f")
    )


# ---------------------------------------------------------------- flattening


def _field(schema: pl.Schema, path: tuple[str, ...]) -> tuple[pl.Expr, pl.DataType | None]:
    """The value at `path`, whatever shape the batch gave it (struct; text after a type drift, when it is read
    from the line itself: Polars writes an object it reads as text without escaping backslashes or control
    characters, so that text is not always JSON; absent)."""
    head, *rest = path
    if head not in schema:
        return pl.lit(None, pl.String), None
    expr, dtype = pl.col(head), schema[head]
    for key in rest:
        if isinstance(dtype, pl.Struct):
            fields = {f.name: f.dtype for f in dtype.fields}
            if key not in fields:
                return pl.lit(None, pl.String), None
            expr, dtype = expr.struct.field(key), fields[key]
        elif dtype == pl.String:
            return pl.col(LINE).str.json_path_match("$." + ".".join(path)), pl.String()
        else:
            return pl.lit(None, pl.String), None
    return expr, dtype


def _as_text(expr: pl.Expr, dtype: pl.DataType | None) -> pl.Expr:
    """A value as text: an object or array where text is expected as its JSON text (as inference makes it
    when other records of the batch have text there), for the rules to judge like any text."""
    if isinstance(dtype, pl.Struct):
        return expr.struct.json_encode()
    if isinstance(dtype, (pl.List, pl.Array)):
        encoded = pl.struct(expr.alias("v")).struct.json_encode().str.strip_prefix('{"v":').str.strip_suffix("}")
        return pl.when(expr.is_not_null()).then(encoded)
    return expr.cast(pl.String)  # floats too: 30.0 stays recognisable as an integer, 30.5 does not


def _as_number(expr: pl.Expr, dtype: pl.DataType | None) -> pl.Expr:
    """A value as a float: numbers and numeric text as they read (1e999 and "NaN" too, for the rules to
    refuse), anything else (other text, a boolean, an object or array) as none."""
    if dtype is None or dtype == pl.String or dtype == pl.Null or dtype.is_numeric():
        return expr.cast(pl.Float64, strict=False)
    return pl.lit(None, pl.Float64)


def flatten(df: pl.DataFrame, fields: dict[str, tuple[str, ...]] | None = None) -> pl.DataFrame:
    """Staging columns: every field as text (or float) and the original line, whatever the source's shape.
    `fields` maps staging columns to paths in the source's records (DummyJSON's by default); a column it
    leaves out is null."""
    schema = df.schema
    fields = DUMMYJSON_FIELDS if fields is None else fields
    missing = ("\x00missing",)
    cols = [_as_text(*_field(schema, fields.get(name, missing))).alias(name) for name in TEXT_FIELDS]
    cols += [_as_number(*_field(schema, fields.get(name, missing))).alias(name) for name in FLOAT_FIELDS]
    return df.select(*cols, pl.col(LINE), pl.col(RECORD) if RECORD in schema else pl.lit(OBJECT).alias(RECORD))


# ---------------------------------------------------------------- the transform


def transform_frame(
    raw: pl.DataFrame,
    departments: pl.DataFrame,
    *,
    source: str = "dummyjson",
    fields: dict[str, tuple[str, ...]] | None = None,
    raw_hash: pl.Series | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(processed, dlq). Processed rows follow PROCESSED_SCHEMA plus record_hash; DLQ rows carry
    error_reason (every failed rule), reasons (list) and the masked original record. `raw_hash`: the raw
    lines' hashes when the caller has them already."""
    if raw.height == 0:
        return pl.DataFrame(schema=PROCESSED_SCHEMA), pl.DataFrame(
            schema={
                "error_reason": pl.String,
                "reasons": pl.List(pl.String),
                "record_hash": pl.String,
                "user_id": pl.Int64,
                "record": pl.String,
            }
        )
    return split_checked(check_frame(raw, departments, fields=fields, raw_hash=raw_hash), source=source)


def check_frame(
    raw: pl.DataFrame,
    departments: pl.DataFrame,
    *,
    fields: dict[str, tuple[str, ...]] | None = None,
    raw_hash: pl.Series | None = None,
    seen_ids: pl.Series | None = None,
) -> pl.DataFrame:
    """Parsed records as staging columns, the values the rules judge as they would be stored (`id` and `age`
    read as 64-bit integers, names and email cleaned), each row with the names of the rules it fails
    (`reasons`). `seen_ids`: ids that earlier rows of the same batch had (a later row with one is a duplicate)."""
    seen = seen_ids if seen_ids is not None else pl.Series("id", [], pl.Int64)
    staged = (
        flatten(raw, fields)
        .with_columns(
            pl.col(LINE).chash.sha2_256().alias("raw_hash") if raw_hash is None else raw_hash.alias("raw_hash")
        )
        .with_columns(
            pl.col("department").str.strip_chars(),
            pl.col("first_name").str.strip_chars(),
            pl.col("email").str.strip_chars().str.to_lowercase(),
            integer_value("id_text").alias("id"),
            integer_value("age_text").alias("age"),
        )
        .join(departments, on="department", how="left", maintain_order="left")
        .with_columns(
            (
                pl.col("id").is_not_null() & (~pl.col("id").is_first_distinct() | pl.col("id").is_in(seen.implode()))
            ).alias("id_duplicate"),
        )
    )
    rules = user_rules()
    failed = staged.select(
        pl.sum_horizontal(
            [(~r.passes.fill_null(False)).cast(pl.UInt64) * pl.lit(1 << i, pl.UInt64) for i, r in enumerate(rules)]
        ).alias(FAILED)
    ).to_series()
    return (
        staged.with_columns(failed)
        .join(reason_lists(failed.unique(), rules), on=FAILED, how="left", maintain_order="left")
        .drop(FAILED)
    )


def reason_lists(failed: pl.Series, rules: list[Rule]) -> pl.DataFrame:
    """Sets of failed rules (`FAILED` bits, rule i the i-th) with their names (`reasons`), for a join: the
    lists are made once per distinct set, not on every row. A line that is no object fails its record rule
    alone (it has no fields for the others to judge)."""
    sets = [[r for i, r in enumerate(rules) if bits >> i & 1] for bits in failed.to_list()]
    names = [[r.name for r in ([r for r in chosen if r.alone] or chosen)] for chosen in sets]
    return pl.DataFrame([failed, pl.Series("reasons", names, pl.List(pl.String))])


def split_checked(staged: pl.DataFrame, *, source: str = "dummyjson") -> tuple[pl.DataFrame, pl.DataFrame]:
    """Checked rows (`check_frame`) -> (processed, dlq): rows that pass every rule, cleaned and masked, and the
    others with their reasons and the masked original record."""
    ok = pl.col("reasons").list.len() == 0

    processed = staged.filter(ok).select(
        "id",
        "first_name",
        "last_name",
        "maiden_name",
        "username",
        "email",
        "phone",
        "age",
        "gender",
        "birth_date",
        "blood_group",
        "height",
        "weight",
        "eye_color",
        "university",
        "role",
        "city",
        "state",
        "country",
        "postal_code",
        "latitude",
        "longitude",
        "department",
        "department_code",
        "company_name",
        "company_title",
        mask_value(pl.col("ssn"), SSN).alias("ssn_masked"),
        mask_value(pl.col("card_number"), CARD).alias("card_number_masked"),
        "card_type",
        mask_value(pl.col("iban"), IBAN).alias("iban_masked"),
        pl.lit(source).alias("source"),
        "raw_hash",
    )
    processed = processed.with_columns(
        pl.concat_str([pl.col(c).cast(pl.String).fill_null("\x00") for c in PROCESSED_COLUMNS], separator="\x1f")
        .chash.sha2_256()
        .alias("record_hash")
    ).cast(PROCESSED_SCHEMA)

    dlq = staged.filter(~ok).select(
        pl.col("reasons").list.join("; ").alias("error_reason"),
        "reasons",
        pl.col("raw_hash").alias("record_hash"),
        # the user the record speaks for; none for a second copy of an id (the first copy speaks for it)
        pl.when(~pl.col("id_duplicate")).then(pl.col("id")).alias("user_id"),
        mask_sensitive(pl.col(LINE)).alias("record"),
        LINE,
        RECORD,
    )
    return processed, dlq_records(dlq).drop(LINE, RECORD)


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
        pl.col("record").chash.sha2_256().alias("record_hash"), pl.lit(None, pl.Int64).alias("user_id")
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


def read_processed_span(data: bytes) -> pl.DataFrame:
    if not data:
        return pl.DataFrame(schema=PROCESSED_SCHEMA)
    return pl.read_ndjson(io.BytesIO(data), schema=PROCESSED_SCHEMA)


# ---------------------------------------------------------------- tasks


@task(
    name="load-departments",
    cache_policy=INPUTS + TASK_SOURCE,
    cache_expiration=timedelta(days=1),
    persist_result=True,
)
def load_departments(path: str, checksum: str) -> pl.DataFrame:
    """Cached on the file's path and content hash (and this task's source) for a day."""
    return read_departments(path)


@task(name="transform-users-batch", cache_policy=NO_CACHE)
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
) -> dict:
    """One span of the staged raw file through the rules; outputs appended to the run's files. `fields` is
    the source's field map (DummyJSON's when None). With `keys_path`, the raw lines' ids and hashes are
    appended there too, so that persist, the stage that ends last, need not work them out again.

    The span is worked through in pieces of about `piece_bytes` (one task run all the same): a piece's
    frames are freed before the next is parsed, so the stage's memory is a piece's, not the batch's. The
    pieces' outputs follow each other in the run's files, so the batch's outputs are still one span each;
    an id seen in an earlier piece of the batch, or in `seen_ids` (the source's earlier batches of the run),
    is a duplicate as it would be within one piece: the first copy of an extraction counts, whatever the
    batch size. Returns the ids it saw as `ids`, for the next batch."""
    started = time.time()
    field_map = {k: tuple(v) for k, v in fields.items()} if fields else None
    p_start, d_start = file_size(processed_path), file_size(dlq_path)
    keys, types, reasons = [], [], Counter()
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
        piece_keys = raw.select(raw_keys(pl.col(LINE), ids=parsed_ids(raw)))
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
    return {
        "raw": [offset, length],
        "processed": [p_start, p_end - p_start],
        "dlq": [d_start, d_end - d_start],
        "raw_keys": list(k_span) if k_span else None,
        "valid": valid,
        "invalid": invalid,
        "types": merge_types(types),
        "work_span": [started, time.time()],
        "reasons": dict(reasons),
        "ids": seen_ids,
    }
