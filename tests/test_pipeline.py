"""users-etl end to end against a loopback DummyJSON server and real SQLite / PostgreSQL (no mocks): counts,
re-runs, the source's HTTP errors, a failing persist, drift, the database from a block, crashed runs. Extract's
resumes are in test_extract_pages.py, persist's batches in test_persist_batches.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import text

from dev.prefect_server import run_artifacts
from dev.sample_api import DummyJsonServer, Fault
from flows.users_etl import users_etl
from models.db import engine_for
from tests.conftest import migrated
from tests.servers.dummyjson import break_users, load_real_users
from tests.tables import count, rows

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_real_users_with_invalid_share_give_exact_counts(pipeline_env, tmp_path):
    url = pipeline_env
    users, expected = break_users(load_real_users())
    with DummyJsonServer(users) as server:
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        assert {limit for limit, _ in server.requests} == {50}

    n_bad = len(expected)
    counts = summary["counts"]
    assert counts["extracted"] == len(users) == 208
    assert counts["invalid"] == n_bad and counts["valid"] == 208 - n_bad
    assert count(url, "processed_users") == 208 - n_bad
    assert count(url, "dlq_users") == n_bad
    assert count(url, "raw_users") == 208

    dlq = rows(url, "SELECT error_reason, data FROM dlq_users")
    got = {frozenset(reason.split("; ")) for reason, _ in dlq}
    assert got == {frozenset(r) for r in expected.values()}
    assert all(reason for reason, _ in dlq)

    # what the Prefect UI shows for the run: its stage times and a summary with the same counts
    artifacts = run_artifacts(summary["run_id"])
    assert set(artifacts) == {"users-etl-stages", "users-etl-summary"}
    assert {row["stage"] for row in json.loads(artifacts["users-etl-stages"])} == {"extract", "transform", "persist"}
    assert f"| 208 | {208 - n_bad} | {n_bad} | {208 - n_bad} |" in artifacts["users-etl-summary"]

    run = rows(url, "SELECT status, extracted, valid, invalid, inserted FROM etl_runs")
    assert run == [("completed", 208, 208 - n_bad, n_bad, 208 - n_bad)]

    # no password anywhere: database tables and every staged file
    secrets = [u["password"] for u in load_real_users()]
    for table in ("raw_users", "processed_users", "dlq_users", "etl_runs", "etl_checkpoints"):
        dump = " ".join(str(r) for r in rows(url, f"SELECT * FROM {table}"))
        assert '"password"' not in dump
        assert not [s for s in secrets if s in dump], table
    for path in summary["files"].values():
        content = Path(path).read_text()
        assert not [s for s in secrets if s in content], path
    # raw keeps the sensitive fields, processed and DLQ do not
    ssns = [u["ssn"] for u in load_real_users()]
    assert any(s in Path(summary["files"]["raw"]).read_text() for s in ssns)
    for kind in ("processed", "dlq"):
        assert not any(s in Path(summary["files"][kind]).read_text() for s in ssns)
    assert pl.read_ndjson(summary["files"]["processed"]).height == 208 - n_bad


def test_rerun_adds_no_duplicates_and_counts_changes(pipeline_env):
    url = pipeline_env
    users = load_real_users()
    users[7] = {**users[7], "email": "nobody-at-example"}  # fails the rules in every run
    with DummyJsonServer(users) as server:
        first = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        second = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        assert second["counts"]["inserted"] == 0 and second["counts"]["unchanged"] == 207
        changed = [dict(u) for u in users]
        changed[5] = {**changed[5], "lastName": "Renamed"}
        server.set_users(changed + [{**users[0], "id": 9999, "email": "new.person@example.com"}])
        third = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    assert (third["counts"]["inserted"], third["counts"]["updated"], third["counts"]["unchanged"]) == (1, 1, 206)
    assert count(url, "processed_users") == 208
    renamed = rows(
        url,
        f"SELECT last_name, run_id, source_updated_at IS NOT NULL, updated_at > first_seen_at "
        f"FROM processed_users WHERE id = {users[5]['id']}",
    )
    assert renamed == [("Renamed", third["run_id"], True, True)]
    assert rows(url, f"SELECT run_id FROM processed_users WHERE id = {users[6]['id']}") == [(first["run_id"],)]
    assert count(url, "raw_users") == 210  # two new distinct records, nothing repeated
    # the failure seen in each run is stored once, with the first run that saw it and the last
    assert rows(url, "SELECT run_id, last_run_id, last_seen_at > inserted_at FROM dlq_users") == [
        (first["run_id"], third["run_id"], True)
    ]


def test_500_then_200_is_retried(pipeline_env):
    with DummyJsonServer(load_real_users()) as server:
        server.faults.extend([Fault(500), Fault(502)])
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    assert summary["counts"]["extracted"] == 208
    assert count(pipeline_env, "processed_users") == 208


def test_429_waits_for_retry_after(pipeline_env):
    with DummyJsonServer(load_real_users()) as server:
        server.faults.append(Fault(429, {"Retry-After": "1"}))
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        gap = server.request_times[1] - server.request_times[0]
    assert summary["counts"]["extracted"] == 208
    assert gap >= 0.95  # the client honoured the server's Retry-After before asking again


def test_other_4xx_fails_at_once_naming_url_and_status(pipeline_env):
    with DummyJsonServer(load_real_users()) as server:
        server.faults.append(Fault(404))
        state = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False, return_state=True))
        assert len(server.requests) == 1  # not retried
    assert state.is_failed()
    assert "HTTP 404" in state.message and server.base_url in state.message
    status, stage, error = rows(pipeline_env, "SELECT status, failed_stage, error FROM etl_runs")[0]
    assert (status, stage) == ("failed", "extract") and "HTTP 404" in error


def test_a_failing_persist_fails_the_run_and_a_rerun_completes_it(pipeline_env):
    """The database refuses one user's row: the run fails naming persist (not the stages it stopped), the
    batches before it are stored, and once the cause is gone a re-run stores the rest without duplicates."""
    url = pipeline_env
    with engine_for(url).begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_150 BEFORE INSERT ON processed_users WHEN NEW.id = 150 "
                    "BEGIN SELECT RAISE(ABORT, 'user 150 refused'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_150() RETURNS trigger AS $$ BEGIN IF NEW.id = 150 THEN "
                    "RAISE EXCEPTION 'user 150 refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_150 BEFORE INSERT ON processed_users FOR EACH ROW "
                    "EXECUTE FUNCTION refuse_150()"
                )
            )
    users = load_real_users()
    with DummyJsonServer(users) as server:
        state = asyncio.run(
            users_etl(api_base=server.base_url, batch_records=50, deliver_files=False, return_state=True)
        )
        assert state.is_failed() and "user 150 refused" in state.message
        status, stage, error = rows(url, "SELECT status, failed_stage, error FROM etl_runs")[0]
        assert (status, stage) == ("failed", "persist") and "user 150 refused" in error
        stored = count(url, "processed_users")
        assert 0 < stored < 150  # the batches before the refused one are in
        with engine_for(url).begin() as conn:
            conn.execute(
                text("DROP TRIGGER refuse_150" + ("" if conn.dialect.name == "sqlite" else " ON processed_users"))
            )
        summary = asyncio.run(users_etl(api_base=server.base_url, batch_records=50, deliver_files=False))
    assert summary["counts"]["inserted"] == 208 - stored
    assert count(url, "processed_users") == 208 and count(url, "raw_users") == 208


def test_schema_drift_goes_to_the_dlq_not_a_crash(pipeline_env):
    users = load_real_users()
    drifted = [{**{("given_name" if k == "firstName" else k): v for k, v in u.items()}} for u in users[:20]] + users[
        20:
    ]
    with DummyJsonServer(drifted) as server:
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    assert summary["counts"]["invalid"] == 20
    assert summary["dlq_reasons"] == {"first_name_missing": 20}


def test_database_from_a_sqlalchemy_connector_block(settings_env, tmp_path):
    """The flow can take its database from a prefect-sqlalchemy block instead of DATABASE_URL."""
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver

    db = tmp_path / "from-block.db"
    migrated(f"sqlite:///{db}")
    SqlAlchemyConnector(connection_info=ConnectionComponents(driver=SyncDriver.SQLITE_PYSQLITE, database=str(db))).save(
        "sluice-test-db", overwrite=True
    )
    settings_env(database_url=f"sqlite:///{tmp_path / 'not-this-one.db'}")
    with DummyJsonServer(load_real_users()[:40]) as server:
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False, database_block="sluice-test-db"))
    assert summary["counts"]["inserted"] == 40
    assert count(f"sqlite:///{db}", "processed_users") == 40
    assert (
        not (tmp_path / "not-this-one.db").exists()
        or count(f"sqlite:///{tmp_path / 'not-this-one.db'}", "processed_users") == 0
    )


def test_a_crashed_run_is_marked_at_the_next_start(pipeline_env):
    """A run whose process died never reported back: the next run marks it crashed (Prefect knows no such run)."""
    import uuid
    from datetime import UTC, datetime

    from sqlmodel import Session

    from models.runs import EtlRun

    ghost = str(uuid.uuid4())
    with Session(engine_for(pipeline_env)) as session:
        session.add(EtlRun(id=ghost, flow_name="users-etl", status="running", started_at=datetime.now(UTC)))
        session.commit()
    with DummyJsonServer(load_real_users()[:5]) as server:
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    status, error = rows(pipeline_env, f"SELECT status, error FROM etl_runs WHERE id = '{ghost}'")[0]
    assert status == "crashed" and summary["run_id"] in error


def test_run_counters_hold_a_big_days_bytes(pipeline_env):
    """A million users deliver over 2 GiB: the counter must not overflow PostgreSQL's INTEGER."""
    from tasks import runs

    engine = engine_for(pipeline_env)
    runs.start_run(engine, run_id="big-day", flow_name="users-etl")
    runs.finish_run(
        engine, run_id="big-day", status="completed", delivered_bytes=5 * 2**31, stage_seconds={"deliver": 1.0}
    )
    assert rows(pipeline_env, "SELECT delivered_bytes FROM etl_runs WHERE id = 'big-day'") == [(5 * 2**31,)]
