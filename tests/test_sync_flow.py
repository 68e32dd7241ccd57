"""Nightly runs of the whole users-etl flow against a DummyJSON-contract server whose users change between
runs, as a user sees them through the API: after every run `GET /users` lists exactly the source's current
valid users with their current values, `GET /dlq` exactly its currently invalid records, `/stats` counts each
source user once, and the run's record says what happened. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator

import pytest

from flows.users_etl import users_etl
from tests.servers.dummyjson import DummyJsonServer, load_real_users


@pytest.fixture
def nightly(settings_env, database_url, prefect_server) -> Iterator:
    """Runs users-etl against a server serving the users given, and a TestClient on the API over the same
    database."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    settings_env(database_url=database_url, users_page_size=40, users_batch_records=90, extract_retries=0, api_key=None)
    with DummyJsonServer([]) as server, TestClient(create_app()) as client:

        def run(users: list[dict]) -> dict:
            server.set_users(users)
            return asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))

        run.client = client
        yield run


def listed(client) -> dict[int, dict]:
    """Every user `GET /users` lists, page by page."""
    users, cursor = {}, None
    while True:
        page = client.get("/users", params={"page_size": 100, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        users |= {u["id"]: u for u in body["data"]}
        cursor = body["next_cursor"]
        if not cursor:
            return users


def open_dlq(client, **params) -> list[dict]:
    body = client.get("/dlq", params={"page_size": 200, **params}).json()
    assert body["total"] == len(body["data"])
    return body["data"]


def test_nightly_runs_keep_the_target_in_step_with_a_changing_source(nightly):
    client, source = nightly.client, load_real_users()
    valid_ids = {u["id"] for u in source}

    first = nightly(source)
    assert first["counts"]["inserted"] == 208 and first["counts"]["invalid"] == 0
    original_email = source[0]["email"]

    # run 2: user 1's email changes, user 2 becomes invalid, user 3 leaves the source
    second_source = copy.deepcopy(source)
    second_source[0]["email"] = "changed@example.com"
    second_source[1]["age"] = 70
    del second_source[2]
    second = nightly(second_source)["counts"]
    assert (second["updated"], second["invalidated"], second["deleted"], second["dlq_opened"]) == (1, 1, 1, 1)
    users = listed(client)
    assert set(users) == valid_ids - {2, 3}
    assert users[1]["email"] == "changed@example.com"
    gone = client.get("/users/2")
    assert gone.status_code == 404 and "validation" in gone.json()["detail"]
    assert client.get("/users/3").status_code == 404
    [entry] = open_dlq(client)
    assert entry["user_id"] == 2 and entry["reasons"] == ["age_out_of_range"]
    stats = client.get("/stats").json()
    assert stats["processed_users"] + stats["dlq_users"] == 207  # every source user once

    # run 3: everything changes back: the original email, user 2 valid again, user 3 back
    third = nightly(source)["counts"]
    assert (third["updated"], third["restored"], third["dlq_resolved"]) == (1, 2, 1)
    users = listed(client)
    assert set(users) == valid_ids
    assert users[1]["email"] == original_email and users[2]["age"] == source[1]["age"]
    assert open_dlq(client) == []
    [resolved] = open_dlq(client, status="resolved")
    assert resolved["resolution"] == "valid" and resolved["run_id"] == resolved["last_run_id"]

    # run 4: the source answers with half its users: nothing is deleted, the run says why
    fourth = nightly(source[:104])
    assert fourth["counts"]["deleted"] == 0
    assert any("none marked deleted" in a for a in fourth["anomalies"])
    assert set(listed(client)) == valid_ids
    run = client.get(f"/etl_runs/{fourth['run_id']}").json()
    assert "none marked deleted" in run["anomalies"]
