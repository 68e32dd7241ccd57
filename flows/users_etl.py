"""`users-etl`: extract -> transform -> persist -> deliver, each a child flow run.

    users API, CSV drop --extract--> raw JSONL --transform--> processed + DLQ JSONL --persist--> tables
                                                                                  \\--deliver--> SFTP

Extract, transform and persist stream: each posts a batch to its manifest as soon as it is staged and the next
stage works on it meanwhile (tasks/staging/handoff.py). Deliver uploads once transform is done and publishes
once persist succeeded (flows/deliver.py). This module only coordinates: the stages are flows/users_*.py."""

from __future__ import annotations

import functools
from collections.abc import Callable

from prefect import get_run_logger

from flows.deliver import deliver, discard_delivery, publish_delivery
from flows.runtime import RunStart, begin_run, parent_flow, record_failure
from flows.users_shards import Sharded, run_sharded
from flows.users_stream import Streaming, run_files, start_streaming
from models.settings import ConfigError, get_settings
from models.sources import api_sources
from tasks import runs
from tasks.anomalies import judge_run
from tasks.drift import record_schemas
from tasks.extract.users_api import ApiSource
from tasks.report import publish_run_artifacts
from tasks.staging import handoff
from tasks.staging.batches import ExtractResult, PersistResult, TransformResult

FLOW_NAME = "users-etl"


@parent_flow(name=FLOW_NAME, on_failure=[record_failure], on_crashed=[record_failure])
def users_etl(
    api_base: str | None = None,
    page_size: int | None = None,
    batch_records: int | None = None,
    deliver_files: bool = True,
    database_block: str | None = None,
    csv_dir: str | None = None,
    extract_first: bool | None = None,
    shards: int | None = None,
) -> dict:
    """Parameters override the environment (USERS_API_BASE, USERS_PAGE_SIZE, USERS_BATCH_RECORDS, DATABASE_BLOCK,
    USERS_CSV_DIR, USERS_EXTRACT_FIRST, USERS_SHARDS). `extract_first`: transform and persist start once extract
    has staged everything (for a source that answers faster than the later stages work); if extract then
    fails, what it staged waits, checkpointed, for the next run. `shards` > 1: the page walk is cut into that
    many ranges, each extracted, transformed and persisted by a `users-shard` flow run on any worker of the
    pool (flows/users_shards.py); this run then checks the whole, delivers and records it."""
    settings = get_settings()
    batch_records = batch_records or settings.users_batch_records
    configured = api_sources(settings, base_url=api_base, page_size=page_size)
    if not configured:
        raise ConfigError("USERS_API_BASE is not set: point it at the users API to read (or pass api_base)")
    sources = [ApiSource.from_settings(settings, c, batch_records=batch_records) for c in configured]
    run = begin_run(FLOW_NAME, database_block)
    if (shards or settings.users_shards) > 1:
        options = {"api_base": api_base, "page_size": page_size, "batch_records": batch_records}
        options |= {"database_block": database_block, "csv_dir": csv_dir}
        return sharded_run(run, sources, shards or settings.users_shards, options, deliver_files=deliver_files)
    stages, run_dir = run.stages, run.run_dir
    on = Streaming(run.run_id, run_dir, run.files_root, run.file_time, batch_records, database_block, csv_dir)
    uploading = False
    try:
        first = settings.users_extract_first if extract_first is None else extract_first
        start_streaming(stages, on, sources, extract_first=first)
        ex: ExtractResult = stages.result("extract")
        runs.update_run(run.engine, run_id=run.run_id, extracted=ex.records)
        tr: TransformResult = stages.result("transform")
        files = run_files(ex, tr)
        if deliver_files:  # first: on SQLite the run's row waits for persist's transaction of the moment
            stages.start("deliver", delivery(run, files, tr, database_block))
            uploading = True
        runs.record_transform(run.engine, run_id=run.run_id, result=tr, files=files)
        ps: PersistResult = stages.result("persist")
        runs.update_run(run.engine, run_id=run.run_id, stage_seconds=stages.seconds, sources=ps.sources, **ps.counts)
        record_schemas(run.engine, run_id=run.run_id, result=tr, policy=settings.drift_policy)  # after persist's
        staged = stages.result("deliver").staged if deliver_files else []
        published = stages.run("publish", publish_delivery, staged, run.run_id, database_block) if staged else None
    except BaseException:
        handoff.cancel(run_dir, handoff.RUN)  # stages still running stop at their next batch (finally waits)
        runs.update_run(run.engine, run_id=run.run_id, failed_stage=stages.stage, stage_seconds=stages.seconds)
        if uploading:  # nothing more is published: this run's uploads go (else the next run removes them)
            stages.close()
            discard_delivery(run.run_id)
        raise
    finally:
        stages.close()
    return finish(run, ex, tr, ps, files, published.delivered if published else [])


def sharded_run(run: RunStart, sources: list[ApiSource], shards: int, options: dict, *, deliver_files: bool) -> dict:
    """The run's shards on the work pool, joined; then the whole run's checks, delivery and record."""
    stages, uploading = run.stages, False
    try:
        joined: Sharded = stages.run("shards", run_sharded, run, sources, shards=shards, parameters=options)
        ex, tr, ps, files = joined.ex, joined.tr, joined.ps, joined.files
        runs.update_run(
            run.engine, run_id=run.run_id, extracted=ex.records, shards=[s.summary() for s in joined.shards]
        )
        runs.record_transform(run.engine, run_id=run.run_id, result=tr, files=files)
        runs.update_run(run.engine, run_id=run.run_id, stage_seconds=stages.seconds, sources=ps.sources, **ps.counts)
        record_schemas(run.engine, run_id=run.run_id, result=tr, policy=get_settings().drift_policy)
        published = None
        if deliver_files:
            uploading = True
            staged = stages.run("deliver", delivery(run, files, tr, options["database_block"])).staged
            published = (
                stages.run("publish", publish_delivery, staged, run.run_id, options["database_block"])
                if staged
                else None
            )
    except BaseException:
        runs.update_run(run.engine, run_id=run.run_id, failed_stage=stages.stage, stage_seconds=stages.seconds)
        if uploading:
            discard_delivery(run.run_id)
        raise
    return finish(run, ex, tr, ps, files, published.delivered if published else [])


def delivery(run: RunStart, files: dict[str, str], tr: TransformResult, database_block: str | None) -> Callable:
    """The `deliver` stage with its arguments: the run's files (the raw ones as DELIVER_RAW says) under the day's
    names, uploaded now, published once the run's data is stored."""
    raw = [path for kind, path in files.items() if kind not in tr.files]
    return functools.partial(
        deliver,
        list(files.values()),
        run.started.date().isoformat(),
        raw_files=raw,
        run_id=run.run_id,
        database_block=database_block,
        publish=False,
        daily_names=True,
    )


def finish(
    run: RunStart, ex: ExtractResult, tr: TransformResult, ps: PersistResult, files: dict, delivered: list[dict]
) -> dict:
    """The run judged against the runs before it, recorded as completed, its summary published and returned."""
    settings, stages = get_settings(), run.stages
    counts = runs.run_counts(
        extracted=ex.records, valid=tr.valid, invalid=tr.invalid, persisted=ps.counts, delivered=delivered
    )
    anomalies = judge_run(
        run.engine,
        settings,
        flow_name=FLOW_NAME,
        run_id=run.run_id,
        started=run.started,
        counts=counts,
        findings=[*ex.findings, *filter(None, [ps.deletions_withheld])],
        stage_seconds=stages.seconds,
        logger=get_run_logger(),
    )
    runs.finish_run(run.engine, run_id=run.run_id, status="completed", stage_seconds=stages.seconds, **counts)
    summary = {
        "run_id": run.run_id,
        "status": "completed",
        "counts": counts,
        "stage_seconds": stages.seconds,
        "anomalies": anomalies,
        "schema_drift": tr.drift,
        "stage_work_seconds": stages.work,
        "work_spans": stages.spans,
        "files": files,
        "sources": ps.sources,
        "dlq_reasons": tr.reasons,
        "delivered": delivered,
        "database": run.engine.url.render_as_string(hide_password=True),
    }
    publish_run_artifacts(summary)
    get_run_logger().info("users-etl done: %s", counts)
    return summary
