"""API fixtures: one SQLite and one PostgreSQL database per session, each filled once by the real users-etl
pipeline (through the session's Prefect test server) from the real DummyJSON users with a share broken; and
a TestClient on a fresh app reading that database through DATABASE_URL."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import create_engine, text

from models.settings import get_settings
from tests.conftest import PG_ADMIN_URL, skip_or_fail
from tests.servers.dummyjson import DummyJsonServer, break_users, load_real_users

with warnings.catch_warnings():  # Starlette deprecates httpx in its TestClient (wants httpx2, not pinned here)
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    import fastapi.testclient  # noqa: F401  (imported once here, so later imports are quiet)


@dataclass
class FilledDatabase:
    """A database the pipeline filled, and what it was fed (to compute the expected answers from)."""

    kind: str
    url: str
    run_id: str
    summary: dict
    source_users: list[dict]
    broken: dict[int, set[str]]
    extra: dict = field(default_factory=dict)


def _create_pg_database() -> tuple[str, object]:
    name = f"sluice_api_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        skip_or_fail(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", (admin, name)


def _drop_pg_database(handle) -> None:
    admin, name = handle
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _run_pipeline(url: str, data_dir: str, users: list[dict]) -> dict:
    from flows.users_etl import users_etl

    with pytest.MonkeyPatch.context() as mp, DummyJsonServer(users) as server:
        for name in list(os.environ):  # the configuration a developer's shell may carry
            if name.startswith(("USERS_", "SFTP_", "DATABASE_", "DATA_DIR", "DEPARTMENTS_", "EXTRACT_", "FEED_")):
                mp.delenv(name)
        mp.setenv("DATABASE_URL", url)
        mp.setenv("DATA_DIR", data_dir)
        get_settings.cache_clear()
        try:
            return users_etl(api_base=server.base_url, deliver_files=False)
        finally:
            get_settings.cache_clear()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def filled_db(request, prefect_server, tmp_path_factory) -> Iterator[FilledDatabase]:
    """Built once per database kind per session (pytest groups the tests by it)."""
    from models.db import engine_for

    handle = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('api-sqlite') / 'app.db'}"
    else:
        url, handle = _create_pg_database()
    users, broken = break_users(load_real_users())
    summary = _run_pipeline(url, str(tmp_path_factory.mktemp(f"api-data-{request.param}")), users)
    yield FilledDatabase(kind=request.param, url=url, run_id=summary["run_id"], summary=summary,
                         source_users=users, broken=broken)
    engine_for(url).dispose()
    if handle is not None:
        _drop_pg_database(handle)


@pytest.fixture
def api_env(settings_env, filled_db):
    """The environment the API reads (DATABASE_URL of the filled database); returns the setter for more."""
    settings_env(database_url=filled_db.url, api_key=None, cors_origins=None, prefect_ui_url=None)
    return settings_env


@pytest.fixture
def client(api_env) -> Iterator:
    """A TestClient on a fresh app (its own metrics registry) over the filled database."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app()) as c:
        yield c
