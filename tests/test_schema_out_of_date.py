"""Code meeting a database behind it stops, naming `make migrate` (the engine, a flow, the API), an upgrade
refuses a database it cannot adopt and leaves it as it was, and `make run` migrates its own database first."""

from __future__ import annotations

import asyncio
import warnings

import pytest
import sqlalchemy as sa

from models.db import engine_for, prepare_engine
from models.migrate import SchemaOutOfDate, head_revision, upgrade
from tests.migration_helpers import alembic, made_by_the_last_release, run, schema


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
