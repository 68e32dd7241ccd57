"""Where an API extraction stands, in `etl_checkpoints`: `begin_extract` resumes an interrupted extraction or
starts a new staged file, `CheckpointWriter` stores the position after every page from a thread of its own,
`finish_extract` records the outcome."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, update
from sqlmodel import Session, col

from models.runs import EtlCheckpoint
from tasks.extract.dummyjson.constants import CHECKPOINT_EVERY_SECONDS, CHECKPOINT_KEY


@dataclass(frozen=True)
class ExtractPlan:
    staged_path: str
    skip: int
    offset: int
    records: int
    resumed: bool
    total: int | None = None  # the total the source reported when the resumed walk began


@dataclass(frozen=True)
class Position:
    """Where extraction stands: the next `skip`, the `total` the source reported when the walk began, and the
    staged file's length in bytes (`offset`) and records; `staged_path`, when given, is synced to disk before
    the position is stored."""

    skip: int
    total: int
    offset: int
    records: int
    staged_path: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def begin_extract(engine: Engine, *, run_id: str, fingerprint: str, new_path: Path) -> ExtractPlan:
    """Resume an interrupted extraction of the same source, or start a new staged file."""
    with Session(engine) as session:
        cp = session.get(EtlCheckpoint, CHECKPOINT_KEY) or EtlCheckpoint(source=CHECKPOINT_KEY)
        staged = Path(cp.staged_path) if cp.staged_path else None
        if (
            cp.status in ("in_progress", "failed")
            and cp.fingerprint == fingerprint
            and staged is not None
            and staged.exists()
            and staged.stat().st_size >= cp.staged_bytes
        ):
            plan = ExtractPlan(str(staged), cp.cursor, cp.staged_bytes, cp.staged_records, True, cp.total)
        else:
            new_path.parent.mkdir(parents=True, exist_ok=True)
            new_path.write_bytes(b"")
            plan = ExtractPlan(str(new_path), 0, 0, 0, False)
            cp.total = None
        cp.status, cp.run_id, cp.fingerprint = "in_progress", run_id, fingerprint
        cp.cursor, cp.staged_path, cp.staged_bytes, cp.staged_records = (
            plan.skip,
            plan.staged_path,
            plan.offset,
            plan.records,
        )
        cp.updated_at = _now()
        session.add(cp)
        session.commit()
    return plan


def finish_extract(engine: Engine, *, error: str | None = None) -> None:
    with Session(engine) as session:
        cp = session.get(EtlCheckpoint, CHECKPOINT_KEY)
        if cp is None:
            return
        now = _now()
        if error is None:
            cp.status, cp.last_success_at, cp.last_error = "complete", now, None
        else:
            cp.status, cp.last_failure_at, cp.last_error = "failed", now, error[:2000]
        cp.updated_at = now
        session.add(cp)
        session.commit()


def _sync(path: str) -> None:
    """The file's written bytes on disk, so that a stored position never points past them after a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _advance(engine: Engine, pos: Position) -> None:
    """One UPDATE statement: it may run after every page, and a Session's load and flush took twice its CPU."""
    if pos.staged_path is not None:
        _sync(pos.staged_path)
    with engine.begin() as conn:
        conn.execute(
            update(EtlCheckpoint)
            .where(col(EtlCheckpoint.source) == CHECKPOINT_KEY)
            .values(
                cursor=pos.skip, total=pos.total, staged_bytes=pos.offset, staged_records=pos.records, updated_at=_now()
            )
        )


class CheckpointWriter:
    """Stores extract's position from a thread of its own; the newest position given wins.

    On SQLite, persist's batch transactions hold the database's one write lock most of the time while the
    stages stream, and a fetcher writing its checkpoint inline would wait for it after every batch, which
    starves transform and persist in turn. Stores are at least
    CHECKPOINT_EVERY_SECONDS apart, and each first syncs the staged file (once, however many pages came in
    between). A crash can lose only positions not yet written: the next run resumes from an earlier one,
    which is still consistent (the staged file is cut back to its offset and those pages are fetched again).
    `totals` keeps every total the source reported, in order (repeats dropped), from `total`, the first of a
    resumed walk; positions store the first. Use as a context manager; leaving it stores the last position
    given, `close` too."""

    def __init__(self, engine: Engine, *, total: int | None = None) -> None:
        self._engine = engine
        self.totals: list[int] = [] if total is None else [total]
        self._cond = threading.Condition()
        self._pending: Position | None = None
        self.last: Position | None = None  # the last position given, stored or not
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="extract-checkpoint", daemon=True)
        self._thread.start()

    def advance(self, *, skip: int, total: int, offset: int, records: int, staged_path: str | None = None) -> None:
        """Queue a new position (see `Position`), `total` as the source reported it with this page; raises if
        an earlier write failed."""
        with self._cond:
            if self._error is not None:
                raise self._error
            if not self.totals or self.totals[-1] != total:
                self.totals.append(total)
            self._pending = self.last = Position(skip, self.totals[0], offset, records, staged_path)
            self._cond.notify_all()

    def close(self) -> None:
        """Wait until the last position given is stored, stop the thread; raise what a write raised."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:  # an error already on its way out is the one to report
                raise

    def _run(self) -> None:
        stored_at = float("-inf")
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                self._cond.wait_for(
                    lambda: self._closed, timeout=stored_at + CHECKPOINT_EVERY_SECONDS - time.monotonic()
                )
                position, self._pending = self._pending, None
            try:
                _advance(self._engine, position)
            except Exception as exc:  # noqa: BLE001 (handed to the extracting thread)
                with self._cond:
                    self._error = exc
                return
            stored_at = time.monotonic()
