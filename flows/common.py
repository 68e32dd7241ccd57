"""What every flow shares: the deliver subflow, run bookkeeping hooks and the stage clock."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_client, get_run_logger
from prefect.runtime import flow_run as current_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from sqlalchemy import Engine

from models.db import resolve_engine
from models.settings import get_settings
from tasks import runs
from tasks.deliver import SftpTarget, deliver_files_task, remote_dir_for


@flow(name="deliver")
def deliver(files: list[str], run_date: str) -> dict:
    """The run's JSONL files -> SFTP_REMOTE_BASE/<run date>/ (skipped, and said so, when SFTP_HOST is unset)."""
    settings, logger = get_settings(), get_run_logger()
    if not settings.sftp_enabled:
        logger.warning("SFTP_HOST is not set: delivery skipped")
        return {"delivered": [], "work_seconds": 0.0}
    target = SftpTarget.from_settings(settings)  # passphrase: SFTP_KEY_PASSPHRASE or its Secret block
    remote_dir = remote_dir_for(target.remote_base, datetime.fromisoformat(run_date).date())
    started = time.perf_counter()
    delivered = deliver_files_task(target, [Path(f) for f in files], remote_dir)
    work = time.perf_counter() - started
    logger.info("deliver: %d files, %d bytes to %s:%s", len(delivered), sum(d["bytes"] for d in delivered),
                target.host, remote_dir)
    return {"delivered": delivered, "work_seconds": work}


def record_failure(flow, flow_run, state) -> None:
    """on_failure / on_crashed: the run's row says what happened, so the API sees it."""
    engine = resolve_engine((flow_run.parameters or {}).get("database_block"))
    status = "crashed" if state.is_crashed() else "failed"
    runs.finish_run(engine, run_id=str(flow_run.id), status=status, error=(state.message or status)[:4000])


def mark_stale_runs(engine, *, run_id: str, flow_name: str) -> None:
    """Runs of `flow_name` still 'running' in etl_runs whose Prefect run is over (or unknown) crashed."""
    stale = runs.open_runs(engine, flow_name=flow_name, exclude=run_id)
    if not stale:
        return
    over = []
    with get_client(sync_client=True) as client:
        for other in stale:
            try:
                state = client.read_flow_run(other).state
            except Exception:  # noqa: BLE001 (unknown to this Prefect server: it cannot be running)
                state = None
            if state is None or state.is_final():
                over.append(other)
    runs.mark_crashed(engine, over, noticed_by=run_id)


@dataclass
class RunStart:
    """What a parent flow knows once its run is open: engine, run id, start time, staging folder, clock."""

    engine: Engine
    run_id: str
    started: datetime
    stamp: str
    run_dir: str
    clock: StageClock


def begin_run(flow_name: str, database_block: str | None) -> RunStart:
    """Open the run's etl_runs row, mark earlier runs that died as crashed, name the staging folder."""
    engine = resolve_engine(database_block)
    run_id = str(current_run.id)
    runs.start_run(engine, run_id=run_id, flow_name=flow_name)
    mark_stale_runs(engine, run_id=run_id, flow_name=flow_name)
    started = datetime.now(UTC)
    return RunStart(engine=engine, run_id=run_id, started=started, stamp=started.strftime("%Y%m%d_%H%M%S"),
                    run_dir=str((get_settings().data_dir / "runs" / run_id).resolve()), clock=StageClock())


class StageClock:
    """Runs stages (child flows), keeping each one's wall time and its tasks' own work time (the rest is
    orchestration), and which stage is running (for the failure record).

    Child flows run without heartbeats of their own: they live in the parent's process, whose heartbeat
    already tells the server that process is alive, and each child's heartbeat thread (which sleeps in
    one-second steps) would otherwise hold up the end of every stage by up to a second."""

    def __init__(self) -> None:
        self.stage = "start"
        self.seconds: dict[str, float] = {}
        self.work: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs) -> dict:
        self.stage = name
        t0 = time.perf_counter()
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            out = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        self.work[name] = round(out.pop("work_seconds"), 3)
        return out
