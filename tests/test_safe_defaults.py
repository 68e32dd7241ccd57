"""Safe by default: a users-etl run with no source configured stops at its start, naming the setting, and
stores nothing (no generated sample ever reaches a real database)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from flows.users_etl import users_etl
from models.db import engine_for
from tests.conftest import migrated


@pytest.mark.usefixtures("prefect_server")
def test_a_run_without_users_api_base_fails_at_start_naming_it(settings_env, tmp_path):
    url = migrated(f"sqlite:///{tmp_path / 'app.db'}")
    settings_env(database_url=url)
    state = asyncio.run(users_etl(deliver_files=False, return_state=True))
    assert state.is_failed()
    assert "USERS_API_BASE is not set" in state.message
    with engine_for(url).connect() as conn:
        stored = [conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("raw_users", "etl_runs")]
    assert stored == [0, 0]
