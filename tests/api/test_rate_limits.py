"""Per-client rate limits: a burst beyond a client's limit gets 429 with the headers and a reason while other
clients go on; reads and writes have their own limits; /health, /metrics and static files are never limited;
an unreachable Redis lets requests through; and two API workers share their counts through Redis."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from api.ratelimit import REDIS_KEY_PREFIX, STORAGE_PAUSE_SECONDS, key_identity
from models.settings import PROJECT_ROOT, ConfigError
from tests.conftest import migrated, skip_or_fail

KEY = "the-rate-limit-tests-key"
REDIS_URL = "redis://127.0.0.1:6379/0"


def wait_for_a_fresh_minute(need: float = 8.0) -> None:
    """Minute windows end at each full minute of the clock: start a burst with time to finish inside one."""
    left = 60 - time.time() % 60
    if left < need:
        time.sleep(left + 0.05)


def remaining(response: httpx.Response) -> int:
    return int(response.headers["ratelimit"].split(";r=")[1].split(";")[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def limited(settings_env, tmp_path):
    """Sets the environment (a migrated SQLite database, API_KEY=KEY, and the given limits) for apps made next."""
    url = migrated(f"sqlite:///{tmp_path / 'app.db'}")

    def configure(**env: object) -> None:
        settings_env(database_url=url, api_key=KEY, prefect_api_url=None, **env)

    return configure


def test_a_burst_beyond_a_clients_limit_gets_429_and_other_clients_go_on(limited):
    limited(rate_limit_read="5/minute", rate_limit_write="30/minute", rate_limit_storage_url=None)
    app = create_app()
    wait_for_a_fresh_minute()
    with TestClient(app, client=("10.0.0.1", 4000)) as one, TestClient(app, client=("10.0.0.2", 4000)) as two:
        answers = [one.get("/users") for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        assert {a.headers["ratelimit-policy"] for a in answers} == {'"read";q=5;w=60'}
        assert [remaining(a) for a in answers] == [4, 3, 2, 1, 0]

        refused = one.get("/users", params={"page_size": 1})
        assert refused.status_code == 429
        retry = int(refused.headers["retry-after"])
        assert 1 <= retry <= 60
        assert refused.headers["ratelimit-policy"] == '"read";q=5;w=60'
        assert refused.headers["ratelimit"] == f'"read";r=0;t={retry}'
        assert refused.headers["content-type"] == "application/json" and refused.headers["x-request-id"]
        detail = refused.json()["detail"]
        assert "5 per 1 minute" in detail and f"retry in {retry} s" in detail

        # every read of that client counts, the console's pages too; a made-up key buys no fresh allowance
        assert one.get("/console/users").status_code == 429
        assert one.get("/users/1", headers={"X-API-Key": "a-guess"}).status_code == 429
        # the key's holder is counted by the key, wherever it calls from; another address by its own count
        keyed = one.get("/users", headers={"X-API-Key": KEY})
        assert keyed.status_code == 200 and remaining(keyed) == 4
        other = two.get("/users")
        assert other.status_code == 200 and remaining(other) == 4

        # never limited: health, metrics, the console's static files (and no headers on them)
        for path in ("/health", "/metrics", "/console/static/console.css"):
            for _ in range(8):
                r = one.get(path)
                assert r.status_code == 200 and "ratelimit" not in r.headers, path
        metrics = one.get("/metrics").text
        assert 'sluice_api_requests_total{method="GET",route="/users",status="429"} 1.0' in metrics


def test_writes_have_their_own_limit(limited):
    limited(rate_limit_read="5/minute", rate_limit_write="2/minute", rate_limit_storage_url=None)
    app = create_app()
    wait_for_a_fresh_minute()
    with TestClient(app, client=("10.0.0.1", 4000)) as one, TestClient(app, client=("10.0.0.2", 4000)) as two:
        # counted before the key is checked: without one, a write is refused (401) but still counts
        starts = [one.post("/etl_runs") for _ in range(2)]
        assert [s.status_code for s in starts] == [401, 401]
        assert starts[0].headers["ratelimit-policy"] == '"write";q=2;w=60' and remaining(starts[1]) == 0
        refused = one.post("/etl_runs", json={})
        assert refused.status_code == 429 and refused.headers["ratelimit-policy"] == '"write";q=2;w=60'
        assert "2 per 1 minute for writes" in refused.json()["detail"]
        assert one.post("/console/runs").status_code == 429  # the console's start button is a write too
        # the reads of the same client are untouched; so are the key holder's writes and another address's
        read = one.get("/users")
        assert read.status_code == 200 and read.headers["ratelimit-policy"] == '"read";q=5;w=60'
        assert remaining(read) == 4
        keyed = one.post("/etl_runs", headers={"X-API-Key": KEY})
        assert keyed.status_code == 503 and remaining(keyed) == 1  # let through: Prefect is not configured here
        assert two.post("/etl_runs").status_code == 401


def test_an_empty_limit_turns_its_group_off(limited):
    limited(rate_limit_read="", rate_limit_write="1/minute", rate_limit_storage_url=None)
    app = create_app()
    wait_for_a_fresh_minute()
    with TestClient(app) as client:
        for _ in range(30):
            r = client.get("/users", params={"page_size": 1})
            assert r.status_code == 200 and "ratelimit" not in r.headers
        assert [client.post("/etl_runs").status_code for _ in range(2)] == [401, 429]
    paths = app.openapi()["paths"]
    assert "429" in paths["/etl_runs"]["post"]["responses"]
    assert "429" not in paths["/users"]["get"]["responses"]


def test_the_openapi_description_documents_the_429(limited):
    limited(rate_limit_read=None, rate_limit_write=None, rate_limit_storage_url=None)  # the defaults
    paths = create_app().openapi()["paths"]
    too_many = paths["/users"]["get"]["responses"]["429"]
    assert {"Retry-After", "RateLimit-Policy", "RateLimit"} <= set(too_many["headers"])
    assert too_many["content"]["application/json"]["schema"]["required"] == ["detail"]
    assert "429" in paths["/etl_runs"]["post"]["responses"] and "429" in paths["/dlq"]["get"]["responses"]
    assert "429" not in paths["/health"]["get"]["responses"] and "429" not in paths["/metrics"]["get"]["responses"]


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("rate_limit_read", "lots", "RATE_LIMIT_READ"),
        ("rate_limit_write", "0/minute", "RATE_LIMIT_WRITE"),
        ("rate_limit_read", "1/second;600/minute", "RATE_LIMIT_READ"),
        ("rate_limit_storage_url", "memcached://sluice:hunter2@127.0.0.1:11211", "RATE_LIMIT_STORAGE_URL"),
        ("rate_limit_storage_url", "redis://:hunter2@127.0.0.1:port/0", "RATE_LIMIT_STORAGE_URL"),
    ],
)
def test_a_malformed_setting_stops_the_app_naming_it(limited, setting, value, named):
    limited(**{setting: value})
    with pytest.raises(ConfigError, match=named) as raised:
        create_app()
    assert "hunter2" not in str(raised.value)


def test_an_unreachable_redis_lets_requests_through_with_one_warning(limited, caplog):
    with socket.socket() as closed:  # bound, never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        url = f"redis://:hunter2@127.0.0.1:{closed.getsockname()[1]}/0"
        limited(rate_limit_read="2/minute", rate_limit_storage_url=url)
        caplog.set_level(logging.INFO, logger="api")
        started = time.monotonic()
        with TestClient(create_app()) as client:
            answers = [client.get("/users", params={"page_size": 1}) for _ in range(6)]
        assert time.monotonic() - started < 5  # no retrying with backoff on every request
    assert [a.status_code for a in answers] == [200] * 6
    assert all("ratelimit" not in a.headers for a in answers)
    warnings = [r.getMessage() for r in caplog.records if "rate limits" in r.getMessage()]
    assert len(warnings) == 1 and "requests pass uncounted" in warnings[0], warnings
    assert "hunter2" not in caplog.text


@contextmanager
def redis_server(port: int) -> Iterator[subprocess.Popen]:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_limits_resume_when_redis_is_back(limited, caplog):
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed")
    port = free_port()
    limited(rate_limit_read="3/minute", rate_limit_storage_url=f"redis://127.0.0.1:{port}/0")
    caplog.set_level(logging.INFO, logger="api")
    wait_for_a_fresh_minute(need=20)
    with TestClient(create_app()) as client:
        with redis_server(port):
            assert [client.get("/users").status_code for _ in range(4)] == [200, 200, 200, 429]
        # Redis gone: requests pass (its counts went with it)
        assert [client.get("/users").status_code for _ in range(3)] == [200] * 3
        with redis_server(port):
            time.sleep(STORAGE_PAUSE_SECONDS + 0.2)
            assert [client.get("/users").status_code for _ in range(4)] == [200, 200, 200, 429]
    messages = [r.getMessage() for r in caplog.records if "rate limits" in r.getMessage()]
    assert any("storage failed" in m for m in messages) and any("answers again" in m for m in messages)


def wait_until_serving(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                output = proc.stdout.read().decode() if proc.stdout and proc.poll() is not None else ""
                pytest.fail(f"the API on port {port} did not start: {output}")
            time.sleep(0.2)


def test_the_limit_holds_across_two_api_workers_through_redis(settings_env, tmp_path):
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        skip_or_fail(f"Redis not reachable at {REDIS_URL}: {exc}")
    api_key = f"rate-limit-{uuid.uuid4().hex}"  # this run's own counts, whatever else uses the Redis
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "DATABASE_", "RATE_LIMIT_"))}
    env.update(
        DATABASE_URL=migrated(f"sqlite:///{tmp_path / 'app.db'}"),
        API_KEY=api_key,
        RATE_LIMIT_STORAGE_URL=REDIS_URL,
        RATE_LIMIT_READ="10/minute",
        LOG_LEVEL="WARNING",
    )
    ports = [free_port(), free_port()]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for port in ports
    ]
    try:
        for proc, port in zip(workers, ports, strict=True):
            wait_until_serving(proc, port)
        wait_for_a_fresh_minute()
        answers = []
        with httpx.Client(headers={"X-API-Key": api_key}, timeout=10) as http:
            for i in range(12):
                answers.append(http.get(f"http://127.0.0.1:{ports[i % 2]}/users", params={"page_size": 1}))
        assert [a.status_code for a in answers] == [200] * 10 + [429, 429]
        assert [remaining(a) for a in answers[:10]] == list(range(9, -1, -1))  # one count, whichever worker
        assert all(a.headers["ratelimit-policy"] == '"read";q=10;w=60' for a in answers)
        assert "10 per 1 minute" in answers[10].json()["detail"] and int(answers[11].headers["retry-after"]) >= 1
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(timeout=30)
            if proc.stdout:
                proc.stdout.close()
        store = redis.Redis.from_url(REDIS_URL)
        made = list(store.scan_iter(f"{REDIS_KEY_PREFIX}:*{key_identity(api_key)}"))
        if made:
            store.delete(*made)
        store.close()
