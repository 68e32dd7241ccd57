"""`make bench`'s sharded column: the same users through `users-etl` deployed (prefect.yaml, `make deploy`) on
the bench's Prefect server, triggered with shards=2 and run by two process workers into PostgreSQL, staging in
a folder both see. On two cores the point is what sharding costs, not speed: the clock runs from the trigger
to the parent's completion, and each shard's orchestration overhead is its flow run's time (from its
creation to its end) beyond the shard's own work."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
POOL = "sluice-bench"
SHARDS = 2
TIMEOUT = 3600


def run_sharded(api: str, db_url: str, sftp_env: dict[str, str], data_dir: Path, prefect_url: str, env: dict) -> dict:
    """One sharded run over `api` into `db_url`; its wall time, stage seconds and per-shard figures."""
    from models.migrate import upgrade

    upgrade(db_url)
    env = {**env, "PREFECT_API_URL": prefect_url, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    log = data_dir / "deploy.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        subprocess.run(
            ["make", "--no-print-directory", "-C", str(ROOT), "deploy", f"WORK_POOL={POOL}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
    flow_env = {**env, **sftp_env, "DATABASE_URL": db_url, "DATA_DIR": str(data_dir), "USERS_PAGE_SIZE": "1000"}
    prefect = str(Path(sys.executable).parent / "prefect")
    with ExitStack() as stack:
        for n in (1, 2):
            out = stack.enter_context((data_dir / f"worker-{n}.log").open("wb"))
            worker = subprocess.Popen(
                [prefect, "worker", "start", "--pool", POOL, "--type", "process"],
                env=flow_env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            stack.callback(_stop, worker)
        time.sleep(3)  # the workers polling before the clock starts, as deployed ones are
        return _timed_run(api, db_url, prefect_url)


def _timed_run(api: str, db_url: str, prefect_url: str) -> dict:
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("users-etl/daily")
        t0 = time.time()
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"api_base": api, "shards": SHARDS})
        deadline = t0 + TIMEOUT
        while time.time() < deadline:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                break
            time.sleep(0.2)
        wall = time.time() - t0
        if state is None or not state.is_completed():
            raise RuntimeError(f"the sharded run ended {state.name if state else 'nowhere'}: {state and state.message}")
        with create_engine(db_url).connect() as conn:
            stage_seconds, extracted, shards_json = conn.execute(
                text("SELECT stage_seconds, extracted, shards FROM etl_runs WHERE id = :id"), {"id": str(run.id)}
            ).one()
        shards = json.loads(shards_json)
        shard_runs = {}
        for shard in shards:
            flow_run = client.read_flow_run(shard["flow_run_id"])
            shard_runs[shard["shard"]] = (flow_run.end_time - flow_run.created).total_seconds()
    return {
        "wall_seconds": wall,
        "extracted": extracted,
        "stage_seconds": json.loads(stage_seconds),
        "shards": [
            {**s, "flow_run_seconds": shard_runs[s["shard"]], "overhead_seconds": shard_runs[s["shard"]] - s["seconds"]}
            for s in shards
        ],
    }


def _stop(proc: subprocess.Popen) -> None:
    from dev.prefect_helpers import stop

    stop(proc)


def render_sharded(n: int, unsharded: dict, sharded: dict) -> list[str]:
    """The sharded column beside the unsharded PostgreSQL one."""
    stages, shards = sharded["stage_seconds"], sharded["shards"]
    lines = [
        "",
        f"Sharded: `users-etl` deployed, {SHARDS} shards on two process workers (PostgreSQL, staging in a shared",
        "folder); the clock runs from the trigger to the parent's completion (the unsharded column from the flow",
        "process's start).",
        "",
        f"| | PostgreSQL | PostgreSQL, {SHARDS} shards |",
        "|---|---:|---:|",
        f"| end to end (s) | {unsharded['wall_seconds']:.1f} | {sharded['wall_seconds']:.1f} |",
        f"| records/s end to end | {n / unsharded['wall_seconds']:,.0f} | {n / sharded['wall_seconds']:,.0f} |",
        f"| the shards, submitted to joined (s) | | {stages.get('shards', 0):.1f} |",
        f"| deliver (s) | {unsharded['stage_seconds'].get('deliver', 0):.1f} | {stages.get('deliver', 0):.1f} |",
    ]
    for s in shards:
        stage = s["stage_seconds"]
        lines.append(
            f"| shard {s['shard']}: records, extract / transform / persist (s) | | {s['records']:,}, "
            f"{stage.get('extract', 0):.1f} / {stage.get('transform', 0):.1f} / {stage.get('persist', 0):.1f} |"
        )
        lines.append(
            f"| shard {s['shard']}: orchestration overhead (s): its flow run beyond its work | | "
            f"{s['overhead_seconds']:.1f} of {s['flow_run_seconds']:.1f} |"
        )
    return lines
