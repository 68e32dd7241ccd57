"""What the users child flows keep while they follow their manifests: transform's relay (batches handed on,
or held until their source's drift check) and tally, persist's tally. The flows only call these."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import polars as pl

from tasks.extract import source_module
from tasks.staging import handoff
from tasks.staging.batches import PersistResult, RunFiles, Span, StagedInput, TransformedBatch
from tasks.staging.files import reset, split_spans, within
from tasks.users.dlq import append_failure
from tasks.users.persist import BATCH_COUNTS
from tasks.users.sync import Absence
from tasks.users.transform import transform_batch

RUN_COUNTS = (*BATCH_COUNTS, "deleted")  # what persist adds to the run's record
SOURCE_COUNTS = ("inserted", "updated", "unchanged", "restored", "invalidated")  # and to each source's


def run_files(files_root: str, file_time: str) -> RunFiles:
    """The run's transform outputs under `files_root` (a location: tasks/staging/files.py), created empty."""
    files = RunFiles(
        processed=within(files_root, "processed_users", f"etl_{file_time}.jsonl"),
        dlq=within(files_root, "dlq", f"invalid_users_{file_time}.jsonl"),
        raw_keys=within(files_root, "stages", f"raw_keys_{file_time}.arrows"),  # for persist; never delivered
    )
    for path in (files.processed, files.dlq, files.raw_keys):
        reset(path)
    return files


def source_spans(entry: StagedInput, batch_records: int) -> list[Span]:
    """A staged input's span cut into transform batches of about `batch_records` records (an API batch is
    one already; a CSV file may be many)."""
    if entry.records <= batch_records or entry.raw_path is None:
        return [entry.span]
    target = -(-entry.span.length * batch_records // entry.records)  # rounded up: no sliver of a batch
    return [Span(*s) for s in split_spans(entry.raw_path, max(1 << 20, target), *entry.span)]


@dataclass
class TransformTally:
    """Transform's running totals: counts, DLQ reasons, each source's field types and ids seen so far."""

    valid: int = 0
    invalid: int = 0
    reasons: Counter = field(default_factory=Counter)
    types: dict[str, list[dict]] = field(default_factory=dict)
    seen_ids: dict[str, pl.Series] = field(default_factory=dict)  # a later copy of an id is a duplicate


def transform_input(
    entry: StagedInput, departments: pl.DataFrame, files: RunFiles, batch_records: int, tally: TransformTally
) -> Iterator[TransformedBatch]:
    """One staged input through the rules, batch by batch; an input rejected whole becomes one DLQ entry."""
    plugin = source_module(entry.plugin) if entry.plugin else None
    if entry.error and plugin is not None:
        span = Span(*append_failure(files.dlq, reason=plugin.FAILURE_REASON, record=plugin.failure_record(entry)))
        tally.invalid += 1
        tally.reasons[plugin.FAILURE_REASON] += 1
        empty = Span(0, 0)
        yield TransformedBatch(entry.source, entry.as_of, None, files, processed=empty, dlq=span, invalid=1)
        return
    for offset, length in source_spans(entry, batch_records) if entry.records else []:
        assert entry.raw_path is not None  # (an input with records has its staged file)
        out = transform_batch(
            departments,
            raw_path=entry.raw_path,
            offset=offset,
            length=length,
            processed_path=files.processed,
            dlq_path=files.dlq,
            keys_path=files.raw_keys,
            source=entry.source,
            fields=plugin.FIELDS if plugin else entry.fields,
            seen_ids=tally.seen_ids.get(entry.source),
        )
        assert out.ids is not None  # (transform_batch always sets them)
        tally.seen_ids[entry.source] = out.ids
        tally.valid, tally.invalid = tally.valid + out.valid, tally.invalid + out.invalid
        tally.reasons.update(out.reasons)
        tally.types.setdefault(entry.source, []).append(out.types)
        yield out.batch(source=entry.source, as_of=entry.as_of, raw_path=entry.raw_path, files=files)


class BatchRelay:
    """Hands transformed batches on to persist as they come, except those of a source whose drift policy is
    `fail`: those wait until `release`, after that source's schema check passed."""

    def __init__(self, manifest: str | None, policy: Callable[[str], str]) -> None:
        self.manifest, self.policy = manifest, policy
        self.held: list[TransformedBatch] = []

    def hand_on(self, batch: TransformedBatch) -> None:
        if self.policy(batch.source) == "fail":
            self.held.append(batch)
        elif self.manifest:
            handoff.post(self.manifest, batch)

    def release(self) -> None:
        """Every held batch posted, then the manifest's end line."""
        if self.manifest:
            for batch in self.held:
                handoff.post(self.manifest, batch)
            handoff.close(self.manifest)


@dataclass
class PersistTally:
    """Persist's running totals, for the run and per source, and where the API's raw keys are."""

    totals: Counter = field(default_factory=Counter)
    per_source: dict[str, Counter] = field(default_factory=dict)
    api_keys: dict[str, list[tuple[str, Span]]] = field(default_factory=dict)  # per source: its raw keys' spans
    withheld: list[str] = field(default_factory=list)

    def add(self, batch: TransformedBatch, counts: dict[str, int]) -> None:
        self.totals.update(counts)
        mine = {k: v for k, v in counts.items() if k in SOURCE_COUNTS}
        self.per_source.setdefault(batch.source, Counter()).update(mine | {"failed": batch.invalid})
        if batch.raw_keys:
            self.api_keys.setdefault(batch.source, []).append((batch.files.raw_keys, batch.raw_keys))

    def add_absence(self, source: str, absence: Absence) -> None:
        self.totals.update(deleted=absence.deleted, dlq_resolved=absence.dlq_resolved)
        self.per_source.setdefault(source, Counter()).update(deleted=absence.deleted)
        if absence.withheld:
            self.withheld.append(absence.withheld)

    def result(self) -> PersistResult:
        return PersistResult(
            counts={k: self.totals.get(k, 0) for k in RUN_COUNTS},
            sources={s: dict(c) for s, c in self.per_source.items()},
            deletions_withheld="; ".join(self.withheld) or None,
            key_spans=self.api_keys,
        )
