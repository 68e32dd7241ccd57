"""`make bench`'s sharded column: the same users through `users-etl` deployed (prefect.yaml, `make deploy`) on
the bench's Prefect server, triggered with shards=2 and run by two process workers into PostgreSQL, staging in
a folder both see, and again staging in S3 (moto's server on loopback, bench/s3.py). On two cores the point is
what sharding and object storage cost, not speed: the clock runs from the trigger to the parent's completion,
and each shard's orchestration overhead is its flow run's time (from its creation to its end) beyond the
shard's own work."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.s3 import moto_staging

ROOT = Path(__file__).resolve().parent.parent
POOL = "sluice-bench"
SHARDS = 2
TIMEOUT = 3600
STAGING_VARS = ("STAGING_", "AWS_")


def run_sharded(
    api: str, db_url: str, sftp_env: dict[str, str], data_dir: Path, prefect_url: str, env: dict, *, s3: bool = False
) -> dict:
    """One sharded run over `api` into `db_url`, staging in `data_dir`, or with `s3` in a bucket of a moto server
    started for it; its wall time, stage seconds and per-shard figures."""
    from models.migrate import upgrade

    upgrade(db_url)
    # the staging store is the variant's alone: none inherited from the bench's environment
    env = {k: v for k, v in env.items() if not k.startswith(STAGING_VARS)}
    env.update(PREFECT_API_URL=prefect_url, PREFECT_WORKER_QUERY_SECONDS="1")
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
    flow_env["STAGING_URL"] = str(data_dir)  # as unset does, and not whatever `.env` says
    prefect = str(Path(sys.executable).parent / "prefect")
    with ExitStack() as stack:
        if s3:  # up and its bucket made before the workers start and the clock runs
            flow_env.update(stack.enter_context(moto_staging(data_dir / "moto.log")))
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


def render_sharded(n: int, unsharded: dict, sharded: dict, s3: dict | None = None) -> list[str]:
    """The sharded column beside the unsharded PostgreSQL one, and the same run staging in S3 beside it."""
    columns = [sharded] if s3 is None else [sharded, s3]

    def row(label: str, first: str, cell) -> str:
        return _md_row([label, first, *(cell(c) for c in columns)])

    def shard_row(label: str, index: int, cell) -> str:
        by_shard = [{s["shard"]: s for s in c["shards"]}.get(index) for c in columns]
        return _md_row([f"shard {index}: {label}", "", *(cell(s) if s else "" for s in by_shard)])

    def work(s: dict) -> str:
        stage = s["stage_seconds"]
        return (
            f"{s['records']:,}, {stage.get('extract', 0):.1f} / {stage.get('transform', 0):.1f} / "
            f"{stage.get('persist', 0):.1f}"
        )

    heads = [f"PostgreSQL, {SHARDS} shards"] + ([f"PostgreSQL, {SHARDS} shards, S3 staging"] if s3 else [])
    where = "staging in a shared folder" + (", and in S3 in the last column (moto's server on loopback)" if s3 else "")
    prose = (
        f"Sharded: `users-etl` deployed, {SHARDS} shards on two process workers (PostgreSQL), {where}; the clock "
        "runs from the trigger to the parent's completion (the unsharded column from the flow process's start)."
    )
    lines = [
        "",
        *textwrap.wrap(prose, 110),
        "",
        "| | PostgreSQL | " + " | ".join(heads) + " |",
        "|---|---:|" + "---:|" * len(columns),
        row("end to end (s)", f"{unsharded['wall_seconds']:.1f}", lambda c: f"{c['wall_seconds']:.1f}"),
        row("records/s end to end", f"{n / unsharded['wall_seconds']:,.0f}", lambda c: f"{n / c['wall_seconds']:,.0f}"),
        row("the shards, submitted to joined (s)", "", lambda c: f"{c['stage_seconds'].get('shards', 0):.1f}"),
        row(
            "deliver (s)",
            f"{unsharded['stage_seconds'].get('deliver', 0):.1f}",
            lambda c: f"{c['stage_seconds'].get('deliver', 0):.1f}",
        ),
    ]
    indexes = sorted({s["shard"] for c in columns for s in c["shards"]})
    for index in indexes:
        lines.append(shard_row("records, extract / transform / persist (s)", index, work))
        lines.append(
            shard_row(
                "orchestration overhead (s): its flow run beyond its work",
                index,
                lambda s: f"{s['overhead_seconds']:.1f} of {s['flow_run_seconds']:.1f}",
            )
        )
    return lines


def _md_row(cells: list[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
