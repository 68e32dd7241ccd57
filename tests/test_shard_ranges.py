"""A sharded run's page walk in ranges, against a loopback DummyJSON server: the ranges cover the walk on page
boundaries, each shard asks for exactly the pages one walk would, its staged lines joined in range order are
one walk's, each range keeps a checkpoint of its own, and a range alone is never a complete walk."""

from __future__ import annotations

import logging

import pytest

from dev.sample_api import DummyJsonServer
from models.db import engine_for
from models.sources import ApiSourceConfig
from tasks.extract.errors import SourceError
from tasks.extract.users_api import ApiSource, extract_api
from tasks.extract.users_api.pages import walk_findings
from tasks.extract.users_api.paging import WalkRange
from tasks.extract.users_api.shards import shard_source, source_total, split_walk
from tests.conftest import migrated
from tests.servers.dummyjson import load_real_users
from tests.tables import rows

pytestmark = pytest.mark.usefixtures("prefect_server")  # (the page walk's tasks report to it)
PAGE = 25


@pytest.mark.parametrize(
    ("total", "shards", "expected"),
    [
        (208, 2, [(0, 100), (100, None)]),
        (208, 3, [(0, 75), (75, 150), (150, None)]),
        (1000, 4, [(0, 250), (250, 500), (500, 750), (750, None)]),
        (30, 4, [(0, 25), (25, None)]),  # fewer pages than shards: a shard per page
        (0, 4, [(0, None)]),
    ],
)
def test_split_walk_cuts_whole_pages_and_leaves_the_last_range_open(total, shards, expected):
    parts = split_walk(total, shards, PAGE)
    assert [(p.start, p.stop) for p in parts] == expected
    assert all(p.start % PAGE == 0 for p in parts)
    assert sum(p.expected(total) for p in parts) == total


def test_a_range_short_of_its_records_is_a_finding_and_a_whole_range_is_none():
    assert walk_findings([208], 100, WalkRange(0, 100)) == []
    assert walk_findings([208], 108, WalkRange(100)) == []
    assert walk_findings([208], 80, WalkRange(100)) == [
        "the walk ended at 80 records, short of the 108 its range holds"
    ]
    assert walk_findings([208, 210], 110, WalkRange(100))[0].startswith("the source's total changed")


def test_shards_stage_one_walk_between_them_with_a_checkpoint_each(settings_env, tmp_path):
    settings_env()
    engine = engine_for(migrated(f"sqlite:///{tmp_path / 'app.db'}"))
    users = load_real_users()
    logger = logging.getLogger("test")
    with DummyJsonServer(users) as server:
        source = ApiSource(config=ApiSourceConfig(base_url=server.base_url, page_size=PAGE), batch_records=60)
        whole = extract_api(
            engine, source, run_id="whole", run_dir=str(tmp_path / "whole"), file_time="t", manifest=None, logger=logger
        )
        one_walk = list(server.requests)
        server.requests.clear()
        assert source_total(source) == len(users)
        parts = split_walk(len(users), 3, PAGE)
        walks = [
            extract_api(
                engine,
                shard_source(source, part, n, len(parts)),
                run_id="sharded",
                run_dir=str(tmp_path / f"shard-{n}"),
                file_time="t",
                manifest=None,
                logger=logger,
            )
            for n, part in enumerate(parts)
        ]
        shard_requests = server.requests[1:]  # after source_total's first page
    joined = b"".join(open(w.staged.raw_path, "rb").read() for w in walks)
    assert joined == open(whole.staged.raw_path, "rb").read()
    assert sorted(shard_requests) == sorted(one_walk), "each page asked for once, as one walk asks"
    assert [w.staged.records for w in walks] == [75, 75, 58]
    assert all(w.partial and not w.findings for w in walks)
    keys = rows(f"sqlite:///{tmp_path / 'app.db'}", "SELECT source, status FROM etl_checkpoints ORDER BY source")
    assert keys == [
        ("users:dummyjson", "complete"),
        ("users:dummyjson#shard-1-of-3", "complete"),
        ("users:dummyjson#shard-2-of-3", "complete"),
        ("users:dummyjson#shard-3-of-3", "complete"),
    ]


def test_sharding_needs_an_offset_walk_with_a_total(settings_env):
    settings_env()
    cursor = ApiSource(
        config=ApiSourceConfig(base_url="http://127.0.0.1:9/users", pagination="cursor"), batch_records=10
    )
    with pytest.raises(SourceError, match="USERS_API_PAGINATION=offset"):
        source_total(cursor)
    with DummyJsonServer(load_real_users()) as server:
        no_total = ApiSourceConfig(base_url=server.base_url, page_size=PAGE, total_path="")
        with pytest.raises(SourceError, match="USERS_API_TOTAL_PATH"):
            source_total(ApiSource(config=no_total, batch_records=10))
