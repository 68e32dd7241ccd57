"""What every flow shares: the deliver subflow, run bookkeeping hooks and the stage clock."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prefect import Flow, flow, get_client, get_run_logger
from prefect.runtime import flow_run as current_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from sqlalchemy import Engine

from models.db import resolve_engine
from models.migrate import SchemaOutOfDate
from models.settings import get_settings
from tasks import handoff, runs
from tasks.deliver import SftpTarget, deliver_files_task, remote_dir_for
from tasks.deliver_files import files_to_deliver
from tasks.retention import prune_run_dirs


def parent_flow(**options) -> Callable[[Callable[..., dict]], Flow]:
    """`@flow(**options)` for a parent flow: its body, a plain function that coordinates the child flows,
    runs in a worker thread under an async flow, with the body's own signature as the flow's parameters.

    Why async: when a flow returns, Prefect's sync engine waits for the flow's heartbeat thread to stop,
    and that thread sleeps in one-second steps, so every sync flow run ended up to a second after its
    final state (a whole number of seconds after its start). The async engine stops the thread without
    waiting for it. The heartbeats themselves go on as before. Call the flow with `asyncio.run(...)`.

    In the body (and in the hooks), Prefect's dual sync/async helpers see an async flow and return a
    coroutine, which nothing awaits: call them with `_sync=True` (`Block.load`, `create_*_artifact`...).
    The child flows are sync and need nothing."""

    def wrap(body: Callable[..., dict]) -> Flow:
        @functools.wraps(body)
        async def in_thread(*args, **kwargs) -> dict:
            return await asyncio.to_thread(body, *args, **kwargs)  # the flow run's context goes along

        return flow(**options)(in_thread)

    return wrap


@flow(name="deliver")
def deliver(files: list[str], run_date: str, raw_files: list[str] | None = None) -> dict:
    """The run's JSONL files -> SFTP_REMOTE_BASE/<run date>/ (skipped, and said so, when SFTP_HOST is unset).
    `raw_files`, those of `files` that are raw-layer files, go as DELIVER_RAW says: masked copies by default,
    as staged (`full`) or not at all (`none`)."""
    settings, logger = get_settings(), get_run_logger()
    if not settings.sftp_enabled:
        logger.warning("SFTP_HOST is not set: delivery skipped")
        return {"delivered": [], "work_spans": []}
    target = SftpTarget.from_settings(settings)  # passphrase: SFTP_KEY_PASSPHRASE or its Secret block
    remote_dir = remote_dir_for(target.remote_base, datetime.fromisoformat(run_date).date())
    started = time.time()
    paths = files_to_deliver(files, raw_files or [], settings.deliver_raw)
    if raw_files:
        logger.info("deliver: %d raw file(s), DELIVER_RAW=%s", len(raw_files), settings.deliver_raw)
    delivered = deliver_files_task(target, paths, remote_dir)
    work = [started, time.time()]
    logger.info("deliver: %d files, %d bytes to %s:%s", len(delivered), sum(d["bytes"] for d in delivered),
                target.host, remote_dir)
    return {"delivered": delivered, "work_spans": [work]}


def record_failure(flow, flow_run, state) -> None:
    """on_failure / on_crashed: the run's row says what happened, so the API sees it."""
    try:
        engine = resolve_engine((flow_run.parameters or {}).get("database_block"))
    except SchemaOutOfDate:  # the run failed on it: there is no row to write to
        return
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
    """Open the run's etl_runs row, mark earlier runs that died as crashed, remove expired staging folders
    (RUN_FILES_KEEP_DAYS), name this run's."""
    engine = resolve_engine(database_block)
    run_id = str(current_run.id)
    runs.start_run(engine, run_id=run_id, flow_name=flow_name)
    mark_stale_runs(engine, run_id=run_id, flow_name=flow_name)
    settings, started = get_settings(), datetime.now(UTC)
    if settings.run_files_keep_days:  # before this run stages its own files
        prune_run_dirs(engine, runs_dir=settings.data_dir / "runs", keep_days=settings.run_files_keep_days,
                       logger=get_run_logger())
    run_dir = str((settings.data_dir / "runs" / run_id).resolve())
    return RunStart(engine=engine, run_id=run_id, started=started, stamp=started.strftime("%Y%m%d_%H%M%S"),
                    run_dir=run_dir, clock=StageClock(run_dir))


class StageClock:
    """Runs stages (child flows), keeping each one's wall time, the [start, end] intervals in which its
    tasks did their own work (`work_spans` in each stage's summary; time covered by no task's work is
    orchestration) and their total, and which stage is running.

    `run` runs a stage and waits for it; `start` runs it in a thread of its own (the parent's Prefect
    context copied in, so it is still a child flow run) for stages that stream to each other, and `result`
    waits for one. When a streamed stage fails, its manifest is closed as failed and the run's cancel flag
    set, so the stages downstream finish what was posted and stop, and those upstream stop at their next
    batch; `failed_stage` then names the stage whose own error it was.

    Child flows run without heartbeats of their own: they live in the parent's process, whose heartbeat
    already tells the server that process is alive, and each child's heartbeat thread (which sleeps in
    one-second steps) would otherwise hold up the end of every stage by up to a second."""

    def __init__(self, run_dir: str | None = None) -> None:
        self.stage = "start"
        self.run_dir = run_dir
        self.seconds: dict[str, float] = {}
        self.work: dict[str, float] = {}
        self.spans: list[list[float]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future] = {}

    def run(self, name: str, fn, *args, **kwargs) -> dict:
        self.stage = name
        return self._timed(name, fn, args, kwargs)

    def _timed(self, name: str, fn, args, kwargs) -> dict:
        t0 = time.perf_counter()
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            out = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        spans = out.pop("work_spans")
        self.work[name] = round(sum(end - start for start, end in spans), 3)
        self.spans += spans
        return out

    def start(self, name: str, fn, *args, manifest: str | None = None, after: tuple[str, str] | None = None,
              **kwargs) -> None:
        """Run a stage alongside the others; `manifest` is the one it posts to (closed as failed if it dies).
        `after` = (stage, its manifest): start once that stage is running (`handoff.mark_started`), has
        posted something or has ended, so the child flow runs are not all created at the same instant (a
        Prefect API on SQLite serialises writes), yet each is ready by the time its first batch is posted."""
        if after is not None:
            upstream, posted = self._futures[after[0]], Path(after[1])
            while not upstream.done() and posted.stat().st_size == 0 and not handoff.has_started(posted):
                time.sleep(handoff.POLL_SECONDS)
        if manifest is not None:
            kwargs["manifest"] = manifest
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="stage")
        self._futures[name] = self._pool.submit(contextvars.copy_context().run, self._streamed, name, fn, args,
                                                kwargs, manifest)

    def _streamed(self, name: str, fn, args, kwargs, manifest: str | None) -> dict:
        try:
            return self._timed(name, fn, args, kwargs)
        except BaseException as exc:
            if manifest:
                handoff.close(manifest, error=f"{type(exc).__name__}: {exc}")
            if self.run_dir and not isinstance(exc, (handoff.UpstreamFailedError, handoff.RunCancelledError)):
                handoff.cancel(self.run_dir, name)
            raise

    def result(self, name: str) -> dict:
        """The stage's summary; if any started stage failed, waits for all and raises the root error."""
        try:
            return self._futures[name].result()
        except BaseException:
            self.stage = name
            self.close()
            for stage, future in self._futures.items():
                exc = future.exception()
                if exc is not None and not isinstance(exc, (handoff.UpstreamFailedError, handoff.RunCancelledError)):
                    self.stage = stage
                    raise exc from None
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
