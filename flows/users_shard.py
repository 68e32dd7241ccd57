"""`users-shard`: one shard of a sharded `users-etl` run, taken by any worker of the pool. It extracts its
range of the API's page walk (the last shard also the other inputs, CSV drops), transforms and persists it
under the run's id, staging its files in its folder of the staging store (STAGING_URL), then leaves its API ids
and its result beside them for the parent, which checks the whole run, delivers and records it
(flows/users_shards.py). A shard started again on any worker resumes its walk from the file its checkpoint
names in the store."""

from __future__ import annotations

import io
import time

import polars as pl
from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_run

from flows.users_stream import Streaming, run_files, start_streaming
from models.settings import ConfigError, get_settings
from models.sources import api_sources
from tasks.extract.users_api import ApiSource
from tasks.extract.users_api.paging import WalkRange
from tasks.extract.users_api.shards import shard_source
from tasks.shards import SEEN_IDS, Pulse, ShardResult, shard_prefix
from tasks.staging import handoff
from tasks.staging.batches import ExtractResult, PersistResult, TransformResult
from tasks.staging.parts import staging_store
from tasks.staging.runner import StageRunner
from tasks.staging.store import StagingError, StagingStore
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
    store, prefix, me = staging_store(), shard_prefix(run_id, index), str(current_run.id)
    # this host's folder holds the stages' manifests; the staged files go to the store
    run_dir = str((settings.data_dir / "runs" / run_id / f"shard-{index + 1}").resolve())
    on = Streaming(run_id, run_dir, store.location(prefix), file_time, batch_records, database_block, csv_dir)
    t0 = time.perf_counter()
    with Pulse(store, prefix, me):
        ex, tr, ps, stages = _stages(on, source, plugins=index == count - 1)
        files = _keys(store, ex, tr)
        seen = _upload_ids(store, prefix, ps, source.name)
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
            raw_bytes=ex.apis[0].staged.span.length,
            as_of=ex.apis[0].staged.as_of,
            others=ex.others,
        )
        store.write_bytes(f"{prefix}/result.json", result.to_json())  # last: the shard is done once it is there
    logger.info(
        "%s of run %s: %d records, %d valid, %d invalid", source.part_label, run_id, ex.records, tr.valid, tr.invalid
    )
    return result.summary()


def _stages(
    on: Streaming, source: ApiSource, *, plugins: bool
) -> tuple[ExtractResult, TransformResult, PersistResult, StageRunner]:
    """Extract, transform and persist streaming into each other, as in an unsharded run."""
    stages = StageRunner(on.run_dir)
    handoff.reopen(on.run_dir)
    try:
        start_streaming(stages, on, [source], plugins=plugins)
        ex, tr, ps = stages.result("extract"), stages.result("transform"), stages.result("persist")
    except BaseException:
        handoff.cancel(on.run_dir, handoff.RUN)
        raise
    finally:
        stages.close()
        handoff.forget(on.run_dir)
    return ex, tr, ps, stages


def _keys(store: StagingStore, ex: ExtractResult, tr: TransformResult) -> dict[str, str]:
    """The shard's staged files by kind, as keys of the store (raw, processed, dlq, then each other input's raw
    file): the parent joins them in this order."""
    located = run_files(ex, tr)
    keys = {kind: store.key_of(location) for kind, location in located.items()}
    outside = [located[kind] for kind, key in keys.items() if key is None]
    if outside:
        raise StagingError(f"staged outside the staging store {store.url} (STAGING_URL): {', '.join(outside)}")
    return {kind: key for kind, key in keys.items() if key is not None}


def _upload_ids(store: StagingStore, prefix: str, ps: PersistResult, source: str) -> str:
    """The ids of the API's records in the shard's range (every line, valid or not), for the deletion check."""
    ids = staged_ids([(path, list(span)) for path, span in ps.key_spans.get(source, [])])
    frame = io.BytesIO()
    pl.DataFrame({"id": ids}).write_ipc_stream(frame)
    store.write_bytes(f"{prefix}/{SEEN_IDS}", frame.getvalue())
    return f"{prefix}/{SEEN_IDS}"
