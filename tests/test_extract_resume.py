"""A killed extraction resumes at its last staged page: a users-etl run in a child process is SIGKILLed part-way
through its first batch of pages, and the next run's requests to a loopback DummyJSON server and the stored
users show what it fetched again and what it kept (real SQLite / PostgreSQL, real Prefect server)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import text

from dev.sample_api import DummyJsonServer, Fault
from flows.users_etl import users_etl
from models.db import engine_for
from tests.child import child_process, wait_for
from tests.servers.dummyjson import distinct_users
from tests.tables import rows

pytestmark = pytest.mark.usefixtures("prefect_server")

ROOT = Path(__file__).resolve().parents[1]
USERS, PAGE, BATCH = 3000, 50, 25_000  # 60 pages, all in the first batch
STALL_SKIP = 1500  # the page (the 31st) the source hangs on while the run is killed
PAGE_SECONDS = 0.1  # a rate-limited source: 10 pages a second
CHILD_TIMEOUT = 120  # the child's start (imports, the flow run) and its first 30 pages
RUN = """
import asyncio, sys
from flows.users_etl import users_etl
asyncio.run(users_etl(api_base=sys.argv[1], page_size={page}, batch_records={batch}, deliver_files=False))
"""


def _checkpoint(url: str) -> tuple[int, int, str]:
    return rows(url, "SELECT cursor, staged_bytes, staged_path FROM etl_checkpoints")[0]


def _stored_cursor(url: str) -> int:
    return max((r[0] for r in rows(url, "SELECT cursor FROM etl_checkpoints")), default=-1)


@pytest.fixture
def source() -> Iterator[DummyJsonServer]:
    """The users, each page a little slow, hanging on STALL_SKIP until `source.release` is set."""
    with DummyJsonServer(distinct_users(USERS)) as server:
        server.release = threading.Event()

        def slow_then_stall(limit: int, skip: int) -> None:
            time.sleep(PAGE_SECONDS)
            if skip == STALL_SKIP:
                server.release.wait(CHILD_TIMEOUT)

        server.fail_when = slow_then_stall
        try:
            yield server
        finally:
            server.release.set()


def _kill_when_stalled(server: DummyJsonServer, child: subprocess.Popen, log: Path) -> int:
    """SIGKILL the run while it waits for STALL_SKIP; the number of requests the source had by then."""
    wait_for(
        f"request for skip={STALL_SKIP}",
        lambda: (PAGE, STALL_SKIP) in server.requests,
        timeout=CHILD_TIMEOUT,
        child=child,
        log=log,
    )
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL
    served = len(server.requests)
    server.fail_when = None  # the source is well again
    server.release.set()
    return served


def _rerun_and_check_each_user_stored_once(url: str, server: DummyJsonServer, served: int) -> list[int]:
    """Run again to the end; every user stored and staged exactly once. The skips the rerun asked for."""
    summary = asyncio.run(users_etl(api_base=server.base_url, page_size=PAGE, batch_records=BATCH, deliver_files=False))
    refetched = [skip for _, skip in server.requests[served:]]
    assert summary["counts"]["extracted"] == USERS
    assert [r[0] for r in rows(url, "SELECT id FROM processed_users ORDER BY id")] == list(range(1, USERS + 1))
    assert rows(url, "SELECT count(*), count(DISTINCT id) FROM raw_users")[0] == (USERS, USERS)
    staged = pl.read_ndjson(summary["files"]["raw"]).get_column("id")
    assert staged.len() == USERS and staged.n_unique() == USERS
    assert refetched == list(range(refetched[0], USERS, PAGE)), refetched  # page after page, none twice
    return refetched


def test_a_killed_run_fetches_again_only_the_pages_in_flight(env, source, tmp_path):
    """Killed on its 31st page of a 60-page batch, the run has its checkpoint on that page (or a page before,
    if the last position was still on its way to the database); the next run starts there, not at skip=0."""
    url, log = env, tmp_path / "killed-run.log"
    with child_process(RUN.format(page=PAGE, batch=BATCH), source.base_url, log=log) as child:
        served = _kill_when_stalled(source, child, log)
    cursor, staged_bytes, staged_path = _checkpoint(url)
    assert STALL_SKIP - 2 * PAGE <= cursor <= STALL_SKIP
    assert Path(staged_path).stat().st_size >= staged_bytes

    refetched = _rerun_and_check_each_user_stored_once(url, source, served)
    assert refetched[0] == cursor  # resumed at the checkpoint: at most the page in flight and two before it
    assert sum(skip < STALL_SKIP for skip in refetched) <= 2


def test_pages_staged_past_the_stored_checkpoint_are_cut_off_and_fetched_again(env, source, tmp_path):
    """While the database keeps the checkpoint from moving (another writer holds the row, as persist may), the
    run stages pages past it; killed then, the next run cuts the staged file back to the stored position and
    fetches those pages again: none twice, none lost."""
    url, log = env, tmp_path / "killed-run.log"
    holder = engine_for(url).connect()
    try:
        with child_process(RUN.format(page=PAGE, batch=BATCH), source.base_url, log=log) as child:
            wait_for(
                "checkpoint at skip>=500",
                lambda: _stored_cursor(url) >= 500,
                timeout=CHILD_TIMEOUT,
                child=child,
                log=log,
            )
            if holder.dialect.name == "sqlite":
                holder.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                holder.execute(text("SELECT cursor FROM etl_checkpoints FOR UPDATE"))
            served = _kill_when_stalled(source, child, log)
    finally:
        holder.rollback()
        holder.close()
    cursor, staged_bytes, staged_path = _checkpoint(url)
    assert 500 <= cursor < STALL_SKIP - 2 * PAGE
    assert Path(staged_path).stat().st_size > staged_bytes  # pages the run staged past its stored position

    refetched = _rerun_and_check_each_user_stored_once(url, source, served)
    assert refetched[0] == cursor


def test_a_retried_batch_goes_on_from_its_last_staged_page(env):
    """A page's retry (after a 500 on the batch's third page) asks for that page again, not the
    batch's first: the pages before it are staged and checkpointed already."""
    url = env
    with DummyJsonServer(distinct_users(400)) as server:
        once = iter([Fault(500)])
        server.fail_when = lambda limit, skip: next(once, None) if skip == 100 else None
        summary = asyncio.run(
            users_etl(api_base=server.base_url, page_size=PAGE, batch_records=200, deliver_files=False)
        )
    assert [skip for _, skip in server.requests] == [0, 50, 100, 100, 150, 200, 250, 300, 350]
    staged = pl.read_ndjson(summary["files"]["raw"]).get_column("id")
    assert staged.len() == 400 and staged.n_unique() == 400
    assert rows(url, "SELECT count(*), count(DISTINCT id) FROM processed_users")[0] == (400, 400)
