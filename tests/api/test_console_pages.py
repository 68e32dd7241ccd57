"""The console's pages over HTTP, on SQLite and PostgreSQL filled by the pipeline: what they show equals the
JSON API's answers, every page carries its security headers, and bad input gets a 4xx page, never a 5xx."""

from __future__ import annotations

import re
from collections import Counter
from html import unescape

import pytest

from api.console.render import CONSOLE_CSP

PAGES = ("/", "/console/users", "/console/dlq", "/console/health", "/docs", "/redoc")
USER_ID_CELL = re.compile(r'<td class="num"><a href="/console/users/(-?\d+)">')
REASON_ROW = re.compile(
    r'<th scope="row"><a href="/console/dlq\?reason=(\w+)"[^>]*>\w+</a></th><td class="num">([\d,]+)</td>'
)


@pytest.mark.parametrize("path", PAGES)
def test_pages_answer_with_security_headers(client, path):
    r = client.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text  # scripts come from files only
    assert "cdn." not in r.text and "https://" not in r.text


def test_static_assets_are_served(client):
    for path in ("/console/static/console.js", "/console/static/console.css", "/console/vendor/swagger-ui-bundle.js"):
        assert client.get(path).status_code == 200, path


def test_users_page_shows_the_apis_users(client):
    params = {"gender": "female", "sort": "last_name", "order": "desc", "page_size": "20"}
    first = client.get("/users", params=params).json()
    page = client.get("/console/users", params=params)
    assert USER_ID_CELL.findall(page.text) == [str(u["id"]) for u in first["data"]]
    assert f"{first['total']:,} current users" in page.text
    next_link = re.search(r'<a href="\?([^"]+)" data-partial rel="next">', page.text)
    assert next_link is not None
    second = client.get("/users", params={**params, "cursor": first["next_cursor"]}).json()
    page2 = client.get(f"/console/users?{unescape(next_link.group(1))}")
    assert USER_ID_CELL.findall(page2.text) == [str(u["id"]) for u in second["data"]]


def test_a_partial_request_gets_only_its_region(client):
    whole, region = client.get("/console/users"), client.get("/console/users", headers={"X-Partial": "users_table"})
    assert "<html" in whole.text and "<html" not in region.text and "<table" in region.text
    assert region.headers["content-security-policy"] == CONSOLE_CSP


def test_dlq_page_counts_open_entries_by_rule(client):
    entries = client.get("/dlq", params={"page_size": 500}).json()["data"]
    expected = Counter(reason for e in entries for reason in e["reasons"])
    shown = {name: int(n.replace(",", "")) for name, n in REASON_ROW.findall(client.get("/console/dlq").text)}
    assert shown == dict(expected)


def test_dlq_record_names_every_rule_it_broke(client):
    entry = next(e for e in client.get("/dlq", params={"page_size": 500}).json()["data"] if len(e["reasons"]) > 1)
    page = client.get(f"/console/dlq/{entry['id']}").text
    for reason in entry["reasons"]:
        assert f"<code>{reason}</code>" in page


@pytest.mark.parametrize(
    "path",
    [
        "/console/users?min_age=abc",
        "/console/users?page_size=100000",
        "/console/users?cursor=not-a-cursor",
        "/console/users?search=%00",
        "/console/users?sort=password",
        "/console/dlq?reason=no_such_rule",
        "/console/dlq?user_id=99999999999999999999999",
        "/console/dlq?page=0",
    ],
)
def test_bad_filters_get_a_422_page_naming_them(client, path):
    r = client.get(path)
    assert r.status_code == 422, r.text
    assert 'role="alert"' in r.text and "These filters cannot be used" in r.text


@pytest.mark.parametrize("path", ["/?page=abc", "/?page=0", "/console/nope"])
def test_other_errors_on_console_paths_are_pages(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422) and r.headers["content-type"].startswith("text/html"), r.text
    assert 'role="alert"' in r.text and r.headers["content-security-policy"] == CONSOLE_CSP
    assert client.get("/users?page=abc").headers["content-type"] == "application/json"  # the API's stay JSON


@pytest.mark.parametrize(
    "path", ["/console/runs/nope", "/console/users/0", "/console/users/1e99", "/console/dlq/0", "/console/dlq/x"]
)
def test_unknown_things_get_a_404_page(client, path):
    r = client.get(path)
    assert r.status_code == 404 and 'role="alert"' in r.text


def test_start_button_needs_the_key_in_a_header(client, api_env):
    r = client.post("/console/runs")
    assert r.status_code == 403 and "set API_KEY" in r.text  # no API_KEY on the server: starting is off
    api_env(api_key="the key")
    assert client.post("/console/runs").status_code == 401
    assert client.post("/console/runs", headers={"X-API-Key": "wrong"}).status_code == 403
    assert client.post("/console/runs", data={"api_key": "the key"}).status_code == 401  # a form field is not enough
    client.cookies.set("X-API-Key", "the key")
    assert client.post("/console/runs").status_code == 401  # nor a cookie


def test_a_sharded_runs_page_and_record_show_each_shard(client, filled_db):
    """What the run recorded of each shard (flows/users_shards.py): the JSON API returns it, the page tables it."""
    import orjson
    from sqlalchemy import text

    from models.db import engine_for

    shards = [
        {"shard": 1, "start": 0, "stop": 100, "flow_run_id": "a", "attempts": 1, "records": 100, "valid": 95,
         "invalid": 5, "persisted": {"inserted": 95}, "stage_seconds": {"extract": 0.5}, "seconds": 3.25},
        {"shard": 2, "start": 100, "stop": None, "flow_run_id": "b", "attempts": 2, "records": 1108, "valid": 1100,
         "invalid": 8, "persisted": {"inserted": 1100}, "stage_seconds": {"extract": 0.5}, "seconds": 4.5},
    ]  # fmt: skip
    engine = engine_for(filled_db.url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE etl_runs SET shards = :s WHERE id = :id"),
            {"s": orjson.dumps(shards).decode(), "id": filled_db.run_id},
        )
    try:
        assert client.get(f"/etl_runs/{filled_db.run_id}").json()["shards"] == shards
        page = unescape(client.get(f"/console/runs/{filled_db.run_id}").text)
        assert "Per shard" in page
        cells = re.findall(r'<th scope="row">(\d)</th><td>([^<]+)</td>((?:<td class="num">[^<]+</td>)+)', page)
        assert [(n, span) for n, span, _ in cells] == [("1", "0 to 100"), ("2", "100 to the end")]
        assert re.findall(r">([^<]+)<", cells[1][2]) == ["1,108", "1,100", "8", "1,100", "2", "4.5"]
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE etl_runs SET shards = '[]' WHERE id = :id"), {"id": filled_db.run_id})
