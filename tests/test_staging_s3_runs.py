"""Runs staged in S3 (STAGING_URL=s3://..., moto's server on loopback with IAM-checked keys): users-etl with a CSV
drop and delivery to a real sshd, a killed run resumed from the file its checkpoint names in the bucket, and
feeds-etl. Each stores and delivers what the same run staged in a folder does, and leaves no data on disk."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time

import pytest

from dev.sample_api import DummyJsonServer
from flows.feeds_etl import feeds_etl
from flows.users_etl import users_etl
from models.db import engine_for
from tasks.staging import files
from tests.child import child_process, wait_for
from tests.servers.dummyjson import break_users, distinct_users, load_real_users
from tests.servers.feeds import ATOM, RSS, FeedServer, atom_document, make_items, rss_document
from tests.tables import rows

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.sshd]

TABLES = {
    "raw_users": "SELECT source, source_id, record_hash, data FROM raw_users ORDER BY source, record_hash",
    "processed_users": "SELECT id, source, email, ssn_masked, status FROM processed_users ORDER BY source, id",
    "dlq_users": "SELECT record_hash, source, error_reason, data FROM dlq_users ORDER BY record_hash",
    "feed_items": "SELECT guid, title, link FROM feed_items ORDER BY guid",
}
CLEARED = ("raw_users", "processed_users", "dlq_users", "etl_runs", "etl_checkpoints", "schema_drift")
CLEARED += ("raw_feed_items", "feed_items", "dlq_feed_items")


@pytest.fixture
def staged_in(settings_env, database_url, s3, tmp_path, monkeypatch):
    """`use("folder")` or `use("s3")`: the runs' files in DATA_DIR, or in the test's bucket; each time an empty
    database, as before a first run."""
    settings_env(database_url=database_url, users_page_size=50, extract_retries=2)

    def use(where: str) -> None:
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        staging = s3.url if where == "s3" else None
        settings_env(staging_url=staging, staging_endpoint_url=s3.endpoint_url if staging else None)
        with engine_for(database_url).begin() as conn:
            for table in CLEARED:
                conn.exec_driver_sql(f"DELETE FROM {table}")

    return use


def _stored(url: str, *tables: str) -> dict[str, list]:
    return {t: rows(url, TABLES[t]) for t in tables}


def _delivered(sshd) -> dict[str, bytes]:
    """What landed on the SFTP server, by name (the day's folder and a run's time stamp left out), then cleared."""
    found = {re.sub(r"_\d{8}_\d{6}", "", p.name): p.read_bytes() for p in sshd.local_root.rglob("*") if p.is_file()}
    sshd.clear_uploads()
    return found


def _staged_bytes(location: str) -> bytes:
    return files.read_span(location, 0, files.file_size(location))


def _on_disk(tmp_path, run_id: str) -> set[str]:
    """The files a run left in its folder under DATA_DIR."""
    folder = tmp_path / "data" / "runs" / run_id
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_users_etl_staged_in_s3_stores_and_delivers_what_a_folder_run_does(
    staged_in, database_url, sshd, settings_env, tmp_path
):
    users, _ = break_users(load_real_users())
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "people.csv").write_text(
        "id,first_name,last_name,email,age,department\n9001,Ada,Lovelace,ada@example.com,36,Legal\n"
        "9002,,Hopper,bad,-1,Sales\n"
    )
    results = {}
    with DummyJsonServer(users) as server:
        for where in ("folder", "s3"):
            staged_in(where)
            settings_env(users_csv_dir=drop, **sshd.sftp_settings())
            summary = asyncio.run(users_etl(api_base=server.base_url))
            results[where] = (
                summary,
                _stored(database_url, "raw_users", "processed_users", "dlq_users"),
                _delivered(sshd),
            )
    (folder_run, folder_rows, folder_files), (s3_run, s3_rows, s3_files) = results["folder"], results["s3"]
    assert s3_rows == folder_rows and s3_rows["dlq_users"]
    assert any(source.startswith("csv") for source, *_ in s3_rows["raw_users"])
    assert len(s3_files) == 4 and set(s3_files) == set(folder_files)  # raw (masked), CSV's raw, processed, DLQ
    assert s3_files == folder_files
    for kind, location in s3_run["files"].items():
        assert location.startswith(f"{os.environ['STAGING_URL']}/runs/{s3_run['run_id']}/"), kind
        assert _staged_bytes(location) == _staged_bytes(folder_run["files"][kind]), kind
    assert {p.split("/")[0] for p in _on_disk(tmp_path, s3_run["run_id"])} == {"stages"}  # manifests only


STALL_SKIP, PAGE = 400, 50
RUN = """
import asyncio, sys
from flows.users_etl import users_etl
asyncio.run(users_etl(api_base=sys.argv[1], page_size=50, batch_records=100000, deliver_files=False))
"""


def test_a_killed_run_resumes_from_its_file_in_the_bucket(staged_in, database_url, tmp_path):
    """Killed while the source hangs on a page, the run leaves its pages in the bucket and its checkpoint on
    them; the next run (any host: its disk plays no part) fetches only from the checkpoint on."""
    staged_in("s3")
    with DummyJsonServer(distinct_users(1000)) as server:
        release = threading.Event()
        server.fail_when = lambda _limit, skip: release.wait(120) if skip == STALL_SKIP else time.sleep(0.05)
        log = tmp_path / "killed.log"
        try:
            with child_process(RUN, server.base_url, log=log) as child:
                wait_for(
                    "the stalled page", lambda: (PAGE, STALL_SKIP) in server.requests, timeout=120, child=child, log=log
                )
                wait_for(
                    "a checkpoint past skip=200",
                    lambda: (rows(database_url, "SELECT max(cursor) FROM etl_checkpoints")[0][0] or 0) >= 200,
                    timeout=30,
                    child=child,
                    log=log,
                )
                os.kill(child.pid, signal.SIGKILL)
                child.wait(30)
        finally:
            release.set()
        server.fail_when = None
        [(cursor, staged_bytes, staged_path)] = rows(
            database_url, "SELECT cursor, staged_bytes, staged_path FROM etl_checkpoints"
        )
        assert staged_path.startswith("s3://") and files.file_size(staged_path) >= staged_bytes > 0
        served = len(server.requests)
        summary = asyncio.run(users_etl(api_base=server.base_url, page_size=PAGE, deliver_files=False))
    refetched = [skip for _, skip in server.requests[served:]]
    assert refetched == list(range(cursor, 1000, PAGE))  # from the checkpoint on, each page once
    assert summary["files"]["raw"] == staged_path  # the killed run's file, resumed
    assert rows(database_url, "SELECT count(*), count(DISTINCT id) FROM processed_users")[0] == (1000, 1000)
    assert _staged_bytes(staged_path).count(b"\n") == 1000


def test_feeds_etl_staged_in_s3_stores_and_delivers_what_a_folder_run_does(
    staged_in, database_url, sshd, settings_env, tmp_path
):
    results = {}
    with FeedServer() as server:
        server.set_feed("/rss", rss_document(make_items(3, prefix="rss") + [{"guid": "urn:rss:bad"}]), RSS)
        server.set_feed("/atom", atom_document(make_items(2, prefix="atom")), ATOM)
        for where in ("folder", "s3"):
            staged_in(where)
            settings_env(**sshd.sftp_settings())
            summary = asyncio.run(feeds_etl(feed_urls=[server.url("/rss"), server.url("/atom")]))
            assert summary["status"] == "completed", summary
            results[where] = (summary, _stored(database_url, "feed_items"), _delivered(sshd))
    (_, folder_rows, folder_files), (s3_run, s3_rows, s3_files) = results["folder"], results["s3"]
    assert s3_rows == folder_rows and len(s3_rows["feed_items"]) == 5
    assert s3_files == folder_files and len(s3_files) == 3
    assert all(location.startswith("s3://") for location in s3_run["files"].values())
    assert not _on_disk(tmp_path, s3_run["run_id"])
