"""`make bench-api`'s database: a SQLite file, or with BENCH_API_DATABASE=postgresql a fresh PostgreSQL database
(sluice_bench_api_<random> on BENCH_API_PG's server, dropped afterwards), migrated, then loaded as a bulk load
is: the users' secondary indexes and the search index (migration 0004) dropped, the users inserted (SQLite:
executemany in big transactions; PostgreSQL: COPY), the indexes built again, the statistics gathered."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from sqlalchemy import Engine, create_engine

from bench.api_data import fill_companions, generate_users

DATABASES = ("sqlite", "postgresql")
PG_ADMIN = os.environ.get("BENCH_API_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CHUNK = 100_000


@dataclass(frozen=True)
class BenchDatabase:
    kind: str
    url: str
    fill_seconds: float  # nan when a kept database was reused


def search_index():
    """Migration 0004's module: the search index's statements, made again after the load."""
    from alembic.script import ScriptDirectory

    from models.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_revision("0004").module


def _load_users(engine: Engine, frame: pl.DataFrame, columns: list[str]) -> None:
    from models.users import ProcessedUser
    from tasks.bulk import bulk_insert

    if engine.dialect.name == "postgresql":  # COPY; the generated times are UTC
        times = [pl.col(c) + "+00" for c in ("first_seen_at", "updated_at")]
        with engine.begin() as conn:
            for offset in range(0, frame.height, CHUNK):
                bulk_insert(
                    conn, ProcessedUser.__table__, frame.slice(offset, CHUNK).select(columns).with_columns(times)
                )
        return
    insert = f"INSERT INTO processed_users ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for offset in range(0, frame.height, CHUNK):
            cur.executemany(insert, frame.slice(offset, CHUNK).select(columns).rows())
            raw.commit()
        cur.close()
    finally:
        raw.close()


def fill_database(url: str, n: int) -> float:
    """The users into processed_users of a fresh database (its indexes built after the load), the runs before
    them and their dead-letter queue; seconds taken."""
    from models.db import engine_for
    from models.migrate import upgrade
    from models.runs import EtlRun
    from models.users import ProcessedUser

    upgrade(url)
    table, engine = ProcessedUser.__table__, engine_for(url)
    dialect, search = engine.dialect.name, search_index()
    started = time.perf_counter()
    frame = generate_users(n)
    columns = [c.name for c in table.columns if c.name in frame.columns]  # any other column keeps its default
    with engine.begin() as conn:
        for statement in search.drop_search_index_ddl(dialect):
            conn.exec_driver_sql(statement)
        for index in table.indexes:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index.name}")
    _load_users(engine, frame, columns)
    fill_companions(engine, n)
    with engine.begin() as conn:
        for index in table.indexes:
            index.create(bind=conn)
        for statement in search.search_index_ddl(dialect):
            conn.exec_driver_sql(statement)
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
        if dialect == "sqlite":
            conn.exec_driver_sql("ANALYZE")
    if dialect == "postgresql":  # (VACUUM runs outside a transaction)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    return time.perf_counter() - started


@contextmanager
def _postgresql(users: int) -> Iterator[BenchDatabase]:
    name = f"sluice_bench_api_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        print(f"filling {users:,} users into PostgreSQL database {name} ...", flush=True)
        try:
            yield BenchDatabase("postgresql", url, fill_database(url, users))
        finally:
            from models.db import engine_for

            engine_for(url).dispose()
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@contextmanager
def _sqlite(users: int, kept: Path | None) -> Iterator[BenchDatabase]:
    workdir = kept or Path(tempfile.mkdtemp(prefix="sluice-bench-api-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / f"bench-{users}.db"
    try:
        if kept and db.exists():
            print(f"reusing {db}", flush=True)
            yield BenchDatabase("sqlite", f"sqlite:///{db}", float("nan"))
            return
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        print(f"filling {users:,} users into {db} ...", flush=True)
        yield BenchDatabase("sqlite", f"sqlite:///{db}", fill_database(f"sqlite:///{db}", users))
    finally:
        if not kept:
            shutil.rmtree(workdir, ignore_errors=True)


def bench_database(kind: str, users: int, kept: Path | None) -> AbstractContextManager[BenchDatabase]:
    """The database the API is loaded over, filled (`kept`: a SQLite folder reused when it holds one)."""
    if kind not in DATABASES:
        raise SystemExit(f"BENCH_API_DATABASE is one of {', '.join(DATABASES)}, not {kind!r}")
    return _postgresql(users) if kind == "postgresql" else _sqlite(users, kept)
