"""A users API's whole extraction in a run: resume at its checkpoint, fetch batch after batch into one staged
file, post each batch to the manifest as soon as it is on disk, and say what the walk found."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from models.settings import Settings, get_settings
from models.sources import DEFAULT_NAME, ApiSourceConfig
from tasks.extract.users_api.auth import client_auth
from tasks.extract.users_api.checkpoint import CheckpointWriter, begin_extract, finish_extract
from tasks.extract.users_api.pages import Fetching, fetch_batch, walk_findings
from tasks.extract.users_api.paging import Paging, WalkRange
from tasks.staging import files, handoff
from tasks.staging.batches import ApiWalk, Span, StagedInput


@dataclass(frozen=True)
class ApiSource:
    """One users API as a run reads it: its configuration, and the run's batch size and client limits."""

    config: ApiSourceConfig
    batch_records: int
    timeout: float = 30.0
    max_retry_after: float = 120.0
    retries: int = 4
    retry_base_seconds: float = 2.0
    part: WalkRange | None = None  # a shard's range of the walk (None: the whole walk)
    part_label: str | None = None  # the shard's name, e.g. "shard-2-of-4": its checkpoint's

    @classmethod
    def from_settings(cls, settings: Settings, config: ApiSourceConfig, *, batch_records: int) -> ApiSource:
        return cls(
            config=config,
            batch_records=batch_records,
            timeout=settings.users_request_timeout,
            max_retry_after=settings.max_retry_after_seconds,
            retries=settings.extract_retries,
            retry_base_seconds=settings.extract_retry_base_seconds,
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def checkpoint_key(self) -> str:
        """A shard keeps a checkpoint of its own: a killed shard resumes its range, the others are untouched."""
        return f"{self.config.checkpoint_key}#{self.part_label}" if self.part_label else self.config.checkpoint_key

    @property
    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed; a range of the walk only the same range."""
        part = self.part
        return self.config.fingerprint + (f"|{part.start}-{part.stop if part.stop is not None else ''}" if part else "")

    def staged_name(self, file_time: str) -> str:
        """The raw file of a run: `records_<time>.jsonl` for the default source, `records_<name>_<time>` else."""
        return f"records_{file_time}.jsonl" if self.name == DEFAULT_NAME else f"records_{self.name}_{file_time}.jsonl"


def fetching_for(source: ApiSource) -> Fetching:
    """How the source's pages (its range's, for a shard) are fetched; a missing credential fails here, before
    any request."""
    config = source.config
    return Fetching(
        paging=Paging(config, source.part),
        auth=client_auth(config, config.secret_value(get_settings())),
        secret_setting=config.secret_setting,
        timeout=source.timeout,
        max_retry_after=source.max_retry_after,
        retries=source.retries,
        retry_base_seconds=source.retry_base_seconds,
    )


def extract_api(
    engine: Engine,
    source: ApiSource,
    *,
    run_id: str,
    run_dir: str,
    file_time: str,
    manifest: str | None,
    logger: logging.Logger | logging.LoggerAdapter,
    files_root: str | None = None,
) -> ApiWalk:
    """The source's pages into `raw_users/<staged name>` under `files_root` (a location: the run's folder in
    the staging store; default `run_dir`), or the interrupted run's file, resumed at its checkpoint; what that
    run staged goes through the stages again. Raises once its checkpoint is stored."""
    config = source.config
    fetching = fetching_for(source)
    paging = fetching.paging
    as_of = datetime.now(UTC).isoformat()
    key = source.checkpoint_key
    plan = begin_extract(
        engine,
        run_id=run_id,
        fingerprint=source.fingerprint,
        new_path=files.within(files_root or run_dir, "raw_users", source.staged_name(file_time)),
        key=key,
        first=paging.first(),
    )
    if plan.resumed:
        logger.info(
            "%s: resuming the interrupted extraction at page position %d (%d records already staged in %s)",
            source.name,
            plan.position.number,
            plan.records,
            plan.staged_path,
        )
    at, offset, records = plan.position, plan.offset, plan.records

    def staged(span: Span, count: int) -> StagedInput:
        return StagedInput(
            source=source.name, as_of=as_of, raw_path=plan.staged_path, span=span, records=count, fields=config.fields
        )

    if manifest and plan.offset:
        handoff.post(manifest, staged(Span(0, plan.offset), plan.records))
    try:
        # the last position given is stored on leaving the block, before the outcome below
        with CheckpointWriter(engine, total=plan.total, key=key) as checkpoints:
            while True:
                handoff.check_cancelled(run_dir, "extract")
                got = fetch_batch(
                    checkpoints,
                    fetching,
                    position=at,
                    max_records=source.batch_records,
                    staged_path=plan.staged_path,
                    offset=offset,
                    records_before=records,
                    run_dir=run_dir,
                )
                if manifest and got.records:
                    handoff.post(manifest, staged(Span(offset, got.offset - offset), got.records))
                offset, records = got.offset, records + got.records
                if got.next is None:
                    break
                at = got.next
    except Exception as exc:
        finish_extract(engine, error=f"{type(exc).__name__}: {exc}", key=key)
        logger.error("%s: extract stopped at page position %d; the checkpoint keeps it", source.name, at.number)
        raise
    finish_extract(engine, key=key)
    logger.info("extract: %d records of %s staged in %s", records, source.name, plan.staged_path)
    findings = walk_findings(checkpoints.totals, records, source.part)
    if findings:  # the walk is no complete picture of the source: persist marks no absent user deleted
        logger.warning("extract %s: %s; users absent from it are not marked deleted", source.name, "; ".join(findings))
    return ApiWalk(
        staged=staged(Span(0, offset), records),
        resumed=plan.resumed,
        findings=findings,
        partial=source.part is not None,
        totals=checkpoints.totals,
    )
