"""The console is safe and usable: hostile values show as text under a strict CSP, /docs and /redoc work with
the network cut, and the pages read at phone width and work from the keyboard."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.console.conftest import HOSTILE_FIRST, HOSTILE_LAST
from tests.console.test_browser import api

PAGES = ("/", "/console/users", "/console/dlq", "/console/health")


def watch_dialogs(page: Page) -> list[str]:
    seen: list[str] = []
    page.on("dialog", lambda dialog: (seen.append(dialog.message), dialog.dismiss()))
    return seen


def test_hostile_values_show_as_text(console, console_data, page: Page):
    dialogs = watch_dialogs(page)
    response = page.goto(f"{console}/console/users?search=script")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    name = page.locator("#users_table tbody th")
    expect(name).to_have_text(f"{HOSTILE_FIRST} {HOSTILE_LAST}")

    page.get_by_role("link", name=str(console_data.users[0]["id"]), exact=True).click()
    expect(page.locator("dl.facts")).to_contain_text(HOSTILE_FIRST)
    expect(page.locator("dl.facts")).to_contain_text(HOSTILE_LAST)

    page.goto(f"{console}/console/dlq?user_id={console_data.users[3]['id']}")
    page.locator("#dlq_table tbody a").first.click()
    expect(page.locator("pre.record")).to_contain_text(HOSTILE_LAST.replace('"', '\\"'))

    page.goto(f"{console}/console/users?search=<script>alert(3)</script>")  # markup in the query string, too
    expect(page.get_by_label("Search")).to_have_value("<script>alert(3)</script>")
    page.goto(f"{console}/console/runs/<img src=x onerror=alert(4)>")
    expect(page.get_by_role("alert")).to_contain_text("<img src=x onerror=alert(4)>")

    assert page.locator("img").count() == 0
    assert dialogs == [], "markup from the data ran as script"


def test_docs_and_redoc_work_offline(console, page: Page):
    outside: list[str] = []

    def offline(route) -> None:
        outside.append(route.request.url)
        route.abort()

    page.route(re.compile(r"^(?!http://127\.0\.0\.1:).*"), offline)  # the network beyond loopback is cut
    page.goto(f"{console}/docs")
    expect(page.get_by_text("Current users, filtered, searched, sorted, paginated")).to_be_visible()
    page.get_by_text("Current users, filtered, searched, sorted, paginated").click()
    expect(page.get_by_role("button", name="Try it out")).to_be_visible()
    page.goto(f"{console}/redoc")
    expect(page.get_by_role("heading", name=re.compile("Sluice API"))).to_be_visible(timeout=20_000)
    expect(page.get_by_text("Start a run of users-etl/daily").first).to_be_attached()
    assert all(not url.startswith(("http://", "https://")) or "redoc.ly" in url for url in outside), outside


def test_phone_width_and_keyboard(console, page: Page, shoot):
    page.set_viewport_size({"width": 390, "height": 844})
    for path in PAGES:
        page.goto(f"{console}{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls sideways at 390 px"

    page.goto(f"{console}/")
    for _ in range(12):  # from the top of the page, by Tab alone, to the users section
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == "Users":
            break
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{console}/console/users")
    page.get_by_label("Min age").focus()
    page.keyboard.type("40")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile("min_age=40"))
    older = api(console, "/users", min_age=40)["data"]
    assert older and all(user["age"] >= 40 for user in older)
    expect(page.locator("#users_table tbody td:nth-child(4)")).to_have_text([str(u["age"]) for u in older])
    shoot(page, "users-phone")
