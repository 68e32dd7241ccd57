"""GET /stats, /health, /metrics; request ids and CORS; and the answers when things are wrong (a failed last
run, no runs yet, a database that cannot be reached)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from api.main import create_app
from models.db import engine_for
from models.runs import EtlRun

UNREACHABLE_DB = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere?connect_timeout=2"


def test_stats(client, filled_db):
    r = client.get("/stats")
    assert r.status_code == 200
    s = r.json()
    assert (s["processed_users"], s["dlq_users"], s["raw_users"]) == (195, 13, 208)
    assert (s["invalid_users"], s["deleted_users"], s["dlq_users_resolved"]) == (0, 0, 0)  # one run: all as found
    assert s["dlq_rate"] == pytest.approx(13 / 208, abs=1e-6)
    assert sum(d["users"] for d in s["by_department"]) == 195
    eng = next(d for d in s["by_department"] if d["department"] == "Engineering")
    listed = client.get("/users", params={"department": "Engineering"}).json()["total"]
    assert eng["users"] == listed and eng["department_code"] == "ENG"
    assert s["runs_total"] == 1 and s["runs_by_status"] == {"completed": 1}
    assert s["last_success"]["id"] == filled_db.run_id and s["last_failure"] is None
    assert s["mean_duration_seconds"] == pytest.approx(s["last_duration_seconds"], abs=1e-3)
    assert s["last_duration_seconds"] > 0


def test_health_ok(client, filled_db):
    r = client.get("/health")
    assert r.status_code == 200, r.text
    h = r.json()
    assert (h["status"], h["database"], h["reason"]) == ("ok", "ok", None)
    assert h["last_run"]["id"] == filled_db.run_id and h["last_run"]["status"] == "completed"
    assert 0 <= h["last_run_age_seconds"] < 3600


def test_metrics(client):
    client.get("/users/1")
    client.get("/users/2")
    client.get("/nowhere/at/all")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'sluice_api_requests_total{method="GET",route="/users/{user_id}",status="200"} 2.0' in text
    assert 'route="/users/1"' not in text and 'route="/nowhere/at/all"' not in text
    assert 'sluice_api_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text
    assert 'sluice_api_request_duration_seconds_bucket{le="0.001",method="GET",route="/users/{user_id}"}' in text
    assert 'sluice_table_rows{table="processed_users"} 195.0' in text
    assert 'sluice_table_rows{table="dlq_users"} 13.0' in text
    assert 'sluice_last_run_status{status="completed"} 1.0' in text
    assert "sluice_last_run_duration_seconds " in text
    assert "python_gc_objects_collected_total" not in text  # the app's own registry, not the global one


def test_request_id_echoed_or_made(client):
    r = client.get("/users", params={"page_size": 1}, headers={"X-Request-ID": "trace-42.a"})
    assert r.headers["x-request-id"] == "trace-42.a" and r.json()["meta"]["request_id"] == "trace-42.a"
    made = client.get("/health").headers["x-request-id"]
    assert uuid.UUID(made)
    odd = client.get("/health", headers={"X-Request-ID": "x" * 500}).headers["x-request-id"]
    assert uuid.UUID(odd)
    for path in ("/nowhere", "/users/abc", "/metrics"):
        assert client.get(path).headers["x-request-id"]
    assert client.post("/etl_runs").headers["x-request-id"]


def test_cors_origins_from_settings(api_env):
    api_env(cors_origins="https://dash.example.test, https://ops.example.test")
    with TestClient(create_app()) as c:
        preflight = {"Origin": "https://ops.example.test", "Access-Control-Request-Method": "GET"}
        pre = c.options("/users", headers=preflight)
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://ops.example.test"
        got = c.get("/users", headers={"Origin": "https://dash.example.test"})
        assert got.headers["access-control-allow-origin"] == "https://dash.example.test"
        assert "x-request-id" in got.headers["access-control-expose-headers"].lower()
        other = c.get("/users", headers={"Origin": "https://evil.example.test"})
        assert "access-control-allow-origin" not in other.headers


# ---------------------------------------------------------------- when things are wrong


def _add_run(url: str, *, status: str, minutes_ago: float, error: str | None = None, stage: str | None = None) -> str:
    started = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    run = EtlRun(
        id=uuid.uuid4().hex,
        status=status,
        started_at=started,
        finished_at=started + timedelta(seconds=5),
        duration_seconds=5.0,
        error=error,
        failed_stage=stage,
    )
    run_id = run.id
    with Session(engine_for(url)) as session:
        session.add(run)
        session.commit()
    return run_id


def test_no_runs_yet_is_healthy(settings_env, database_url):
    settings_env(database_url=database_url)
    with TestClient(create_app()) as c:
        r = c.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "no runs yet" and r.json()["last_run"] is None
        s = c.get("/stats").json()
        assert s["processed_users"] == 0 and s["dlq_rate"] is None and s["last_success"] is None
        users = c.get("/users").json()
        assert (users["data"], users["total"], users["has_more"], users["next_cursor"]) == ([], 0, False, None)
        assert 'sluice_last_run_status{status="completed"} 0.0' in c.get("/metrics").text


@pytest.mark.parametrize("status", ["failed", "crashed"])
def test_failed_last_run_is_unhealthy(settings_env, database_url, status):
    settings_env(database_url=database_url)
    good = _add_run(database_url, status="completed", minutes_ago=60)
    bad = _add_run(database_url, status=status, minutes_ago=5, error="ConnectError: source down", stage="extract")
    with TestClient(create_app()) as c:
        r = c.get("/health")
        assert r.status_code == 503
        h = r.json()
        assert h["status"] == "unhealthy" and h["last_run"]["id"] == bad
        assert status in h["reason"] and "extract" in h["reason"] and "source down" in h["reason"]
        s = c.get("/stats").json()
        assert s["last_success"]["id"] == good and s["last_failure"]["id"] == bad
        assert s["last_failure"]["error"] == "ConnectError: source down" and s["runs_by_status"][status] == 1
        assert f'sluice_last_run_status{{status="{status}"}} 1.0' in c.get("/metrics").text
    _add_run(database_url, status="running", minutes_ago=1)
    with TestClient(create_app()) as c:
        assert c.get("/health").status_code == 200


def test_database_unreachable(settings_env):
    settings_env(database_url=UNREACHABLE_DB)
    with TestClient(create_app()) as c:
        r = c.get("/health")
        assert r.status_code == 503
        h = r.json()
        assert h["database"] == "unreachable" and h["reason"].startswith("database unreachable")
        assert "postgres@" not in h["reason"]
        for path in ("/users", "/users/1", "/dlq", "/etl_runs", "/stats", "/metrics"):
            r = c.get(path)
            assert r.status_code == 503 and r.json()["detail"].startswith("database unavailable"), path
            assert r.headers["x-request-id"]
        for path in ("/", "/console/users", "/console/dlq", "/console/runs/x", "/console/dlq/1"):  # the console
            r = c.get(path)
            assert r.status_code == 503 and "The database is unavailable" in r.text, path
            assert r.headers["content-type"].startswith("text/html") and r.headers["retry-after"]
        page = c.get("/console/health")  # health in words
        assert page.status_code == 200 and "Sluice is unhealthy: database unreachable" in page.text


def test_get_db_override_is_honoured(settings_env, filled_db):
    """Tests (or embedders) may swap the session through FastAPI's dependency override of get_db."""
    from models.db import get_db

    settings_env(database_url=UNREACHABLE_DB)  # whatever the settings say, the override wins
    app = create_app()

    def session_for_filled_db():
        with Session(engine_for(filled_db.url)) as session:
            yield session

    app.dependency_overrides[get_db] = session_for_filled_db
    with TestClient(app) as c:
        for path in ("/users?page_size=1", "/users/1", "/dlq", "/etl_runs", "/stats", "/health", "/metrics"):
            assert c.get(path).status_code == 200, path
        assert c.get("/users").json()["total"] == 195


def test_unhandled_error_is_a_json_500_with_the_request_id(settings_env, database_url):
    settings_env(database_url=database_url)
    app = create_app()

    @app.get("/boom")
    def boom():
        raise RuntimeError("kaboom")

    with TestClient(app) as c:
        r = c.get("/boom", headers={"X-Request-ID": "req-500"})
        assert r.status_code == 500 and r.json() == {"detail": "internal error", "request_id": "req-500"}
        assert r.headers["x-request-id"] == "req-500" and "kaboom" not in r.text
        assert 'route="/boom",status="500"' in c.get("/metrics").text


def test_python_m_api_serves(settings_env, filled_db, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "DATABASE_"))}
    env.update(API_HOST="127.0.0.1", API_PORT=str(port), DATABASE_URL=filled_db.url, LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "api"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert httpx.get(f"http://127.0.0.1:{port}/users?page_size=1").json()["total"] == 195
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    bad = subprocess.run(
        [sys.executable, "-m", "api"], env={**env, "API_PORT": "0"}, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "API_PORT" in bad.stderr
