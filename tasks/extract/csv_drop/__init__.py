"""Users CSV drop: files placed in USERS_CSV_DIR, each staged once per content (checkpoint by checksum).

A users source plug-in (named in USERS_SOURCES) is a package under tasks/extract/ providing: SOURCE, FIELDS
(staging column -> path in its records), FAILURE_REASON, `pending(engine, settings)`, the
`stage(item, raw_path)` task returning a StagedInput, `failure_record(staged)` and
`mark_done(engine, staged_inputs, run_id)`. This one is the example to copy.

A malformed file (bad encoding, bad quoting, missing header columns) is never half-loaded: it becomes one
DLQ entry naming the file and line, its checksum is marked failed, and the other sources carry on."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine
from sqlmodel import Session

from models.runs import EtlCheckpoint
from models.settings import Settings
from tasks.extract.csv_drop.constants import FAILURE_REASON, FIELDS, SOURCE
from tasks.extract.csv_drop.reader import CsvFile, CsvFormatError, pending_files, read_users_csv
from tasks.staging import files
from tasks.staging.batches import Span, StagedInput
from tasks.staging.runner import timed_work

__all__ = ["FAILURE_REASON", "FIELDS", "SOURCE", "failure_record", "mark_done", "pending", "stage"]


def pending(engine: Engine, settings: Settings) -> list[CsvFile]:
    """What this run should stage: the new or changed files of USERS_CSV_DIR (nothing when it is unset)."""
    if not settings.users_csv_dir:
        return []
    return pending_files(engine, Path(settings.users_csv_dir))


def mark_done(engine: Engine, staged: list[StagedInput], *, run_id: str) -> None:
    """Checkpoint each file's checksum: complete once stored, failed (with the reason) when malformed."""
    now = datetime.now(UTC)
    with Session(engine) as session:
        for f in staged:
            key = f"csv:{f.label}"
            cp = session.get(EtlCheckpoint, key) or EtlCheckpoint(source=key)
            cp.fingerprint, cp.run_id, cp.updated_at = f.checksum, run_id, now
            cp.staged_path, cp.staged_records = f.raw_path, f.records
            if f.error:
                cp.status, cp.last_failure_at, cp.last_error = "failed", now, f.error
            else:
                cp.status, cp.last_success_at, cp.last_error = "complete", now, None
            session.add(cp)
        session.commit()


@task(name="stage-users-csv", cache_policy=NO_CACHE)
@timed_work
def stage(item: CsvFile, raw_path: str) -> StagedInput:
    """One CSV file -> staged JSONL (or a failure naming file and line)."""
    as_of, label = item.modified_at.isoformat(), item.path.name
    base = StagedInput(source=SOURCE, as_of=as_of, label=label, checksum=item.checksum)
    try:
        df = read_users_csv(item.path)
    except CsvFormatError as exc:
        return replace(base, error=str(exc))
    files.reset(raw_path)
    span = Span(*files.append_lines(raw_path, df))
    return replace(base, raw_path=raw_path, span=span, records=df.height)


def failure_record(failure: StagedInput) -> str:
    return json.dumps({"file": failure.label, "checksum": failure.checksum, "error": failure.error})
