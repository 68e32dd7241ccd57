"""GET /data (every source in one shape) and the per-source parts of /stats, over databases filled by the
real users-etl (API + CSV drop) and feeds-etl runs."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from dev.sample_api import DummyJsonServer
from flows.feeds_etl import feeds_etl
from flows.users_etl import users_etl
from tests.servers.dummyjson import load_real_users
from tests.servers.feeds import RSS, FeedServer, make_items, rss_document

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def client(settings_env, database_url, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "people.csv").write_text(
        "id,first_name,last_name,email,age,gender,department,company,title,city,country\n"
        "9001,Zed,Quill,zed@example.com,40,male,Legal,Quill & Co,Counsel,Porto,Portugal\n"
    )
    settings_env(database_url=database_url, users_csv_dir=drop, api_key=None)
    with DummyJsonServer(load_real_users()[:12]) as users, FeedServer() as feeds:
        feeds.set_feed(
            "/news", rss_document(make_items(3, prefix="news") + [{"guid": "x", "summary": "no title"}]), RSS
        )
        asyncio.run(users_etl(api_base=users.base_url, deliver_files=False))
        asyncio.run(feeds_etl(feed_urls=[feeds.url("/news")], deliver_files=False))
        feed_url = feeds.url("/news")
    with TestClient(create_app()) as c:
        c.feed_url, c.database_url = feed_url, database_url
        yield c


def check_every_source_in_one_shape(client):
    body = client.get("/data", params={"page_size": 500}).json()
    assert body["total"] == 12 + 1 + 3
    by_source = {}
    for item in body["data"]:
        assert set(item) == {"source", "source_id", "title", "description", "category", "value", "timestamp"}
        by_source.setdefault(item["source"], []).append(item)
    assert {k: len(v) for k, v in by_source.items()} == {"dummyjson": 12, "csv": 1, "feed": 3}
    zed = by_source["csv"][0]
    assert zed == {
        **zed,
        "source_id": "9001",
        "title": "Zed Quill",
        "description": "Counsel at Quill & Co",
        "category": "Legal",
        "value": 40.0,
    }
    story = next(i for i in by_source["feed"] if i["title"] == "news story 0")
    assert story["category"] == client.feed_url and story["value"] is None
    assert story["timestamp"].startswith("2026-03-01T08:00:00")
    stamps = [i["timestamp"] for i in body["data"]]
    assert stamps == sorted(stamps, reverse=True)  # newest first


def check_filters_search_and_pages(client):
    feed_only = client.get("/data", params={"source": "feed"}).json()
    assert feed_only["total"] == 3 and {i["source"] for i in feed_only["data"]} == {"feed"}
    legal = client.get("/data", params={"category": "Legal"}).json()
    assert legal["total"] >= 1 and all(i["category"] == "Legal" for i in legal["data"])
    assert client.get("/data", params={"search": "NEWS STORY 2"}).json()["total"] == 1
    assert client.get("/data", params={"search": "100%_"}).json()["total"] == 0  # wildcards are text
    first, second = (client.get("/data", params={"page_size": 10, "page": p}).json() for p in (1, 2))
    assert first["has_more"] and not second["has_more"] and len(second["data"]) == 6
    assert not {i["source_id"] for i in first["data"]} & {i["source_id"] for i in second["data"]}
    assert client.get("/data", params={"page": 99}).json()["data"] == []
    bad = client.get("/data", params={"page_size": 0})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "page_size"]


def check_stats_show_sources_checkpoints_and_recent_runs(client):
    stats = client.get("/stats").json()
    flows = [r["flow_name"] for r in stats["recent_runs"]]
    assert sorted(flows) == ["feeds-etl", "users-etl"]
    users_run = next(r for r in stats["recent_runs"] if r["flow_name"] == "users-etl")
    assert (users_run["inserted"], users_run["updated"], users_run["invalid"]) == (13, 0, 0)
    sources = {c["source"]: c for c in stats["checkpoints"]}
    assert sources["users:dummyjson"]["status"] == "complete" and sources["users:dummyjson"]["cursor"] == 12
    assert sources["csv:people.csv"]["status"] == "complete"
    assert sources[f"feed:{client.feed_url}"]["status"] == "complete"
    run = client.get(f"/etl_runs/{users_run['id']}").json()
    assert set(run["sources"]) == {"dummyjson", "csv"}
    for source, inserted in (("dummyjson", 12), ("csv", 1)):
        counts = run["sources"][source]
        assert counts == {**counts, "inserted": inserted, "updated": 0, "unchanged": 0, "failed": 0}
        assert not any(n for k, n in counts.items() if k != "inserted"), counts  # a first run: nothing else happened


def check_users_not_current_leave_the_view(client, url):
    from sqlalchemy import text

    from models.db import engine_for

    with engine_for(url).begin() as conn:
        conn.execute(text("UPDATE processed_users SET status = 'deleted' WHERE id = 9001"))
        conn.execute(text("UPDATE processed_users SET status = 'invalid' WHERE id = 1"))
    body = client.get("/data", params={"page_size": 500}).json()
    assert body["total"] == 12 + 1 + 3 - 2
    assert not {"9001", "1"} & {i["source_id"] for i in body["data"] if i["source"] != "feed"}
    assert client.get("/data", params={"source": "csv"}).json()["total"] == 0


def test_unified_view_and_per_source_stats(client):
    """One filled database per backend (two pipelines' worth of runs), every check against it."""
    check_every_source_in_one_shape(client)
    check_filters_search_and_pages(client)
    check_stats_show_sources_checkpoints_and_recent_runs(client)
    check_users_not_current_leave_the_view(client, client.database_url)
