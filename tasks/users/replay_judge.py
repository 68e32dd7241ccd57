"""Open DLQ entries judged again: each entry's raw record (the raw layer's, unmasked) through the transform's own
rules, field map and masks (tasks/users/validate.py), a source at a time, as a batch. Pure functions; the
replay's reads and writes are in tasks/users/replay.py."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from models.rules import ID_DUPLICATE
from models.schema import integer_value
from models.settings import Settings
from models.sources import api_sources
from tasks.extract import source_module
from tasks.parse import parse_raw
from tasks.users.fields import PROCESSED_SCHEMA
from tasks.users.validate import check_frame, flatten, split_checked

FieldMap = dict[str, tuple[str, ...]]
# an open entry as the replay reads it: `raw` is the raw layer's record (null when it has none)
ENTRY_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int64(),
    "record_hash": pl.String(),
    "source": pl.String(),
    "error_reason": pl.String(),
    "last_seen_at": pl.Datetime("us", "UTC"),
    "raw": pl.String(),
}
# why an entry was not judged again: no raw record (a rejected file's entry), or a source no longer configured
# (or, should it ever happen, a record that did not come back from the parse as it is stored)
NO_RAW_RECORD, SOURCE_UNKNOWN, NOT_PARSED = "no_raw_record", "source_unknown", "not_parsed"


def source_fields(settings: Settings) -> dict[str, FieldMap | None]:
    """Each configured users source's field map, as transform uses it (None: DummyJSON's): the default API's,
    USERS_API_SOURCES' and the USERS_SOURCES plug-ins'."""
    maps: dict[str, FieldMap | None] = {settings.users_api_name: _tuples(settings.users_api_fields)}
    maps |= {config.name: _tuples(config.fields) for config in api_sources(settings)}  # (the default with a base)
    for name in settings.users_sources:
        plugin = source_module(name)
        maps[plugin.SOURCE] = plugin.FIELDS
    return maps


def _tuples(fields: dict[str, list[str]] | None) -> FieldMap | None:
    return {column: tuple(path) for column, path in fields.items()} if fields else None


@dataclass
class Judged:
    """A batch of entries judged again. `valid`: processed rows (PROCESSED_SCHEMA; `raw_hash` is the entry's
    record hash) with `_as_of`, when the record was last seen; `invalid`: record_hash, today's `error_reason`
    and `reasons`, and whether the reasons `changed`; `skipped`: record_hash, the stored error_reason, `why`."""

    valid: pl.DataFrame
    invalid: pl.DataFrame
    skipped: pl.DataFrame

    @property
    def examined(self) -> int:
        return self.valid.height + self.invalid.height + self.skipped.height

    def reason_counts(self) -> dict[str, int]:
        """Rule name -> records still failing it (a skipped entry's stored reasons)."""
        names = pl.concat(
            [
                self.invalid.select(pl.col("reasons").explode().alias("r")),
                self.skipped.select(pl.col("error_reason").str.split("; ").explode().alias("r")),
            ]
        ).filter(pl.col("r").is_not_null() & (pl.col("r") != ""))
        counted = names.get_column("r").value_counts()
        return dict(zip(counted.get_column("r").to_list(), counted.get_column("count").to_list(), strict=True))


def was_duplicate() -> pl.Expr:
    """The entry's stored reasons say its record was a later copy of an id in the extraction it came in: a
    fact about that extraction, which the replay does not see again, so it stays one (the first copy spoke
    for the user)."""
    return ("; " + pl.col("error_reason") + "; ").str.contains(f"; {ID_DUPLICATE}; ", literal=True)


def judge_entries(entries: pl.DataFrame, departments: pl.DataFrame, fields: dict[str, FieldMap | None]) -> Judged:
    """Entries (ENTRY_SCHEMA) with their raw record and a configured source judged by today's rules and
    `departments`; the others skipped, as is an entry whose record did not come back from the parse."""
    known = pl.col("source").is_in(list(fields))
    usable = entries.filter(pl.col("raw").is_not_null() & known)
    processed, failed = [], []
    for (source, duplicate), group in usable.group_by("source", was_duplicate().alias("_dup"), maintain_order=True):
        assert isinstance(source, str)
        out, dlq = _judge(group, departments, source=source, fields=fields[source], duplicate=bool(duplicate))
        processed.append(out)
        failed.append(dlq)
    stored = entries.select("record_hash", "error_reason", "last_seen_at")
    valid = _concat(processed, PROCESSED_SCHEMA).join(
        stored.select(pl.col("record_hash").alias("raw_hash"), pl.col("last_seen_at").alias("_as_of")), on="raw_hash"
    )
    invalid = (
        _concat(failed, {"record_hash": pl.String(), "error_reason": pl.String(), "reasons": pl.List(pl.String())})
        .join(stored.select("record_hash", pl.col("error_reason").alias("_stored")), on="record_hash")
        .with_columns((pl.col("error_reason") != pl.col("_stored")).alias("changed"))
        .drop("_stored")
    )
    judged = pl.concat([valid.get_column("raw_hash"), invalid.get_column("record_hash")])
    skipped = entries.filter(~pl.col("record_hash").is_in(judged.implode())).select(
        "record_hash",
        "error_reason",
        pl.when(pl.col("raw").is_null())
        .then(pl.lit(NO_RAW_RECORD))
        .when(~known)
        .then(pl.lit(SOURCE_UNKNOWN))
        .otherwise(pl.lit(NOT_PARSED))
        .alias("why"),
    )
    return Judged(valid=valid, invalid=invalid, skipped=skipped)


def _judge(
    group: pl.DataFrame, departments: pl.DataFrame, *, source: str, fields: FieldMap | None, duplicate: bool
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One source's records parsed together as transform parses a span, then its rules: (processed, dlq)."""
    lines = group.select(pl.col("raw").str.join("\n")).item() + "\n"
    raw = parse_raw(lines.encode())
    if raw.height == 0:
        return pl.DataFrame(schema=PROCESSED_SCHEMA), pl.DataFrame()
    # a later copy of an id stays one: its id counts as seen before the batch
    seen = flatten(raw, fields).select(integer_value("id_text")).to_series().drop_nulls() if duplicate else None
    processed, dlq = split_checked(check_frame(raw, departments, fields=fields, seen_ids=seen), source=source)
    return processed, dlq.select("record_hash", "error_reason", "reasons")


def _concat(frames: list[pl.DataFrame], schema: dict) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema=schema)
