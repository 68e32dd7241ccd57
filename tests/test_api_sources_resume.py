"""A killed extraction of a cursor- or page-paged users API resumes where its checkpoint says: the rerun's
first request carries the stored cursor (an opaque token the source issued) or page number, and every user is
stored and staged once (a users-etl run in a child process, SIGKILLed while the source stalls on a page)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path

import polars as pl
import pytest

from flows.users_etl import users_etl
from tests.child import child_process, wait_for
from tests.servers.dummyjson import distinct_users
from tests.servers.rest_api import RestApiServer
from tests.tables import rows

pytestmark = pytest.mark.usefixtures("prefect_server")

ROOT = Path(__file__).resolve().parents[1]
USERS, PAGE, STALL = 600, 20, 300  # the source stalls on the page starting at user 300
CHILD_TIMEOUT = 120
RUN = "import asyncio; from flows.users_etl import users_etl; asyncio.run(users_etl(deliver_files=False))"
STYLES = {
    "cursor": dict(users_api_pagination="cursor", users_api_cursor_path="next_cursor"),
    "page": dict(users_api_pagination="page", users_api_limit_param="per_page", users_api_total_path=""),
}


def _stalls_at(server: RestApiServer, style: str, params: dict) -> bool:
    if style == "cursor":
        return params.get("cursor") == server.cursor_for(STALL)
    return params.get("page") == str(STALL // PAGE + 1)


@pytest.mark.parametrize("style", list(STYLES))
def test_a_killed_run_resumes_at_its_stored_cursor_or_page(style, env, settings_env, tmp_path):
    url, log = env, tmp_path / "killed-run.log"
    served = dict(pagination=style, limit_param="per_page" if style == "page" else "limit")
    if style == "page":
        served["total_path"] = None
    with RestApiServer(distinct_users(USERS), **served) as server:
        settings_env(users_api_base=server.base_url, users_page_size=PAGE, **STYLES[style])
        release = threading.Event()

        def stall(params: dict) -> None:  # the source hangs on that page until released
            if _stalls_at(server, style, params):
                release.wait(CHILD_TIMEOUT)

        server.fail_when = stall
        with child_process(RUN, log=log) as child:
            wait_for(
                "the stalled page",
                lambda: any(_stalls_at(server, style, p) for p in server.requests),
                timeout=CHILD_TIMEOUT,
                child=child,
                log=log,
            )
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(30) == -signal.SIGKILL
        server.fail_when = None
        release.set()
        number, state = rows(url, "SELECT cursor, state FROM etl_checkpoints WHERE source = 'users:dummyjson'")[0]
        before = len(server.requests)
        summary = asyncio.run(users_etl(deliver_files=False))
        first = server.requests[before]
    if style == "cursor":  # the stored token is the source's own, for a page at or before the stalled one
        token = json.loads(state)["token"]
        assert first["cursor"] == token and token in {server.cursor_for(o) for o in range(0, STALL + 1, PAGE)}
    else:
        assert first["page"] == str(number) and 1 < number <= STALL // PAGE + 1
    assert summary["counts"]["extracted"] == USERS
    assert rows(url, "SELECT count(*), count(DISTINCT id) FROM processed_users")[0] == (USERS, USERS)
    staged = pl.read_ndjson(summary["files"]["raw"]).get_column("id")
    assert staged.len() == USERS and staged.n_unique() == USERS
