"""users-etl's stages as child flows: `extract` (the API's pages and the other sources -> staged raw JSONL),
`transform` (raw -> processed + DLQ JSONL), `persist` (staged files -> tables, then the sync of absent users).
They stream to each other through manifests (tasks/staging/handoff.py); the parent, flows/users_etl.py, coordinates."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_run

from dev.sample_api import offline_users_api
from models.db import deferred_checkpoints, resolve_engine
from models.settings import DEFAULT_BATCH_RECORDS, get_settings
from tasks.drift import describe, merge_types, record_schema, schema_changes
from tasks.extract import dummyjson, source_module
from tasks.extract.constants import SOURCE
from tasks.staging import handoff
from tasks.users.persist import BATCH_COUNTS, persist_batch
from tasks.users.sync import mark_absent_task, staged_ids
from tasks.users.transform import append_failure, file_sha256, load_departments, split_spans, transform_batch

if TYPE_CHECKING:  # (Polars loads once the flows package has tuned the process: flows/process.py)
    import polars as pl

RUN_COUNTS = (*BATCH_COUNTS, "deleted")  # what persist adds to the run's record
SOURCE_COUNTS = ("inserted", "updated", "unchanged", "restored", "invalidated")  # and to each source's
OFFLINE_FINGERPRINT = "offline-sample"


@contextmanager
def _users_source(api_base: str | None):
    """The configured API, or the generated sample served on loopback (same contract, same code path)."""
    if api_base:
        yield api_base, None
    else:
        with offline_users_api() as url:
            yield url, OFFLINE_FINGERPRINT


def _extract_api(
    engine,
    settings,
    logger,
    run_dir: str,
    stamp: str,
    api_base: str | None,
    page_size: int,
    batch_records: int,
    manifest: str | None,
) -> dict:
    as_of = datetime.now(UTC).isoformat()
    with _users_source(api_base) as (base_url, fingerprint):
        plan = dummyjson.begin_extract(
            engine,
            run_id=str(current_run.id),
            fingerprint=fingerprint or f"{base_url}|{page_size}",
            new_path=Path(run_dir) / "raw_users" / f"records_{stamp}.jsonl",
        )
        if plan.resumed:
            logger.info(
                "resuming the interrupted extraction at skip=%d (%d records already staged in %s)",
                plan.skip,
                plan.records,
                plan.staged_path,
            )
        skip, offset, records, spans = plan.skip, plan.offset, plan.records, []
        entry = {"source": SOURCE, "raw_path": plan.staged_path, "as_of": as_of}
        if manifest and plan.offset:  # what the interrupted run staged goes through the stages again
            handoff.post(manifest, entry | {"offset": 0, "length": plan.offset, "records": plan.records})
        try:
            # the last position given is stored on leaving the block, before the outcome below
            with dummyjson.CheckpointWriter(engine, total=plan.total) as checkpoints:
                while True:
                    handoff.check_cancelled(run_dir, "extract")
                    got = dummyjson.fetch_batch(
                        checkpoints,
                        base_url=base_url,
                        page_size=page_size,
                        skip=skip,
                        max_records=batch_records,
                        staged_path=plan.staged_path,
                        offset=offset,
                        records_before=records,
                        timeout=settings.users_request_timeout,
                        max_retry_after=settings.max_retry_after_seconds,
                        retries=settings.extract_retries,
                        retry_base_seconds=settings.extract_retry_base_seconds,
                        run_dir=run_dir,
                    )
                    if manifest and got["records"]:
                        handoff.post(
                            manifest,
                            entry | {"offset": offset, "length": got["offset"] - offset, "records": got["records"]},
                        )
                    skip, offset, records = got["next_skip"], got["offset"], records + got["records"]
                    spans.append(got["work_span"])
                    if got["done"]:
                        break
        except Exception as exc:
            dummyjson.finish_extract(engine, error=f"{type(exc).__name__}: {exc}")
            logger.error("extract stopped at skip=%d; the checkpoint keeps it for the next run", skip)
            raise
        dummyjson.finish_extract(engine)
    logger.info("extract: %d API records staged in %s", records, plan.staged_path)
    findings = dummyjson.walk_findings(checkpoints.totals, records)
    if findings:  # the walk is no complete picture of the source: persist marks no absent user deleted
        logger.warning("extract: %s; users absent from this extraction are not marked deleted", "; ".join(findings))
    return {
        "source": SOURCE,
        "raw_path": plan.staged_path,
        "records": records,
        "as_of": as_of,
        "resumed_from": plan.skip if plan.resumed else None,
        "work_spans": spans,
        "findings": findings,
    }


@flow(name="extract")
def extract(
    run_dir: str,
    stamp: str,
    api_base: str | None = None,
    page_size: int = 100,
    batch_records: int = DEFAULT_BATCH_RECORDS,
    database_block: str | None = None,
    csv_dir: str | None = None,
    manifest: str | None = None,
) -> dict:
    """Sources -> staged raw JSONL files. The API is paged and checkpointed after every page (an
    interrupted run resumes there); CSV files in `csv_dir` are staged when new or changed. Each staged
    batch is posted to `manifest` as soon as it is on disk, for the transform stage to follow."""
    settings, logger = get_settings(), get_run_logger()
    if manifest:
        handoff.mark_started(manifest)
    engine = resolve_engine(database_block)
    staged = [_extract_api(engine, settings, logger, run_dir, stamp, api_base, page_size, batch_records, manifest)]
    spans, findings = staged[0].pop("work_spans"), staged[0].pop("findings")
    if csv_dir:
        settings = settings.model_copy(update={"users_csv_dir": Path(csv_dir)})
    for name in settings.users_sources:
        plugin = source_module(name)
        for n, item in enumerate(plugin.pending(engine, settings)):
            handoff.check_cancelled(run_dir, "extract")
            t0 = time.time()
            label = item.get("name", n)
            out = plugin.stage(item, str(Path(run_dir) / "raw_users" / f"{plugin.SOURCE}_{label}_{stamp}.jsonl"))
            spans.append([t0, time.time()])
            if out.get("error"):
                logger.error("%s input rejected, sent to the DLQ: %s", plugin.SOURCE, out["error"])
            staged.append(out | {"module": name})
            if manifest:
                size = Path(out["raw_path"]).stat().st_size if out.get("raw_path") else 0
                handoff.post(manifest, staged[-1] | {"offset": 0, "length": size})
    logger.info("extract: %d staged input(s) besides the API", len(staged) - 1)
    records = sum(s["records"] for s in staged)
    if manifest:  # persist marks users absent from the API deleted only after a complete walk
        handoff.close(manifest, records=records, api_complete=not findings)
    return {"staged": staged, "records": records, "work_spans": spans, "source_findings": findings}


def source_spans(entry: dict, batch_records: int) -> list[tuple[int, int]]:
    """A staged input's span cut into transform batches of about `batch_records` records (an API batch is
    one already; a CSV file may be many)."""
    if entry["records"] <= batch_records:
        return [(entry["offset"], entry["length"])]
    target = -(-entry["length"] * batch_records // entry["records"])  # rounded up: no sliver of a batch
    return split_spans(entry["raw_path"], max(1 << 20, target), entry["offset"], entry["length"])


@flow(name="transform")
def transform(
    extracted: str,
    run_dir: str,
    stamp: str,
    departments_csv: str,
    batch_records: int = DEFAULT_BATCH_RECORDS,
    database_block: str | None = None,
    run_id: str | None = None,
    manifest: str | None = None,
) -> dict:
    """Staged raw JSONL -> processed + DLQ JSONL, batch by batch as extract posts them to the `extracted`
    manifest; each transformed batch is posted to `manifest` for persist. Each source's schema is checked for
    drift once it is all in; a source whose policy is `fail` posts its batches only after that check."""
    settings, logger = get_settings(), get_run_logger()
    if manifest:
        handoff.mark_started(manifest)
    departments = load_departments(departments_csv, file_sha256(departments_csv))
    files = {
        "processed": str(Path(run_dir) / "processed_users" / f"etl_{stamp}.jsonl"),
        "dlq": str(Path(run_dir) / "dlq" / f"invalid_users_{stamp}.jsonl"),
    }
    # the raw lines' ids and hashes, for persist; a stage file, not one of the run's files to deliver
    keys_path = str(Path(run_dir) / "stages" / f"raw_keys_{stamp}.arrows")
    for path in (*files.values(), keys_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"")
    counts, reasons, drift, spans = Counter(), Counter(), [], []
    seen_ids: dict[str, pl.Series] = {}  # per source: the ids of its batches so far (a later copy is a duplicate)
    types: dict[str, list[dict]] = {}
    held: dict[str, list[dict]] = {}  # batches of sources whose drift policy is `fail`, until their check

    def hand_on(batch: dict) -> None:
        counts.update(valid=batch["valid"], invalid=batch["invalid"])
        if settings.drift_policy(batch["source"]) == "fail":
            held.setdefault(batch["source"], []).append(batch)
        elif manifest:
            handoff.post(manifest, batch)

    for entry in handoff.follow(extracted, stage="transform", run_dir=run_dir):
        source = entry["source"]
        meta = {
            "source": source,
            "as_of": entry["as_of"],
            "files": {"raw": entry.get("raw_path"), **files, "raw_keys": keys_path},
        }
        plugin = source_module(entry["module"]) if entry.get("module") else None
        if entry.get("error"):  # a rejected input: one DLQ entry naming file and line
            span = append_failure(files["dlq"], reason=plugin.FAILURE_REASON, record=plugin.failure_record(entry))
            hand_on(meta | {"raw": [0, 0], "processed": [0, 0], "dlq": list(span), "valid": 0, "invalid": 1})
            reasons[plugin.FAILURE_REASON] += 1
            continue
        if not entry["records"]:
            continue
        for offset, length in source_spans(entry, batch_records):
            out = transform_batch(
                departments,
                raw_path=entry["raw_path"],
                offset=offset,
                length=length,
                processed_path=files["processed"],
                dlq_path=files["dlq"],
                keys_path=keys_path,
                source=source,
                fields=plugin.FIELDS if plugin else None,
                seen_ids=seen_ids.get(source),
            )
            seen_ids[source] = out["ids"]
            reasons.update(out["reasons"])
            types.setdefault(source, []).append(out["types"])
            spans.append(out["work_span"])
            hand_on(meta | {k: out[k] for k in ("raw", "processed", "dlq", "raw_keys", "valid", "invalid")})
    observed, changed, engine = {}, {}, resolve_engine(database_block)
    for source, seen in types.items():
        policy, observed[source] = settings.drift_policy(source), merge_types(seen)
        changes = changed[source] = schema_changes(engine, source=source, types=observed[source])
        if changes and policy == "fail":  # stored and raised here: nothing of the source reaches persist
            record_schema(
                engine,
                run_id=run_id or str(current_run.id),
                source=source,
                types=observed[source],
                policy=policy,
                changes=changes,
            )
        if changes:
            (logger.info if policy == "evolve" else logger.warning)(
                "schema drift in %s (policy %s): %s", source, policy, "; ".join(describe(c) for c in changes)
            )
        drift += [describe(c) if source == SOURCE else f"{source}: {describe(c)}" for c in changes]
    for batch in (b for batches in held.values() for b in batches):
        if manifest:
            handoff.post(manifest, batch)
    if manifest:
        handoff.close(manifest)
    valid, invalid = counts["valid"], counts["invalid"]
    logger.info("transform: %d valid, %d invalid %s", valid, invalid, dict(reasons))
    return {
        "files": files,
        "valid": valid,
        "invalid": invalid,
        "reasons": dict(reasons),
        "drift": drift,
        "observed_schema": observed,
        "schema_changes": changed,
        "work_spans": spans,
    }


@flow(name="persist")
def persist(
    run_id: str, transformed: str, extracted: str, run_dir: str | None = None, database_block: str | None = None
) -> dict:
    """Each batch posted to the `transformed` manifest -> raw_users, processed_users, dlq_users, one
    transaction per batch, while transform is still working. Inputs besides the API (CSV files...) are
    checkpointed by their module once all their rows are stored."""
    settings, logger = get_settings(), get_run_logger()
    engine = resolve_engine(database_block)
    totals: Counter = Counter()
    per_source: dict[str, Counter] = {}
    spans, api_keys = [], []
    with deferred_checkpoints(engine):
        for b in handoff.follow(transformed, stage="persist", run_dir=run_dir):
            counts = persist_batch(
                engine,
                run_id=run_id,
                source=b["source"],
                as_of=b["as_of"],
                files=b["files"],
                spans={k: b[k] for k in ("raw", "processed", "dlq", "raw_keys") if b.get(k)},
            )
            spans.append(counts.pop("work_span"))
            totals.update(counts)
            per_source.setdefault(b["source"], Counter()).update(
                {k: v for k, v in counts.items() if k in SOURCE_COUNTS} | {"failed": b["invalid"]}
            )
            if b["source"] == SOURCE and b.get("raw_keys"):
                api_keys.append((b["files"]["raw_keys"], b["raw_keys"]))
    staged_inputs = [e for e in handoff.read_all(extracted) if e.get("module")]
    for name in {s["module"] for s in staged_inputs}:
        source_module(name).mark_done(engine, [s for s in staged_inputs if s["module"] == name], run_id=run_id)
    withheld = None
    # the manifests ended normally, so extract did; it says whether the API's page walk was complete
    if settings.users_detect_deleted and handoff.end_summary(extracted).get("api_complete", True):
        absence = mark_absent_task(
            engine,
            source=SOURCE,
            seen_ids=staged_ids(api_keys),
            run_id=run_id,
            max_share=settings.users_delete_max_share,
        )
        totals.update(deleted=absence.deleted, dlq_resolved=absence.dlq_resolved)
        per_source.setdefault(SOURCE, Counter()).update(deleted=absence.deleted)
        withheld = absence.withheld
        if withheld:
            logger.warning("deletions withheld: %s", withheld)
    counts = {k: totals.get(k, 0) for k in RUN_COUNTS}
    logger.info("persist: %s", counts)
    return counts | {
        "sources": {s: dict(c) for s, c in per_source.items()},
        "work_spans": spans,
        "deletions_withheld": withheld,
    }
