"""Shared fixtures: real databases (SQLite file, PostgreSQL on 127.0.0.1) migrated as `make migrate` leaves them,
one Prefect server per session (the one `make run` starts), settings from a clean environment, loopback peers
from tests/servers."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from models.settings import get_settings
from tests.compose_helpers import COMPOSE

pytest_plugins = ["tests.servers.dummyjson", "tests.servers.sshd", "tests.servers.s3", "tests.child"]

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
    starts (dev/prefect_server.py: Prefect's app, its writers queued for SQLite's lock). Prefect's test
    harness server answers a write that meets another writer's lock with a 503, and its client retries 2 s,
    then 4 s later: a stage's start could lag 6 s behind, as a test of the stages' overlap saw."""
    from dev.prefect_helpers import copy_empty_prefect_db
    from dev.prefect_server import started_prefect_api

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
    from models.migrate import SchemaOutOfDate

    try:
        engine_for(url).dispose()
    except SchemaOutOfDate:  # never migrated: no engine was kept
        pass
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    finally:
        admin.dispose()


_sqlite_template: list[Path] = []  # a SQLite file migrated once per session, which new ones are copies of


def migrated(url: str) -> str:
    """`url`, its database brought to the code's schema revision as `make migrate` does (a new SQLite file is
    a copy of one migrated once per session)."""
    from models.migrate import upgrade

    parsed = make_url(url)
    path = Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None
    if path is None or path.name == ":memory:" or path.exists():
        upgrade(url)
        return url
    if not _sqlite_template:
        template = Path(tempfile.mkdtemp(prefix="sluice-schema-")) / "migrated.db"
        upgrade(f"sqlite:///{template}")  # its engine is gone: the file holds everything (no WAL left)
        _sqlite_template.append(template)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_sqlite_template[0], path)
    return url


def pytest_sessionfinish(session, exitstatus) -> None:
    for template in _sqlite_template:
        shutil.rmtree(template.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, migrated, dropped afterwards."""
    url = migrated(create_pg_database("sluice_test"))
    yield url
    drop_pg_database(url)


def _reset(url: str) -> None:
    from models.db import engine_for

    engine = engine_for(url)
    with engine.begin() as conn:
        for table in (
            "raw_users",
            "processed_users",
            "dlq_users",
            "etl_runs",
            "etl_checkpoints",
            "schema_drift",
            "raw_feed_items",
            "feed_items",
            "dlq_feed_items",
        ):
            conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each test using this runs on both databases, migrated, starting empty."""
    if request.param == "sqlite":
        url = migrated(f"sqlite:///{tmp_path / 'app.db'}")
    else:
        url = request.getfixturevalue("pg_database")
    _reset(url)
    return url


# Sluice's settings a developer's shell may carry: the tests set their own
SETTINGS_PREFIXES = ("USERS_", "SFTP_", "DATABASE_", "DATA_DIR", "DEPARTMENTS_", "EXTRACT_", "API_", "FEED_")
SETTINGS_PREFIXES += ("RATE_LIMIT_", "STAGING_")


@pytest.fixture
def settings_env(monkeypatch, tmp_path):
    """Set configuration through the environment, as a user would; the settings cache follows."""
    for name in list(os.environ):
        if name.startswith(SETTINGS_PREFIXES):
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


@pytest.fixture
def pipeline_env(settings_env, database_url, tmp_path):
    """users-etl configured on each database: pages of 50 users, two extract retries; the database's URL."""
    settings_env(database_url=database_url, users_page_size=50, extract_retries=2)
    return database_url


@pytest.fixture(params=["sqlite", "postgresql"])
def new_url(request, tmp_path) -> Iterator[str]:
    """A database that does not exist yet (SQLite) or is empty (PostgreSQL)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    url = create_pg_database("sluice_migrations")
    yield url
    drop_pg_database(url)


@pytest.fixture()
def run_files(tmp_path: Path) -> list[Path]:
    out = tmp_path / "out"
    out.mkdir()
    files = {
        "users.csv": b"id,name\n1,Ada\n2,Grace\n",
        "departments.json": b'[{"id": 1, "name": "R&D"}]\n',
        "empty.txt": b"",
        "users.parquet": os.urandom(3 * 1024 * 1024 + 12345),  # a few MB, not chunk-aligned
    }
    paths = []
    for name, data in files.items():
        (out / name).write_bytes(data)
        paths.append(out / name)
    return paths


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def deployment_id(name: str):
    """The id of the deployment `name` on the session's Prefect server, or None."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name).id
        except Exception:  # noqa: BLE001  (ObjectNotFound)
            return None


@pytest.fixture
def deployment(prefect_server):
    """A real `users-etl/daily` deployment on the session's Prefect server (no worker: its runs stay Scheduled)."""
    from prefect import get_client

    from api.routes.runs import DEPLOYMENT
    from flows.users_etl import users_etl

    def apply():
        return users_etl.to_deployment(name="daily").apply()

    existing = deployment_id(DEPLOYMENT)
    # in a thread of its own: Prefect's sync-or-async methods return coroutines where an event loop runs (as
    # Playwright's sync API keeps one on the test's thread)
    with ThreadPoolExecutor(1) as pool:
        made = existing or pool.submit(apply).result()
    yield made
    if existing is None:
        with get_client(sync_client=True) as client:
            client.delete_deployment(made)
