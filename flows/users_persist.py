"""users-etl's `persist` stage: each transformed batch into raw_users, processed_users and dlq_users (one
transaction per batch) while transform still works; then the plug-ins' checkpoints and the users absent from a
complete API extraction."""

from __future__ import annotations

from prefect import flow, get_run_logger

from models.db import deferred_checkpoints, resolve_engine
from models.settings import get_settings
from tasks.extract import mark_plugins_done
from tasks.staging import handoff
from tasks.staging.batches import PersistResult, StagedInput, TransformedBatch
from tasks.users.persist import persist_batch
from tasks.users.stages import PersistTally
from tasks.users.sync import mark_absent_task, staged_ids


@flow(name="persist")
def persist(
    run_id: str, transformed: str, extracted: str, run_dir: str | None = None, database_block: str | None = None
) -> PersistResult:
    """Batches posted to `transformed` -> tables; inputs besides the API are checkpointed by their plug-in once
    all their rows are stored; with a complete page walk, users absent from it are marked deleted."""
    settings, logger = get_settings(), get_run_logger()
    engine = resolve_engine(database_block)
    tally = PersistTally()
    with deferred_checkpoints(engine):
        for batch in handoff.follow(transformed, TransformedBatch, stage="persist", run_dir=run_dir):
            tally.add(batch, persist_batch(engine, batch, run_id=run_id))
    mark_plugins_done(engine, handoff.read_all(extracted, StagedInput), run_id=run_id)
    # the manifests ended normally, so extract did; it names the API sources whose page walk was complete
    complete = handoff.end_summary(extracted).get("complete_sources", []) if settings.users_detect_deleted else []
    for source in complete:
        seen = staged_ids([(path, list(span)) for path, span in tally.api_keys.get(source, [])])
        absence = mark_absent_task(
            engine, source=source, seen_ids=seen, run_id=run_id, max_share=settings.users_delete_max_share
        )
        tally.add_absence(source, absence)
        if absence.withheld:
            logger.warning("deletions withheld: %s", absence.withheld)
    result = tally.result()
    logger.info("persist: %s", result.counts)
    return result
