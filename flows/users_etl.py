"""`users-etl`: extract -> transform -> persist -> deliver, each a child flow run.

Stages hand each other paths to staged files and small summaries, never frames. Extract, transform and
persist stream: each posts a batch to its manifest as soon as it is staged and the next stage, following
that manifest, works on it meanwhile (`tasks/staging/handoff.py`); deliver uploads once transform is done and
publishes once persist succeeded (`flows/deliver.py`). The flows only coordinate: the work is in `tasks/`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger

from flows.common import begin_run, parent_flow, record_failure
from flows.deliver import deliver, discard_delivery, publish_delivery
from flows.users_stages import extract, persist, transform
from models.settings import get_settings
from tasks import runs
from tasks.anomalies import AnomalyError, find_anomalies
from tasks.drift import record_schema
from tasks.report import publish_run_artifacts
from tasks.staging import handoff

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
) -> dict:
    """Parameters override the environment (USERS_API_BASE, USERS_PAGE_SIZE, USERS_BATCH_RECORDS, DATABASE_BLOCK,
    USERS_CSV_DIR, USERS_EXTRACT_FIRST). `extract_first`: transform and persist start once extract has staged
    everything, instead of working on its batches while it fetches (for a source that answers faster than
    the later stages work: streaming it only shares the cores three ways, for more memory and no time). If
    extract then fails, nothing goes on: what it staged waits, checkpointed, for the next run."""
    settings, logger = get_settings(), get_run_logger()
    run = begin_run(FLOW_NAME, database_block)
    engine, run_id, started, stamp, run_dir, clock = (
        run.engine,
        run.run_id,
        run.started,
        run.stamp,
        run.run_dir,
        run.clock,
    )
    seconds, work = clock.seconds, clock.work
    page_size = page_size or settings.users_page_size
    batch_records = batch_records or settings.users_batch_records
    extract_first = settings.users_extract_first if extract_first is None else extract_first

    # extract, transform and persist stream batches to each other through manifests (tasks/staging/handoff.py):
    # all three work at once (with `extract_first`, the other two start once extract is done); deliver uploads
    # once transform has written the last of the run's files, and publishes them once persist succeeded
    extracted = handoff.open_manifest(Path(run_dir) / "stages" / "extracted.jsonl")
    transformed = handoff.open_manifest(Path(run_dir) / "stages" / "transformed.jsonl")
    uploading = False
    try:
        clock.start(
            "extract",
            extract,
            run_dir,
            stamp,
            api_base or settings.users_api_base,
            page_size,
            batch_records,
            database_block,
            str(csv_dir or settings.users_csv_dir or "") or None,
            manifest=extracted,
        )
        if extract_first:
            clock.result("extract")
        clock.start(
            "transform",
            transform,
            extracted,
            run_dir,
            stamp,
            str(settings.departments_csv),
            batch_records,
            database_block,
            run_id,
            manifest=transformed,
            after=("extract", extracted),
        )
        clock.start(
            "persist",
            persist,
            run_id,
            transformed,
            extracted,
            run_dir,
            database_block,
            after=("transform", transformed),
        )
        ex = clock.result("extract")
        runs.update_run(engine, run_id=run_id, extracted=ex["records"])
        tr = clock.result("transform")
        staged_files = {"raw": ex["staged"][0]["raw_path"], **tr["files"]}
        staged_files |= {
            f"{s['source']}:{s.get('file', n)}": s["raw_path"]
            for n, s in enumerate(ex["staged"][1:])
            if s.get("raw_path")
        }
        if deliver_files:  # first: on SQLite the run's row waits for persist's transaction of the moment
            clock.start(
                "deliver",
                deliver,
                list(staged_files.values()),
                started.date().isoformat(),
                raw_files=[path for kind, path in staged_files.items() if kind not in tr["files"]],
                run_id=run_id,
                database_block=database_block,
                publish=False,
                daily_names=True,
            )
            uploading = True
        runs.update_run(
            engine,
            run_id=run_id,
            valid=tr["valid"],
            invalid=tr["invalid"],
            files=staged_files,
            dlq_reasons=tr["reasons"],
            schema_drift="; ".join(tr["drift"]) or None,
            observed_schema=tr["observed_schema"],
        )
        ps = clock.result("persist")
        sources, withheld = ps.pop("sources"), ps.pop("deletions_withheld")
        runs.update_run(engine, run_id=run_id, stage_seconds=seconds, sources=sources, **ps)
        # the schemas seen, stored once persist is done (transform's write would wait for its transaction)
        for source, observed in tr["observed_schema"].items():
            record_schema(
                engine,
                run_id=run_id,
                source=source,
                types=observed,
                policy=settings.drift_policy(source),
                changes=tr["schema_changes"][source],
            )
        staged = clock.result("deliver")["staged"] if deliver_files else []
        # published only now that persist succeeded, each file recorded as it lands
        delivered = (
            clock.run("publish", publish_delivery, staged, run_id, database_block)["delivered"] if staged else []
        )
    except BaseException:
        handoff.cancel(run_dir, handoff.RUN)  # stages still running stop at their next batch (finally waits)
        runs.update_run(engine, run_id=run_id, failed_stage=clock.stage, stage_seconds=seconds)
        if uploading:  # nothing more is published: this run's uploads go (else the next run removes them)
            clock.close()
            discard_delivery(run_id)
        raise
    finally:
        clock.close()

    counts = {
        "extracted": ex["records"],
        "valid": tr["valid"],
        "invalid": tr["invalid"],
        **ps,
        "delivered_files": len(delivered),
        "delivered_bytes": sum(d["bytes"] for d in delivered),
    }
    anomalies = find_anomalies(
        engine,
        flow_name=FLOW_NAME,
        run_id=run_id,
        extracted=ex["records"],
        invalid=tr["invalid"],
        duration=(datetime.now(UTC) - started).total_seconds(),
        min_runs=settings.anomaly_min_runs,
        count_tolerance=settings.anomaly_count_tolerance,
        invalid_rate_tolerance=settings.anomaly_invalid_rate_tolerance,
        duration_factor=settings.anomaly_duration_factor,
    )
    anomalies += ex["source_findings"]  # a source whose total changed or that ended short during the walk
    if withheld:
        anomalies.append(withheld)
    if anomalies:
        logger.warning("anomalous run: %s", "; ".join(anomalies))
        runs.update_run(engine, run_id=run_id, anomalies="; ".join(anomalies))
        if settings.anomaly_fail:
            runs.update_run(engine, run_id=run_id, failed_stage="anomaly-check", stage_seconds=seconds, **counts)
            raise AnomalyError("anomalous run (ANOMALY_FAIL is set): " + "; ".join(anomalies))
    runs.finish_run(engine, run_id=run_id, status="completed", stage_seconds=seconds, **counts)
    summary = {
        "run_id": run_id,
        "status": "completed",
        "counts": counts,
        "stage_seconds": seconds,
        "anomalies": anomalies,
        "schema_drift": tr["drift"],
        "stage_work_seconds": work,
        "work_spans": clock.spans,
        "files": staged_files,
        "sources": sources,
        "dlq_reasons": tr["reasons"],
        "delivered": delivered,
        "database": engine.url.render_as_string(hide_password=True),
    }
    publish_run_artifacts(summary)
    logger.info("users-etl done: %s", counts)
    return summary
