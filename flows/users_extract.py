"""users-etl's `extract` stage: every users API's pages, then every USERS_SOURCES plug-in's new inputs, staged
as raw JSONL; each batch posted to the `extracted` manifest as soon as it is on disk."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_run

from models.db import resolve_engine
from models.settings import get_settings
from tasks.extract import stage_plugins
from tasks.extract.users_api import ApiSource, extract_api
from tasks.staging import handoff
from tasks.staging.batches import ExtractResult


@flow(name="extract")
def extract(
    run_dir: str,
    file_time: str,
    sources: list[ApiSource],
    database_block: str | None = None,
    csv_dir: str | None = None,
    manifest: str | None = None,
    plugins: bool = True,
    files_root: str | None = None,
) -> ExtractResult:
    """Sources -> staged raw JSONL files under `files_root` (the run's folder in the staging store; default
    `run_dir`, which holds the stages' manifests). Each API is paged and checkpointed after every page (an interrupted
    run resumes there); CSV files in `csv_dir` are staged when new or changed (unless `plugins` is false: the
    shards of a sharded run but its last)."""
    settings, logger = get_settings(), get_run_logger()
    if manifest:
        handoff.mark_started(manifest)
    engine, run_id = resolve_engine(database_block), str(current_run.id)
    result = ExtractResult()
    for source in sources:
        walk = extract_api(
            engine,
            source,
            run_id=run_id,
            run_dir=run_dir,
            file_time=file_time,
            manifest=manifest,
            logger=logger,
            files_root=files_root,
        )
        result.apis.append(walk)
    if csv_dir:
        settings = settings.model_copy(update={"users_csv_dir": Path(csv_dir)})
    if plugins:
        result.others = stage_plugins(
            engine,
            settings,
            run_dir=run_dir,
            file_time=file_time,
            manifest=manifest,
            logger=logger,
            files_root=files_root,
        )
    logger.info("extract: %d staged input(s) besides the APIs", len(result.others))
    if manifest:  # persist marks users absent from an API deleted only after its complete walk
        handoff.close(manifest, records=result.records, complete_sources=result.complete_sources)
    return result
