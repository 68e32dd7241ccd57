"""`make bench-api`'s data: generated users (Polars, deterministic per id), with what the console shows beside
them: RUNS earlier runs and a dead-letter queue of DLQ_SHARE of the users over those runs (bench/api_load.py
loads them)."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import polars as pl

from dev.sample_api import FIRST_NAMES, LAST_NAMES
from dev.sample_api import generate_users as sample_users
from models import rules
from models.users import RESOLVED_GONE, RESOLVED_SUPERSEDED, RESOLVED_VALID

ROOT = Path(__file__).resolve().parent.parent

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


# ---------------------------------------------------------------- runs and the dead-letter queue

RUNS = 200
RUN_EVERY = timedelta(hours=6)
LAST_RUN_STARTED = datetime(2026, 1, 1)  # the users' first_seen_at: the generated runs all came before it
STAGE_SECONDS = {"extract": 4.0, "transform": 8.0, "persist": 12.0, "deliver": 4.5}
DLQ_SHARE, RESOLVED_SHARE = 0.02, 0.15
RESOLUTIONS = {RESOLVED_VALID: 7, RESOLVED_SUPERSEDED: 2, RESOLVED_GONE: 1}
# the rules rejected records fail, by how common, and how a record is broken to fail each
BREAKS = {
    rules.EMAIL_INVALID: (40, lambda r: r.update(email=r["email"].replace("@", " at "))),
    rules.AGE_OUT_OF_RANGE: (18, lambda r: r.update(age=71)),
    rules.DEPARTMENT_UNKNOWN: (12, lambda r: r["company"].update(department="Astrology")),
    rules.FIRST_NAME_MISSING: (8, lambda r: r.update(firstName="")),
    rules.DEPARTMENT_MISSING: (6, lambda r: r["company"].pop("department", None)),
    rules.AGE_NOT_INTEGER: (5, lambda r: r.update(age="forty")),
    rules.ID_DUPLICATE: (4, lambda r: None),
    rules.ID_NOT_INTEGER: (3, lambda r: r.update(id=f"u-{r['id']}")),
    rules.too_long("email"): (2, lambda r: r.update(email="x" * 330 + "@example.test")),
    rules.TEXT_CONTAINS_NUL: (1, lambda r: r.update(lastName=r["lastName"] + "\x00")),
    rules.CSV_MALFORMED: (1, lambda r: None),
}
NO_USER_ID = {rules.ID_NOT_INTEGER, rules.ID_DUPLICATE, rules.CSV_MALFORMED}  # the pipeline keeps no user id


def _stamp(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


def _masked(record: dict) -> dict:
    """As the pipeline keeps a rejected record: no password, sensitive values down to their last four."""
    record.pop("password", None)
    record["ssn"] = "***-**-" + record["ssn"][-4:]
    bank = record["bank"]
    bank.update(cardNumber="**** **** **** " + bank["cardNumber"][-4:], iban="****" + bank["iban"][-4:])
    return record


def generate_dlq(n_users: int, count: int, run_ids: list[str], starts: list[datetime]) -> list[dict]:
    """`count` rejected records over the runs (more in recent ones), one to three rules each: mostly open
    (seen again by the newest run; users never stored), some resolved (the user stored since, or gone)."""
    rng, last_run = random.Random(20260101), len(run_ids) - 1
    names, weights = list(BREAKS), [w for w, _ in BREAKS.values()]
    order = {name: i for i, name in enumerate(rules.dlq_reasons())}
    rows = []
    for k, record in enumerate(sample_users(count, seed=7, invalid_every=count + 1)):
        failed = sorted(set(rng.choices(names, weights, k=rng.choices([1, 2, 3], [80, 17, 3])[0])), key=order.get)
        first = min(int(rng.triangular(0, last_run + 1, last_run + 1)), last_run)
        resolved = first < last_run and rng.random() < RESOLVED_SHARE
        last = rng.randrange(first, last_run) if resolved else last_run
        resolution = rng.choices(list(RESOLUTIONS), list(RESOLUTIONS.values()))[0] if resolved else None
        user_id = None if NO_USER_ID.intersection(failed) else n_users + k + 1  # a user never stored
        if user_id is not None and resolution in (RESOLVED_VALID, RESOLVED_SUPERSEDED):
            user_id = rng.randint(1, n_users)  # its user arrived (valid, or anew) since
        record["id"] = user_id or rng.randint(1, n_users)
        for name in failed:
            BREAKS[name][1](record)
        data = orjson.dumps(_masked(record), option=orjson.OPT_SORT_KEYS).decode()
        rows.append(
            {
                "run_id": run_ids[first],
                "last_run_id": run_ids[last],
                "source": "dummyjson",
                "error_reason": "; ".join(failed),
                "data": data,
                "record_hash": hashlib.sha256(data.encode()).hexdigest(),
                "user_id": user_id,
                "inserted_at": _stamp(starts[first] + timedelta(seconds=rng.uniform(5, 20))),
                "last_seen_at": _stamp(starts[last] + timedelta(seconds=rng.uniform(5, 20))),
                "resolved_at": _stamp(starts[last + 1] + timedelta(seconds=25)) if resolved else None,
                "resolved_run_id": run_ids[last + 1] if resolved else None,
                "resolution": resolution,
            }
        )
    return rows


def generate_runs(n_users: int, run_ids: list[str], starts: list[datetime], dlq: list[dict]) -> list[dict]:
    """Completed runs, each extracting the whole source: its rejected records (and their rules) are the DLQ
    entries it saw, first or again; stage times jittered around STAGE_SECONDS."""
    rng, index = random.Random(20251111), {run_id: i for i, run_id in enumerate(run_ids)}
    change = [Counter() for _ in range(len(run_ids) + 1)]  # rules (and records) seen from each run on
    opened, closed = Counter(), Counter()
    for row in dlq:
        first, last = index[row["run_id"]], index[row["last_run_id"]]
        counted = [*row["error_reason"].split("; "), "_records"]
        change[first].update(counted)
        change[last + 1].subtract(counted)
        opened[first] += 1
        if row["resolved_run_id"] is not None:
            closed[index[row["resolved_run_id"]]] += 1
    runs, seen = [], Counter()
    for i, (run_id, started) in enumerate(zip(run_ids, starts, strict=True)):
        seen.update(change[i])
        reasons = +seen
        invalid = reasons.pop("_records", 0)
        stages = {k: round(v * rng.uniform(0.8, 1.3), 2) for k, v in STAGE_SECONDS.items()}
        duration = round(sum(stages.values()) * rng.uniform(0.7, 0.9), 2)  # the stages overlap
        inserted, updated = rng.randint(0, 2_000), rng.randint(n_users // 200, n_users // 50)
        unchanged = n_users - inserted - updated
        sources = {"dummyjson": {"inserted": inserted, "updated": updated, "unchanged": unchanged, "failed": invalid}}
        remote = f"/upload/users/{started:%Y-%m-%d}/users-{run_id[:8]}.csv.gz"
        runs.append(
            {
                "id": run_id,
                "status": "completed",
                "started_at": started.replace(tzinfo=UTC),
                "finished_at": (started + timedelta(seconds=duration)).replace(tzinfo=UTC),
                "duration_seconds": duration,
                "extracted": n_users + invalid,
                "valid": n_users,
                "invalid": invalid,
                "inserted": inserted,
                "updated": updated,
                "unchanged": unchanged,
                "raw_inserted": inserted + updated + opened[i],
                "dlq_inserted": opened[i],
                "dlq_opened": opened[i],
                "dlq_resolved": closed[i],
                "delivered_files": 1,
                "delivered_bytes": n_users * 61,
                "stage_seconds": orjson.dumps(stages).decode(),
                "dlq_reasons": orjson.dumps(dict(reasons.most_common())).decode(),
                "delivered": orjson.dumps([{"remote_path": remote, "bytes": n_users * 61}]).decode(),
                "files": orjson.dumps(
                    {k: f"var/runs/{run_id}/{k}.jsonl" for k in ("raw", "processed", "dlq")}
                ).decode(),
                "sources": orjson.dumps(sources).decode(),
            }
        )
    return runs


def fill_companions(engine, n_users: int) -> None:
    """RUNS completed runs before the users' load, and their dead-letter queue (DLQ_SHARE of the users)."""
    from models.runs import EtlRun
    from models.users import DlqUser

    rng = random.Random(RUNS)
    run_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(RUNS)]
    starts = [LAST_RUN_STARTED - RUN_EVERY * (RUNS - 1 - i) for i in range(RUNS)]
    dlq = generate_dlq(n_users, max(1, round(n_users * DLQ_SHARE)), run_ids, starts)
    with engine.begin() as conn:
        conn.execute(DlqUser.__table__.insert(), dlq)
        conn.execute(EtlRun.__table__.insert(), generate_runs(n_users, run_ids, starts, dlq))
