"""What every parent flow shares: the async wrapper, and the run's bookkeeping (its etl_runs row, liveness,
hooks, crashed runs noticed). The stages themselves run through tasks/staging/runner.py."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from prefect import Flow, flow, get_client, get_run_logger
from prefect.runtime import flow_run as current_run
from prefect.settings import get_current_settings
from sqlalchemy import Engine

from flows.prefect_api import api_answers
from models.db import resolve_engine
from models.migrate import SchemaOutOfDate
from models.settings import get_settings
from tasks import runs
from tasks.retention import prune_run_dirs, prune_store_runs
from tasks.staging import handoff
from tasks.staging.parts import staging_store
from tasks.staging.runner import StageRunner

STOP_SECONDS = 20.0  # an interrupted run waits this long for its stages to stop (Prefect's runner kills at 30 s)
# no answer from the Prefect API for this long ends the run at once (Prefect's client would try each call
# again for a minute, and a run makes dozens: minutes of retries, then a traceback)
API_LOST_SECONDS = 30.0
API_LOST_EXIT_CODE = 3

_active: dict[str, RunStart] = {}  # run id -> the parent flow run this process is running


def parent_flow(**options) -> Callable[[Callable[..., dict]], Flow]:
    """`@flow(**options)` for a parent flow: its body, a plain function that coordinates the child flows,
    runs in a worker thread under an async flow, with the body's own signature as the flow's parameters.

    Why async: when a flow returns, Prefect's sync engine waits for the flow's heartbeat thread to stop,
    and that thread sleeps in one-second steps, so every sync flow run ended up to a second after its
    final state (a whole number of seconds after its start). The async engine stops the thread without
    waiting for it. The heartbeats themselves go on as before. Call the flow with `asyncio.run(...)`.

    In the body (and in the hooks), Prefect's dual sync/async helpers see an async flow and return a
    coroutine, which nothing awaits: call them with `_sync=True` (`Block.load`, `create_*_artifact`...).
    The child flows are sync and need nothing.

    Interrupted (SIGTERM, which Prefect's engine turns into a crash, or Ctrl-C), the flow stops its stages,
    waits up to STOP_SECONDS for the body to end, marks its run crashed in etl_runs and lets the interruption
    go on: the process ends within seconds, its run's record saying so."""

    def wrap(body: Callable[..., dict]) -> Flow:
        @functools.wraps(body)
        async def in_thread(*args, **kwargs) -> dict:
            run_id, loop = str(current_run.id), asyncio.get_running_loop()
            # a future of the loop's executor, not a task: cancelling the flow's task leaves it to be waited for
            done = loop.run_in_executor(
                None, functools.partial(contextvars.copy_context().run, body, *args, **kwargs)
            )  # the flow run's context goes along
            try:
                return await asyncio.shield(done)
            except BaseException:
                if not done.done():  # the flow was interrupted, not failed by its body
                    await _interrupted(run_id, done)
                raise
            finally:
                _end_watch(run_id, over=done.done())

        return flow(**options)(in_thread)

    return wrap


async def _interrupted(run_id: str, body: asyncio.Future) -> None:
    """Stop the run's stages, wait for its body to end (up to STOP_SECONDS), and record it as stopped."""
    run = _active.get(run_id)
    stages = run.stages.running() if run is not None else []
    if run is not None:
        handoff.cancel(run.run_dir, handoff.RUN)
    await asyncio.wait({body}, timeout=STOP_SECONDS)
    if run is not None:
        runs.finish_run(
            run.engine,
            run_id=run_id,
            status="crashed",
            if_running=True,
            failed_stage=stages[0] if stages else run.stages.stage,
            error="the run was stopped (SIGTERM, Ctrl-C or a cancellation)"
            + (f" while {', '.join(stages)} ran" if stages else ""),
        )


def record_failure(flow, flow_run, state) -> None:
    """on_failure / on_crashed: the run's row says what happened, so the API sees it."""
    try:
        engine = resolve_engine((flow_run.parameters or {}).get("database_block"))
    except SchemaOutOfDate:  # the run failed on it: there is no row to write to
        return
    status = "crashed" if state.is_crashed() else "failed"
    # if_running: a run that ended itself (stopped, or failed with its own message) keeps what it said
    runs.finish_run(
        engine, run_id=str(flow_run.id), status=status, error=(state.message or status)[:4000], if_running=True
    )


def mark_stale_runs(engine, *, run_id: str) -> None:
    """Runs still 'running' in etl_runs whose process died crashed: known from their own rows (process gone
    from this host, or no heartbeat for a minute), whatever Prefect says; a row without a heartbeat (written
    before runs had one) crashed if its Prefect run is over or unknown."""
    crashes, unknown = [], []
    for other in runs.open_runs(engine, exclude=run_id):
        why = runs.why_dead(other)
        if why is not None:
            crashes.append(runs.Crash(other.id, why, other.heartbeat_at))
        elif other.heartbeat_at is None:
            unknown.append(other.id)
    if unknown:
        with get_client(sync_client=True) as client:
            for unknown_id in unknown:
                try:
                    state = client.read_flow_run(UUID(unknown_id)).state
                except Exception:  # noqa: BLE001 (unknown to this Prefect server: it cannot be running)
                    state = None
                if state is None or state.is_final():
                    why = "its Prefect run is over" if state else "unknown to Prefect"
                    crashes.append(runs.Crash(unknown_id, why))
    runs.mark_crashed(engine, crashes, noticed_by=run_id)


@dataclass
class RunStart:
    """What a parent flow knows once its run is open: engine, run id, start time, its folder (the stages'
    manifests, on this host), where its staged files go (a location in STAGING_URL), stage runner."""

    engine: Engine
    run_id: str
    started: datetime
    file_time: str
    run_dir: str
    stages: StageRunner
    flow_name: str = ""
    heartbeat: runs.Heartbeat | None = None
    files_root: str = ""

    def __post_init__(self) -> None:
        self.files_root = self.files_root or self.run_dir


def begin_run(flow_name: str, database_block: str | None) -> RunStart:
    """Open the run's etl_runs row and keep it alive (a heartbeat, and a watch on the Prefect API), mark earlier
    runs that died as crashed, remove expired staging folders (RUN_FILES_KEEP_DAYS), name this run's."""
    engine = resolve_engine(database_block)
    run_id = str(current_run.id)
    runs.start_run(engine, run_id=run_id, flow_name=flow_name)
    mark_stale_runs(engine, run_id=run_id)
    settings, started = get_settings(), datetime.now(UTC)
    store = staging_store()
    if settings.run_files_keep_days:  # before this run stages its own files
        keep, logger = settings.run_files_keep_days, get_run_logger()
        prune_run_dirs(engine, runs_dir=settings.data_dir / "runs", keep_days=keep, logger=logger)
        if store.url != str(settings.data_dir.resolve()):  # the staged files are elsewhere: a folder or S3
            prune_store_runs(engine, store=store, keep_days=keep, logger=logger)
    run_dir = str((settings.data_dir / "runs" / run_id).resolve())
    run = RunStart(
        engine=engine,
        run_id=run_id,
        started=started,
        file_time=started.strftime("%Y%m%d_%H%M%S"),
        run_dir=run_dir,
        stages=StageRunner(run_dir),
        flow_name=flow_name,
        files_root=store.location(f"runs/{run_id}"),
    )
    api_url = get_current_settings().api.url
    run.heartbeat = runs.Heartbeat(engine, run_id, also=_ApiWatch(run, api_url) if api_url else None).start()
    _active[run_id] = run
    return run


def _end_watch(run_id: str, *, over: bool) -> None:
    """The parent flow is leaving: no more heartbeats; once its body is `over`, its stages' cancel flags go."""
    run = _active.pop(run_id, None)
    if run is not None:
        if run.heartbeat is not None:
            run.heartbeat.stop()
        if over:  # else stages still stopping must go on seeing the run's cancel
            handoff.forget(run.run_dir)


class _ApiWatch:
    """After each heartbeat: is the Prefect API still there? Once it has not answered for API_LOST_SECONDS,
    the run ends at once: its record says why, one line on stderr says so, and the process exits
    (API_LOST_EXIT_CODE) instead of retrying every Prefect call for minutes. The stages end with it as they
    would if it were killed (a transaction in flight is rolled back; extract resumes at its checkpoint)."""

    def __init__(self, run: RunStart, api_url: str) -> None:
        self.run, self.api_url = run, api_url
        self.failing_since: float | None = None  # the first unanswered probe since the last answer

    def __call__(self) -> None:
        if api_answers(self.api_url):
            self.failing_since = None
            return
        now = time.monotonic()
        self.failing_since = self.failing_since or now
        silent = now - self.failing_since
        if silent < API_LOST_SECONDS:
            return
        run, why = self.run, f"lost the Prefect API at {self.api_url}: no answer for {silent:.0f} s"
        stages = run.stages.running()  # they end with the process, as if killed: each resumes or redoes its batch
        try:
            runs.finish_run(
                run.engine,
                run_id=run.run_id,
                status="failed",
                error=why,
                if_running=True,
                failed_stage=stages[0] if stages else run.stages.stage,
            )
        finally:
            # on a line of its own: Prefect's log worker may have left one unfinished ("Error logging to API")
            print(f"\nsluice: {run.flow_name} run {run.run_id} failed: {why}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(API_LOST_EXIT_CODE)  # Prefect's own exit would try the lost API again, for minutes
