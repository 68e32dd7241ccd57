"""`users-shard`: one shard of a sharded `users-etl` run, taken by any worker of the pool. It extracts its
range of the API's page walk (the last shard also the other inputs, CSV drops), transforms and persists it
under the run's id, then leaves its files, its API ids and its result in the staging store (STAGING_URL) for
the parent, which checks the whole run, delivers and records it (flows/users_shards.py)."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_run

from flows.users_extract import extract
from flows.users_persist import persist
from flows.users_transform import transform
from models.db import resolve_engine
from models.settings import ConfigError, get_settings
from models.sources import api_sources
from tasks.extract.users_api import ApiSource
from tasks.extract.users_api.paging import WalkRange
from tasks.extract.users_api.shards import shard_source
from tasks.shard_resume import mirror_raw, restore_raw
from tasks.shards import SEEN_IDS, Pulse, ShardResult, shard_prefix
from tasks.staging import handoff
from tasks.staging.batches import ExtractResult, PersistResult, TransformResult
from tasks.staging.files import append_frame
from tasks.staging.runner import StageRunner
from tasks.staging.store import StagingStore
from tasks.users.sync import staged_ids

FLOW_NAME = "users-shard"


@flow(name=FLOW_NAME)
def users_shard(
    run_id: str,
    index: int,
    count: int,
    start: int,
    stop: int | None,
    file_time: str,
    api_base: str | None = None,
    page_size: int | None = None,
    batch_records: int | None = None,
    database_block: str | None = None,
    csv_dir: str | None = None,
) -> dict:
    """Shard `index` (0-based) of `count` of users-etl run `run_id`: the records from `start` up to `stop` (None:
    to the end). Started by the parent (never by hand); a shard started again resumes at its checkpoint."""
    settings, logger = get_settings(), get_run_logger()
    batch_records = batch_records or settings.users_batch_records
    configured = api_sources(settings, base_url=api_base, page_size=page_size)
    if not configured:
        raise ConfigError("USERS_API_BASE is not set: point it at the users API to read (or pass api_base)")
    base = ApiSource.from_settings(settings, configured[0], batch_records=batch_records)
    source = shard_source(base, WalkRange(start, stop), index, count)
    store, prefix, me = StagingStore.from_settings(settings), shard_prefix(run_id, index), str(current_run.id)
    run_dir = str((settings.data_dir / "runs" / run_id / f"shard-{index + 1}").resolve())
    last = index == count - 1
    t0 = time.perf_counter()
    with Pulse(store, prefix, me):
        restored = restore_raw(
            resolve_engine(database_block),
            store,
            prefix,
            key=source.checkpoint_key,
            fingerprint=source.fingerprint,
            start=start,
            local_path=Path(run_dir) / "raw_users" / source.staged_name(file_time),
        )
        if restored:
            logger.info("%s: %d records of its range restored from the staging store", source.part_label, restored)
        mirror = (store, prefix)
        ex, tr, ps, stages = _stages(
            run_dir, file_time, source, batch_records, database_block, csv_dir, run_id, last, mirror
        )
        files = _upload(store, prefix, run_dir, ex, tr)
        seen = _upload_ids(store, prefix, run_dir, ps, source.name)
        result = ShardResult(
            index=index,
            count=count,
            start=start,
            stop=stop,
            flow_run_id=me,
            records=ex.records,
            valid=tr.valid,
            invalid=tr.invalid,
            reasons=tr.reasons,
            persisted=ps.counts,
            sources=ps.sources,
            observed_schema=tr.observed_schema,
            findings=ex.findings,
            totals=ex.apis[0].totals,
            files=files,
            seen_ids=seen,
            stage_seconds=stages.seconds,
            seconds=round(time.perf_counter() - t0, 3),
            api_source=source.name,
            raw_bytes=ex.apis[0].staged.span.length,
            as_of=ex.apis[0].staged.as_of,
            others=[
                {"kind": f"{s.source}:{s.label or n}", "source": s.source, "label": s.label, "records": s.records}
                for n, s in enumerate(ex.others)
            ],
        )
        store.write_bytes(f"{prefix}/result.json", result.to_json())  # last: the shard is done once it is there
    logger.info(
        "%s of run %s: %d records, %d valid, %d invalid", source.part_label, run_id, ex.records, tr.valid, tr.invalid
    )
    return result.summary()


def _stages(
    run_dir: str,
    file_time: str,
    source: ApiSource,
    batch_records: int,
    database_block: str | None,
    csv_dir: str | None,
    run_id: str,
    plugins: bool,
    mirror: tuple[StagingStore, str],
) -> tuple[ExtractResult, TransformResult, PersistResult, StageRunner]:
    """Extract, transform and persist streaming into each other, as in an unsharded run; extract's batches also
    copied to the staging store (`mirror`: the store and the shard's prefix) as they come."""
    settings, stages = get_settings(), StageRunner(run_dir)
    handoff.reopen(run_dir)
    extracted = handoff.open_manifest(Path(run_dir) / "stages" / "extracted.jsonl")
    transformed = handoff.open_manifest(Path(run_dir) / "stages" / "transformed.jsonl")
    csv = str(csv_dir or settings.users_csv_dir or "") or None
    try:
        stages.start(
            "extract", extract, run_dir, file_time, [source], database_block, csv, manifest=extracted, plugins=plugins
        )
        stages.start(
            "transform",
            transform,
            extracted,
            run_dir,
            file_time,
            str(settings.departments_csv),
            batch_records,
            database_block,
            run_id,
            manifest=transformed,
            after=("extract", extracted),
        )
        stages.start(
            "persist",
            persist,
            run_id,
            transformed,
            extracted,
            run_dir,
            database_block,
            after=("transform", transformed),
        )
        stages.start("mirror", mirror_raw, extracted, *mirror, after=("extract", extracted))
        ex, tr, ps = stages.result("extract"), stages.result("transform"), stages.result("persist")
        stages.result("mirror")
    except BaseException:
        handoff.cancel(run_dir, handoff.RUN)
        raise
    finally:
        stages.close()
        handoff.forget(run_dir)
    return ex, tr, ps, stages


def _upload(store: StagingStore, prefix: str, run_dir: str, ex: ExtractResult, tr: TransformResult) -> dict[str, str]:
    """The shard's files into the store: kind -> their path under the shard's folder, which is also their key
    under `prefix` (raw, processed, dlq, then each other input's raw file). The API's raw lines are there
    already, mirrored batch by batch (tasks/shard_resume.py)."""
    local = {"raw": str(ex.apis[0].staged.raw_path), **tr.files}
    local |= {f"{s.source}:{s.label or n}": s.raw_path for n, s in enumerate(ex.others) if s.raw_path}
    files = {kind: _relative(path, run_dir) for kind, path in local.items()}
    for kind, path in local.items():
        if kind != "raw":
            store.put_file(path, f"{prefix}/{files[kind]}")
    return files


def _relative(path: str, run_dir: str) -> str:
    """A file's path under the shard's folder (a walk resumed from an earlier run's file: under raw_users/)."""
    resolved = Path(path).resolve()
    return (
        resolved.relative_to(run_dir) if resolved.is_relative_to(run_dir) else Path("raw_users", resolved.name)
    ).as_posix()


def _upload_ids(store: StagingStore, prefix: str, run_dir: str, ps: PersistResult, source: str) -> str:
    """The ids of the API's records in the shard's range (every line, valid or not), for the deletion check."""
    ids = staged_ids([(path, list(span)) for path, span in ps.key_spans.get(source, [])])
    path = Path(run_dir) / "stages" / SEEN_IDS
    path.unlink(missing_ok=True)
    append_frame(path, pl.DataFrame({"id": ids}))
    store.put_file(path, f"{prefix}/{SEEN_IDS}")
    return f"{prefix}/{SEEN_IDS}"
