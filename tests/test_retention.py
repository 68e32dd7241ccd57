"""Staged run folders removed after RUN_FILES_KEEP_DAYS (tasks/retention.py), on real SQLite and PostgreSQL, in
DATA_DIR and in an S3 staging store (a bucket of moto_server on loopback)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from dev.sample_api import DummyJsonServer
from flows.users_etl import users_etl
from models.db import engine_for
from models.runs import EtlCheckpoint, EtlRun
from models.settings import get_settings
from tasks.retention import prune_run_dirs, prune_store_runs
from tasks.staging.store import StagingStore
from tests.servers.dummyjson import load_real_users

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def add_row(url: str, *, status: str, ended_days_ago: float | None, now: datetime = NOW) -> str:
    """An etl_runs row; its run id."""
    run_id = str(uuid.uuid4())
    finished = now - timedelta(days=ended_days_ago) if ended_days_ago is not None else None
    with Session(engine_for(url)) as session:
        session.add(
            EtlRun(
                id=run_id,
                flow_name="users-etl",
                status=status,
                started_at=now - timedelta(days=30),
                finished_at=finished,
            )
        )
        session.commit()
    return run_id


def add_run(
    url: str, runs_dir: Path, *, status: str, ended_days_ago: float | None, size: int = 1000, now: datetime = NOW
) -> Path:
    """An etl_runs row and its staged folder with one file of `size` bytes."""
    folder = runs_dir / add_row(url, status=status, ended_days_ago=ended_days_ago, now=now)
    (folder / "raw_users").mkdir(parents=True)
    (folder / "raw_users" / "records.jsonl").write_bytes(b"x" * size)
    return folder


def set_checkpoint(url: str, staged: Path | str, status: str) -> None:
    with Session(engine_for(url)) as session:
        cp = session.get(EtlCheckpoint, "dummyjson") or EtlCheckpoint(source="dummyjson")
        cp.status, cp.staged_path = status, str(staged)
        session.add(cp)
        session.commit()


def test_runs_over_for_longer_than_kept_lose_their_folders_and_nothing_else(database_url, tmp_path):
    runs_dir = tmp_path / "data" / "runs"
    completed = add_run(database_url, runs_dir, status="completed", ended_days_ago=10, size=1500)
    failed = add_run(database_url, runs_dir, status="failed", ended_days_ago=8, size=700)
    resumable = add_run(database_url, runs_dir, status="crashed", ended_days_ago=9)
    recent = add_run(database_url, runs_dir, status="completed", ended_days_ago=6)
    running = add_run(database_url, runs_dir, status="running", ended_days_ago=None)
    orphan = runs_dir / str(uuid.uuid4())
    orphan.mkdir()
    set_checkpoint(database_url, resumable / "raw_users" / "records.jsonl", "failed")
    engine, log = engine_for(database_url), logging.getLogger("test")

    out = prune_run_dirs(engine, runs_dir=runs_dir, keep_days=7, logger=log, now=NOW)

    assert sorted(out["removed"]) == sorted([completed.name, failed.name]) and out["bytes"] == 2200
    assert not completed.exists() and not failed.exists()
    assert all(d.exists() for d in (resumable, recent, running, orphan))
    # once the extraction it held has completed, that folder goes too; a longer keep spares the rest
    set_checkpoint(database_url, runs_dir / running.name / "raw_users" / "records.jsonl", "complete")
    assert prune_run_dirs(engine, runs_dir=runs_dir, keep_days=7, logger=log, now=NOW)["removed"] == [resumable.name]
    assert prune_run_dirs(engine, runs_dir=runs_dir, keep_days=30, logger=log, now=NOW + timedelta(days=20)) == {
        "removed": [],
        "bytes": 0,
    }
    assert recent.exists() and running.exists()


@pytest.mark.usefixtures("prefect_server")
def test_a_run_removes_expired_folders_only_when_asked(settings_env, database_url):
    settings_env(database_url=database_url, users_page_size=50)
    runs_dir = get_settings().data_dir / "runs"
    old = add_run(database_url, runs_dir, status="completed", ended_days_ago=10, now=datetime.now(UTC))
    with DummyJsonServer(load_real_users()[:20]) as server:
        first = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        assert old.exists()  # RUN_FILES_KEEP_DAYS unset: every run's files stay
        settings_env(run_files_keep_days=7)
        second = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    assert not old.exists()
    for summary in (first, second):  # the runs' own folders, one of them over for less than a day
        assert all(Path(f).is_file() for f in summary["files"].values())


def test_a_folder_that_cannot_be_removed_is_named_and_the_run_goes_on(database_url, tmp_path, caplog):
    runs_dir = tmp_path / "data" / "runs"
    stuck = add_run(database_url, runs_dir, status="completed", ended_days_ago=10)
    gone = add_run(database_url, runs_dir, status="completed", ended_days_ago=10)
    inner = stuck / "raw_users"
    if os.geteuid() == 0:  # root removes what its permissions forbid: an immutable file stops it
        lock, unlock = ["chattr", "+i", str(inner / "records.jsonl")], ["chattr", "-i", str(inner / "records.jsonl")]
    else:
        lock, unlock = ["chmod", "500", str(inner)], ["chmod", "700", str(inner)]
    subprocess.run(lock, check=True)
    try:
        with caplog.at_level(logging.WARNING):
            out = prune_run_dirs(
                engine_for(database_url), runs_dir=runs_dir, keep_days=7, logger=logging.getLogger("test"), now=NOW
            )
    finally:
        subprocess.run(unlock, check=True)
    assert out["removed"] == [gone.name] and not gone.exists() and stuck.exists()
    assert f"could not remove the expired run folder {stuck}" in caplog.text


def test_a_run_noticed_as_crashed_is_over_from_its_last_heartbeat(database_url, tmp_path):
    """A run left 'running' by a process that died is marked crashed at a later run's start, ended at its
    last heartbeat: its folder goes once that is older than kept, unless an extraction would resume from it."""
    from tasks import runs

    runs_dir = tmp_path / "data" / "runs"
    dead = add_run(database_url, runs_dir, status="running", ended_days_ago=None)
    resumable = add_run(database_url, runs_dir, status="running", ended_days_ago=None)
    set_checkpoint(database_url, resumable / "raw_users" / "records.jsonl", "in_progress")
    engine, log = engine_for(database_url), logging.getLogger("test")
    assert prune_run_dirs(engine, runs_dir=runs_dir, keep_days=7, logger=log, now=NOW)["removed"] == []

    runs.mark_crashed(
        engine,
        [runs.Crash(d.name, "its process is gone", NOW - timedelta(days=8)) for d in (dead, resumable)],
        noticed_by="the next run",
    )
    assert prune_run_dirs(engine, runs_dir=runs_dir, keep_days=7, logger=log, now=NOW)["removed"] == [dead.name]
    assert resumable.exists()
    with Session(engine) as session:
        run = session.get(EtlRun, dead.name)
        assert run.status == "crashed" and "its process is gone" in run.error and "the next run" in run.error


def s3_store(s3, monkeypatch, env: dict[str, str] | None = None, bucket: str | None = None) -> StagingStore:
    """The store STAGING_URL=s3://<bucket>/staging names, with the S3 peer's access key (or `env`'s) in the
    environment, as a user sets them (no AWS file of this host read)."""
    for name, value in (s3.env | (env or {})).items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    return StagingStore(f"s3://{bucket or s3.bucket}/staging", endpoint_url=s3.endpoint_url)


def store_run(url: str, store: StagingStore, *, status: str, ended_days_ago: float | None, parts=(1000,)) -> str:
    """An etl_runs row and its staged file in the store, one object a part (tasks/staging/parts.py)."""
    run_id = add_row(url, status=status, ended_days_ago=ended_days_ago)
    store.write_bytes(f"runs/{run_id}/raw_users/records.jsonl/.file", b"")
    for i, size in enumerate(parts):
        store.write_bytes(f"runs/{run_id}/raw_users/records.jsonl/{i * 1000:015d}", b"x" * size)
    return run_id


def test_runs_over_for_longer_than_kept_leave_the_store_and_nothing_else(
    database_url, s3, moto_s3, monkeypatch, caplog
):
    store = s3_store(s3, monkeypatch)
    completed = store_run(database_url, store, status="completed", ended_days_ago=10, parts=(1000, 500))
    failed = store_run(database_url, store, status="failed", ended_days_ago=8, parts=(700,))
    resumable = store_run(database_url, store, status="crashed", ended_days_ago=9)
    recent = store_run(database_url, store, status="completed", ended_days_ago=6)
    running = store_run(database_url, store, status="running", ended_days_ago=None)
    orphan = str(uuid.uuid4())
    store.write_bytes(f"runs/{orphan}/x", b"x")
    store.write_bytes("runs/README", b"no run's")
    client = moto_s3.client()
    client.put_object(Bucket=s3.bucket, Key=f"elsewhere/runs/{completed}/x", Body=b"not the store's")
    set_checkpoint(database_url, store.location(f"runs/{resumable}/raw_users/records.jsonl"), "failed")
    engine, log = engine_for(database_url), logging.getLogger("test")

    with caplog.at_level(logging.INFO, logger="test"):
        out = prune_store_runs(engine, store=store, keep_days=7, logger=log, now=NOW)

    assert sorted(out["removed"]) == sorted([completed, failed]) and out["bytes"] == 2200
    assert "removed the staged files of 2 run(s) over for more than 7 day(s) (RUN_FILES_KEEP_DAYS)" in caplog.text
    left = {o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])}
    assert {k.split("/")[2] for k in left if k.startswith("staging/runs/")} == {
        resumable,
        recent,
        running,
        orphan,
        "README",
    }
    assert f"elsewhere/runs/{completed}/x" in left
    # once the extraction it held has completed, that folder goes too; a longer keep spares the rest
    set_checkpoint(database_url, store.location(f"runs/{running}/raw_users/records.jsonl"), "complete")
    assert prune_store_runs(engine, store=store, keep_days=7, logger=log, now=NOW)["removed"] == [resumable]
    assert prune_store_runs(engine, store=store, keep_days=30, logger=log, now=NOW + timedelta(days=20)) == {
        "removed": [],
        "bytes": 0,
    }
    assert store.keys(f"runs/{recent}") and store.keys(f"runs/{running}")


def test_a_store_that_refuses_is_named_and_the_run_goes_on(database_url, s3, moto_s3, monkeypatch, caplog):
    """A missing bucket, and a key that may not delete (S3 refuses each object in a 200 answer): warnings."""
    engine, log = engine_for(database_url), logging.getLogger("test")
    with caplog.at_level(logging.WARNING, logger="test"):
        missing = s3_store(s3, monkeypatch, bucket="no-such-bucket")
        assert prune_store_runs(engine, store=missing, keep_days=7, logger=log, now=NOW) == {"removed": [], "bytes": 0}
    assert "could not list the staged run folders in s3://no-such-bucket/staging/runs" in caplog.text
    assert "STAGING_URL" in caplog.text

    store = s3_store(s3, monkeypatch)
    stuck = store_run(database_url, store, status="completed", ended_days_ago=10)
    iam, user = moto_s3.client("iam"), f"sluice-no-delete-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    statements = [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:Delete*", "Resource": "*"},
    ]
    iam.put_user_policy(
        UserName=user,
        PolicyName="no-delete",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    refused = s3_store(
        s3, monkeypatch, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="test"):
        assert prune_store_runs(engine, store=refused, keep_days=7, logger=log, now=NOW) == {"removed": [], "bytes": 0}
    assert f"could not remove the expired run folder {store.location(f'runs/{stuck}')}: " in caplog.text
    assert f"2 object(s) left under runs/{stuck} after removing them" in caplog.text
    assert key["SecretAccessKey"] not in caplog.text
    assert prune_store_runs(engine, store=store, keep_days=7, logger=log, now=NOW)["removed"] == [stuck]


def test_a_staging_folder_apart_from_data_dir_is_pruned_as_the_store(database_url, tmp_path):
    store = StagingStore(str(tmp_path / "staging"))
    expired = store_run(database_url, store, status="completed", ended_days_ago=10)
    recent = store_run(database_url, store, status="completed", ended_days_ago=2)
    out = prune_store_runs(engine_for(database_url), store=store, keep_days=7, logger=logging.getLogger("t"), now=NOW)
    assert out == {"removed": [expired], "bytes": 1000}
    assert not (tmp_path / "staging" / "runs" / expired).exists() and store.keys(f"runs/{recent}")
