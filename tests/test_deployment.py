"""End to end: the README's deployment sequence (README.md, section Deployment) against a real Prefect server.

`make server` on a free port with its own PREFECT_HOME, `make deploy` (PREFECT_API_URL set, as when
deploying to a remote server), `make worker` in the background and `make trigger` (both with
PREFECT_API_URL unset, so they find the local server from PREFECT_PORT). The worker's environment is
the configuration: USERS_API_BASE points at a DummyJSON-contract server in this process serving the
real users, DATABASE_URL at a temporary SQLite file, SFTP_HOST is unset (delivery skipped).
Then the Prefect API and the database are asked what happened."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from dev.prefect_helpers import make_server, stop
from dev.prefect_server import log_tail as tail
from tests.conftest import SETTINGS_PREFIXES, skip_or_fail
from tests.servers.dummyjson import DummyJsonServer, load_real_users

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
CRON = "30 2 * * *"  # not the default, so the test shows EXTRACT_SCHEDULE_CRON reaching the schedule
POOL = "sluice-process"
SERVER_HEALTH_TIMEOUT = 120  # a fresh PREFECT_HOME runs every migration first (~20 s here)
STEP_TIMEOUT = 180
STAGES = ("extract", "transform", "persist", "deliver")

# configuration the developer's shell may carry that would change what the flow does
_CLEARED_PREFIXES = (*SETTINGS_PREFIXES, "PREFECT_API_", "PREFECT_PROFILE", "SLUICE_WORK_POOL", "WORK_POOL")


def _make(*args: str) -> list[str]:
    return ["make", "--no-print-directory", "-C", str(ROOT), *args]


@pytest.fixture
def clean_env(tmp_path) -> dict[str, str]:
    """The environment every command runs with: this session's, minus project configuration."""
    if shutil.which("make") is None:
        skip_or_fail("GNU make is not installed")
    if not (ROOT / ".venv" / "bin" / "prefect").exists():
        skip_or_fail(f"no virtualenv with prefect at {ROOT / '.venv'} (run `make install`)")
    if subprocess.run(["make", "-q", "-C", str(ROOT), "install"], capture_output=True).returncode != 0:
        # the make targets would reinstall the virtualenv under the running tests
        skip_or_fail("the virtualenv is older than pyproject.toml/constraints.txt (run `make install`)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED_PREFIXES)}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",  # the worker polls every 15 s by default
        PREFECT_LOGGING_LEVEL="INFO",
    )
    return env


@pytest.fixture
def local_server(clean_env, tmp_path) -> Iterator[tuple[int, str]]:
    """`make server` on a free port; yields (port, API URL)."""
    with make_server(clean_env, tmp_path / "server.log", SERVER_HEALTH_TIMEOUT) as (port, api_url):
        yield port, api_url


def _run(cmd: list[str], env: dict[str, str], log: Path, what: str) -> None:
    with log.open("wb") as out:
        try:
            done = subprocess.run(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=STEP_TIMEOUT, start_new_session=True
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{what} did not finish in {STEP_TIMEOUT} s\n{tail(log)}")
    assert done.returncode == 0, f"{what} exited with {done.returncode}\n{tail(log)}"


def test_scheduled_deployment_runs_on_a_worker(local_server, clean_env, tmp_path):
    port, api_url = local_server
    prefect_yaml = (ROOT / "prefect.yaml").read_bytes()
    db = tmp_path / "app.db"
    flow_env = {
        **clean_env,
        "DATABASE_URL": f"sqlite:///{db}",
        "DATA_DIR": str(tmp_path / "data"),
        "EXTRACT_RETRY_BASE_SECONDS": "0",
    }
    users = load_real_users()
    _run(_make("migrate"), flow_env, tmp_path / "migrate.log", "`make migrate`")  # the database, as a user makes it

    # deploy to an explicit PREFECT_API_URL, as against a remote server
    _run(
        _make("deploy"),
        {**flow_env, "PREFECT_API_URL": api_url, "EXTRACT_SCHEDULE_CRON": CRON},
        tmp_path / "deploy.log",
        "`make deploy`",
    )
    assert (ROOT / "prefect.yaml").read_bytes() == prefect_yaml, "`prefect deploy` rewrote prefect.yaml"

    worker, worker_log = None, tmp_path / "worker.log"
    with DummyJsonServer(users) as source:
        try:
            # worker and trigger: PREFECT_API_URL unset, so the Makefile points them at the local server
            with worker_log.open("wb") as out:
                worker = subprocess.Popen(
                    _make("worker", f"PREFECT_PORT={port}"),
                    env={**flow_env, "USERS_API_BASE": source.base_url},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            _run(_make("trigger", f"PREFECT_PORT={port}"), flow_env, tmp_path / "trigger.log", "`make trigger`")
            assert worker.poll() is None, f"the worker exited\n{tail(worker_log)}"
            assert source.requests, "the flow run did not read USERS_API_BASE from the worker's environment"
        except BaseException:
            print(tail(worker_log, 200))
            raise
        finally:
            stop(worker)

    parent_id = _check_prefect_api(api_url)
    _check_database(db, users, parent_id)


def _check_prefect_api(api_url: str) -> str:
    """The deployment and its one run, as the UI shows them; returns the parent flow run's id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
    )
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("users-etl/daily")
        assert deployment.entrypoint == "flows/users_etl.py:users_etl"
        assert deployment.work_pool_name == POOL
        assert len(deployment.schedules) == 1
        schedule = deployment.schedules[0]
        assert isinstance(schedule.schedule, CronSchedule) and schedule.active
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (CRON, "UTC")
        assert deployment.parameters["deliver_files"] is True
        [pull] = deployment.pull_steps
        assert pull == {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}

        [parent] = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
        assert parent.state is not None and parent.state.is_completed(), parent.state
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id]))
        )
        by_stage = {client.read_flow(child.flow_id).name: child for child in children}
        assert sorted(by_stage) == sorted(STAGES)
        for name, child in by_stage.items():
            assert child.state is not None and child.state.is_completed(), (name, child.state)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[child.id for child in children])),
            task_run_filter=TaskRunFilter(),
        )
        ran_in = {run.flow_run_id for run in task_runs}
        for stage in ("extract", "transform", "persist"):
            assert by_stage[stage].id in ran_in, f"no task runs under the {stage} subflow"
        assert all(run.state is not None and run.state.is_completed() for run in task_runs)
        return str(parent.id)


def _check_database(db: Path, users: list[dict], parent_id: str) -> None:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:

            def count(table: str) -> int:
                return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()

            assert count("raw_users") == len(users)
            assert count("processed_users") == len(users)  # the real users are all valid
            assert count("dlq_users") == 0
            runs = conn.execute(text("SELECT id, status FROM etl_runs")).all()
    finally:
        engine.dispose()
    assert runs == [(parent_id, "completed")]
