"""users-etl's extract against a loopback DummyJSON server: a run stopped mid-extract resumes at its checkpoint
with each record staged once, extract-first ordering, and the checkpoint writer beside a busy database."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from prefect import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

from dev.sample_api import DummyJsonServer, Fault
from flows.users_etl import users_etl
from models.db import engine_for
from tasks.extract.users_api.constants import CHECKPOINT_KEY
from tests.conftest import migrated
from tests.servers.dummyjson import break_users, load_real_users
from tests.tables import count, rows

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.mark.parametrize("extract_first", [False, True])
def test_source_down_keeps_checkpoint_and_next_run_resumes(pipeline_env, extract_first):
    url = pipeline_env
    users = load_real_users()
    with DummyJsonServer(users) as server:
        server.fail_when = lambda limit, skip: Fault(503) if skip >= 100 else None
        state = asyncio.run(
            users_etl(
                api_base=server.base_url,
                batch_records=50,
                deliver_files=False,
                return_state=True,
                extract_first=extract_first,
            )
        )
        assert state.is_failed() and "HTTP 503" in state.message
        cursor, status, staged = rows(url, "SELECT cursor, status, staged_records FROM etl_checkpoints")[0]
        assert (cursor, status, staged) == (100, "failed", 100)
        # streaming, what was staged before the source went down went all the way through; extract first,
        # nothing went on (it waits in the staged file for the next run)
        assert count(url, "raw_users") == (0 if extract_first else 100)
        assert rows(url, "SELECT status, failed_stage FROM etl_runs") == [("failed", "extract")]

        server.fail_when = None
        server.requests.clear()
        summary = asyncio.run(
            users_etl(api_base=server.base_url, batch_records=50, deliver_files=False, extract_first=extract_first)
        )
        assert server.requests[0] == (50, 100)  # resumed, did not start over
    assert summary["counts"]["extracted"] == 208
    assert count(url, "processed_users") == 208 and count(url, "raw_users") == 208
    assert pl.read_ndjson(summary["files"]["raw"]).get_column("id").n_unique() == 208
    statuses = sorted(r[0] for r in rows(url, "SELECT status FROM etl_runs"))
    assert statuses == ["completed", "failed"]


def test_a_batch_failing_after_some_of_its_pages_were_written_stages_each_record_once(pipeline_env):
    """Extract writes and checkpoints each page as it arrives: a batch failing once on its third page is
    retried from that page (the two before it stay staged); one failing on its fourth at every try fails the
    run with its checkpoint on that page, where the next run resumes. The staged file and the raw layer hold
    each record once."""
    url = pipeline_env
    users = load_real_users()
    with DummyJsonServer(users) as server:
        once = iter([Fault(500)])
        server.fail_when = lambda limit, skip: next(once, None) if skip == 100 else None
        summary = asyncio.run(users_etl(api_base=server.base_url, batch_records=200, deliver_files=False))
        assert [skip for _, skip in server.requests[:4]] == [0, 50, 100, 100]  # the retry went on from its page
    staged = pl.read_ndjson(summary["files"]["raw"])
    assert staged.height == 208 and staged.get_column("id").n_unique() == 208
    assert count(url, "raw_users") == 208

    runs_before = count(url, "etl_runs")
    with DummyJsonServer(users) as server:
        server.fail_when = lambda limit, skip: Fault(503) if skip == 150 else None  # every try
        state = asyncio.run(
            users_etl(api_base=server.base_url, batch_records=200, deliver_files=False, return_state=True)
        )
        assert state.is_failed()
        [(raw_path, staged_bytes, cursor)] = rows(
            url, f"SELECT staged_path, staged_bytes, cursor FROM etl_checkpoints WHERE source = '{CHECKPOINT_KEY}'"
        )
        assert cursor == 150 and Path(raw_path).stat().st_size == staged_bytes  # its three pages before the failing one
        server.fail_when = None
        server.requests.clear()
        summary = asyncio.run(users_etl(api_base=server.base_url, batch_records=200, deliver_files=False))
        assert server.requests[0] == (50, 150)  # resumed at the failing page
    staged = pl.read_ndjson(summary["files"]["raw"])
    assert staged.height == 208 and staged.get_column("id").n_unique() == 208
    assert count(url, "etl_runs") == runs_before + 2


def _checkpoint_row(url: str) -> tuple:
    return rows(url, "SELECT cursor, staged_bytes, staged_records FROM etl_checkpoints")[0]


def test_extract_checkpoint_does_not_wait_for_a_batch_being_stored(settings_env, tmp_path):
    """While another connection holds SQLite's write lock (persist storing a batch), the fetcher hands its
    position over and goes on; the newest position is stored once the lock is free, and leaving the writer
    leaves it stored."""
    from tasks.extract.users_api.checkpoint import CheckpointWriter, begin_extract
    from tasks.extract.users_api.paging import Position

    settings_env()
    url = migrated(f"sqlite:///{tmp_path / 'cp.db'}")
    engine = engine_for(url)
    begin_extract(engine, run_id="r1", fingerprint="f", new_path=tmp_path / "raw.jsonl")
    with CheckpointWriter(engine) as checkpoints:
        with engine.connect() as holder:
            holder.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, as a persist batch holds it
            checkpoints.advance(position=Position(100), total=208, offset=1000, records=100)
            checkpoints.advance(position=Position(200), total=208, offset=2000, records=200)  # returned: not waiting
            assert _checkpoint_row(url) == (0, 0, 0)  # still held: nothing written yet
            holder.exec_driver_sql("COMMIT")
        checkpoints.advance(position=Position(208), total=208, offset=2080, records=208)
    assert _checkpoint_row(url) == (208, 2080, 208)


def test_fetching_page_after_page_stages_every_page(settings_env, tmp_path):
    """Fetching the same pages again and again appends each time: the staged file holds every page. (That the
    page bodies are freed without the garbage collector is measured by `make bench`: bench/host_checks.py.)"""
    from models.sources import ApiSourceConfig
    from tasks.extract.users_api.checkpoint import CheckpointWriter, begin_extract
    from tasks.extract.users_api.pages import Fetching, fetch_batch
    from tasks.extract.users_api.paging import Paging, Position

    settings_env()
    engine = engine_for(migrated(f"sqlite:///{tmp_path / 'cp.db'}"))
    plan = begin_extract(engine, run_id="r1", fingerprint="f", new_path=tmp_path / "raw.jsonl")
    users = load_real_users()
    with DummyJsonServer(users) as server, CheckpointWriter(engine) as checkpoints:

        def fetch_all(offset: int) -> int:
            got = fetch_batch.fn(
                checkpoints,
                Fetching(Paging(ApiSourceConfig(base_url=server.base_url, page_size=25))),
                position=Position(0),
                max_records=1000,
                staged_path=plan.staged_path,
                offset=offset,
                records_before=0,
            )
            assert got.records == len(users) and got.done
            return got.offset

        end = fetch_all(0)
        for n in range(1, 11):
            assert fetch_all(n * end) == (n + 1) * end  # 90 pages in all, about 35 KB each
    assert (tmp_path / "raw.jsonl").stat().st_size == 11 * end


def test_extract_checkpoint_write_error_reaches_the_extracting_thread(settings_env, tmp_path):
    """A position that cannot be stored fails the extraction (at the next hand-over or on leaving)."""
    from sqlalchemy.exc import OperationalError

    from tasks.extract.users_api.checkpoint import CheckpointWriter, begin_extract
    from tasks.extract.users_api.paging import Position

    settings_env()
    url = migrated(f"sqlite:///{tmp_path / 'cp.db'}")
    engine = engine_for(url)
    begin_extract(engine, run_id="r1", fingerprint="f", new_path=tmp_path / "raw.jsonl")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE etl_checkpoints")
    checkpoints = CheckpointWriter(engine)
    checkpoints.advance(position=Position(100), total=208, offset=1000, records=100)
    with pytest.raises(OperationalError, match="etl_checkpoints"):
        checkpoints.close()


def _task_runs_since(started: datetime, prefixes: tuple[str, ...], expected: int) -> list:
    """The finished task runs started since `started` whose names begin with `prefixes`, as the Prefect API
    has them (their final states arrive as events, so wait until all `expected` have an end time)."""
    flt = TaskRunFilter(start_time=TaskRunFilterStartTime(after_=started))
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            found = [
                r
                for r in client.read_task_runs(task_run_filter=flt, limit=200)
                if r.name.startswith(prefixes) and r.end_time is not None
            ]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.parametrize("extract_first", [True, False])
def test_extract_first_stages_every_page_before_transform_starts(pipeline_env, settings_env, extract_first):
    """USERS_EXTRACT_FIRST: the same rows, but no batch is transformed until the last page is staged; by
    default transform works on the first batches while extract waits out a slow last page."""
    url = pipeline_env
    settings_env(users_extract_first="true" if extract_first else None)
    users, expected = break_users(load_real_users())
    pause = iter([Fault(429, {"Retry-After": "5"})])  # the source asks for a pause before the last page, once
    started = datetime.now(UTC)
    with DummyJsonServer(users) as server:
        server.fail_when = lambda limit, skip: next(pause, None) if skip == 200 else None
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False, batch_records=50))
    assert server.requests.count((50, 200)) == 2  # paused, then served
    assert summary["counts"]["extracted"] == 208 and summary["counts"]["invalid"] == len(expected)
    assert count(url, "processed_users") == 208 - len(expected) and count(url, "raw_users") == 208
    runs = _task_runs_since(started, ("fetch-users-pages", "transform-users-batch"), expected=10)
    fetches = [r for r in runs if r.name.startswith("fetch-users-pages")]
    transforms = [r for r in runs if r.name.startswith("transform-users-batch")]
    assert (len(fetches), len(transforms)) == (5, 5), runs  # 208 users in batches of 50: 4 full, 8 left
    first_transform, last_fetch = min(r.start_time for r in transforms), max(r.end_time for r in fetches)
    assert (first_transform >= last_fetch) is extract_first, (first_transform, last_fetch)
