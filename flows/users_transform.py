"""users-etl's `transform` stage: each staged batch through the rules (processed + DLQ JSONL), posted to the
`transformed` manifest for persist; each source's schema checked for drift once it is all in."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_run

from models.db import resolve_engine
from models.settings import DEFAULT_BATCH_RECORDS, get_settings
from tasks.drift import check_sources
from tasks.staging import handoff
from tasks.staging.batches import StagedInput, TransformResult
from tasks.staging.files import file_sha256
from tasks.users.stages import BatchRelay, TransformTally, run_files, transform_input
from tasks.users.transform import load_departments


@flow(name="transform")
def transform(
    extracted: str,
    run_dir: str,
    file_time: str,
    departments_csv: str,
    batch_records: int = DEFAULT_BATCH_RECORDS,
    database_block: str | None = None,
    run_id: str | None = None,
    manifest: str | None = None,
    files_root: str | None = None,
) -> TransformResult:
    """Staged raw JSONL -> processed + DLQ JSONL under `files_root` (default `run_dir`), batch by batch as
    extract posts them to `extracted`. A source whose drift policy is `fail` has its batches posted only after
    its schema check."""
    settings, logger = get_settings(), get_run_logger()
    if manifest:
        handoff.mark_started(manifest)
    departments = load_departments(departments_csv, file_sha256(departments_csv))
    files, tally = run_files(files_root or run_dir, file_time), TransformTally()
    relay = BatchRelay(manifest, settings.drift_policy)
    for entry in handoff.follow(extracted, StagedInput, stage="transform", run_dir=run_dir):
        for batch in transform_input(entry, departments, files, batch_records, tally):
            relay.hand_on(batch)
    drift = check_sources(
        resolve_engine(database_block),
        tally.types,
        policy=settings.drift_policy,
        run_id=run_id or str(current_run.id),
        api_source=settings.users_api_name,
        logger=logger,
    )
    relay.release()
    logger.info("transform: %d valid, %d invalid %s", tally.valid, tally.invalid, dict(tally.reasons))
    return TransformResult(
        files={"processed": files.processed, "dlq": files.dlq},
        valid=tally.valid,
        invalid=tally.invalid,
        reasons=dict(tally.reasons),
        drift=drift.described,
        observed_schema=drift.observed,
        schema_changes=drift.changes,
    )
