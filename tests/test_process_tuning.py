"""Process tuning belongs to the process's entry point: importing the flows, tasks, models or the API changes
nothing, and a worker's flow process gets the same settings `make run` applies, from prefect.yaml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from flows import process

ROOT = Path(__file__).resolve().parents[1]
TUNING = (process.POLARS_THREADS_ENV, process.POLARS_ALLOCATOR_ENV, process.GLIBC_MMAP_THRESHOLD_ENV)


def test_importing_the_pipeline_or_the_api_leaves_the_process_as_it_is():
    code = (
        "import json, os, flows.users_etl, flows.feeds_etl, api.main, models.users, tasks.users.persist; "
        f"print(json.dumps({{k: os.environ.get(k) for k in {list(TUNING)!r}}}))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in TUNING}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # (Polars sets its allocator's own defaults when it loads: Sluice's are not among them)
    assert seen[process.POLARS_THREADS_ENV] is None and seen[process.GLIBC_MMAP_THRESHOLD_ENV] is None
    assert process.POLARS_ALLOCATOR_CONF not in (seen[process.POLARS_ALLOCATOR_ENV] or "")


def test_a_deployed_run_gets_the_tuning_make_run_applies():
    pool = yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"]["work_pools"]["process"]
    env = pool["job_variables"]["env"]
    assert env[process.POLARS_ALLOCATOR_ENV] == "muzzy_decay_ms:0,narenas:1" == process.allocator_conf(1)
    assert env[process.GLIBC_MMAP_THRESHOLD_ENV] == str(process.GLIBC_MMAP_THRESHOLD)
    assert env[process.POLARS_THREADS_ENV] == "1"
