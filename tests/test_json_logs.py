"""LOG_FORMAT=json: every line a run or the API writes is one JSON object (time, level, logger, message) that
carries the ids of its context: the flow run and task run (on Sluice's plain module loggers' lines too), the
API request (one access line per request, with method, path, status and duration); no secret in any line.
Text stays the default. Runs and the API run as processes of their own, as a user starts them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from models.logs import FLOWS_LOGGING_FILE
from tests.conftest import migrated
from tests.servers.dummyjson import distinct_users
from tests.servers.rest_api import RestApiServer

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("time", "level", "logger", "message")
SECRET = "k3y-Jx7-query-secret"
EVERYTHING_AT_DEBUG = {"PREFECT_LOGGING_LEVEL": "DEBUG", "PREFECT_LOGGING_ROOT_LEVEL": "DEBUG"}
# a flow of the shape of Sluice's: a module logger of flows/ in the flow, one of tasks/ in a task
PROBE = """
import logging
from prefect import flow, task

@task
def load(n):
    logging.getLogger("tasks.probe").info("loaded %d records", n)
    return n

@flow(name="probe")
def probe():
    logging.getLogger("flows.probe").info("probing")
    return load(3)

probe()
"""
USERS_ETL = "import asyncio; from flows.users_etl import users_etl; asyncio.run(users_etl(deliver_files=False))"


def json_lines(output: str) -> list[dict]:
    """Every line of `output` as a JSON object with the four fields (fails on the first line that is not)."""
    lines = []
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(record, dict) and all(record.get(f) is not None for f in FIELDS), line
        lines.append(record)
    assert lines, "no output"
    return lines


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment (the session's Prefect API, the test's settings) without a logging choice
    of its own, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOG_FORMAT", "PREFECT_LOGGING_SETTINGS_PATH")}
    return env | extra


def run_flow_process(script: str, cwd: Path, **env: str) -> str:
    """`script` in a flow process started as a process worker starts one (in an empty folder, Prefect's logging
    configuration named in its environment as prefect.yaml names it): its stdout and stderr together."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=child_env(PREFECT_LOGGING_SETTINGS_PATH=str(FLOWS_LOGGING_FILE), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    return done.stdout


@pytest.mark.usefixtures("prefect_server")
def test_make_run_writes_json_lines_carrying_its_run_ids_and_no_secret(settings_env, tmp_path):
    """`make run` with everything at DEBUG (Prefect, httpx, the SFTP client and server): stderr is JSON lines,
    the run's summary stays on stdout; the demo SFTP key's passphrase is in none of them."""
    settings_env(database_url=migrated(f"sqlite:///{tmp_path / 'app.db'}"))
    env = child_env(LOG_FORMAT="json", PYTHONPATH=str(ROOT), **EVERYTHING_AT_DEBUG)
    done = subprocess.run(
        [sys.executable, "-m", "dev.run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run_id = re.search(r"users-etl run (\S+) completed", done.stdout).group(1)
    lines = json_lines(done.stderr)
    assert any(line.get("flow_run_id") == run_id and line["logger"] == "prefect.flow_runs" for line in lines)
    in_tasks = [line for line in lines if line.get("task_run_id")]
    assert in_tasks and all(line.get("flow_run_id") for line in in_tasks)
    # a library's plain logger inside a task (the SFTP client's, delivering) carries them too
    assert {line["logger"] for line in in_tasks} & {"paramiko.transport", "paramiko.transport.sftp"}
    passphrase = (tmp_path / "var" / "sftp" / "passphrase").read_text().strip()
    assert passphrase and passphrase not in done.stderr + done.stdout


@pytest.mark.usefixtures("prefect_server")
def test_a_plain_module_logger_inside_a_task_carries_the_flow_and_task_run_ids(tmp_path):
    lines = json_lines(run_flow_process(PROBE, tmp_path, LOG_FORMAT="json"))
    started = next(line for line in lines if line["message"].startswith("Beginning flow run"))
    flow_run_id = started["flow_run_id"]
    task_done = next(line for line in lines if line.get("task_name") == "load")
    plain_in_flow = next(line for line in lines if line["logger"] == "flows.probe")
    plain_in_task = next(line for line in lines if line["logger"] == "tasks.probe")
    assert plain_in_flow["flow_run_id"] == flow_run_id and "task_run_id" not in plain_in_flow
    assert plain_in_task["message"] == "loaded 3 records" and plain_in_task["level"] == "INFO"
    assert plain_in_task["flow_run_id"] == flow_run_id == task_done["flow_run_id"]
    assert plain_in_task["task_run_id"] == task_done["task_run_id"]


@pytest.mark.usefixtures("prefect_server")
def test_text_stays_the_default_for_flows(tmp_path):
    output = run_flow_process(PROBE, tmp_path)
    assert all(not line.startswith("{") for line in output.splitlines())
    assert re.search(r"\| INFO    \| Flow run '[\w-]+' - Beginning flow run", output)
    assert re.search(r"\| INFO    \| tasks\.probe - loaded 3 records", output)


@pytest.mark.usefixtures("prefect_server")
def test_a_keyed_source_s_secret_is_in_no_json_line(settings_env, tmp_path):
    """The key travels in the query string of every page request; with everything at DEBUG (httpx logs each
    URL) no JSON line carries it, whatever field a line has."""
    url = migrated(f"sqlite:///{tmp_path / 'app.db'}")
    with RestApiServer(distinct_users(60), auth="api_key_query", secret=SECRET) as server:
        settings_env(
            database_url=url,
            users_api_base=server.base_url,
            users_api_auth="api_key_query",
            users_api_secret=SECRET,
            users_page_size=20,
        )
        output = run_flow_process(USERS_ETL, tmp_path, LOG_FORMAT="json", **EVERYTHING_AT_DEBUG)
        assert len(server.requests) >= 3
    lines = json_lines(output)
    assert any(line["logger"] == "httpx" and line.get("task_run_id") for line in lines)
    assert SECRET not in output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_api(tmp_path: Path, log_format: str | None, requests) -> str:
    """`python -m api` on a migrated SQLite database until `requests(base_url)` is done, then stopped as a
    process manager stops it (SIGTERM): everything it wrote."""
    port, out = free_port(), tmp_path / f"api-{log_format}.log"
    env = {k: v for k, v in child_env().items() if not k.startswith(("API_", "DATABASE_", "PREFECT_API"))}
    env |= {"API_HOST": "127.0.0.1", "API_PORT": str(port), "API_KEY": "api-key-" + SECRET}
    env |= {"DATABASE_URL": migrated(f"sqlite:///{tmp_path / 'app.db'}"), "LOG_LEVEL": "INFO"}
    # a Prefect API that refuses connections, with a key: POST /etl_runs logs a warning inside its request
    env |= {"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api", "PREFECT_API_KEY": "prefect-" + SECRET}
    if log_format:
        env["LOG_FORMAT"] = log_format
    with out.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
                time.sleep(0.1)
        requests(base)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return out.read_text()


def some_requests(base: str) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/users", params={"page_size": 2}, headers={"X-Request-ID": "trace-42"}).status_code == 200
        assert client.get("/nowhere").status_code == 404
        started = client.post("/etl_runs", headers={"X-API-Key": "api-key-" + SECRET, "X-Request-ID": "trace-43"})
        assert started.status_code == 503


def test_the_api_writes_json_lines_and_one_access_line_per_request(tmp_path):
    output = serve_api(tmp_path, "json", some_requests)
    lines = json_lines(output)
    access = [line for line in lines if line["logger"] == "api.access"]
    # /health (waited for), /users, /nowhere, /etl_runs: one line each, and none of uvicorn's own
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("GET", "/health", 200),
        ("GET", "/users", 200),
        ("GET", "/nowhere", 404),
        ("POST", "/etl_runs", 503),
    ]
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]
    traced = next(a for a in access if a["request_id"] == "trace-42")
    assert traced["path"] == "/users" and isinstance(traced["duration_ms"], float) and traced["duration_ms"] > 0
    assert len({a["request_id"] for a in access}) == len(access)  # an id of its own for the others
    # a line written while the request runs carries its id
    warned = next(line for line in lines if line["logger"] == "api" and line["level"] == "WARNING")
    assert warned["message"].startswith("Prefect unreachable") and warned["request_id"] == "trace-43"
    assert any(line["logger"] == "uvicorn.error" and "Started server process" in line["message"] for line in lines)
    assert SECRET not in output


def test_text_stays_the_default_for_the_api(tmp_path):
    output = serve_api(tmp_path, None, some_requests)
    assert all(not line.startswith("{") for line in output.splitlines())
    assert output.count('"GET /users?page_size=2 HTTP/1.1" 200') == 1  # uvicorn's access line, as before
    assert "Started server process" in output and SECRET not in output


def test_a_deployed_run_gets_the_logging_configuration_make_run_applies():
    """prefect.yaml names flows/logging.yml to the worker's flow processes, from the deployed checkout."""
    pool = yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"]["work_pools"]["process"]
    named = pool["job_variables"]["env"]["PREFECT_LOGGING_SETTINGS_PATH"]
    assert named == "{{ $PWD }}/" + FLOWS_LOGGING_FILE.relative_to(ROOT).as_posix()
