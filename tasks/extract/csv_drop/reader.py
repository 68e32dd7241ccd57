"""Reading a users CSV file whole or not at all: a malformed file names its file and line."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from sqlalchemy import Engine
from sqlmodel import Session

from models.runs import EtlCheckpoint
from tasks.extract.csv_drop.constants import REQUIRED_COLUMNS
from tasks.redact import SECRET_FIELDS


class CsvFormatError(ValueError):
    """The file cannot be read as a users CSV; the message names file and line."""


@dataclass(frozen=True)
class CsvFile:
    path: Path
    checksum: str
    modified_at: datetime

    @property
    def name(self) -> str:
        """The file's name without its suffix: it names the run's staged copy."""
        return self.path.stem

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
