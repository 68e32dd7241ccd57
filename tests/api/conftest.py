"""API fixtures: one SQLite and one PostgreSQL database per session, each filled once by the real users-etl
pipeline (through the session's Prefect test server) from the real DummyJSON users with a share broken; and
a TestClient on a fresh app reading that database through DATABASE_URL."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.conftest import create_pg_database, drop_pg_database, migrated
from tests.filled import run_pipeline
from tests.servers.dummyjson import break_users, load_real_users

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


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def filled_db(request, prefect_server, tmp_path_factory) -> Iterator[FilledDatabase]:
    """Built once per database kind per session (pytest groups the tests by it)."""
    from models.db import engine_for

    pg = request.param == "postgresql"
    url = migrated(
        create_pg_database("sluice_api") if pg else f"sqlite:///{tmp_path_factory.mktemp('api-sqlite') / 'app.db'}"
    )
    users, broken = break_users(load_real_users())
    summary = run_pipeline(url, str(tmp_path_factory.mktemp(f"api-data-{request.param}")), users)
    yield FilledDatabase(
        kind=request.param, url=url, run_id=summary["run_id"], summary=summary, source_users=users, broken=broken
    )
    engine_for(url).dispose()
    if pg:
        drop_pg_database(url)


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
