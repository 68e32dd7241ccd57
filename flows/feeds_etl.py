"""`feeds-etl`: RSS/Atom feeds -> raw_feed_items, feed_items, dlq_feed_items. Extract -> transform -> persist
-> deliver, each a child flow run (`feeds-extract`, `feeds-transform`, `feeds-persist`, and users-etl's own
`deliver`). Stages hand each other the dataclasses of `tasks/feeds_batches.py` (paths and spans of staged
files, never the data); the work is in `tasks/`.

A feed that fails (4xx, not a feed, still 5xx after the retries) is recorded in its checkpoint and named in
the run's error; the other feeds' items still go all the way through, then the run ends Failed."""

from __future__ import annotations

from collections import Counter

from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows.deliver import deliver, discard_delivery
from flows.runtime import RunStart, begin_run, parent_flow, record_failure
from models.db import resolve_engine
from models.settings import get_settings
from tasks import feeds, runs
from tasks.extract import feeds as feed_source
from tasks.extract.feeds import FeedOutcome
from tasks.extract.feeds.constants import MAX_PARALLEL_FETCHES, REQUEST_TIMEOUT_SECONDS
from tasks.feeds_batches import FeedFiles, FeedsExtractResult, FeedsPersistResult, FeedsTransformResult
from tasks.staging.batches import Span
from tasks.staging.files import file_size, reset, split_spans, within

FLOW_NAME = "feeds-etl"
APPROX_ITEM_BYTES = 2_000  # only sizes transform spans when nothing was extracted


class FeedsFailedError(RuntimeError):
    """Some feeds could not be read; the message names each URL and why."""


@flow(name="feeds-extract", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_FETCHES))  # type: ignore[arg-type]
def extract(
    run_id: str,
    files_root: str,
    file_time: str,
    feed_urls: list[str],
    database_block: str | None = None,
    request_timeout: float = REQUEST_TIMEOUT_SECONDS,
) -> FeedsExtractResult:
    """Every feed fetched concurrently (one task each, conditional GET); items staged as one raw JSONL file under
    `files_root` (the run's folder in the staging store).
    304s and failures are checkpointed here; fetched feeds once their items are persisted."""
    settings, logger = get_settings(), get_run_logger()
    engine = resolve_engine(database_block)
    fetch = feed_source.fetch_feed.with_options(
        retries=settings.extract_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.extract_retry_base_seconds),
    )
    validators = feed_source.load_validators(engine, feed_urls)
    parts_dir = within(files_root, "raw_feed_items", f"parts_{file_time}")
    futures = [
        fetch.submit(
            url, validators=validators[url], part_path=within(parts_dir, f"{i:05d}.jsonl"), timeout=request_timeout
        )
        for i, url in enumerate(feed_urls)
    ]
    wait(futures)
    outcomes: list[FeedOutcome] = []
    for url, future in zip(feed_urls, futures, strict=True):
        state = future.state
        if state.is_completed():
            outcomes.append(future.result())
        else:  # the outcome names the feed and its task's error
            outcomes.append(FeedOutcome.failed(url, state.result(raise_on_failure=False)))
    raw_path = within(files_root, "raw_feed_items", f"feed_records_{file_time}.jsonl")
    result = FeedsExtractResult(raw_path, feed_source.merge_parts(outcomes, parts_dir, raw_path))
    feed_source.record_outcomes(engine, run_id=run_id, outcomes=[o for o in result.feeds if o.status != "fetched"])
    for o in result.with_status("failed"):
        logger.error("feed failed: %s", o.error)
    by_status = dict(Counter(o.status for o in result.feeds))
    logger.info("extract: %d feeds (%s), %d items staged in %s", len(outcomes), by_status, result.records, raw_path)
    return result


@flow(name="feeds-transform")
def transform(
    raw_path: str, files_root: str, file_time: str, records: int, batch_records: int = 10_000
) -> FeedsTransformResult:
    """Raw JSONL -> processed + DLQ JSONL under `files_root`, span by span."""
    files = FeedFiles(
        raw=raw_path,
        processed=reset(within(files_root, "feed_items", f"feed_items_{file_time}.jsonl")),
        dlq=reset(within(files_root, "dlq", f"invalid_feed_items_{file_time}.jsonl")),
    )
    size = file_size(raw_path)
    span_bytes = max(1 << 20, (size // records if records else APPROX_ITEM_BYTES) * batch_records)
    result = FeedsTransformResult(
        files, [feeds.transform_batch(files, Span(*span)) for span in split_spans(raw_path, span_bytes)]
    )
    get_run_logger().info("transform: %d valid, %d invalid %s", result.valid, result.invalid, result.reasons)
    return result


@flow(name="feeds-persist")
def persist(
    run_id: str, transformed: FeedsTransformResult, fetched: list[FeedOutcome], database_block: str | None = None
) -> FeedsPersistResult:
    """Staged files -> raw_feed_items, feed_items, dlq_feed_items (one transaction per batch); then the
    fetched feeds' checkpoints take their new ETag / Last-Modified."""
    engine = resolve_engine(database_block)
    totals: Counter[str] = Counter()
    for batch in transformed.batches:
        totals.update(feeds.persist_batch(engine, run_id=run_id, files=transformed.files, batch=batch))
    feed_source.record_outcomes(engine, run_id=run_id, outcomes=fetched)
    result = FeedsPersistResult(**totals)
    get_run_logger().info("persist: %s", result.counts())
    return result


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
    run = begin_run(FLOW_NAME, database_block)
    engine, run_id, files_root, stages = run.engine, run.run_id, run.files_root, run.stages
    try:
        urls = _feed_list(feed_urls)
        ex = stages.run("extract", extract, run_id, files_root, run.file_time, urls, database_block, request_timeout)
        runs.update_run(engine, run_id=run_id, extracted=ex.records)
        tr = stages.run("transform", transform, ex.raw_path, files_root, run.file_time, ex.records, batch_records)
        files = tr.files.by_kind()
        runs.update_run(engine, run_id=run_id, valid=tr.valid, invalid=tr.invalid, files=files, dlq_reasons=tr.reasons)
        ps = stages.run("persist", persist, run_id, tr, ex.with_status("fetched"), database_block)
        runs.update_run(engine, run_id=run_id, stage_seconds=stages.seconds, **ps.counts())
        delivered = (
            stages.run(
                "deliver",
                deliver,
                list(files.values()),
                run.started.date().isoformat(),
                raw_files=[tr.files.raw],
                run_id=run_id,
                database_block=database_block,
            ).delivered
            if deliver_files
            else []
        )
    except BaseException:
        runs.update_run(engine, run_id=run_id, failed_stage=stages.stage, stage_seconds=stages.seconds)
        if deliver_files and stages.stage == "deliver":  # what it uploaded and did not publish goes
            discard_delivery(run_id)
        raise
    return finish(run, ex, tr, ps, delivered)


def finish(
    run: RunStart, ex: FeedsExtractResult, tr: FeedsTransformResult, ps: FeedsPersistResult, delivered: list[dict]
) -> dict:
    """The run recorded as completed, or failed naming the feeds that failed; its summary published and
    returned (or FeedsFailedError raised)."""
    engine, stages = run.engine, run.stages
    counts = runs.run_counts(
        extracted=ex.records, valid=tr.valid, invalid=tr.invalid, persisted=ps.counts(), delivered=delivered
    )
    outcomes = Counter(o.status for o in ex.feeds)
    feed_counts = {
        "feeds": len(ex.feeds),
        "feeds_fetched": outcomes["fetched"],
        "feeds_not_modified": outcomes["not_modified"],
        "feeds_failed": outcomes["failed"],
    }
    error = ex.error()
    status = "failed" if error else "completed"
    runs.finish_run(
        engine,
        run_id=run.run_id,
        status=status,
        error=error,
        stage_seconds=stages.seconds,
        failed_stage="extract" if error else None,
        **counts,
    )
    summary = {
        "run_id": run.run_id,
        "status": status,
        "counts": counts | feed_counts,
        "feeds": [o.as_report() for o in ex.feeds],
        "stage_seconds": stages.seconds,
        "stage_work_seconds": stages.work,
        "files": tr.files.by_kind(),
        "dlq_reasons": tr.reasons,
        "delivered": delivered,
        "error": error,
        "database": engine.url.render_as_string(hide_password=True),
    }
    feeds.publish_artifacts(summary)
    if error:
        raise FeedsFailedError(error)
    get_run_logger().info("feeds-etl done: %s", counts | feed_counts)
    return summary
