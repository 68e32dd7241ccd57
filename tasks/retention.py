"""Staged run folders (`DATA_DIR/runs/<run id>`, or `runs/<run id>` in an S3 staging store) removed once their
run has been over for a while.

Every run stages its raw, processed and DLQ files (gigabytes for a million users) and delivers
them; what stays behind is the run's working copy. With `RUN_FILES_KEEP_DAYS` set, a run starting removes
the folders of runs that ended (completed, failed or crashed) more than that many days before. A run whose
process died is over too: the same start has just marked it crashed, ended at its last heartbeat
(flows/runtime.py `mark_stale_runs`). Kept whatever their age: a folder holding a staged file an unfinished
extraction would resume from, a run still running, and a folder no run in `etl_runs` owns (not ours to
judge)."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from models.runs import EtlCheckpoint, EtlRun
from tasks.staging.store import StagingError, StagingStore

Logger = logging.Logger | logging.LoggerAdapter


def _owning_run(path: Path, runs_dir: Path) -> str | None:
    """The run folder's name (the run id) under `runs_dir` that `path` lies in, if any."""
    try:
        return path.resolve().relative_to(runs_dir).parts[0]
    except (ValueError, IndexError):
        return None


def _ended_and_staged(engine: Engine, *, keep_days: int, now: datetime | None) -> tuple[set[str], list[str]]:
    """The ids of the runs that ended more than `keep_days` days before `now`, and the staged files (paths or
    store locations) unfinished extractions would resume from."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=keep_days)
    with Session(engine) as session:
        # a run gets its finished_at when it ends (completed, failed or crashed); a running one has none
        ended = set(session.exec(select(EtlRun.id).where(col(EtlRun.finished_at) < cutoff)).all())
        staged = session.exec(
            select(EtlCheckpoint.staged_path).where(
                col(EtlCheckpoint.status) != "complete", col(EtlCheckpoint.staged_path).is_not(None)
            )
        ).all()
    return ended, [p for p in staged if p is not None]


def expired_run_dirs(engine: Engine, *, runs_dir: Path, keep_days: int, now: datetime | None = None) -> list[Path]:
    """Folders under `runs_dir` of runs that ended more than `keep_days` days before `now`, minus any that
    an unfinished extraction's staged file lies in."""
    runs_dir = runs_dir.resolve()
    if not runs_dir.is_dir():
        return []
    ended, staged = _ended_and_staged(engine, keep_days=keep_days, now=now)
    resumable = {_owning_run(Path(p), runs_dir) for p in staged}
    return sorted(d for d in runs_dir.iterdir() if d.is_dir() and d.name in ended and d.name not in resumable)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def prune_run_dirs(
    engine: Engine,
    *,
    runs_dir: Path,
    keep_days: int,
    logger: Logger,
    now: datetime | None = None,
) -> dict:
    """Remove the expired run folders (`expired_run_dirs`); says how many and how many bytes, and returns it.
    Housekeeping never fails the run: a folder another run removed meanwhile is skipped, one that cannot be
    removed is named in a warning."""
    removed, freed = [], 0
    for folder in expired_run_dirs(engine, runs_dir=runs_dir, keep_days=keep_days, now=now):
        try:
            size = _size(folder)
            shutil.rmtree(folder)
        except FileNotFoundError:  # another run starting at the same time removed it
            continue
        except OSError as exc:
            logger.warning("could not remove the expired run folder %s: %s", folder, exc)
            continue
        freed += size
        removed.append(folder.name)
    _report(logger, removed, keep_days, freed)
    return {"removed": removed, "bytes": freed}


def _report(logger: Logger, removed: list[str], keep_days: int, freed: int) -> None:
    if removed:
        logger.info(
            "removed the staged files of %d run(s) over for more than %d day(s) (RUN_FILES_KEEP_DAYS): %.1f MB",
            len(removed),
            keep_days,
            freed / 1e6,
        )


def expired_store_runs(
    engine: Engine, *, store: StagingStore, keep_days: int, now: datetime | None = None
) -> dict[str, int]:
    """`expired_run_dirs` for the store's `runs/<run id>` folders (one listing): each expired run's id and the
    bytes it holds."""
    held: dict[str, int] = {}
    for key, size in store.sizes("runs").items():
        parts = key.split("/")
        if len(parts) > 2:  # runs/<run id>/...; a key right under runs/ is no run's
            held[parts[1]] = held.get(parts[1], 0) + size
    ended, staged = _ended_and_staged(engine, keep_days=keep_days, now=now)
    resumable = set()
    for location in staged:
        staged_key = store.key_of(location)  # a local path, or another store's location: None
        if staged_key is not None and staged_key.startswith("runs/") and staged_key.count("/") > 1:
            resumable.add(staged_key.split("/")[1])
    return {run: size for run, size in sorted(held.items()) if run in ended and run not in resumable}


def prune_store_runs(
    engine: Engine, *, store: StagingStore, keep_days: int, logger: Logger, now: datetime | None = None
) -> dict:
    """`prune_run_dirs` for the staging store (STAGING_URL: an S3 prefix, or a folder apart from DATA_DIR): removes the expired `runs/<run id>`
    folders, says how many and how many bytes, and returns it. Never fails the run: a store that cannot be
    listed, or a folder that cannot be removed, is named in a warning."""
    removed: list[str] = []
    freed = 0
    try:
        expired = expired_store_runs(engine, store=store, keep_days=keep_days, now=now)
    except (StagingError, OSError) as exc:
        logger.warning("could not list the staged run folders in %s: %s", store.location("runs"), exc)
        return {"removed": removed, "bytes": freed}
    for run, size in expired.items():
        folder = f"runs/{run}"
        try:
            store.remove(folder)  # (which says what it could not remove)
        except (StagingError, OSError) as exc:
            logger.warning("could not remove the expired run folder %s: %s", store.location(folder), exc)
            continue
        freed += size
        removed.append(run)
    _report(logger, removed, keep_days, freed)
    return {"removed": removed, "bytes": freed}
