"""The whole API extraction of a run: resume at the checkpoint, fetch batch after batch into one staged file,
post each batch to the manifest as soon as it is on disk, and say what the walk found."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from models.settings import Settings
from tasks.extract.dummyjson.checkpoint import CheckpointWriter, begin_extract, finish_extract
from tasks.extract.dummyjson.constants import SOURCE
from tasks.extract.dummyjson.pages import fetch_batch, walk_findings
from tasks.staging import handoff
from tasks.staging.batches import ExtractResult, Span, StagedInput


@dataclass(frozen=True)
class ApiSource:
    """Where and how the users API is read (USERS_API_BASE and its settings, or the flow's parameters)."""

    base_url: str
    page_size: int
    batch_records: int
    timeout: float = 30.0
    max_retry_after: float = 120.0
    retries: int = 4
    retry_base_seconds: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings, *, base_url: str, page_size: int, batch_records: int) -> ApiSource:
        return cls(
            base_url=base_url,
            page_size=page_size,
            batch_records=batch_records,
            timeout=settings.users_request_timeout,
            max_retry_after=settings.max_retry_after_seconds,
            retries=settings.extract_retries,
            retry_base_seconds=settings.extract_retry_base_seconds,
        )

    @property
    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: the same source paged the same way."""
        return f"{self.base_url}|{self.page_size}"


def extract_api(
    engine: Engine,
    source: ApiSource,
    *,
    run_id: str,
    run_dir: str,
    file_time: str,
    manifest: str | None,
    logger: logging.Logger | logging.LoggerAdapter,
) -> ExtractResult:
    """The API's pages into `raw_users/records_<file_time>.jsonl` (or the interrupted run's file, resumed at its
    checkpoint); what that run staged goes through the stages again. Raises once its checkpoint is stored."""
    as_of = datetime.now(UTC).isoformat()
    plan = begin_extract(
        engine,
        run_id=run_id,
        fingerprint=source.fingerprint,
        new_path=Path(run_dir) / "raw_users" / f"records_{file_time}.jsonl",
    )
    if plan.resumed:
        logger.info(
            "resuming the interrupted extraction at skip=%d (%d records already staged in %s)",
            plan.skip,
            plan.records,
            plan.staged_path,
        )
    skip, offset, records = plan.skip, plan.offset, plan.records

    def staged(span: Span, count: int) -> StagedInput:
        return StagedInput(source=SOURCE, as_of=as_of, raw_path=plan.staged_path, span=span, records=count)

    if manifest and plan.offset:
        handoff.post(manifest, staged(Span(0, plan.offset), plan.records))
    try:
        # the last position given is stored on leaving the block, before the outcome below
        with CheckpointWriter(engine, total=plan.total) as checkpoints:
            while True:
                handoff.check_cancelled(run_dir, "extract")
                got = fetch_batch(
                    checkpoints,
                    base_url=source.base_url,
                    page_size=source.page_size,
                    skip=skip,
                    max_records=source.batch_records,
                    staged_path=plan.staged_path,
                    offset=offset,
                    records_before=records,
                    timeout=source.timeout,
                    max_retry_after=source.max_retry_after,
                    retries=source.retries,
                    retry_base_seconds=source.retry_base_seconds,
                    run_dir=run_dir,
                )
                if manifest and got.records:
                    handoff.post(manifest, staged(Span(offset, got.offset - offset), got.records))
                skip, offset, records = got.next_skip, got.offset, records + got.records
                if got.done:
                    break
    except Exception as exc:
        finish_extract(engine, error=f"{type(exc).__name__}: {exc}")
        logger.error("extract stopped at skip=%d; the checkpoint keeps it for the next run", skip)
        raise
    finish_extract(engine)
    logger.info("extract: %d API records staged in %s", records, plan.staged_path)
    findings = walk_findings(checkpoints.totals, records)
    if findings:  # the walk is no complete picture of the source: persist marks no absent user deleted
        logger.warning("extract: %s; users absent from this extraction are not marked deleted", "; ".join(findings))
    return ExtractResult(
        api=staged(Span(0, offset), records), resumed_from=plan.skip if plan.resumed else None, findings=findings
    )
