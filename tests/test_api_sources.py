"""Real users APIs, configured in settings alone: each pagination style stores the same users as the
DummyJSON contract does, each auth kind is sent on every request, a refused credential fails the run at once
naming the setting to check, and the secret is in no log line, artifact, staged file or table."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prefect import get_client
from sqlalchemy import inspect, text

from dev.prefect_server import run_artifacts
from dev.sample_api import DummyJsonServer
from flows.users_etl import users_etl
from models.db import engine_for
from tests.conftest import migrated
from tests.servers.dummyjson import distinct_users
from tests.servers.rest_api import RestApiServer
from tests.tables import rows

pytestmark = pytest.mark.usefixtures("prefect_server")

USERS = 230
SECRET = "s3cret-Zq9-token"
# each style as the source pages, and the same as Sluice's settings
STYLES = {
    "offset, renamed": (
        dict(pagination="offset", offset_param="offset", limit_param="per_page", records_path="data.people"),
        dict(users_api_offset_param="offset", users_api_limit_param="per_page", users_api_records_path="data.people"),
    ),
    "page number, short last page": (
        dict(pagination="page", limit_param="per_page", total_path=None),
        dict(users_api_pagination="page", users_api_limit_param="per_page", users_api_total_path=""),
    ),
    "page number, page count": (
        dict(pagination="page", limit_param="per_page", total_pages_path="meta.pages"),
        dict(users_api_pagination="page", users_api_limit_param="per_page", users_api_total_pages_path="meta.pages"),
    ),
    "cursor in the body": (
        dict(pagination="cursor", cursor_path="paging.next"),
        dict(users_api_pagination="cursor", users_api_cursor_path="paging.next"),
    ),
    "Link header": (dict(pagination="link", total_path=None), dict(users_api_pagination="link")),
}
AUTHS = {
    "api_key_header": dict(users_api_auth="api_key_header"),
    "api_key_query": dict(users_api_auth="api_key_query"),
    "bearer": dict(users_api_auth="bearer"),
    "basic": dict(users_api_auth="basic", users_api_username="etl"),
}


def stored(url: str) -> list[tuple]:
    return rows(url, "SELECT id, source, record_hash FROM processed_users ORDER BY id")


def run(**parameters) -> dict:
    return asyncio.run(users_etl(deliver_files=False, page_size=50, **parameters))


@pytest.fixture(scope="module")
def users() -> list[dict]:
    return distinct_users(USERS)


@pytest.fixture(scope="module")
def baseline(users, tmp_path_factory, prefect_server) -> list[tuple]:
    """What the DummyJSON contract stores for these users."""
    from models.settings import get_settings

    url = migrated(f"sqlite:///{tmp_path_factory.mktemp('baseline') / 'app.db'}")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DATABASE_URL", url)
        env.setenv("DATA_DIR", str(tmp_path_factory.mktemp("baseline-data")))
        get_settings.cache_clear()
        with DummyJsonServer(users) as server:
            run(api_base=server.base_url)
    get_settings.cache_clear()
    return stored(url)


@pytest.mark.parametrize("style", list(STYLES))
def test_each_pagination_style_stores_what_the_dummyjson_contract_stores(
    style, users, baseline, settings_env, tmp_path
):
    served, configured = STYLES[style]
    url = migrated(f"sqlite:///{tmp_path / 'app.db'}")
    with RestApiServer(users, **served) as server:
        settings_env(database_url=url, users_api_base=server.base_url, **configured)
        summary = run()
        again = run()
    assert summary["counts"]["extracted"] == USERS and not summary["anomalies"]
    assert stored(url) == baseline and len(baseline) == USERS
    assert again["counts"]["unchanged"] == USERS and again["counts"]["deleted"] == 0


@pytest.mark.parametrize("kind", list(AUTHS))
def test_each_auth_kind_is_sent_and_a_wrong_one_fails_at_once_naming_the_setting(kind, users, settings_env, tmp_path):
    url = migrated(f"sqlite:///{tmp_path / 'app.db'}")
    with RestApiServer(users[:60], auth=kind, secret=SECRET, username="etl") as server:
        settings_env(database_url=url, users_api_base=server.base_url, users_api_secret=SECRET, **AUTHS[kind])
        assert run()["counts"]["extracted"] == 60 and server.unauthorized == 0
        settings_env(users_api_secret="not-the-key")
        state = asyncio.run(users_etl(deliver_files=False, page_size=50, return_state=True))
        assert state.is_failed()
        assert server.unauthorized == 1  # refused credentials are never retried
    assert "HTTP 401" in state.message and "check USERS_API_SECRET" in state.message
    assert "not-the-key" not in state.message and SECRET not in state.message
    assert rows(
        url, "SELECT status, last_error LIKE '%USERS_API_SECRET%' FROM etl_checkpoints WHERE source = 'users:dummyjson'"
    ) == [("failed", 1)]


def test_a_source_needing_a_credential_it_lacks_fails_before_any_request(users, settings_env, tmp_path):
    url = migrated(f"sqlite:///{tmp_path / 'app.db'}")
    with RestApiServer(users[:10], auth="bearer", secret=SECRET) as server:
        settings_env(database_url=url, users_api_base=server.base_url, users_api_auth="bearer")
        state = asyncio.run(users_etl(deliver_files=False, return_state=True))
        assert state.is_failed() and "set USERS_API_SECRET" in state.message
        assert server.requests == [] and server.unauthorized == 0


def _all_text(url: str) -> str:
    """Every value of every table, as text."""
    engine = engine_for(url)
    with engine.connect() as conn:
        tables = inspect(conn).get_table_names()
        return "\n".join(str(r) for t in tables for r in conn.execute(text(f'SELECT * FROM "{t}"')))


@pytest.mark.parametrize("kind", ["api_key_query", "bearer"])
def test_the_secret_is_in_no_log_artifact_staged_file_or_table(kind, users, settings_env, tmp_path, caplog):
    url, data = migrated(f"sqlite:///{tmp_path / 'app.db'}"), tmp_path / "data"
    with RestApiServer(users[:120], pagination="link", total_path=None, auth=kind, secret=SECRET) as server:
        settings_env(
            database_url=url,
            data_dir=data,
            users_api_base=server.base_url,
            users_api_pagination="link",
            users_api_secret=SECRET,
            **AUTHS[kind],
        )
        with caplog.at_level("DEBUG"):
            summary = run()
    assert summary["counts"]["extracted"] == 120
    assert SECRET not in caplog.text
    assert all(SECRET not in str(value) for value in run_artifacts(summary["run_id"]).values())
    staged = [p for p in Path(data).rglob("*") if p.is_file()]
    assert staged and all(SECRET.encode() not in p.read_bytes() for p in staged)
    assert SECRET not in _all_text(url)
    with get_client(sync_client=True) as client:  # what the Prefect server keeps: every run's logs and parameters
        logs = client.read_logs()
        flow_runs = client.read_flow_runs()
    assert logs and all(SECRET not in log.message for log in logs)
    assert all(SECRET not in json.dumps(r.parameters, default=str) for r in flow_runs)


def test_two_api_sources_land_side_by_side_each_with_its_own_checkpoint_and_sync(
    users, settings_env, tmp_path, monkeypatch
):
    """The default source (DummyJSON's contract) and an HR API (bearer, cursor, its own field names) in one
    run: rows carry their source, each has its checkpoint and counts, and a user gone from one source is
    deleted in that source only."""
    url = migrated(f"sqlite:///{tmp_path / 'app.db'}")
    people = [
        {
            "uid": 9000 + i,
            "given": u["firstName"],
            "family": u["lastName"],
            "mail": f"p{i}@hr.test",
            "years": 30,
            "team": u["company"]["department"],
        }
        for i, u in enumerate(users[:40])
    ]
    hr_fields = {
        "id_text": ["uid"],
        "first_name": ["given"],
        "last_name": ["family"],
        "email": ["mail"],
        "age_text": ["years"],
        "department": ["team"],
    }
    monkeypatch.setenv("HR_TOKEN", SECRET)
    with (
        DummyJsonServer(users[:50]) as default,
        RestApiServer(people, pagination="cursor", records_path="people", auth="bearer", secret=SECRET) as hr,
    ):
        hr_config = {
            "base_url": hr.base_url,
            "pagination": "cursor",
            "records_path": "people",
            "auth": "bearer",
            "secret_env": "HR_TOKEN",
            "page_size": 15,
            "fields": hr_fields,
        }
        settings_env(database_url=url, users_api_base=default.base_url, users_api_sources=json.dumps({"hr": hr_config}))
        first = run()
        hr.set_users(people[:-1])
        second = run()
    assert first["sources"]["dummyjson"]["inserted"] == 50 and first["sources"]["hr"]["inserted"] == 40
    assert rows(url, "SELECT source, count(*) FROM processed_users GROUP BY source ORDER BY source") == [
        ("dummyjson", 50),
        ("hr", 40),
    ]
    checkpoints = {r[0]: r[1] for r in rows(url, "SELECT source, status FROM etl_checkpoints")}
    assert checkpoints["users:dummyjson"] == checkpoints["users:hr"] == "complete"
    assert second["sources"]["hr"]["deleted"] == 1 and second["sources"]["dummyjson"].get("deleted", 0) == 0
    assert rows(url, "SELECT id, source FROM processed_users WHERE status = 'deleted'") == [(9039, "hr")]


def test_the_credential_may_come_from_a_prefect_secret_block(users, settings_env, tmp_path):
    from prefect.blocks.system import Secret

    Secret(value=SECRET).save("sluice-test-users-api-token", overwrite=True)
    url = migrated(f"sqlite:///{tmp_path / 'app.db'}")
    with RestApiServer(users[:30], auth="bearer", secret=SECRET) as server:
        settings_env(database_url=url, users_api_base=server.base_url, users_api_auth="bearer")
        settings_env(users_api_secret_block="sluice-test-users-api-token")
        assert run()["counts"]["extracted"] == 30 and server.unauthorized == 0
        settings_env(users_api_secret_block="no-such-block")
        state = asyncio.run(users_etl(deliver_files=False, return_state=True))
    assert state.is_failed() and "USERS_API_SECRET_BLOCK" in state.message and "no-such-block" in state.message
