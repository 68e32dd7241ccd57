"""feeds-etl end to end against a loopback RSS/Atom server and real SQLite / PostgreSQL (no mocks). The transform
alone: test_feeds_transform.py."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text

from dev.prefect_server import run_artifacts
from flows.feeds_etl import feeds_etl
from models.db import engine_for
from models.feeds import FeedItem
from tasks.extract.feeds import checkpoint_source
from tests.servers.feeds import ATOM, RSS, Fault, FeedServer, atom_document, make_items, rss_document

FEED_TABLES = ("raw_feed_items", "feed_items", "dlq_feed_items")


def rows(url: str, sql: str, **params) -> list:
    with engine_for(url).connect() as conn:
        return conn.execute(text(sql), params).all()


def count(url: str, table: str) -> int:
    return rows(url, f"SELECT count(*) FROM {table}")[0][0]


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive UTC, PostgreSQL aware: compare as aware."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def items(url: str, *columns: str, **where) -> list[tuple]:
    """Through the table's types (text() on SQLite would hand back timestamps as strings)."""
    table = FeedItem.__table__
    query = select(*(table.c[c] for c in columns)).where(*(table.c[k] == v for k, v in where.items()))
    with engine_for(url).connect() as conn:
        return [tuple(utc(v) if isinstance(v, datetime) else v for v in row) for row in conn.execute(query)]


def stamps(url: str) -> dict[str, tuple]:
    return {k: (f, u) for k, f, u in items(url, "item_id", "first_seen_at", "updated_at")}


@pytest.fixture
def feeds_env(settings_env, database_url, prefect_server):
    """The end-to-end tests' settings and database, and the session's Prefect server (not Prefect's own
    temporary one, which a run of this module alone started before)."""
    settings_env(database_url=database_url, extract_retries=2)
    with engine_for(database_url).begin() as conn:  # the shared reset predates these tables
        for table in FEED_TABLES:
            conn.execute(text(f"DELETE FROM {table}"))
    return settings_env, database_url


@pytest.fixture
def server():
    with FeedServer() as srv:
        yield srv


# a URL too long for `feed:<url>` in etl_checkpoints.source: its checkpoint is keyed by the URL's hash
RSS_PLAIN = "/rss-plain?" + "&".join(f"utm_param_{i}=value" for i in range(8))
# path -> (document, content type, validators the server sends and honours)
FEEDS = {
    "/rss-etag": (rss_document, RSS, ("etag",)),
    RSS_PLAIN: (rss_document, RSS, ()),
    "/atom-last-modified": (atom_document, ATOM, ("last-modified",)),
    "/atom-plain": (atom_document, ATOM, ()),
}


def test_first_load_unchanged_rerun_and_one_change(feeds_env, server):
    """RSS and Atom, with ETag, with Last-Modified only, and with neither, in the same runs."""
    set_env, url = feeds_env
    content = {path: make_items(3, prefix=path.split("?")[0].strip("/")) for path in FEEDS}
    content[RSS_PLAIN] += [
        {"link": "https://news.test/rss/no-guid", "title": "keyed by its link"},
        {"guid": "urn:rss:bad", "summary": "a body without title or link"},
    ]

    def publish(path: str) -> None:
        document, content_type, validators = FEEDS[path]
        server.set_feed(path, document(content[path]), content_type, validators=validators)

    for path in FEEDS:
        publish(path)
    feed = {path: server.url(path) for path in FEEDS}
    set_env(feed_urls=", ".join(feed.values()))

    first = asyncio.run(feeds_etl(deliver_files=False))
    c = first["counts"]
    assert (c["extracted"], c["valid"], c["invalid"]) == (14, 13, 1)
    assert (c["inserted"], c["updated"], c["unchanged"], c["raw_inserted"], c["dlq_inserted"]) == (13, 0, 0, 14, 1)
    assert (c["feeds_fetched"], c["feeds_not_modified"], c["feeds_failed"]) == (4, 0, 0)
    assert count(url, "feed_items") == 13
    for name in ("rss-etag", "atom-plain"):  # one of each format, every field
        (item,) = items(
            url,
            "title",
            "link",
            "summary",
            "author",
            "categories",
            "published_at",
            "guid",
            feed=feed[f"/{name}"],
            item_key=f"urn:{name}:1",
        )
        assert item == (
            f"{name} story 1",
            f"https://news.test/{name}/1",
            f"<p>What happened in {name} story 1</p>",
            "writer1@news.test (Writer 1)",
            '["topic-1","news"]',
            datetime(2026, 3, 1, 7, tzinfo=UTC),
            f"urn:{name}:1",
        ), name
    assert items(url, "guid", "link", item_key="https://news.test/rss/no-guid") == [
        (None, "https://news.test/rss/no-guid")
    ]
    assert rows(url, "SELECT feed, error_reason FROM dlq_feed_items") == [(feed[RSS_PLAIN], "title_and_link_missing")]
    assert first["dlq_reasons"] == {"title_and_link_missing": 1}
    # the parent flow's summary artifact, as the Prefect UI shows it
    assert "title_and_link_missing" in run_artifacts(first["run_id"])["feeds-etl-summary"]
    assert dict(rows(url, "SELECT source, status FROM etl_checkpoints")) == {
        checkpoint_source(u): "complete" for u in feed.values()
    }
    assert {r[0] for r in rows(url, "SELECT run_id FROM etl_checkpoints")} == {first["run_id"]}
    states = {s: json.loads(st) for s, st in rows(url, "SELECT source, state FROM etl_checkpoints")}
    assert states[checkpoint_source(feed["/rss-etag"])]["etag"].startswith('"')
    assert states[checkpoint_source(feed["/atom-last-modified"])]["last_modified"].endswith("GMT")
    assert checkpoint_source(feed[RSS_PLAIN]).startswith("feed:sha256:")
    assert states[checkpoint_source(feed[RSS_PLAIN])] == {"url": feed[RSS_PLAIN], "etag": None, "last_modified": None}
    before = stamps(url)
    dlq_seen = rows(url, "SELECT last_seen_at FROM dlq_feed_items")

    # unchanged re-run: feeds with validators answer 304 to a conditional GET; the others are read again
    # and every item is found unchanged; nothing is rewritten
    server.requests.clear()
    second = asyncio.run(feeds_etl(deliver_files=False))
    (etag_ask,) = server.requests_for("/rss-etag")
    assert etag_ask.status == 304
    assert etag_ask.headers["If-None-Match"] == states[checkpoint_source(feed["/rss-etag"])]["etag"]
    (lm_ask,) = server.requests_for("/atom-last-modified")
    assert lm_ask.status == 304 and "If-Modified-Since" in lm_ask.headers and "If-None-Match" not in lm_ask.headers
    for path in (RSS_PLAIN, "/atom-plain"):
        (ask,) = server.requests_for(path)
        assert ask.status == 200 and not {"If-None-Match", "If-Modified-Since"} & set(ask.headers)
    c = second["counts"]
    assert (c["extracted"], c["valid"], c["invalid"]) == (8, 7, 1)
    assert (c["inserted"], c["updated"], c["unchanged"], c["raw_inserted"], c["dlq_inserted"]) == (0, 0, 7, 0, 0)
    assert (c["feeds_fetched"], c["feeds_not_modified"]) == (2, 2)
    assert stamps(url) == before
    assert dict(rows(url, "SELECT source, status FROM etl_checkpoints")) == {
        checkpoint_source(feed[p]): ("complete" if "plain" in p else "not_modified") for p in FEEDS
    }
    assert count(url, "dlq_feed_items") == 1 and count(url, "raw_feed_items") == 14
    assert rows(url, "SELECT last_seen_at FROM dlq_feed_items") != dlq_seen  # seen again, not stored twice

    # one item of the ETag feed changes (so does its ETag): exactly one update
    content["/rss-etag"][1] = {**content["/rss-etag"][1], "title": "rss-etag story 1 (corrected)"}
    publish("/rss-etag")
    server.requests.clear()
    third = asyncio.run(feeds_etl(deliver_files=False))
    assert [r.status for r in server.requests_for("/rss-etag")] == [200]
    assert [r.status for r in server.requests_for("/atom-last-modified")] == [304]
    c = third["counts"]
    assert (c["inserted"], c["updated"], c["unchanged"], c["raw_inserted"]) == (0, 1, 9, 1)
    (item_id, title) = items(url, "item_id", "title", item_key="urn:rss-etag:1")[0]
    assert title == "rss-etag story 1 (corrected)"
    after = stamps(url)
    assert after[item_id][0] == before[item_id][0] and after[item_id][1] > before[item_id][1]
    assert {k: v for k, v in after.items() if k != item_id} == {k: v for k, v in before.items() if k != item_id}

    runs_ = rows(
        url,
        "SELECT flow_name, status, extracted, valid, invalid, inserted, updated, unchanged "
        "FROM etl_runs ORDER BY started_at",
    )
    assert runs_ == [
        ("feeds-etl", "completed", 14, 13, 1, 13, 0, 0),
        ("feeds-etl", "completed", 8, 7, 1, 0, 0, 7),
        ("feeds-etl", "completed", 11, 10, 1, 0, 1, 9),
    ]


def test_bad_feeds_fail_by_name_while_the_good_one_lands(feeds_env, server):
    set_env, url = feeds_env
    server.set_feed("/good", atom_document(make_items(4, prefix="good")), ATOM)
    server.set_feed("/broken", b"<html><body><p>Moved to a new CMS {oops}", "text/html")
    set_env(feed_urls=server.url("/not-this-one"))  # the parameter wins over FEED_URLS
    broken, good, gone = server.url("/broken"), server.url("/good"), server.url("/gone")

    state = asyncio.run(feeds_etl(feed_urls=[broken, good, gone], deliver_files=False, return_state=True))

    assert state.is_failed()
    assert broken in state.message and "not an RSS or Atom feed" in state.message
    assert gone in state.message and "HTTP 404" in state.message
    assert not server.requests_for("/not-this-one")
    assert len(server.requests_for("/broken")) == 1 and len(server.requests_for("/gone")) == 1  # not retried
    assert count(url, "feed_items") == 4
    assert {r[0] for r in rows(url, "SELECT feed FROM feed_items")} == {good}
    cps = {s: (st, err) for s, st, err in rows(url, "SELECT source, status, last_error FROM etl_checkpoints")}
    assert cps[checkpoint_source(good)] == ("complete", None)
    assert cps[checkpoint_source(broken)][0] == "failed" and broken in cps[checkpoint_source(broken)][1]
    assert cps[checkpoint_source(gone)][0] == "failed" and "HTTP 404" in cps[checkpoint_source(gone)][1]
    status, stage, error, inserted = rows(url, "SELECT status, failed_stage, error, inserted FROM etl_runs")[0]
    assert (status, stage, inserted) == ("failed", "extract", 4)
    assert broken in error and gone in error
    assert {r[0] for r in rows(url, "SELECT run_id FROM etl_checkpoints")} == {
        r[0] for r in rows(url, "SELECT id FROM etl_runs")
    }

    # fixed: the next run reads it (nothing was stored for it, so no conditional GET) and the good one is a 304
    server.set_feed("/broken", rss_document(make_items(2, prefix="fixed")), RSS)
    summary = asyncio.run(feeds_etl(feed_urls=[broken, good], deliver_files=False))
    assert summary["counts"]["inserted"] == 2 and summary["counts"]["feeds_not_modified"] == 1
    assert "If-None-Match" not in server.requests_for("/broken")[-1].headers


def test_transient_errors_are_retried(feeds_env, server):
    set_env, url = feeds_env
    server.set_feed("/flaky", rss_document(make_items(3, prefix="flaky")), RSS)
    server.set_feed("/slow", atom_document(make_items(2, prefix="slow")), ATOM)
    server.faults["/flaky"].extend([Fault(500), Fault(503)])
    server.delays["/slow"].append(2.0)  # the first answer comes after the client's timeout

    summary = asyncio.run(feeds_etl(feed_urls=[server.url("/flaky"), server.url("/slow")], request_timeout=0.5))

    assert [r.status for r in server.requests_for("/flaky")] == [500, 503, 200]
    assert len(server.requests_for("/slow")) == 2
    assert summary["counts"]["inserted"] == 5 and summary["counts"]["feeds_failed"] == 0
    assert count(url, "feed_items") == 5
    assert summary["delivered"] == [] and "deliver" in summary["stage_seconds"]  # SFTP_HOST unset: skipped


@pytest.mark.sshd
def test_one_rss_and_one_atom_feed_delivered_under_distinct_names(feeds_env, server, sshd):
    """Raw, processed and DLQ files each under a name of its own (they once shared `items_<stamp>.jsonl`,
    and deliver refused them); the raw file goes as a masked copy, like every raw file."""
    set_env, url = feeds_env
    server.set_feed(
        "/rss", rss_document(make_items(3, prefix="rss") + [{"guid": "urn:rss:bad", "summary": "no title"}]), RSS
    )
    server.set_feed("/atom", atom_document(make_items(2, prefix="atom")), ATOM)
    set_env(**sshd.sftp_settings())

    summary = asyncio.run(feeds_etl(feed_urls=[server.url("/rss"), server.url("/atom")]))

    assert summary["status"] == "completed" and summary["counts"]["delivered_files"] == 3
    files = {kind: Path(path) for kind, path in summary["files"].items()}
    stamp = files["raw"].stem.removeprefix("feed_records_")
    assert {kind: path.name for kind, path in files.items()} == {
        "raw": f"feed_records_{stamp}.jsonl",
        "processed": f"feed_items_{stamp}.jsonl",
        "dlq": f"invalid_feed_items_{stamp}.jsonl",
    }
    day = Path(summary["delivered"][0]["remote_path"]).parent.name  # the run's date
    on_server = {
        p.relative_to(sshd.local_root).as_posix(): p.read_bytes() for p in sshd.local_root.rglob("*") if p.is_file()
    }
    assert set(on_server) == {f"{day}/{path.name}" for path in files.values()}
    raw_copy = files["raw"].parent.parent / "deliver" / files["raw"].name
    assert summary["delivered"][0]["local_path"] == str(raw_copy)
    assert on_server[f"{day}/{files['raw'].name}"] == files["raw"].read_bytes()  # nothing sensitive in feed items
    assert len(files["raw"].read_bytes().splitlines()) == 6
    assert len(on_server[f"{day}/{files['processed'].name}"].splitlines()) == 5
    assert json.loads(on_server[f"{day}/{files['dlq'].name}"])["record"]["guid"] == "urn:rss:bad"
    assert rows(url, "SELECT count(*) FROM feed_items")[0][0] == 5
