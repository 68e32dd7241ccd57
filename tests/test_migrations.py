"""Schema migrations on real SQLite and PostgreSQL: the revisions agree with the models (`alembic check`), the
baseline is the last release's schema, a database that release made and filled is upgraded by `make migrate`'s
command with every value kept, and code meeting a database behind it stops, naming `make migrate`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from models.db import engine_for, prepare_engine
from models.migrate import SchemaOutOfDate, alembic_config, current_revision, head_revision, migration_engine, upgrade
from tests.conftest import create_pg_database, drop_pg_database

ROOT = Path(__file__).resolve().parents[1]
ALEMBIC = Path(sys.executable).with_name("alembic")
SNAPSHOT = ROOT / "tests" / "data"  # schema_v0_<dialect>.sql: release fca55db's create_all, as DDL
T0 = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
ROWS = 3  # per table; the last one leaves every nullable column null


@pytest.fixture(params=["sqlite", "postgresql"])
def new_url(request, tmp_path) -> Iterator[str]:
    """A database that does not exist yet (SQLite) or is empty (PostgreSQL)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    url = create_pg_database("sluice_migrations")
    yield url
    drop_pg_database(url)


def alembic(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The alembic command line, as `make migrate` runs it (from the repository, alembic.ini there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")} | (env or {})
    url_arg = [] if "DATABASE_URL" in env else ["-x", f"url={url}"]
    return subprocess.run(
        [str(ALEMBIC), *url_arg, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def on_connection(url: str, alembic_command, *args) -> None:
    """An alembic command through its Python API (quicker than the command line: no process to start)."""
    engine = migration_engine(url)
    try:
        with engine.connect() as conn:
            alembic_command(alembic_config(conn), *args)
            conn.commit()
    finally:
        engine.dispose()


def run(sql: str, url: str, **params) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
            return result.all() if result.returns_rows else []
    finally:
        engine.dispose()


def made_by_the_last_release(url: str) -> None:
    """The database as release fca55db's create_all left it: its tables, no version table."""
    dialect = sa.make_url(url).get_backend_name()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for chunk in (SNAPSHOT / f"schema_v0_{dialect}.sql").read_text().split(";\n"):
                statement = "\n".join(line for line in chunk.splitlines() if not line.startswith("--")).strip()
                if statement:
                    conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def baseline_tables() -> sa.MetaData:
    """Revision 0001's own definitions of the last release's tables."""
    return ScriptDirectory.from_config(alembic_config()).get_revision("0001").module.baseline_tables()


def value(column: sa.Column, i: int):
    """Row i's value for a column of the baseline: every type at its edges (64-bit counts, 32-bit ids at their
    maximum, microseconds, non-ASCII text at full length)."""
    if column.nullable and i == ROWS - 1:
        return None
    kind = column.type
    if isinstance(kind, sa.DateTime):
        return T0 + timedelta(days=i, microseconds=i)
    if isinstance(kind, sa.BigInteger):
        return 5 * 2**31 + i
    if isinstance(kind, sa.Integer):
        return 2**31 - 1 - i
    if isinstance(kind, sa.Float):
        return -12.125 + i * 1.5
    text = f"{column.table.name}.{column.name} #{i} Zoë “quoted” ✓ "
    length = getattr(kind, "length", None) or 500
    return (text * (length // len(text) + 1))[:length]


def fill(url: str, tables: sa.MetaData) -> dict[str, list[tuple]]:
    """ROWS rows in every table (ids from the database where it hands them out); every row, read back."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for table in tables.sorted_tables:
                given = [
                    c
                    for c in table.columns
                    if not (c.primary_key and c.autoincrement is not False and isinstance(c.type, sa.Integer))
                ]
                conn.execute(table.insert(), [{c.name: value(c, i) for c in given} for i in range(ROWS)])
        return read(engine, tables)
    finally:
        engine.dispose()


def read(engine: sa.Engine, tables: sa.MetaData) -> dict[str, list[tuple]]:
    with engine.connect() as conn:
        return {t.name: conn.execute(sa.select(t).order_by(*t.primary_key.columns)).all() for t in tables.sorted_tables}


def schema(url: str) -> dict:
    """What a database says of its tables (the version table aside), constraint names included."""
    engine = sa.create_engine(url)
    try:
        inspector, out = sa.inspect(engine), {}
        for table in sorted(set(inspector.get_table_names()) - {"sluice_alembic_version"}):
            out[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c["default"]) for c in inspector.get_columns(table)
                ],
                "pk": inspector.get_pk_constraint(table),
                "unique": sorted((u["name"], u["column_names"]) for u in inspector.get_unique_constraints(table)),
                "indexes": sorted((i["name"], i["column_names"], i["unique"]) for i in inspector.get_indexes(table)),
            }
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                out["sqlite_master"] = conn.exec_driver_sql(
                    "SELECT type, name, sql FROM sqlite_master WHERE tbl_name != 'sluice_alembic_version' ORDER BY name"
                ).all()
        return out
    finally:
        engine.dispose()


def test_a_fresh_upgrade_agrees_with_the_models_and_goes_down_and_up_again(new_url):
    up = alembic(new_url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    check = alembic(new_url, "check")
    assert check.returncode == 0 and "No new upgrade operations detected" in check.stdout + check.stderr, check.stderr
    with engine_for(new_url).connect() as conn:  # the product opens it
        assert current_revision(conn) == head_revision()
    # amending the latest revision means going down to the one before and up again
    on_connection(new_url, command.downgrade, "0001")
    on_connection(new_url, command.upgrade, "head")
    on_connection(new_url, command.check)  # AutoGenerateDiffsDetected if the models and revisions disagree


def test_the_baseline_revision_is_the_last_releases_schema(new_url, tmp_path):
    """Revision 0001 on an empty database makes exactly what release fca55db's create_all made: the same
    tables, columns, types, nullability, indexes and constraint names (on SQLite, the same DDL text)."""
    dialect = sa.make_url(new_url).get_backend_name()
    if dialect == "sqlite":
        reference = f"sqlite:///{tmp_path / 'release.db'}"
    else:
        reference = create_pg_database("sluice_release")
    try:
        made_by_the_last_release(reference)
        upgrade(new_url, "0001")
        made, expected = schema(new_url), schema(reference)
        assert len(expected) == 9 + (dialect == "sqlite") and made == expected
    finally:
        if dialect != "sqlite":
            drop_pg_database(reference)


def test_a_database_the_last_release_made_is_upgraded_with_every_row_kept(new_url):
    """The user's path: today's release made and filled the database (no version table); `make migrate`
    (alembic upgrade head, DATABASE_URL from the environment) adopts it as 0001 and upgrades it."""
    made_by_the_last_release(new_url)
    tables = baseline_tables()
    before = fill(new_url, tables)
    assert all(len(rows) == ROWS for rows in before.values()) and len(before) == 9

    up = alembic(new_url, "upgrade", "head", env={"DATABASE_URL": new_url})
    assert up.returncode == 0, up.stderr
    assert "Running upgrade  -> 0001" in up.stderr and f"-> {head_revision()}" in up.stderr
    on_connection(new_url, command.check)

    engine = engine_for(new_url)  # at head: the product opens it
    assert read(engine, tables) == before
    # the new columns: every user current, every DLQ entry open and last rejected by the run that rejected it
    assert (
        run("SELECT status, status_changed_at, status_run_id FROM processed_users", new_url)
        == [("current", None, None)] * ROWS
    )
    assert (
        run("SELECT user_id, last_run_id = run_id, resolved_at, resolved_run_id, resolution FROM dlq_users", new_url)
        == [(None, True, None, None, None)] * ROWS
    )
    assert (
        run("SELECT invalidated, deleted, restored, dlq_opened, dlq_resolved FROM etl_runs", new_url)
        == [(0, 0, 0, 0, 0)] * ROWS
    )

    # ids are 64-bit now, and the database still hands out the next surrogate id
    from models.users import DlqUser, ProcessedUser

    big = 5_000_000_000
    with engine.begin() as conn:
        conn.execute(
            sa.insert(ProcessedUser.__table__).values(
                id=big,
                first_name="Big",
                email="big@example.com",
                age=30,
                department="Engineering",
                department_code="ENG",
                source="dummyjson",
                record_hash="h" * 64,
                first_seen_at=T0,
                updated_at=T0,
                run_id="r-big",
            )
        )
        new_id = conn.execute(
            sa.insert(DlqUser.__table__).values(
                run_id="r-big",
                source="dummyjson",
                error_reason="x",
                data="{}",
                record_hash="n" * 64,
                inserted_at=T0,
                last_seen_at=T0,
                user_id=big,
            )
        ).inserted_primary_key[0]
    assert run("SELECT id, status FROM processed_users WHERE id = :id", new_url, id=big) == [(big, "current")]
    assert new_id == max(row.id for row in before["dlq_users"]) + 1


def test_code_meeting_an_old_database_says_make_migrate(new_url):
    """The engine every flow and the API open refuses a database behind the code (or an empty one), naming
    the revisions and `make migrate`, never the password; once migrated, the same URL opens."""
    url = new_url.replace("postgres@", "postgres:hunter2@")  # trust auth: the password is not checked
    with pytest.raises(SchemaOutOfDate) as empty:
        engine_for(url)
    assert f"none (not migrated), this code needs {head_revision()}" in str(empty.value)
    made_by_the_last_release(url)
    upgrade(url, "0001")
    with pytest.raises(SchemaOutOfDate) as behind:
        engine_for(url)
    message = str(behind.value)
    assert "`make migrate`" in message and f"at schema revision 0001, this code needs {head_revision()}" in message
    assert "hunter2" not in message
    upgrade(url)
    assert engine_for(url).dialect.name in ("sqlite", "postgresql")
    run("UPDATE sluice_alembic_version SET version_num = 'f00d'", url)  # as a later release leaves it
    with pytest.raises(SchemaOutOfDate, match="at schema revision f00d, which this code does not know"):
        prepare_engine(sa.create_engine(url))  # as a Prefect block's engine is checked


def test_a_database_missing_a_baseline_column_is_refused_and_left_as_it_was(tmp_path):
    url = f"sqlite:///{tmp_path / 'older.db'}"
    made_by_the_last_release(url)
    run("ALTER TABLE etl_runs DROP COLUMN anomalies", url)
    before = schema(url)
    up = alembic(url, "upgrade", "head")
    assert up.returncode != 0 and "table etl_runs lacks columns anomalies" in up.stderr
    assert schema(url) == before  # the version table too: nothing was written
    assert run("SELECT name FROM sqlite_master WHERE name = 'sluice_alembic_version'", url) == []


def test_make_run_migrates_its_database_first(tmp_path, capsys):
    from dev.run import migrate_database

    url = f"sqlite:///{tmp_path / 'app.db'}"
    made_by_the_last_release(url)
    assert migrate_database(url)
    assert f"database migrated from schema revision none to {head_revision()}" in capsys.readouterr().err
    assert migrate_database(url) and capsys.readouterr().err == ""  # at head: nothing to say
    engine_for(url)


@pytest.mark.usefixtures("prefect_server")
def test_a_flow_and_the_api_meeting_an_old_database_stop_naming_make_migrate(settings_env, tmp_path):
    from dev.sample_api import DummyJsonServer
    from flows.users_etl import users_etl

    url = f"sqlite:///{tmp_path / 'app.db'}"
    made_by_the_last_release(url)
    settings_env(database_url=url)
    with DummyJsonServer([]) as server:
        state = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False, return_state=True))
    assert state.is_failed() and "`make migrate`" in state.message, state.message
    assert not server.requests, "the flow fetched before finding its database behind"

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    from api.main import create_app

    with TestClient(create_app()) as client:
        health = client.get("/health")  # in /health's own shape
        assert health.status_code == 503 and health.json()["database"] == "schema out of date"
        assert "`make migrate`" in health.json()["reason"]
        users = client.get("/users")
        assert users.status_code == 503 and "`make migrate`" in users.json()["detail"], users.text
        upgrade(url)  # `make migrate` while the API runs: it answers from the next request on
        assert client.get("/health").status_code == 200


def test_an_upgraded_dlq_entry_speaks_for_the_user_its_record_names(new_url):
    """Entries already there get the user id their record names, so the user's valid arrival resolves them;
    a duplicate's entry, a record without an integer id and a rejected file's entry get none."""
    made_by_the_last_release(new_url)
    records = {
        "a" * 64: ("age_out_of_range", '{"id": 7, "age": 70}'),
        "b" * 64: ("id_not_integer", '{"id": "abc"}'),
        "c" * 64: ("id_duplicate", '{"id": 7, "firstName": "Copy"}'),
        "d" * 64: ("csv_malformed", "not json"),
    }
    for record_hash, (reason, data) in records.items():
        run(
            "INSERT INTO dlq_users (run_id, source, error_reason, data, record_hash, inserted_at, last_seen_at) "
            "VALUES ('r1', 'dummyjson', :reason, :data, :hash, :t, :t)",
            new_url,
            reason=reason,
            data=data,
            hash=record_hash,
            t=T0,
        )
    upgrade(new_url)
    assert dict(run("SELECT record_hash, user_id FROM dlq_users", new_url)) == {
        "a" * 64: 7,
        "b" * 64: None,
        "c" * 64: None,
        "d" * 64: None,
    }
