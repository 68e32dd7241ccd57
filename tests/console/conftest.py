"""The console in a real browser: Debian's Chromium driven by Playwright (no browser download), the app under
uvicorn on loopback over a SQLite database that one real users-etl run filled, hostile values included."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import migrated, skip_or_fail
from tests.filled import PIPELINE_PREFIXES, run_pipeline
from tests.servers.dummyjson import DummyJsonServer, break_users, load_real_users

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
KEY = "console test key"
HOSTILE_FIRST = "<script>alert(1)</script>"
HOSTILE_LAST = '"><img src=x onerror=alert(2)>'
ROOT = Path(__file__).resolve().parents[2]
# `make screenshots` writes the README's pictures; otherwise they land in the test's temporary folder
SCREENSHOTS = Path(os.environ["SLUICE_SCREENSHOTS"]) if os.environ.get("SLUICE_SCREENSHOTS") else None


@dataclass(frozen=True)
class ConsoleData:
    url: str  # the database
    run_id: str
    summary: dict
    users: list[dict]  # what the source served
    broken: dict[int, set[str]]  # position -> the rules that record fails


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Chromium for this package's tests only: Playwright's sync API runs an event loop on the test thread
    while it lives, where asyncio.run (and Prefect's sync calls) cannot run, so it ends with the package."""
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies, no storage) per test, at 1280 px."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def hostile_users() -> tuple[list[dict], dict[int, set[str]]]:
    """The real users with a share broken; a valid user and a rejected one carry markup in their names."""
    users, broken = break_users(load_real_users())
    users = copy.deepcopy(users)
    users[0].update(firstName=HOSTILE_FIRST, lastName=HOSTILE_LAST)
    users[3].update(lastName=HOSTILE_LAST)  # broken: email_invalid
    return users, broken


@pytest.fixture(scope="session")
def console_data(prefect_server, tmp_path_factory) -> ConsoleData:
    home = tmp_path_factory.mktemp("console")
    url = migrated(f"sqlite:///{home / 'console.db'}")
    users, broken = hostile_users()
    summary = run_pipeline(url, str(home / "data"), users)
    return ConsoleData(url=url, run_id=summary["run_id"], summary=summary, users=users, broken=broken)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def console(console_data, settings_env) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, reading the console's database; its base URL."""
    from api.main import create_app

    settings_env(database_url=console_data.url, api_key=KEY, cors_origins=None, prefect_ui_url=None)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def shoot(tmp_path):
    """Saves a page's screenshot as `name`.png (under SLUICE_SCREENSHOTS when set)."""

    def save(page, name: str, *, full_page: bool = False) -> Path:
        folder = SCREENSHOTS or tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return save


@pytest.fixture
def run_flow_run(console_data, tmp_path):
    """Executes a scheduled flow run the way a process worker does (`python -m prefect.engine`), with the
    console's database and a source serving the same users."""

    def run(flow_run_id: str) -> None:
        with DummyJsonServer(console_data.users) as source:
            env = {k: v for k, v in os.environ.items() if not k.startswith(PIPELINE_PREFIXES)}
            env.update(
                PREFECT__FLOW_RUN_ID=flow_run_id,
                DATABASE_URL=console_data.url,
                DATA_DIR=str(tmp_path / "data"),
                USERS_API_BASE=source.base_url,
                PYTHONPATH=str(ROOT),
            )
            cmd = [sys.executable, "-m", "prefect.engine"]
            done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"the flow run failed\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    return run
