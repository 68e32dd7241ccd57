"""A sharded users-etl run's parent: read the source's total, cut the page walk into USERS_SHARDS ranges, submit
one `users-shard` flow run per range to the work pool (any worker takes it), watch them (a shard that fails, or
whose worker stops pulsing, is submitted again alone), then join what they left in the staging store into the
run's files and results, as one walk would have staged them; the parent then checks and delivers as always."""

from __future__ import annotations

import contextvars
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from uuid import UUID

import polars as pl
from prefect import get_client, get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Cancelling, Crashed

from flows.runtime import RunStart
from models.settings import ConfigError, get_settings
from tasks.drift import check_sources
from tasks.extract.users_api import ApiSource
from tasks.extract.users_api.pages import walk_findings
from tasks.extract.users_api.paging import WalkRange
from tasks.extract.users_api.shards import source_total, split_walk
from tasks.shards import RESULT, ShardResult, pulse_age, shard_prefix
from tasks.staging import handoff
from tasks.staging.batches import (
    ApiWalk,
    ExtractResult,
    PersistResult,
    Span,
    StagedInput,
    TransformResult,
    input_kind,
)
from tasks.staging.files import append_bytes, file_size, read_frame, read_pieces, reset, within
from tasks.staging.parts import staging_store
from tasks.staging.store import StagingStore
from tasks.users.sync import mark_absent_task

POLL_SECONDS = 1.0  # how often the parent asks the Prefect API about its shards
JOIN_PIECE_BYTES = 8 << 20  # the join copies a shard's file in pieces this big (in the store, one part each)


class ShardFailedError(RuntimeError):
    """A shard could not finish within its attempts; the message names it."""


@dataclass
class Sharded:
    """A sharded run's stages joined: what the parent records, checks and delivers."""

    ex: ExtractResult
    tr: TransformResult
    ps: PersistResult
    files: dict[str, str]
    shards: list[ShardResult]


def run_sharded(run: RunStart, sources: list[ApiSource], *, shards: int, parameters: dict) -> Sharded:
    """The run's shards, submitted, watched and joined. `parameters`: what every shard passes on (api_base,
    page_size, batch_records, database_block, csv_dir)."""
    if len(sources) > 1:
        raise ConfigError("USERS_SHARDS > 1 reads one users API: USERS_API_SOURCES names more (shard those apart)")
    source, logger = sources[0], get_run_logger()
    parts = split_walk(source_total(source), shards, source.config.page_size)
    logger.info("users-etl: %d shard(s) of %s: %s", len(parts), source.name, [(p.start, p.stop) for p in parts])
    store, stop = staging_store(), threading.Event()
    watch = [_ShardWatch(run, store, index, len(parts), part, parameters, stop) for index, part in enumerate(parts)]
    try:
        with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="shard") as pool:
            futures = [pool.submit(contextvars.copy_context().run, w.finish) for w in watch]
            wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.done() and f.exception() for f in futures):
                stop.set()  # the run fails: the other shards are cancelled
            results = [f.result() for f in futures]
        joined = _join(run, store, source, results)
    finally:
        stop.set()
    for index in range(len(parts)):  # joined: the shards' files go (a failed run's stay for its ranges to resume)
        store.remove(shard_prefix(run.run_id, index))
    return joined


class _ShardWatch:
    """One shard's flow runs: submitted, watched until over, submitted again (up to USERS_SHARD_RETRIES times)
    when one fails, crashes or stops pulsing."""

    def __init__(
        self,
        run: RunStart,
        store: StagingStore,
        index: int,
        count: int,
        part: WalkRange,
        parameters: dict,
        stop: threading.Event,
    ) -> None:
        self.run, self.store, self.index, self.count, self.part, self.stop = run, store, index, count, part, stop
        self.prefix = shard_prefix(run.run_id, index)
        self.parameters = {
            **parameters,
            "run_id": run.run_id,
            "index": index,
            "count": count,
            "start": part.start,
            "stop": part.stop,
            "file_time": run.file_time,
        }
        self.name = f"shard {index + 1} of {count} (records {part.start} to {part.stop if part.stop is not None else 'the end'})"

    def finish(self) -> ShardResult:
        settings, logger = get_settings(), get_run_logger()
        attempts, why = settings.users_shard_retries + 1, ""
        for attempt in range(1, attempts + 1):
            flow_run = run_deployment(
                settings.users_shard_deployment,
                parameters=self.parameters,
                timeout=0,
                as_subflow=True,
                flow_run_name=f"{self.run.run_id[:8]}-shard-{self.index + 1}-of-{self.count}",
                idempotency_key=f"{self.run.run_id}:shard-{self.index + 1}:attempt-{attempt}",
                _sync=True,  # type: ignore[call-arg]  # (Prefect's sync dispatch keyword: the parent flow is async)
            )
            assert isinstance(flow_run, FlowRun)  # (the sync dispatch's)
            why = self._wait(flow_run.id)
            if not why:
                result = ShardResult.from_json(self.store.read_bytes(f"{self.prefix}/{RESULT}"))
                return replace(result, attempts=attempt)
            if self.stop.is_set():
                break
            if attempt < attempts:
                logger.warning("%s: %s; submitting it again (attempt %d of %d)", self.name, why, attempt + 1, attempts)
        raise ShardFailedError(f"{self.name} failed after {attempt} attempt(s): {why}")

    def _wait(self, flow_run_id: UUID) -> str:
        """Watch the flow run until it is over: "" when it completed with its result stored, else why not."""
        submitted, waiting_told = time.monotonic(), False
        with get_client(sync_client=True) as client:
            while True:
                flow_run = client.read_flow_run(flow_run_id)
                state = flow_run.state
                if (
                    not waiting_told
                    and state is not None
                    and state.is_scheduled()
                    and time.monotonic() - submitted > 60
                ):
                    waiting_told = True  # a pool (or worker) limit of 1 would hold the shards behind their parent
                    get_run_logger().warning(
                        "%s has waited %.0f s for a worker: the pool needs room for the run and its shards at once "
                        "(work pool, queue and worker limits)",
                        self.name,
                        time.monotonic() - submitted,
                    )
                try:
                    handoff.check_cancelled(self.run.run_dir, "persist")  # the run itself was stopped
                except handoff.RunCancelledError:
                    self.stop.set()
                if self.stop.is_set():
                    client.set_flow_run_state(flow_run_id, Cancelling(message="another shard of the run failed"))
                    return "cancelled: another shard of the run failed"
                if state is not None and state.is_final():
                    if state.is_completed() and self.store.exists(f"{self.prefix}/{RESULT}"):
                        return ""
                    return f"its flow run {flow_run_id} ended {state.name}: {state.message or 'no message'}"
                # a worker that dies after taking the run (Pending) or while it runs reports nothing: a run
                # pending, or running without a pulse, for USERS_SHARD_LOST_SECONDS is lost
                if state is not None and (state.is_running() or state.is_pending()):
                    age = pulse_age(self.store, self.prefix, str(flow_run_id)) if state.is_running() else None
                    since = time.time() - state.timestamp.timestamp()
                    lost = get_settings().users_shard_lost_seconds
                    if (age if age is not None else since) > lost:
                        what = "sent no pulse" if state.is_running() else "stayed pending"
                        why = f"its flow run {flow_run_id} {what} for {lost:.0f} s (its worker died?)"
                        client.set_flow_run_state(flow_run_id, Crashed(message=why), force=True)
                        return why
                time.sleep(POLL_SECONDS)


def _join(run: RunStart, store: StagingStore, source: ApiSource, results: list[ShardResult]) -> Sharded:
    """The shards' files joined in range order into the run's folder, their counts summed, the schema each saw
    merged and judged against the snapshot, and, when every range was walked whole, the users absent from all
    of them marked deleted."""
    settings = get_settings()
    files: dict[str, str] = {}
    for result in results:
        for kind, key in result.files.items():
            if kind not in files:  # under the folder (raw_users, processed_users, dlq) the shard staged it in
                files[kind] = reset(within(run.files_root, *key.split("/")[-2:]))
            copied = _append_file(files[kind], store.location(key))
            if kind == "raw" and copied != result.raw_bytes:
                raise ShardFailedError(
                    f"shard {result.index + 1} of {result.count}: its raw file in the staging store holds {copied} "
                    f"bytes, not the {result.raw_bytes} it staged"
                )
    records, totals = sum(r.records for r in results), _totals(results)
    api_records = records - sum(o.records for r in results for o in r.others)
    # what one walk would have found (shards that saw different totals: the source changed on the way), then
    # what each shard found in its range
    findings = walk_findings(totals, api_records) + [f"shard {r.index + 1}: {f}" for r in results for f in r.findings]
    raw = StagedInput(
        source=source.name,
        as_of=results[0].as_of,
        raw_path=files["raw"],
        span=Span(0, file_size(files["raw"])),
        records=api_records,
    )
    others = [replace(o, raw_path=files.get(input_kind(o, n))) for r in results for n, o in enumerate(r.others)]
    ex = ExtractResult(apis=[ApiWalk(staged=raw, findings=findings, totals=totals)], others=others)
    # the schema every shard saw, judged as one run's (a field typed apart in two ranges is `mixed`)
    drift = check_sources(
        run.engine,
        {name: [r.observed_schema[name] for r in results if name in r.observed_schema] for name in _names(results)},
        policy=settings.drift_policy,
        run_id=run.run_id,
        api_source=source.name,
        logger=get_run_logger(),
    )
    tr = TransformResult(
        files={"processed": files["processed"], "dlq": files["dlq"]},
        valid=sum(r.valid for r in results),
        invalid=sum(r.invalid for r in results),
        reasons=dict(sum((Counter(r.reasons) for r in results), Counter())),
        drift=drift.described,
        observed_schema=drift.observed,
        schema_changes=drift.changes,
    )
    ps = _persisted(run, store, source, results, complete=settings.users_detect_deleted and not findings)
    return Sharded(ex=ex, tr=tr, ps=ps, files=files, shards=results)


def _names(results: list[ShardResult]) -> list[str]:
    """The sources the shards saw, in the order they first saw them."""
    return list(dict.fromkeys(name for r in results for name in r.observed_schema))


def _append_file(target: str, source: str) -> int:
    """The staged file at `source` appended to the one at `target`, a piece at a time; the bytes copied."""
    copied = 0
    for piece in read_pieces(source, JOIN_PIECE_BYTES):
        copied += append_bytes(target, piece)[1]
    return copied


def _totals(results: list[ShardResult]) -> list[int]:
    """Every total the shards saw, in order, repeats dropped: more than one means the source changed."""
    totals: list[int] = []
    for t in (t for r in results for t in r.totals):
        if not totals or totals[-1] != t:
            totals.append(t)
    return totals


def _persisted(
    run: RunStart, store: StagingStore, source: ApiSource, results: list[ShardResult], *, complete: bool
) -> PersistResult:
    """The shards' persist counts summed; with every range complete, the absent users marked deleted."""
    counts: Counter[str] = Counter()
    sources: dict[str, Counter[str]] = {}
    for r in results:
        counts.update(r.persisted)
        for name, c in r.sources.items():
            sources.setdefault(name, Counter()).update(c)
    withheld = None
    if complete:
        ids = [read_frame(store.read_bytes(r.seen_ids)).to_series() for r in results if r.seen_ids]
        seen = pl.concat(ids) if ids else pl.Series("id", [], pl.Int64)
        absence = mark_absent_task(
            run.engine,
            source=source.name,
            seen_ids=seen,
            run_id=run.run_id,
            max_share=get_settings().users_delete_max_share,
        )
        counts.update(deleted=absence.deleted, dlq_resolved=absence.dlq_resolved)
        sources.setdefault(source.name, Counter()).update(deleted=absence.deleted)
        withheld = absence.withheld
        if withheld:
            get_run_logger().warning("deletions withheld: %s", withheld)
    return PersistResult(
        counts=dict(counts), sources={k: dict(v) for k, v in sources.items()}, deletions_withheld=withheld
    )
