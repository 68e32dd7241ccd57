"""`feeds-etl`: RSS/Atom feeds -> raw_feed_items, feed_items, dlq_feed_items. Extract -> transform -> persist
-> deliver, each a child flow run (`feeds-extract`, `feeds-transform`, `feeds-persist`, and users-etl's own
`deliver`). Stages hand each other paths to staged files and small summaries; the work is in `tasks/`.

A feed that fails (4xx, not a feed, still 5xx after the retries) is recorded in its checkpoint and named in
the run's error; the other feeds' items still go all the way through, then the run ends Failed."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows.deliver import deliver, discard_delivery
from flows.runtime import begin_run, parent_flow, record_failure
from models.db import resolve_engine
from models.settings import get_settings
from tasks import feeds, runs
from tasks.extract import feeds as feed_source
from tasks.extract.errors import SourceError, TransientSourceError
from tasks.extract.feeds.constants import MAX_PARALLEL_FETCHES, REQUEST_TIMEOUT_SECONDS
from tasks.staging.files import split_spans

FLOW_NAME = "feeds-etl"
APPROX_ITEM_BYTES = 2_000  # only sizes transform spans when nothing was extracted


class FeedsFailedError(RuntimeError):
    """Some feeds could not be read; the message names each URL and why."""


def _failure_message(url: str, exc: BaseException | None) -> str:
    if isinstance(exc, (SourceError, TransientSourceError)):
        return str(exc)
    return f"{url}: {type(exc).__name__}: {exc}" if exc is not None else f"{url}: failed"


def _merge_parts(parts: list[str], target: Path) -> None:
    """The feeds' staged parts, in feed order, as the run's one raw file (bytes copied, nothing parsed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out)


@flow(name="feeds-extract", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_FETCHES))  # type: ignore[arg-type]
def extract(
    run_id: str,
    run_dir: str,
    stamp: str,
    feed_urls: list[str],
    database_block: str | None = None,
    request_timeout: float = REQUEST_TIMEOUT_SECONDS,
) -> dict:
    """Every feed fetched concurrently (one task each, conditional GET); items staged as one raw JSONL file.
    304s and failures are checkpointed here; fetched feeds once their items are persisted."""
    settings, logger = get_settings(), get_run_logger()
    engine = resolve_engine(database_block)
    fetch = feed_source.fetch_feed.with_options(
        retries=settings.extract_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.extract_retry_base_seconds),
    )
    validators = feed_source.load_validators(engine, feed_urls)
    parts_dir = Path(run_dir) / "raw_feed_items" / f"parts_{stamp}"
    futures = [
        fetch.submit(
            url, validators=validators[url], part_path=str(parts_dir / f"{i:05d}.jsonl"), timeout=request_timeout
        )
        for i, url in enumerate(feed_urls)
    ]
    wait(futures)
    outcomes = []
    for url, future in zip(feed_urls, futures, strict=True):
        state = future.state
        if state.is_completed():
            outcomes.append(future.result())
        else:
            exc = state.result(raise_on_failure=False)
            outcomes.append(
                {
                    "url": url,
                    "status": "failed",
                    "items": 0,
                    "error": _failure_message(url, exc if isinstance(exc, BaseException) else None),
                }
            )
    raw_path = Path(run_dir) / "raw_feed_items" / f"feed_records_{stamp}.jsonl"
    _merge_parts([o["path"] for o in outcomes if o["status"] == "fetched"], raw_path)
    shutil.rmtree(parts_dir, ignore_errors=True)
    for o in outcomes:
        if o["status"] == "fetched":
            o["path"] = str(raw_path)
    feed_source.record_outcomes(engine, run_id=run_id, outcomes=[o for o in outcomes if o["status"] != "fetched"])
    for o in outcomes:
        if o["status"] == "failed":
            logger.error("feed failed: %s", o["error"])
    records = sum(o["items"] for o in outcomes)
    by_status = Counter(o["status"] for o in outcomes)
    logger.info("extract: %d feeds (%s), %d items staged in %s", len(outcomes), dict(by_status), records, raw_path)
    return {
        "raw_path": str(raw_path),
        "records": records,
        "feeds": outcomes,
    }


@flow(name="feeds-transform")
def transform(raw_path: str, run_dir: str, stamp: str, records: int, batch_records: int = 10_000) -> dict:
    """Raw JSONL -> processed + DLQ JSONL, span by span."""
    logger = get_run_logger()
    files = {
        "raw": raw_path,
        "processed": str(Path(run_dir) / "feed_items" / f"feed_items_{stamp}.jsonl"),
        "dlq": str(Path(run_dir) / "dlq" / f"invalid_feed_items_{stamp}.jsonl"),
    }
    for key in ("processed", "dlq"):
        Path(files[key]).parent.mkdir(parents=True, exist_ok=True)
        Path(files[key]).write_bytes(b"")
    size = Path(raw_path).stat().st_size
    span_bytes = max(1 << 20, (size // records if records else APPROX_ITEM_BYTES) * batch_records)
    batches: list[dict] = []
    reasons: Counter[str] = Counter()
    for offset, length in split_spans(raw_path, span_bytes):
        out = feeds.transform_batch(
            raw_path=raw_path, offset=offset, length=length, processed_path=files["processed"], dlq_path=files["dlq"]
        )
        reasons.update(out.pop("reasons"))
        batches.append(out)
    valid, invalid = sum(b["valid"] for b in batches), sum(b["invalid"] for b in batches)
    logger.info("transform: %d valid, %d invalid %s", valid, invalid, dict(reasons))
    return {
        "files": files,
        "batches": [{k: b[k] for k in ("raw", "processed", "dlq")} for b in batches],
        "valid": valid,
        "invalid": invalid,
        "reasons": dict(reasons),
    }


@flow(name="feeds-persist")
def persist(
    run_id: str, files: dict[str, str], batches: list[dict], fetched: list[dict], database_block: str | None = None
) -> dict:
    """Staged files -> raw_feed_items, feed_items, dlq_feed_items (one transaction per batch); then the
    fetched feeds' checkpoints take their new ETag / Last-Modified."""
    engine = resolve_engine(database_block)
    totals: Counter = Counter()
    for spans in batches:
        counts = feeds.persist_batch(engine, run_id=run_id, files=files, spans=spans)
        totals.update(counts)
    feed_source.record_outcomes(engine, run_id=run_id, outcomes=fetched)
    counts = {k: totals.get(k, 0) for k in ("inserted", "updated", "unchanged", "raw_inserted", "dlq_inserted")}
    get_run_logger().info("persist: %s", counts)
    return counts


def _feed_list(feed_urls: list[str] | None) -> list[str]:
    """The parameter, else FEED_URLS; trimmed, duplicates dropped, order kept."""
    urls = feed_urls if feed_urls is not None else get_settings().feed_urls
    urls = list(dict.fromkeys(u.strip() for u in urls if u and u.strip()))
    if not urls:
        raise ValueError("no feeds to read: set FEED_URLS (comma-separated) or pass feed_urls")
    return urls


@parent_flow(name=FLOW_NAME, on_failure=[record_failure], on_crashed=[record_failure])
def feeds_etl(
    feed_urls: list[str] | None = None,
    batch_records: int = 10_000,
    deliver_files: bool = True,
    request_timeout: float = REQUEST_TIMEOUT_SECONDS,
    database_block: str | None = None,
) -> dict:
    """Parameters override the environment (FEED_URLS, DATABASE_BLOCK)."""
    logger = get_run_logger()
    run = begin_run(FLOW_NAME, database_block)
    engine, run_id, started, stamp, run_dir, stages = (
        run.engine,
        run.run_id,
        run.started,
        run.stamp,
        run.run_dir,
        run.stages,
    )
    seconds, work = stages.seconds, stages.work

    try:
        urls = _feed_list(feed_urls)
        ex = stages.run("extract", extract, run_id, run_dir, stamp, urls, database_block, request_timeout)
        runs.update_run(engine, run_id=run_id, extracted=ex["records"])
        tr = stages.run("transform", transform, ex["raw_path"], run_dir, stamp, ex["records"], batch_records)
        runs.update_run(
            engine,
            run_id=run_id,
            valid=tr["valid"],
            invalid=tr["invalid"],
            files=tr["files"],
            dlq_reasons=tr["reasons"],
        )
        fetched = [o for o in ex["feeds"] if o["status"] == "fetched"]
        ps = stages.run("persist", persist, run_id, tr["files"], tr["batches"], fetched, database_block)
        runs.update_run(engine, run_id=run_id, stage_seconds=seconds, **ps)
        delivered = (
            stages.run(
                "deliver",
                deliver,
                list(tr["files"].values()),
                started.date().isoformat(),
                raw_files=[tr["files"]["raw"]],
                run_id=run_id,
                database_block=database_block,
            )["delivered"]
            if deliver_files
            else []
        )
    except BaseException:
        runs.update_run(engine, run_id=run_id, failed_stage=stages.stage, stage_seconds=seconds)
        if deliver_files and stages.stage == "deliver":  # what it uploaded and did not publish goes
            discard_delivery(run_id)
        raise

    outcomes = Counter(o["status"] for o in ex["feeds"])
    failed = [o for o in ex["feeds"] if o["status"] == "failed"]
    counts = {
        "extracted": ex["records"],
        "valid": tr["valid"],
        "invalid": tr["invalid"],
        **ps,
        "delivered_files": len(delivered),
        "delivered_bytes": sum(d["bytes"] for d in delivered),
    }
    feed_counts = {
        "feeds": len(ex["feeds"]),
        "feeds_fetched": outcomes["fetched"],
        "feeds_not_modified": outcomes["not_modified"],
        "feeds_failed": outcomes["failed"],
    }
    error = (
        f"{len(failed)} of {len(ex['feeds'])} feeds failed: " + "; ".join(o["error"] for o in failed)
        if failed
        else None
    )
    status = "failed" if failed else "completed"
    runs.finish_run(
        engine,
        run_id=run_id,
        status=status,
        error=error,
        stage_seconds=seconds,
        failed_stage="extract" if failed else None,
        **counts,
    )
    summary = {
        "run_id": run_id,
        "status": status,
        "counts": counts | feed_counts,
        "feeds": ex["feeds"],
        "stage_seconds": seconds,
        "stage_work_seconds": work,
        "files": tr["files"],
        "dlq_reasons": tr["reasons"],
        "delivered": delivered,
        "error": error,
        "database": engine.url.render_as_string(hide_password=True),
    }
    feeds.publish_artifacts(summary)
    if failed:
        raise FeedsFailedError(error)
    logger.info("feeds-etl done: %s", counts | feed_counts)
    return summary
