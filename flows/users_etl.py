"""`users-etl`: extract -> transform -> persist -> deliver, each a child flow run.

Stages hand each other paths to staged files and small summaries, never frames. The flows only
coordinate: the work is in `tasks/`."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_run
from prefect.tasks import exponential_backoff

from models.db import resolve_engine
from models.settings import get_settings
from tasks import runs
from tasks.anomalies import AnomalyError, find_anomalies
from tasks.drift import check_schema, describe, merge_types
from tasks.extract import dummyjson
from tasks.extract.constants import SOURCE
from tasks.extract.sample import offline_users_api
from tasks.persist import persist_batch
from tasks.report import publish_run_artifacts
from tasks.transform import file_sha256, load_departments, split_spans, transform_batch

FLOW_NAME = "users-etl"
OFFLINE_FINGERPRINT = "offline-sample"
APPROX_RECORD_BYTES = 1_500  # only sizes transform spans before the first run has measured anything


@contextmanager
def _users_source(api_base: str | None):
    """The configured API, or the generated sample served on loopback (same contract, same code path)."""
    if api_base:
        yield api_base, None
    else:
        with offline_users_api() as url:
            yield url, OFFLINE_FINGERPRINT


@flow(name="extract")
def extract(run_dir: str, stamp: str, api_base: str | None = None, page_size: int = 100,
            batch_records: int = 10_000, database_block: str | None = None) -> dict:
    """Pages -> staged raw JSONL, checkpointed after every batch of pages; resumes an interrupted run."""
    settings, logger = get_settings(), get_run_logger()
    engine = resolve_engine(database_block)
    fetch = dummyjson.fetch_batch.with_options(
        retries=settings.extract_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.extract_retry_base_seconds),
    )
    with _users_source(api_base) as (base_url, fingerprint):
        plan = dummyjson.begin_extract(
            engine, run_id=str(current_run.id), fingerprint=fingerprint or f"{base_url}|{page_size}",
            new_path=Path(run_dir) / "raw_users" / f"records_{stamp}.jsonl",
        )
        if plan.resumed:
            logger.info("resuming the interrupted extraction at skip=%d (%d records already staged in %s)",
                        plan.skip, plan.records, plan.staged_path)
        skip, offset, records, work = plan.skip, plan.offset, plan.records, 0.0
        try:
            while True:
                got = fetch(engine, base_url=base_url, page_size=page_size, skip=skip, max_records=batch_records,
                            staged_path=plan.staged_path, offset=offset, records_before=records,
                            timeout=settings.users_request_timeout, max_retry_after=settings.max_retry_after_seconds)
                skip, offset, records = got["next_skip"], got["offset"], records + got["records"]
                work += got["work_seconds"]
                if got["done"]:
                    break
        except Exception as exc:
            dummyjson.finish_extract(engine, error=f"{type(exc).__name__}: {exc}")
            logger.error("extract stopped at skip=%d; the checkpoint keeps it for the next run", skip)
            raise
        dummyjson.finish_extract(engine)
    logger.info("extract: %d records staged in %s", records, plan.staged_path)
    return {"raw_path": plan.staged_path, "records": records, "resumed_from": plan.skip if plan.resumed else None,
            "work_seconds": work}


@flow(name="transform")
def transform(raw_path: str, run_dir: str, stamp: str, records: int, departments_csv: str,
              batch_records: int = 10_000, source: str = SOURCE, database_block: str | None = None,
              run_id: str | None = None) -> dict:
    """Raw JSONL -> processed + DLQ JSONL, span by span; the source's schema checked for drift."""
    settings, logger = get_settings(), get_run_logger()
    departments = load_departments(departments_csv, file_sha256(departments_csv))
    files = {
        "raw": raw_path,
        "processed": str(Path(run_dir) / "processed_users" / f"etl_{stamp}.jsonl"),
        "dlq": str(Path(run_dir) / "dlq" / f"invalid_users_{stamp}.jsonl"),
    }
    for key in ("processed", "dlq"):
        Path(files[key]).parent.mkdir(parents=True, exist_ok=True)
        Path(files[key]).write_bytes(b"")
    size = Path(raw_path).stat().st_size
    span_bytes = max(1 << 20, (size // records if records else APPROX_RECORD_BYTES) * batch_records)
    batches, reasons, types = [], Counter(), []
    for offset, length in split_spans(raw_path, span_bytes):
        out = transform_batch(departments, raw_path=raw_path, offset=offset, length=length,
                              processed_path=files["processed"], dlq_path=files["dlq"], source=source)
        reasons.update(out.pop("reasons"))
        types.append(out.pop("types"))
        batches.append(out)
    policy = settings.drift_policy(source)
    drift = check_schema(resolve_engine(database_block), run_id=run_id or str(current_run.id),
                         source=source, types=merge_types(types), policy=policy)
    if drift:
        log = logger.info if policy == "evolve" else logger.warning
        log("schema drift in %s (policy %s): %s", source, policy, "; ".join(describe(c) for c in drift))
    valid, invalid = sum(b["valid"] for b in batches), sum(b["invalid"] for b in batches)
    logger.info("transform: %d valid, %d invalid %s", valid, invalid, dict(reasons))
    return {"files": files, "batches": [{k: b[k] for k in ("raw", "processed", "dlq")} for b in batches],
            "valid": valid, "invalid": invalid, "reasons": dict(reasons), "drift": [describe(c) for c in drift],
            "work_seconds": sum(b["work_seconds"] for b in batches)}


@flow(name="persist")
def persist(run_id: str, files: dict[str, str], batches: list[dict], database_block: str | None = None,
            source: str = SOURCE) -> dict:
    """Staged files -> raw_users, processed_users, dlq_users; one transaction per batch."""
    engine = resolve_engine(database_block)
    totals: Counter = Counter()
    for spans in batches:
        totals.update(persist_batch(engine, run_id=run_id, source=source, files=files, spans=spans))
    counts = {k: totals.get(k, 0) for k in ("inserted", "updated", "unchanged", "raw_inserted", "dlq_inserted")}
    get_run_logger().info("persist: %s", counts)
    return counts | {"work_seconds": totals["work_seconds"]}


@flow(name="deliver")
def deliver(files: list[str], run_date: str) -> dict:
    """The run's JSONL files -> SFTP_REMOTE_BASE/<run date>/ (skipped, and said so, when SFTP_HOST is unset)."""
    from tasks.deliver import SftpTarget, deliver_files_task, remote_dir_for

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


def _record_failure(flow, flow_run, state) -> None:
    """on_failure / on_crashed: the run's row says what happened, so the API sees it."""
    engine = resolve_engine((flow_run.parameters or {}).get("database_block"))
    status = "crashed" if state.is_crashed() else "failed"
    runs.finish_run(engine, run_id=str(flow_run.id), status=status, error=(state.message or status)[:4000])


def _mark_stale_runs(engine, run_id: str) -> None:
    """Runs still 'running' in our table whose Prefect run is over (or unknown) crashed."""
    stale = runs.open_runs(engine, flow_name=FLOW_NAME, exclude=run_id)
    if not stale:
        return
    from prefect import get_client

    over = []
    with get_client(sync_client=True) as client:
        for other in stale:
            try:
                state = client.read_flow_run(other).state
            except Exception:
                state = None
            if state is None or state.is_final():
                over.append(other)
    runs.mark_crashed(engine, over, noticed_by=run_id)


@flow(name=FLOW_NAME, on_failure=[_record_failure], on_crashed=[_record_failure])
def users_etl(api_base: str | None = None, page_size: int | None = None, batch_records: int | None = None,
              deliver_files: bool = True, database_block: str | None = None) -> dict:
    """Parameters override the environment (USERS_API_BASE, USERS_PAGE_SIZE, USERS_BATCH_RECORDS, DATABASE_BLOCK)."""
    settings, logger = get_settings(), get_run_logger()
    run_id = str(current_run.id)
    engine = resolve_engine(database_block)
    runs.start_run(engine, run_id=run_id, flow_name=FLOW_NAME)
    _mark_stale_runs(engine, run_id)

    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%d_%H%M%S")
    run_dir = str((settings.data_dir / "runs" / run_id).resolve())
    page_size = page_size or settings.users_page_size
    batch_records = batch_records or settings.users_batch_records
    seconds: dict[str, float] = {}
    work: dict[str, float] = {}
    stage = "extract"

    def timed(name, fn, *args, **kwargs):
        """Run a stage; keep its wall time and the time its tasks spent working (the rest is orchestration)."""
        nonlocal stage
        stage = name
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 3)
        work[name] = round(out.pop("work_seconds"), 3)
        return out

    try:
        ex = timed("extract", extract, run_dir, stamp, api_base or settings.users_api_base, page_size, batch_records,
                   database_block)
        runs.update_run(engine, run_id=run_id, extracted=ex["records"])
        tr = timed("transform", transform, ex["raw_path"], run_dir, stamp, ex["records"], str(settings.departments_csv),
                   batch_records, SOURCE, database_block, run_id)
        runs.update_run(engine, run_id=run_id, valid=tr["valid"], invalid=tr["invalid"], files=tr["files"],
                        dlq_reasons=tr["reasons"], schema_drift="; ".join(tr["drift"]) or None)
        ps = timed("persist", persist, run_id, tr["files"], tr["batches"], database_block)
        runs.update_run(engine, run_id=run_id, stage_seconds=seconds, **ps)
        delivered = (timed("deliver", deliver, list(tr["files"].values()), started.date().isoformat())["delivered"]
                     if deliver_files else [])
    except BaseException:
        runs.update_run(engine, run_id=run_id, failed_stage=stage, stage_seconds=seconds)
        raise

    counts = {"extracted": ex["records"], "valid": tr["valid"], "invalid": tr["invalid"], **ps,
              "delivered_files": len(delivered), "delivered_bytes": sum(d["bytes"] for d in delivered)}
    anomalies = find_anomalies(
        engine, flow_name=FLOW_NAME, run_id=run_id, extracted=ex["records"], invalid=tr["invalid"],
        duration=(datetime.now(UTC) - started).total_seconds(), min_runs=settings.anomaly_min_runs,
        count_tolerance=settings.anomaly_count_tolerance, invalid_rate_tolerance=settings.anomaly_invalid_rate_tolerance,
        duration_factor=settings.anomaly_duration_factor,
    )
    if anomalies:
        logger.warning("anomalous run: %s", "; ".join(anomalies))
        runs.update_run(engine, run_id=run_id, anomalies="; ".join(anomalies))
        if settings.anomaly_fail:
            runs.update_run(engine, run_id=run_id, failed_stage="anomaly-check", stage_seconds=seconds, **counts)
            raise AnomalyError("anomalous run (ANOMALY_FAIL is set): " + "; ".join(anomalies))
    runs.finish_run(engine, run_id=run_id, status="completed", stage_seconds=seconds, delivered=delivered, **counts)
    summary = {"run_id": run_id, "status": "completed", "counts": counts, "stage_seconds": seconds,
               "anomalies": anomalies, "schema_drift": tr["drift"],
               "stage_work_seconds": work,
               "files": tr["files"], "dlq_reasons": tr["reasons"], "delivered": delivered,
               "database": engine.url.render_as_string(hide_password=True)}
    publish_run_artifacts(summary)
    logger.info("users-etl done: %s", counts)
    return summary
