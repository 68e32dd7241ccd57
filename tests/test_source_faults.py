"""A source that fails now and then, shrinks or lies, met by users-etl through a loopback DummyJSON server and
real SQLite / PostgreSQL: a transient error costs a retry of its page alone, and a walk whose `total` changed
or that ended short of it is an anomaly of the run and deletes nobody."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import polars as pl
import pytest

from flows.users_etl import users_etl
from models.db import engine_for
from models.sources import ApiSourceConfig
from tasks.extract.users_api.checkpoint import CheckpointWriter, begin_extract
from tasks.extract.users_api.constants import CHECKPOINT_KEY
from tasks.extract.users_api.pages import Fetching, fetch_batch
from tasks.extract.users_api.paging import Paging, Position
from tests.conftest import migrated
from tests.servers.dummyjson import DummyJsonServer, Fault, distinct_users
from tests.tables import rows

pytestmark = pytest.mark.usefixtures("prefect_server")

PAGE = 50


def _statuses(url: str) -> Counter:
    return Counter(dict(rows(url, "SELECT status, count(*) FROM processed_users GROUP BY status")))


def _checkpoint(url: str, columns: str) -> list:
    return rows(url, f"SELECT {columns} FROM etl_checkpoints WHERE source = :source", source=CHECKPOINT_KEY)


def _anomalies(url: str, run_id: str) -> str:
    return rows(url, "SELECT anomalies FROM etl_runs WHERE id = :id", id=run_id)[0][0] or ""


def _failing(fails: dict[int, int]):
    """A `fail_when` answering HTTP 500 to the page at each skip in `fails`, that many times, then the page."""
    left = dict(fails)

    def fail_when(limit: int, skip: int) -> Fault | None:
        if left.get(skip):
            left[skip] -= 1
            return Fault(500)
        return None

    return fail_when


def _shrink_at(server: DummyJsonServer, users: list[dict], *, skip: int, drop: int):
    """A `fail_when` that, at the first request for `skip` or beyond, removes the first `drop` users (already
    walked): the total falls by `drop` and the users behind shift back onto pages the walk has passed."""
    shrunk = []

    def fail_when(limit: int, at: int) -> None:
        if at >= skip and not shrunk:
            shrunk.append(at)
            server.set_users(users[drop:])

    return fail_when


@pytest.fixture
def env(settings_env, database_url):
    settings_env(database_url=database_url, extract_retries=2)  # and EXTRACT_RETRY_BASE_SECONDS=0 (conftest)
    return database_url


def test_a_source_answering_one_percent_500s_completes_retrying_only_the_failing_pages(env):
    """250 pages in one batch, 1% of them failing once or twice (six failures in all, three times the retry
    budget of a page): each failing page is asked for again on its own, no page before it is, and the run
    stores every user once."""
    url, n, page = env, 5000, 20
    fails = {740: 2, 2740: 1, 4740: 2}
    with DummyJsonServer(distinct_users(n)) as server:
        server.fail_when = _failing(fails)
        summary = asyncio.run(users_etl(api_base=server.base_url, page_size=page, batch_records=n, deliver_files=False))
        skips = [skip for _, skip in server.requests]
    assert skips == [s for s in range(0, n, page) for _ in range(1 + fails.get(s, 0))]
    assert summary["status"] == "completed" and summary["counts"]["extracted"] == n
    assert summary["anomalies"] == []
    assert rows(url, "SELECT count(*), count(DISTINCT id) FROM processed_users")[0] == (n, n)
    assert rows(url, "SELECT count(*) FROM raw_users")[0][0] == n
    staged = pl.read_ndjson(summary["files"]["raw"]).get_column("id")
    assert staged.len() == n and staged.n_unique() == n


def test_a_page_failing_past_its_own_retries_fails_the_run_at_that_page(env):
    """Three 500s on one page, against two retries a page: the run fails naming the page, after asking for it
    three times; the checkpoint is on it, and the pages before it were each asked for once."""
    url = env
    with DummyJsonServer(distinct_users(400)) as server:
        server.fail_when = _failing({200: 3})
        state = asyncio.run(
            users_etl(
                api_base=server.base_url, page_size=PAGE, batch_records=400, deliver_files=False, return_state=True
            )
        )
        skips = [skip for _, skip in server.requests]
    assert state.is_failed()
    assert "skip=200 answered HTTP 500 (the page failed 3 times)" in state.message
    assert skips == [0, 50, 100, 150, 200, 200, 200]
    assert _checkpoint(url, "cursor, status") == [(200, "failed")]


def test_a_retried_page_is_logged_with_its_reason_after_a_growing_wait_and_no_credentials(
    settings_env, tmp_path, caplog
):
    """The log names the page retried and why; the waits before its retries grow (base 0.2 s: 0.2-0.3 s, then
    0.4-0.6 s); neither log nor error shows the URL's user, password or query."""
    settings_env()
    engine = engine_for(migrated(f"sqlite:///{tmp_path / 'cp.db'}"))
    plan = begin_extract(engine, run_id="r1", fingerprint="f", new_path=tmp_path / "raw.jsonl")
    with DummyJsonServer(distinct_users(100)) as server, CheckpointWriter(engine) as checkpoints:
        server.fail_when = _failing({40: 2})
        base = server.base_url.replace("http://", "http://etl:s3cret-pw@") + "?token=s3cret-tok"
        with caplog.at_level(logging.WARNING):
            paging = Paging(ApiSourceConfig(base_url=base, page_size=20))
            got = fetch_batch.fn(
                checkpoints,
                Fetching(paging, retries=2, retry_base_seconds=0.2),
                position=Position(0),
                max_records=100,
                staged_path=plan.staged_path,
                offset=0,
                records_before=0,
            )
        times = [t for (_, skip), t in zip(server.requests, server.request_times, strict=True) if skip == 40]
    assert got.records == 100 and got.done
    retried = [r.getMessage() for r in caplog.records if "retrying this page" in r.getMessage()]
    assert len(retried) == 2, caplog.text
    assert f"GET {server.base_url}?limit=20&skip=40 answered HTTP 500: retrying this page (1 of 2)" in retried[0]
    assert "s3cret" not in caplog.text and "etl:" not in caplog.text
    first_wait, second_wait = times[1] - times[0], times[2] - times[1]
    assert 0.2 <= first_wait < 0.3 + 0.2 and 0.4 <= second_wait < 0.6 + 0.2, (first_wait, second_wait)


def test_a_total_falling_during_the_walk_is_an_anomaly_and_deletes_nobody(env):
    """After a full run, the source drops 100 users it had already served while the walk is at skip=1000: the
    total falls from 3000 to 2900 and 100 users still there shift onto pages already walked. The run
    completes, says so in its record and artifact, and marks none of the users it missed deleted (100 of
    3000, under the 10% guard: without the finding they would have been)."""
    url, users = env, distinct_users(3000)
    with DummyJsonServer(users) as server:
        asyncio.run(users_etl(api_base=server.base_url, page_size=PAGE, batch_records=1000, deliver_files=False))
        server.fail_when = _shrink_at(server, users, skip=1000, drop=100)
        summary = asyncio.run(
            users_etl(api_base=server.base_url, page_size=PAGE, batch_records=1000, deliver_files=False)
        )
    missed = set(range(1, 3001)) - set(pl.read_ndjson(summary["files"]["raw"]).get_column("id").to_list())
    assert missed == set(range(1001, 1101))  # walked past: still in the source, absent from this extraction
    assert summary["status"] == "completed" and summary["counts"]["deleted"] == 0
    changed = "the source's total changed from 3000 to 2900 during the walk"
    assert changed in summary["anomalies"]
    assert "the walk ended at 2900 records, short of the total 3000" in summary["anomalies"]
    assert changed in _anomalies(url, summary["run_id"])
    assert _statuses(url) == {"current": 3000}
    assert rows(url, "SELECT deleted FROM etl_runs WHERE id = :id", id=summary["run_id"]) == [(0,)]


def test_a_walk_ending_short_of_the_total_is_an_anomaly_and_deletes_nobody(env):
    """The source answers an empty page at skip=2900 while still saying total 3000: the run completes, names
    the short walk, and the 100 users it did not reach stay current. A later complete walk of a source that
    really has 2900 users marks the 100 others deleted."""
    url, users = env, distinct_users(3000)
    empty = Fault(200, body=b'{"users": [], "total": 3000, "skip": 2900, "limit": 50}')
    with DummyJsonServer(users) as server:
        asyncio.run(users_etl(api_base=server.base_url, page_size=PAGE, batch_records=1000, deliver_files=False))
        server.fail_when = lambda limit, skip: empty if skip == 2900 else None
        short = asyncio.run(
            users_etl(api_base=server.base_url, page_size=PAGE, batch_records=1000, deliver_files=False)
        )
        assert short["counts"]["extracted"] == 2900 and short["counts"]["deleted"] == 0
        assert "the walk ended at 2900 records, short of the total 3000" in _anomalies(url, short["run_id"])
        assert not any("changed" in a for a in short["anomalies"])
        assert _statuses(url) == {"current": 3000}

        server.fail_when = None
        server.set_users(users[:2900])
        complete = asyncio.run(
            users_etl(api_base=server.base_url, page_size=PAGE, batch_records=1000, deliver_files=False)
        )
    assert complete["counts"]["deleted"] == 100 and complete["anomalies"] == []
    assert _statuses(url) == {"current": 2900, "deleted": 100}


def test_a_resumed_walk_compares_with_the_total_its_first_run_saw(env):
    """A run fails at skip=1500 with its checkpoint on total 3000; the source then loses 100 users and the next
    run resumes there: its walk ends at 2900 against the 3000 the walk began with, and says so."""
    url, users = env, distinct_users(3000)
    with DummyJsonServer(users) as server:
        server.fail_when = lambda limit, skip: Fault(503) if skip >= 1500 else None
        state = asyncio.run(
            users_etl(
                api_base=server.base_url, page_size=PAGE, batch_records=500, deliver_files=False, return_state=True
            )
        )
        assert state.is_failed()
        assert _checkpoint(url, "cursor, total") == [(1500, 3000)]

        server.fail_when = None
        server.set_users(users[100:])
        server.requests.clear()
        summary = asyncio.run(
            users_etl(api_base=server.base_url, page_size=PAGE, batch_records=500, deliver_files=False)
        )
        assert server.requests[0] == (PAGE, 1500)  # resumed, not started over
    assert summary["status"] == "completed"
    assert "the source's total changed from 3000 to 2900 during the walk" in summary["anomalies"]
    assert "the source's total changed from 3000 to 2900" in _anomalies(url, summary["run_id"])
    assert _statuses(url).get("deleted", 0) == 0
    assert _checkpoint(url, "total, status") == [(3000, "complete")]
