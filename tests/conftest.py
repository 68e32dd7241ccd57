"""Shared fixtures: real databases (SQLite file, PostgreSQL on 127.0.0.1), one Prefect server per session
(the one `make run` starts), settings from a clean environment, loopback peers from tests/servers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from models.settings import get_settings

pytest_plugins = ["tests.servers.dummyjson", "tests.servers.sshd"]

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get("SLUICE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PREFECT_STARTUP_TIMEOUT = 300  # a database template from an older Prefect is migrated further at the start


def skip_or_fail(reason: str) -> None:
    """Missing infrastructure skips locally but fails under CI=true."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: not skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[str]:
    """One Prefect API for the whole session, on an empty SQLite database of its own: the server `make run`
    starts (flows/prefect_api.py: Prefect's app, its writers queued for SQLite's lock). Prefect's test
    harness server answers a write that meets another writer's lock with a 503, and its client retries 2 s,
    then 4 s later: a stage's start could lag 6 s behind, as a test of the stages' overlap saw."""
    from flows.prefect_api import started_prefect_api
    from tests.servers.prefect_server import copy_empty_prefect_db

    home = tmp_path_factory.mktemp("prefect-server")
    database = copy_empty_prefect_db(home / "prefect.db")
    env = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database}"}
    with started_prefect_api(home, env=env, startup_timeout=PREFECT_STARTUP_TIMEOUT) as api:
        api.wait_ready()
        yield api.url


def create_pg_database(prefix: str) -> str:
    """A new, empty PostgreSQL database; its URL (skips, or fails under CI, when the server is absent)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:  # noqa: BLE001
        skip_or_fail(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    from models.db import engine_for

    engine_for(url).dispose()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped afterwards."""
    url = create_pg_database("sluice_test")
    yield url
    drop_pg_database(url)


def _reset(url: str) -> None:
    from models.db import engine_for

    engine = engine_for(url)
    with engine.begin() as conn:
        for table in ("raw_users", "processed_users", "dlq_users", "etl_runs", "etl_checkpoints", "schema_drift",
                      "raw_feed_items", "feed_items", "dlq_feed_items"):
            conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each test using this runs on both databases, starting empty."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        url = request.getfixturevalue("pg_database")
    _reset(url)
    return url


@pytest.fixture
def settings_env(monkeypatch, tmp_path):
    """Set configuration through the environment, as a user would; the settings cache follows."""
    for name in list(os.environ):
        if name.startswith(("USERS_", "SFTP_", "DATABASE_", "DATA_DIR", "DEPARTMENTS_", "EXTRACT_", "API_", "FEED_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EXTRACT_RETRY_BASE_SECONDS", "0")
    get_settings.cache_clear()

    def set_env(**values: object) -> None:
        for key, value in values.items():
            if value is None:
                monkeypatch.delenv(key.upper(), raising=False)
            else:
                monkeypatch.setenv(key.upper(), str(value))
        get_settings.cache_clear()

    yield set_env
    get_settings.cache_clear()
