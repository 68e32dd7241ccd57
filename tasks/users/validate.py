"""The users rules applied to a parsed frame: flattened to staging columns, judged by models/schema.py's
named rules, split into processed rows (cleaned, masked) and DLQ rows (every reason). Column expressions only."""

from __future__ import annotations

import polars as pl
import polars_hash  # noqa: F401  (registers the .chash namespace)

from models.schema import OBJECT, RECORD, Rule, integer_value, user_rules
from models.users import PROCESSED_COLUMNS
from tasks.parse import LINE
from tasks.redact import CARD, IBAN, SSN, mask_sensitive, mask_value
from tasks.users.dlq import dlq_records
from tasks.users.fields import (
    DUMMYJSON_FIELDS,
    FAILED,
    FLOAT_FIELDS,
    PROCESSED_SCHEMA,
    RAW_ID_CHARS,
    TEXT_FIELDS,
)


def raw_keys(
    lines: pl.Expr, *, ids: pl.Expr | None = None, id_path: str = "$.id", id_column: str = "source_id"
) -> list[pl.Expr]:
    """A raw line's keys in the raw layer: the source's id as text (`ids`, else read from the line at
    `id_path`; none when longer than raw_users' column of that name holds) and the line's content hash."""
    ids = lines.str.json_path_match(id_path) if ids is None else ids
    limit = RAW_ID_CHARS.get(id_column)
    return [
        (ids if limit is None else pl.when(ids.str.len_chars() <= limit).then(ids)).alias(id_column),
        lines.chash.sha2_256().alias("record_hash"),  # type: ignore[attr-defined]  # (polars_hash)
    ]


def parsed_ids(raw: pl.DataFrame, path: tuple[str, ...] = ("id",)) -> pl.Expr | None:
    """The parsed records' id (a top-level key, `path`) as the text JSON has for it, when the parsed column is
    whole numbers or text (a column is parsed once; reading the id back out of each line costs far more)."""
    dtype = raw.schema.get(path[0]) if len(path) == 1 else None
    ok = dtype is not None and (dtype.is_integer() or dtype == pl.String)
    return pl.col(path[0]).cast(pl.String) if ok else None


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
            field_dtype = fields[key]
            assert isinstance(field_dtype, pl.DataType)  # (a Field holds an instance)
            expr, dtype = expr.struct.field(key), field_dtype
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
            pl.col(LINE).chash.sha2_256().alias("raw_hash")  # type: ignore[attr-defined]  # (polars_hash)
            if raw_hash is None
            else raw_hash.alias("raw_hash")
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
        .chash.sha2_256()  # type: ignore[attr-defined]  # (polars_hash)
        .alias("record_hash")
    ).cast(PROCESSED_SCHEMA)  # type: ignore[arg-type]  # (Polars' schema Mapping is invariant in its key type)

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
