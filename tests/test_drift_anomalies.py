"""Schema drift under each policy and anomalous runs, through the real flow (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from dev.sample_api import DummyJsonServer
from flows.users_etl import users_etl
from models.db import engine_for
from tasks.drift import compare, field_types, merge_types
from tests.conftest import migrated
from tests.servers.dummyjson import load_real_users

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def database_url(tmp_path):
    """Drift and anomaly logic is database-independent (persist runs on both elsewhere): SQLite only."""
    return migrated(f"sqlite:///{tmp_path / 'app.db'}")


def rows(url, sql):
    with engine_for(url).connect() as conn:
        return conn.execute(text(sql)).all()


def drifted(users):
    """`phone` renamed to `phoneNumber` (one field missing, one added) and `age` sent as text."""
    out = []
    for u in users:
        u = {("phoneNumber" if k == "phone" else k): v for k, v in u.items()}
        out.append({**u, "age": str(u["age"])})
    return out


def test_compare_names_every_change():
    before = {"a": "Int64", "b": "String", "c.d": "Float64"}
    now = {"a": "String", "c.d": "Float64", "e": "Boolean"}
    assert [(c["change"], c["field"]) for c in compare(before, now)] == [
        ("added", "e"),
        ("missing", "b"),
        ("retyped", "a"),
    ]
    assert merge_types([{"x": "Int64"}, {"x": "String"}, {"x": "Null", "y": "Null"}]) == {"x": "mixed", "y": "Null"}
    import polars as pl

    assert field_types(pl.Schema({"a": pl.Struct({"b": pl.Int64}), "_raw": pl.String})) == {"a.b": "Int64"}


@pytest.mark.parametrize("policy", ["warn", "evolve", "fail"])
def test_drifted_source_under_each_policy(settings_env, database_url, policy):
    settings_env(database_url=database_url, schema_drift_policies=f"dummyjson={policy}")
    users = load_real_users()[:60]
    with DummyJsonServer(users) as server:
        asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        server.set_users(drifted(users))
        state = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False, return_state=True))
    recorded = {
        (f, c) for f, c, p in rows(database_url, "SELECT field, change, policy FROM schema_drift") if p == policy
    }
    assert recorded == {("phone", "missing"), ("phoneNumber", "added"), ("age", "retyped")}
    run = rows(database_url, "SELECT status, schema_drift, failed_stage FROM etl_runs ORDER BY started_at DESC")[0]
    if policy == "fail":
        assert state.is_failed() and "schema drift" in state.message and "phoneNumber added" in state.message
        assert run[0] == "failed" and run[2] == "transform"
        assert (
            rows(database_url, "SELECT count(*) FROM processed_users")[0][0] == 60
        )  # nothing of the drifted run stored
    else:
        assert state.is_completed()
        summary = state.result()
        assert "age retyped Int64 -> String" in summary["schema_drift"]
        assert run[0] == "completed" and "phoneNumber added" in run[1]
        # the new field is kept in the raw layer
        assert rows(database_url, "SELECT count(*) FROM raw_users WHERE data LIKE '%phoneNumber%'")[0][0] == 60


def test_unchanged_source_records_no_drift(settings_env, database_url):
    settings_env(database_url=database_url)
    with DummyJsonServer(load_real_users()[:30]) as server:
        asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    assert rows(database_url, "SELECT count(*) FROM schema_drift")[0][0] == 0


@pytest.mark.parametrize("fail", [False, True])
def test_anomalous_run_is_flagged(settings_env, database_url, fail):
    settings_env(
        database_url=database_url, anomaly_min_runs=2, anomaly_fail=str(fail).lower(), anomaly_duration_factor=1000
    )
    users = load_real_users()
    with DummyJsonServer(users) as server:
        for _ in range(2):
            assert not asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))["anomalies"]
        server.set_users(users[:40])  # the source suddenly delivers a fifth of its usual volume
        state = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False, return_state=True))
    status, anomalies = rows(database_url, "SELECT status, anomalies FROM etl_runs ORDER BY started_at DESC")[0]
    assert "record count 40 is 81% below the mean of the last 2 runs" in anomalies
    if fail:
        assert state.is_failed() and status == "failed" and "anomalous run" in state.message
    else:
        assert state.is_completed() and status == "completed"
        assert "; ".join(state.result()["anomalies"]) == anomalies
    # a fifth of the users absent at once is no deletion: the guard holds them and says so
    assert "168 of 208 known dummyjson users (81%) were absent" in anomalies and "none marked deleted" in anomalies
    assert rows(database_url, "SELECT count(*) FROM processed_users WHERE status = 'current'") == [(208,)]


def test_each_run_records_the_fields_and_types_it_saw(settings_env, database_url):
    import json

    settings_env(database_url=database_url)
    with DummyJsonServer(load_real_users()[:10]) as server:
        asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    (observed,) = rows(database_url, "SELECT observed_schema FROM etl_runs")[0]
    seen = json.loads(observed)["dummyjson"]
    assert seen["age"] == "Int64" and seen["company.department"] == "String"
    assert seen["address.coordinates.lat"] == "Float64" and "password" not in seen
