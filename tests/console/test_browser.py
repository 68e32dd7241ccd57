"""The console as a person uses it, in Chromium: the run that happened, its page, the users table with filters
and cursor paging, a DLQ record down to the rule it broke, starting a run with and without the key."""

from __future__ import annotations

import re
from collections import Counter

import httpx
from playwright.sync_api import Page, expect

from tests.console.conftest import KEY

# a run page's rejected-records chart, a user table's rows: what a person reads off the page
REASON_ROWS = "section:has(#reasons-title) table.chart tbody tr"
USER_IDS = "#users_table table.users tbody tr td:first-child a"


def api(console: str, path: str, **params) -> dict:
    return httpx.get(f"{console}{path}", params=params, timeout=30).raise_for_status().json()


def test_the_run_that_happened_and_its_page(console, console_data, prefect_server, page: Page, shoot):
    run = api(console, f"/etl_runs/{console_data.run_id}")
    page.goto(f"{console}/")
    row = page.locator("table.runs tbody tr", has=page.locator(f'a[href="/console/runs/{run["id"]}"]'))
    expect(row).to_contain_text("completed")
    for field in ("extracted", "valid", "invalid", "inserted"):
        expect(row).to_contain_text(f"{run[field]:,}")
    timed = [stage for stage in ("extract", "transform", "persist", "deliver") if run["stage_seconds"].get(stage)]
    expect(row.locator("svg.stagebar rect")).to_have_count(len(timed))
    shoot(page, "runs")

    row.get_by_role("link").first.click()
    expect(page).to_have_url(f"{console}/console/runs/{run['id']}")
    expect(page.get_by_role("heading", name="Stage timeline")).to_be_visible()
    reasons = page.locator(REASON_ROWS)
    expect(reasons).to_have_count(len(run["dlq_reasons"]))
    for reason, n in run["dlq_reasons"].items():
        expect(reasons.filter(has=page.get_by_role("rowheader", name=reason, exact=True))).to_contain_text(str(n))
    prefect_ui = prefect_server.removesuffix("/api")
    link = page.get_by_role("link", name="This run in the Prefect UI")
    expect(link).to_have_attribute("href", f"{prefect_ui}/runs/flow-run/{run['id']}")
    shoot(page, "run", full_page=True)


def test_filter_search_sort_and_page_the_users(console, page: Page, shoot):
    page.goto(f"{console}/console/users")
    page.get_by_label("Gender").select_option("female")
    page.get_by_label("Sort by").select_option("age")
    page.get_by_label("Order").select_option("desc")
    page.get_by_role("button", name="Show users").click()
    expect(page).to_have_url(re.compile(r"gender=female.*sort=age.*order=desc"))
    first = api(console, "/users", gender="female", sort="age", order="desc", page_size=20)
    expect(page.locator("#users_table caption")).to_contain_text(f"{first['total']:,} current users")
    expect(page.locator(USER_IDS)).to_have_text([str(u["id"]) for u in first["data"]])
    shoot(page, "users")

    page.get_by_role("link", name="Next page").click()
    second = api(
        console, "/users", gender="female", sort="age", order="desc", page_size=20, cursor=first["next_cursor"]
    )
    expect(page.locator(USER_IDS)).to_have_text([str(u["id"]) for u in second["data"]])
    expect(page).to_have_url(re.compile("cursor="))

    someone = first["data"][0]
    page.get_by_label("Search").fill(someone["email"].upper())
    page.get_by_label("Search").press("Enter")  # the keyboard submits the form
    expect(page.locator(USER_IDS)).to_have_text([str(someone["id"])])
    page.get_by_role("link", name=str(someone["id"]), exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"User {someone['id']}")
    expect(page.locator("dl.facts")).to_contain_text(someone["ssn_masked"] or "—")


def test_from_the_dlq_to_the_rule_a_record_broke(console, console_data, page: Page, shoot):
    entries = api(console, "/dlq", page_size=500)["data"]
    expected = Counter(reason for e in entries for reason in e["reasons"])
    page.goto(f"{console}/console/dlq")
    chart = page.locator("section:has(#open-title) table.chart tbody tr")
    expect(chart).to_have_count(len(expected))
    for reason, n in expected.items():
        expect(chart.filter(has=page.get_by_role("rowheader", name=reason, exact=True))).to_contain_text(str(n))
    shoot(page, "dlq")

    page.get_by_role("link", name="email_invalid", exact=True).click()
    listed = page.locator("#dlq_table table.dlq tbody tr")
    expect(listed).to_have_count(expected["email_invalid"])
    expect(page.locator("#dlq_table caption")).to_contain_text("failing email_invalid")

    source = console_data.users[3]  # sent with email "not-an-email"
    mine = listed.filter(has=page.get_by_role("cell", name=str(source["id"]), exact=True))
    mine.get_by_role("link").first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text(re.compile(r"DLQ entry \d+"))
    rule = page.get_by_role("row", name=re.compile("email_invalid"))
    expect(rule).to_contain_text("email is missing or not a valid address")
    record = page.locator("pre.record")
    expect(record).to_contain_text('"email": "not-an-email"')
    for secret in (source["ssn"], source["bank"]["iban"], source["bank"]["cardNumber"], source["password"]):
        assert secret not in page.content(), "a sensitive value is shown unmasked"
    shoot(page, "dlq-record")


def test_start_a_run_without_and_with_the_key(console, console_data, deployment, page: Page, run_flow_run):
    page.goto(f"{console}/")
    key_field, start = page.get_by_label("API key"), page.get_by_role("button", name=re.compile("Start a run"))
    result = page.locator("#start-result")
    start.click()
    expect(result).to_contain_text("Not started (401): missing X-API-Key header")
    key_field.fill("not the key")
    start.click()
    expect(result).to_contain_text("Not started (403): invalid X-API-Key")

    key_field.fill(KEY)
    start.click()
    expect(result).to_contain_text("Started flow run")
    expect(key_field).to_have_value("")
    assert KEY not in page.content()
    assert page.context.cookies() == []
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    href = result.get_by_role("link", name="Follow it in the Prefect UI").get_attribute("href")
    flow_run_id = (href or "").rsplit("/", 1)[-1]

    run_flow_run(flow_run_id)  # as a worker would
    new_row = page.locator(f'table.runs tbody tr:has(a[href="/console/runs/{flow_run_id}"])')
    expect(new_row).to_contain_text("completed", timeout=30_000)  # the list refreshes itself
    newest = page.locator("table.runs tbody tr").first.get_by_role("link").first
    expect(newest).to_have_attribute("href", f"/console/runs/{flow_run_id}")
