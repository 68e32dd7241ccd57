"""Users CSV drop: files placed in USERS_CSV_DIR, each staged once per content (checkpoint by checksum).

A users source module (named in USERS_SOURCES) provides: SOURCE, FIELDS (staging column -> path in its
records), FAILURE_REASON, `pending(engine, settings)`, the `stage(item, raw_path)` task, `failure_record`
and `mark_done(engine, entries, run_id)`. This one is the example to copy.

A malformed file (bad encoding, bad quoting, missing header columns) is never half-loaded: it becomes one
DLQ entry naming the file and line, its checksum is marked failed, and the other sources carry on."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine
from sqlmodel import Session

from models.runs import EtlCheckpoint
from tasks.redact import SECRET_FIELDS

SOURCE = "csv"
FAILURE_REASON = "csv_malformed"
FIELDS: dict[str, tuple[str, ...]] = {
    "id_text": ("id",),
    "first_name": ("first_name",),
    "last_name": ("last_name",),
    "username": ("username",),
    "email": ("email",),
    "phone": ("phone",),
    "age_text": ("age",),
    "gender": ("gender",),
    "city": ("city",),
    "country": ("country",),
    "department": ("department",),
    "company_name": ("company",),
    "company_title": ("title",),
}
REQUIRED_COLUMNS = ("id", "first_name", "email", "age", "department")
KNOWN_COLUMNS = (*REQUIRED_COLUMNS, "last_name", "gender", "company", "title", "city", "country", "username", "phone")


class CsvFormatError(ValueError):
    """The file cannot be read as a users CSV; the message names file and line."""


@dataclass(frozen=True)
class CsvFile:
    path: Path
    checksum: str
    modified_at: datetime

    @property
    def key(self) -> str:
        return f"csv:{self.path.name}"


def _locate(path: Path, data: bytes) -> str:
    """Where a file Polars refused goes wrong (error path only): encoding, quoting or field count."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"{path.name} line {line}: not UTF-8 ({exc.reason})"
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
        for row in reader:
            if len(row) != len(header):
                return f"{path.name} line {reader.line_num}: {len(row)} fields where the header has {len(header)}"
    except csv.Error as exc:
        return f"{path.name} line {reader.line_num}: {exc}"
    return f"{path.name}: unreadable CSV"


def read_users_csv(path: Path) -> pl.DataFrame:
    """Every column as text (the rules judge the values), secrets dropped, `_file` and `_line` added."""
    data = path.read_bytes()
    if not data.strip():
        raise CsvFormatError(f"{path.name} line 1: empty file (a header is required)")
    try:
        df = pl.read_csv(io.BytesIO(data), infer_schema=False, encoding="utf8", raise_if_empty=True)
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
        raise CsvFormatError(_locate(path, data)) from exc
    header = [c.strip().lower() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CsvFormatError(f"{path.name} line 1: header lacks required column(s) {', '.join(missing)}")
    if len(set(header)) != len(header):
        raise CsvFormatError(f"{path.name} line 1: duplicate column names in the header")
    df.columns = header
    return df.drop([c for c in SECRET_FIELDS if c in header]).with_columns(
        pl.lit(path.name).alias("_file"), (pl.int_range(2, df.height + 2)).alias("_line")
    )


def pending(engine: Engine, settings) -> list[dict]:
    """What this run should stage: the new or changed files of USERS_CSV_DIR (nothing when it is unset)."""
    if not settings.users_csv_dir:
        return []
    return [
        {"name": f.path.stem, "path": str(f.path), "checksum": f.checksum, "modified_at": f.modified_at.isoformat()}
        for f in pending_files(engine, Path(settings.users_csv_dir))
    ]


def pending_files(engine: Engine, csv_dir: Path) -> list[CsvFile]:
    """New or changed `*.csv` files, oldest first (so the newest record wins within a run)."""
    files = []
    with Session(engine) as session:
        for path in sorted(Path(csv_dir).glob("*.csv")):
            checksum = hashlib.sha256(path.read_bytes()).hexdigest()
            cp = session.get(EtlCheckpoint, f"csv:{path.name}")
            if cp is not None and cp.fingerprint == checksum and cp.status in ("complete", "failed"):
                continue
            files.append(CsvFile(path, checksum, datetime.fromtimestamp(path.stat().st_mtime, UTC)))
    return sorted(files, key=lambda f: f.modified_at)


def mark_done(engine: Engine, files: list[dict], *, run_id: str) -> None:
    """Checkpoint each file's checksum: complete once stored, failed (with the reason) when malformed."""
    now = datetime.now(UTC)
    with Session(engine) as session:
        for f in files:
            cp = session.get(EtlCheckpoint, f"csv:{f['file']}") or EtlCheckpoint(source=f"csv:{f['file']}")
            cp.fingerprint, cp.run_id, cp.updated_at = f["checksum"], run_id, now
            cp.staged_path, cp.staged_records = f.get("raw_path"), f.get("records", 0)
            if f.get("error"):
                cp.status, cp.last_failure_at, cp.last_error = "failed", now, f["error"]
            else:
                cp.status, cp.last_success_at, cp.last_error = "complete", now, None
            session.add(cp)
        session.commit()


@task(name="stage-users-csv", cache_policy=NO_CACHE)
def stage(item: dict, raw_path: str) -> dict:
    """One CSV file -> staged JSONL (or a failure naming file and line)."""
    path = item["path"]
    base = {"source": SOURCE, "file": Path(path).name, "checksum": item["checksum"], "as_of": item["modified_at"]}
    try:
        df = read_users_csv(Path(path))
    except CsvFormatError as exc:
        return base | {"error": str(exc), "records": 0}
    Path(raw_path).parent.mkdir(parents=True, exist_ok=True)
    df.write_ndjson(raw_path)
    return base | {"raw_path": raw_path, "records": df.height}


def failure_record(failure: dict) -> str:
    return json.dumps({"file": failure["file"], "checksum": failure["checksum"], "error": failure["error"]})
