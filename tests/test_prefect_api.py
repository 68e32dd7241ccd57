"""The Prefect API a one-off run starts for itself when none is configured (dev/prefect_server.py, `make run`).

Each case runs in a fresh Python process, as `make run` does: Prefect's settings are process-wide, and the
point is what happens from a cold start."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

from dev.prefect_helpers import copy_empty_prefect_db

ROOT = Path(__file__).resolve().parents[1]

RUN_A_FLOW = """
import json, sys
from dev.prefect_server import local_prefect_api

with local_prefect_api(sys.argv[1]) as api:
    from prefect import flow, get_client, get_run_logger, task

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow(name="local-api-child")
    def child(x: int) -> int:
        return double(x)

    @flow(name="local-api-parent")
    def parent() -> int:
        get_run_logger().info("marker %s", sys.argv[2])
        return child(21)

    api.wait_ready()
    state = parent(return_state=True)
    result, run_id = state.result(), str(state.state_details.flow_run_id)
    with get_client(sync_client=True) as client:
        names = sorted(r.name for r in client.read_flows())
    process = api.process
print(json.dumps({"url": api.url, "result": result, "run_id": run_id, "flows": names, "exit_code": process.poll(),
                  "server_imported_here": "prefect.server.api.server" in sys.modules}))
"""


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "PREFECT_PROFILE"))}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(ROOT),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    return env | extra


def _prefect_home(tmp_path: Path) -> Path:
    """A PREFECT_HOME of the test's own, its database empty and already migrated (migrating a new one at
    the server's start takes ~20 s here)."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    copy_empty_prefect_db(home / "prefect.db")
    return home


def _run(script: str, *args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_without_an_api_a_run_gets_a_server_of_its_own_that_keeps_its_logs_and_stops(tmp_path):
    home, marker = _prefect_home(tmp_path), uuid.uuid4().hex
    out = _run(RUN_A_FLOW, str(tmp_path / "var"), marker, env=_env(home))
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["result"] == 42
    assert seen["url"].startswith("http://127.0.0.1:")
    # the parent and its child flow ran against that server...
    assert {"local-api-child", "local-api-parent"} <= set(seen["flows"])
    # ...and Prefect never started its own temporary server (the flow process never imported it)
    assert not seen["server_imported_here"]
    assert "Starting temporary server" not in out.stderr
    assert seen["exit_code"] is not None, "the server was still running after the block"
    # the run's logs went out before the server stopped, to its very last line: they are in Prefect's database
    # (unsent, the process would also spend a minute at exit retrying a server that is gone)
    with sqlite3.connect(home / "prefect.db") as db:
        logged = [
            m
            for (m,) in db.execute(
                "SELECT message FROM log WHERE flow_run_id = ? ORDER BY timestamp", (seen["run_id"],)
            )
        ]
    assert f"marker {marker}" in logged
    assert logged[-1].startswith("Finished in state Completed"), logged
    # its events are stored there too, but no heartbeat: a server that stops with the run has no use for one,
    # and Prefect's heartbeat thread, waited for in one-second steps, held up the end of every run
    with sqlite3.connect(home / "prefect.db") as db:
        events = {
            e
            for (e,) in db.execute(
                "SELECT event FROM events WHERE resource_id = ?", (f"prefect.flow-run.{seen['run_id']}",)
            )
        }
    assert "prefect.flow-run.Completed" in events
    assert "prefect.flow-run.heartbeat" not in events, events


def test_make_run_reaches_the_server_launch_before_any_heavy_import():
    """The local server takes longest to be ready, so `make run` launches it before importing anything
    else: loading `dev.run`, the process tuning it applies first, its launcher `dev.prefect_server` and the
    flows' `flows.prefect_api` pulls in none of the libraries the run needs later."""
    heavy = ("httpx", "pydantic", "pydantic_settings", "prefect", "polars", "sqlalchemy")
    imports = "dev.run, flows.process, dev.prefect_server, flows.prefect_api"
    code = f"import json, sys, {imports}; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_a_configured_api_is_used_as_it_is_and_nothing_is_started(tmp_path):
    script = """
import json, sys
from dev.prefect_server import local_prefect_api
from prefect.settings import get_current_settings

with local_prefect_api(sys.argv[1]) as api:
    api.wait_ready()  # nothing to wait for: not started here
    print(json.dumps({"url": api.url, "process": api.process is not None, "seen": get_current_settings().api.url}))
"""
    configured = "http://127.0.0.1:9/api"
    out = _run(script, str(tmp_path / "var"), env=_env(tmp_path, PREFECT_API_URL=configured))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"url": configured, "process": False, "seen": configured}
    assert not (tmp_path / "var" / "prefect-local-server.log").exists()


def test_an_api_configured_in_a_profile_is_used_and_the_server_launched_early_is_stopped(tmp_path):
    """The environment names no API, so the server is launched before Prefect's settings are read; the active
    profile names one: that one is used, and the server started meanwhile is gone when the block begins."""
    script = """
import json, os, sys
from pathlib import Path
from dev.prefect_server import local_prefect_api
from prefect.settings import get_current_settings

def children():
    mine = str(os.getpid())
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == mine and fields[0] != "Z":
            found.append(stat.parent.name)
    return found

with local_prefect_api(sys.argv[1]) as api:
    print(json.dumps({"url": api.url, "process": api.process is not None, "seen": get_current_settings().api.url,
                      "children": children()}))
"""
    configured = "http://127.0.0.1:9/api"
    home = tmp_path / "home"
    home.mkdir()
    (home / "profiles.toml").write_text(f'active = "remote"\n\n[profiles.remote]\nPREFECT_API_URL = "{configured}"\n')
    out = _run(script, str(tmp_path / "var"), env=_env(home))
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"url": configured, "process": False, "seen": configured, "children": []}
    assert (tmp_path / "var" / "prefect-local-server.log").exists()  # it was launched early, then stopped


def test_a_server_that_cannot_start_is_reported_with_its_own_words(tmp_path):
    """Its database unreachable: the server exits, and the run says so at once with the server's output,
    instead of waiting out the start-up timeout."""
    script = """
import sys, time
from dev.prefect_server import PrefectApiError, local_prefect_api

started = time.monotonic()
try:
    with local_prefect_api(sys.argv[1]) as api:
        api.wait_ready()
except PrefectApiError as exc:
    print(f"{time.monotonic() - started:.1f}")
    print(exc)
    sys.exit(3)
"""
    env = _env(
        _prefect_home(tmp_path), PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://nobody@127.0.0.1:9/none"
    )
    out = _run(script, str(tmp_path / "var"), env=env)
    assert out.returncode == 3, (out.stdout, out.stderr[-3000:])
    seconds, message = out.stdout.split("\n", 1)
    assert float(seconds) < 60
    assert "the local Prefect server exited with code" in message
    # its own error, naming the database it could not reach
    assert "Connect call failed ('127.0.0.1', 9)" in message and "Application startup failed" in message, message


def test_the_process_environment_is_as_it_was_after_the_block(tmp_path):
    script = """
import json, os, sys
from dev.prefect_server import local_prefect_api
from prefect.settings import get_current_settings

with local_prefect_api(sys.argv[1]) as api:
    inside = (os.environ.get("PREFECT_API_URL"), get_current_settings().api.url)
print(json.dumps({"inside": inside, "url": api.url,
                  "after": (os.environ.get("PREFECT_API_URL"), get_current_settings().api.url)}))
"""
    out = _run(script, str(tmp_path / "var"), env=_env(_prefect_home(tmp_path)))
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["inside"] == [seen["url"], seen["url"]]
    assert seen["after"] == [None, None]


def test_a_server_whose_run_was_killed_stops_by_itself(tmp_path):
    """The run's process killed outright (no `finally`, no atexit): the server it started does not live on
    holding Prefect's database."""
    script = """
import sys, time
from dev.prefect_server import local_prefect_api

with local_prefect_api(sys.argv[1]) as api:
    api.wait_ready()
    print(api.process.pid, flush=True)
    time.sleep(600)
"""
    run = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "var")],
        cwd=ROOT,
        env=_env(_prefect_home(tmp_path)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        server_pid = int(run.stdout.readline())
        assert Path(f"/proc/{server_pid}").exists()
        run.kill()
        run.wait(timeout=30)
        deadline = time.monotonic() + 60
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server_pid), "the server outlived the run that started it"
    finally:
        run.kill()
        run.wait()


def test_a_server_whose_run_was_killed_while_it_started_stops_by_itself(tmp_path):
    """Killed before the server answers (it is launched as the run starts, and takes seconds to import): the
    server, orphaned before it could note who started it, still stops once it is up (it is told the pid)."""
    script = """
import os, sys
from dev.prefect_server import local_prefect_api

with local_prefect_api(sys.argv[1]) as api:
    print(api.process.pid, flush=True)
    os.kill(os.getpid(), 9)
"""
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "var")],
        cwd=ROOT,
        env=_env(_prefect_home(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == -9, run.stderr[-3000:]
    server_pid = int(run.stdout.split()[0])
    try:
        deadline = time.monotonic() + 90
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server_pid), "the server outlived the run that started it"
    finally:
        if _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent to collect it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


WRITE_BEHIND_A_LOCK = """
import json, sqlite3, sys, threading, time
from pathlib import Path

import httpx

from dev.prefect_server import local_prefect_api

with local_prefect_api(sys.argv[1]) as api:
    api.wait_ready()
    flow_id = httpx.post(f"{api.url}/flows/", json={"name": "behind-a-lock"}).json()["id"]
    statuses = []
    for n in range(3):
        # another writer (here: this test) holds the database's write lock, changes a row, commits 1 s later
        db = sqlite3.connect(Path(sys.argv[2]) / "prefect.db", isolation_level=None, check_same_thread=False)
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE flow SET tags = tags")
        release = threading.Timer(1.0, db.execute, ("COMMIT",))
        release.start()
        try:  # plain httpx: Prefect's client would hide a 503 by retrying
            statuses.append(httpx.post(f"{api.url}/flow_runs/", json={"flow_id": flow_id, "name": f"run-{n}"},
                                       timeout=60).status_code)
        finally:
            release.join()
            db.close()
print(json.dumps(statuses))
"""


def test_the_local_server_makes_a_write_wait_for_another_writer_instead_of_answering_503(tmp_path):
    """Prefect opens its SQLite transactions DEFERRED: one that has read, then finds another writer's lock, fails
    with "database is locked" and the API answers 503 (then Prefect's client waits 2 s to retry: the stalls of
    the benchmark's local-server runs). The local server queues its writers instead (fails without
    `queue_sqlite_writers`: 503 three times)."""
    home = _prefect_home(tmp_path)
    out = _run(WRITE_BEHIND_A_LOCK, str(tmp_path / "var"), str(home), env=_env(home))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [201, 201, 201]
