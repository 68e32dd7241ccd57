"""`make bench-api`'s data: generated users (Polars, deterministic per id) bulk-inserted into a fresh database
(executemany in big transactions, secondary indexes built after the load)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from dev.sample_api import FIRST_NAMES, LAST_NAMES

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 100_000

CITIES = ["Lisbon", "Osaka", "Lagos", "Denver", "Lyon", "Krakow", "Austin", "Porto"]


def _pick(values: list, seed: int) -> pl.Expr:
    """A deterministic pseudo-random choice per row (hash of the id), as a column expression."""
    lookup = pl.Series(values)
    index = pl.col("id").hash(seed) % len(values)
    return index.map_batches(lambda idx: lookup.gather(idx), return_dtype=lookup.dtype)


def generate_users(n: int) -> pl.DataFrame:
    departments = pl.read_csv(ROOT / "data" / "departments.csv")
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    frame = pl.DataFrame({"id": pl.int_range(1, n + 1, eager=True)}).with_columns(
        _pick(FIRST_NAMES, 1).alias("first_name"),
        _pick(LAST_NAMES, 2).alias("last_name"),
        (pl.col("id").hash(3) % 48 + 18).cast(pl.Int64).alias("age"),
        _pick(["female", "male"], 4).alias("gender"),
        _pick(departments["department"].to_list(), 5).alias("department"),
        _pick(CITIES, 6).alias("city"),
    )
    codes = dict(zip(departments["department"], departments["department_code"], strict=True))
    return frame.with_columns(
        pl.lit(None, pl.String).alias("maiden_name"),
        (pl.col("first_name").str.slice(0, 3) + pl.col("last_name").str.slice(0, 3) + pl.col("id").cast(pl.String))
        .str.to_lowercase()
        .alias("username"),
        (pl.col("first_name") + "." + pl.col("last_name") + pl.col("id").cast(pl.String) + "@example.test")
        .str.to_lowercase()
        .alias("email"),
        pl.format("+1 555-{}", pl.col("id") % 10_000).alias("phone"),
        pl.lit("1990-1-1").alias("birth_date"),
        pl.lit("O+").alias("blood_group"),
        (150 + pl.col("id") % 50).cast(pl.Float64).alias("height"),
        (50 + pl.col("id") % 60).cast(pl.Float64).alias("weight"),
        pl.lit("Brown").alias("eye_color"),
        pl.format("University of {}", pl.col("city")).alias("university"),
        pl.lit("user").alias("role"),
        pl.lit("").alias("state"),
        pl.lit("Portugal").alias("country"),
        pl.lit("10000").alias("postal_code"),
        pl.lit(38.7).alias("latitude"),
        pl.lit(-9.1).alias("longitude"),
        pl.col("department").replace_strict(codes).alias("department_code"),
        pl.format("{} & Co", pl.col("last_name")).alias("company_name"),
        pl.lit("Analyst").alias("company_title"),
        pl.format("***-**-{}", (pl.col("id") % 9000 + 1000)).alias("ssn_masked"),
        pl.format("**** **** **** {}", (pl.col("id") % 9000 + 1000)).alias("card_number_masked"),
        pl.lit("Visa").alias("card_type"),
        pl.format("****{}", (pl.col("id") % 9000 + 1000)).alias("iban_masked"),
        pl.lit("bench").alias("source"),
        pl.col("id").cast(pl.String).alias("record_hash"),
        pl.lit(stamp.strftime("%Y-%m-%d %H:%M:%S.%f")).alias("first_seen_at"),
        # spread over a day, so that sorting by updated_at means something
        (pl.lit(stamp.replace(tzinfo=None)) + pl.duration(seconds=pl.col("id").hash(7) % 86_400))
        .dt.strftime("%Y-%m-%d %H:%M:%S.%6f")
        .alias("updated_at"),
        pl.lit("bench-run").alias("run_id"),
    )


def fill_database(url: str, n: int) -> float:
    """The users into processed_users of a fresh database; secondary indexes built after the load."""
    from models.db import engine_for
    from models.migrate import upgrade
    from models.runs import EtlRun
    from models.users import ProcessedUser

    upgrade(url)
    table, engine = ProcessedUser.__table__, engine_for(url)
    started = time.perf_counter()
    frame = generate_users(n)
    columns = [c.name for c in table.columns if c.name in frame.columns]  # any other column keeps its default
    insert = f"INSERT INTO processed_users ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for index in table.indexes:
            cur.execute(f"DROP INDEX IF EXISTS {index.name}")
        for offset in range(0, n, CHUNK):
            cur.executemany(insert, frame.slice(offset, CHUNK).select(columns).rows())
            raw.commit()
        cur.close()
    finally:
        raw.close()
    for index in table.indexes:
        index.create(bind=engine)
    with engine.begin() as conn:
        conn.execute(
            EtlRun.__table__.insert().values(
                id="bench-run",
                status="completed",
                started_at=datetime.now(UTC),
                finished_at=datetime.now(UTC),
                duration_seconds=1.0,
                extracted=n,
                valid=n,
            )
        )
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return time.perf_counter() - started
