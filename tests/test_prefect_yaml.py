"""Fast checks of prefect.yaml, without a Prefect server (deployments `daily` of users-etl, `every-6h` of
feeds-etl and `on-demand` of dlq-replay, cron and work pool from shared definitions, no absolute paths or
secrets), and of the Makefile's deployment and replay targets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.compose_helpers import ROOT, SECRET_WORDS, walk_strings
from tests.conftest import skip_or_fail

PREFECT_YAML = ROOT / "prefect.yaml"


@pytest.fixture(scope="module")
def prefect_config() -> dict:
    return yaml.safe_load(PREFECT_YAML.read_text())


def test_prefect_yaml_declares_the_daily_users_etl_deployment(prefect_config):
    from flows.feeds_etl import feeds_etl
    from flows.users_etl import users_etl

    deployments = {d["name"]: d for d in prefect_config["deployments"]}
    assert sorted(deployments) == ["daily", "every-6h", "on-demand", "shard"]
    daily, feeds = deployments["daily"], deployments["every-6h"]
    assert feeds["entrypoint"] == "flows/feeds_etl.py:feeds_etl" and feeds_etl.name == "feeds-etl"
    assert set(feeds["parameters"]) <= set(feeds_etl.parameters.properties)
    assert [s["cron"] for s in feeds["schedules"]] == ["0 */6 * * *"]
    assert daily["entrypoint"] == "flows/users_etl.py:users_etl"
    module, function = daily["entrypoint"].split(":")
    assert (ROOT / module).is_file() and function == "users_etl" and users_etl.name == "users-etl"
    assert set(daily["parameters"]) <= set(users_etl.parameters.properties)
    assert daily["parameters"]["deliver_files"] is True


def test_prefect_yaml_declares_the_dlq_replay_deployment_the_api_starts(prefect_config):
    from api.routes.dlq import REPLAY_DEPLOYMENT
    from flows.dlq_replay import dlq_replay

    deployments = {d["name"]: d for d in prefect_config["deployments"]}
    flow_name, name = REPLAY_DEPLOYMENT.split("/")
    replay, daily = deployments[name], deployments["daily"]
    assert replay["entrypoint"] == "flows/dlq_replay.py:dlq_replay" and dlq_replay.name == flow_name
    assert set(replay["parameters"]) == {"reason", "run_id", "database_block"} <= set(dlq_replay.parameters.properties)
    assert all(value is None for value in replay["parameters"].values()), "every open record unless asked"
    assert "schedules" not in replay, "a replay follows a fix, it is not scheduled"
    assert replay["work_pool"] is daily["work_pool"] and replay["concurrency_limit"] == daily["concurrency_limit"]


def test_prefect_yaml_declares_the_shard_deployment_users_etl_submits(prefect_config):
    """A sharded run submits its shards to `users-shard/shard` on the same pool: no schedule, and no limit of
    its own (one shard at a time would make a sharded run a slow unsharded one)."""
    from flows.users_shard import users_shard
    from models.settings import Settings

    deployments = {d["name"]: d for d in prefect_config["deployments"]}
    shard, daily = deployments["shard"], deployments["daily"]
    flow_name, name = Settings.model_fields["users_shard_deployment"].default.split("/")
    assert name == "shard" and users_shard.name == flow_name
    assert shard["entrypoint"] == "flows/users_shard.py:users_shard"
    assert shard["work_pool"] is daily["work_pool"]
    assert "schedules" not in shard and "concurrency_limit" not in shard
    assert "shards" in daily["parameters"] and "shards" in users_etl_parameters()


def users_etl_parameters() -> set[str]:
    from flows.users_etl import users_etl

    return set(users_etl.parameters.properties)


def test_prefect_yaml_schedule_and_work_pool_come_from_shared_definitions(prefect_config):
    from models.settings import Settings

    daily = next(d for d in prefect_config["deployments"] if d["name"] == "daily")
    pools, schedules = prefect_config["definitions"]["work_pools"], prefect_config["definitions"]["schedules"]
    assert daily["work_pool"] in pools.values(), "the work pool should be a `definitions:` alias"
    assert all(s in schedules.values() for s in daily["schedules"]), "schedules should be `definitions:` aliases"
    assert daily["work_pool"]["name"] == "{{ $SLUICE_WORK_POOL }}"
    [schedule] = daily["schedules"]
    assert schedule["cron"] == "{{ $EXTRACT_SCHEDULE_CRON }}" and schedule["timezone"] == "UTC"
    assert Settings.model_fields["extract_schedule_cron"].default == "0 3 * * *"
    makefile = (ROOT / "Makefile").read_text()
    assert "sluice-process" in makefile and "export SLUICE_WORK_POOL" in makefile


def test_prefect_yaml_has_no_absolute_paths_or_secrets(prefect_config):
    [pull] = prefect_config["pull"]
    assert pull == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PWD }}"}}
    for path, value in walk_strings(prefect_config):
        assert not value.startswith(("/", "~")) and not re.match(r"^[A-Za-z]:\\", value), (path, value)
        assert "://" not in value, (path, value)
        assert not SECRET_WORDS.search(value), (path, value)
    placeholders = {m for _, v in walk_strings(prefect_config) for m in re.findall(r"\{\{\s*\$(\w+)\s*\}\}", v)}
    assert placeholders == {"PWD", "SLUICE_WORK_POOL", "EXTRACT_SCHEDULE_CRON"}


# -- the Makefile's deployment targets (a stand-in `prefect` records what they run) --------------------


FAKE_PREFECT = """#!/usr/bin/env bash
{ printf 'ARGS %s\\n' "$*"; printf 'ENV PREFECT_API_URL=%s SLUICE_WORK_POOL=%s EXTRACT_SCHEDULE_CRON=%s PWD=%s\\n' \
  "${PREFECT_API_URL-<unset>}" "${SLUICE_WORK_POOL-<unset>}" "${EXTRACT_SCHEDULE_CRON-<unset>}" "$PWD"; } >>"$FAKE_LOG"
[[ "$*" == "work-pool inspect"* ]] && exit 1  # as if the pool were missing
exit 0
"""


@pytest.fixture
def make_target(tmp_path):
    if shutil.which("make") is None:
        skip_or_fail("GNU make is not installed")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "prefect").write_text(FAKE_PREFECT)
    (fake / "python").write_text(f'#!/usr/bin/env bash\nexec "{ROOT / ".venv" / "bin" / "python"}" "$@"\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    log = tmp_path / "calls.log"
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API_URL", "SLUICE_", "WORK_POOL", "EXTRACT_", "PREFECT_PORT"))
    }

    def run(target: str, *make_args: str, check: bool = True, **env: str):
        log.write_text("")
        # -o: never rebuild the virtualenv here; BIN: the stand-in prefect
        done = subprocess.run(
            [
                "make",
                "--no-print-directory",
                "-C",
                str(ROOT),
                "-o",
                ".venv/.installed-stamp",
                f"BIN={fake}",
                target,
                *make_args,
            ],
            env={**base, "FAKE_LOG": str(log), **env},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        calls = log.read_text().splitlines()
        if not check:
            return done, calls
        assert done.returncode == 0, f"make {target} failed\n{done.stdout}\n{done.stderr}"
        return calls

    return run


def test_make_deploy_creates_the_pool_and_deploys_everything(make_target):
    calls = make_target("deploy")
    local = "PREFECT_API_URL=http://127.0.0.1:4200/api"
    assert calls[0::2] == [
        "ARGS work-pool inspect sluice-process",
        "ARGS work-pool create sluice-process --type process",
        "ARGS --no-prompt deploy --all",
    ]
    assert all(line.startswith(f"ENV {local} SLUICE_WORK_POOL=sluice-process ") for line in calls[1::2])
    assert calls[-1].endswith(f"EXTRACT_SCHEDULE_CRON=0 3 * * * PWD={ROOT}")


def test_make_deploy_honours_the_environment(make_target):
    calls = make_target(
        "deploy",
        "WORK_POOL=team-pool",
        PREFECT_API_URL="http://prefect.internal:4200/api",
        EXTRACT_SCHEDULE_CRON="15 4 * * 1-5",
    )
    assert calls[-2] == "ARGS --no-prompt deploy --all"
    assert calls[-1] == (
        f"ENV PREFECT_API_URL=http://prefect.internal:4200/api SLUICE_WORK_POOL=team-pool "
        f"EXTRACT_SCHEDULE_CRON=15 4 * * 1-5 PWD={ROOT}"
    )


def test_make_deploy_refuses_a_bad_cron(make_target):
    done, calls = make_target("deploy", check=False, EXTRACT_SCHEDULE_CRON="every day at 3")
    assert done.returncode != 0
    assert re.search(r"EXTRACT_SCHEDULE_CRON: .*not a valid cron expression", done.stderr), done.stderr
    assert not any("deploy --all" in line for line in calls), "deployed with a bad schedule"


def test_make_server_worker_trigger(make_target):
    assert make_target("server", "PREFECT_PORT=4999")[0] == "ARGS server start --host 127.0.0.1 --port 4999"
    worker = make_target("worker", "PREFECT_PORT=4999", SLUICE_WORK_POOL="from-env")
    assert worker == [
        "ARGS worker start --pool from-env --type process",
        f"ENV PREFECT_API_URL=http://127.0.0.1:4999/api SLUICE_WORK_POOL=from-env "
        f"EXTRACT_SCHEDULE_CRON=<unset> PWD={ROOT}",
    ]
    trigger = make_target("trigger", PREFECT_API_URL="http://elsewhere:4200/api")
    assert trigger[0] == "ARGS deployment run users-etl/daily --watch"
    assert trigger[1].startswith("ENV PREFECT_API_URL=http://elsewhere:4200/api ")


def test_make_replay_runs_the_flow_once_with_the_filters_given():
    if shutil.which("make") is None:
        skip_or_fail("GNU make is not installed")

    def dry_run(*args: str) -> str:
        done = subprocess.run(
            ["make", "--no-print-directory", "-n", "-C", str(ROOT), "-o", ".venv/.installed-stamp", "replay", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert dry_run().endswith("/python -m dev.replay")
    assert dry_run("REASON=department_unknown", "RUN_ID=abc-1").endswith(
        "/python -m dev.replay --reason 'department_unknown' --run-id 'abc-1'"
    )
